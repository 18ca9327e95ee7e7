"""Hazardous materials: raw-key and caller-nonce primitives.

Nothing here is needed to encrypt data with greenlang-crypto; use
:class:`greenlang_crypto.service.EncryptionService`. These exist for interoperability and
known-answer tests. Reusing a nonce under one key with :class:`AESGCM` destroys both the
confidentiality and the integrity of every message under that key (NIST SP 800-38D, 8).
"""

from __future__ import annotations

from greenlang_crypto._core import AESGCM, export_key_bytes

__all__ = ["AESGCM", "export_key_bytes"]
