"""Key registry (versions, states), the key store of stored DEKs, and rotation."""

from greenlang_crypto.keys.store import DekRecord, KeyStore, KeyVersion, open_key_store

__all__ = ["DekRecord", "KeyStore", "KeyVersion", "open_key_store"]
