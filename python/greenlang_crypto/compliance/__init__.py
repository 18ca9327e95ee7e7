"""Compliance verification: `greenlang-crypto verify` (SOC 2, ISO 27001, GDPR Art. 32)."""
