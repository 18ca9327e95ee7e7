"""The roles behind :class:`~greenlang_crypto.service.EncryptionService`.

:mod:`.runtime` owns the per-process key state (provider, key store, keyring, DEK caches);
:mod:`.envelope`, :mod:`.streaming`, :mod:`.admin` and :mod:`.monitoring` each hold a
reference to it and never to the service that builds them.
"""
