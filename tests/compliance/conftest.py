"""The compliance tests reuse the KMS server fixtures of the integration suite."""

from tests.integration.conftest import kms_endpoint, kms_keys, make_provider

__all__ = ["kms_endpoint", "kms_keys", "make_provider"]
