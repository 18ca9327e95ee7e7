"""Large objects: stream format v1 (segmented AES-256-GCM) over files, pipes and iterables.

The format is specified in docs/FORMAT.md ("Stream format v1"); the cryptography lives in the
Rust core (``StreamEncryptor`` and ``StreamDecryptor``). This package only moves bytes: it reads
runs of whole segments into reused buffers, has Rust seal or open them in place with the GIL
released, and writes them out. Memory stays constant whatever the size of the object.

The :class:`~greenlang_crypto.service.EncryptionService` methods ``encrypt_stream``,
``open_decrypting``, ``decrypt_stream``, ``encrypt_file`` and ``decrypt_file`` are the public
entry points; they supply the keys (one DEK per stream, from the same cache and providers as
envelopes) and count the operation once per stream.

Modules, lowest first: ``_io`` (sources, destinations, the run size), ``_pipeline`` (the writer
thread), ``_seal`` (encryption), ``_pull`` (a reader over encryption that pushes) and ``_open``
(decryption, which never hands out plaintext that did not authenticate).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from greenlang_crypto._files import atomic_output
from greenlang_crypto._files import regular_file_size as regular_file_size
from greenlang_crypto.streams import _io, _pipeline
from greenlang_crypto.streams._io import RUN_BYTES as RUN_BYTES
from greenlang_crypto.streams._io import TAG_LEN as TAG_LEN
from greenlang_crypto.streams._io import _fill as _fill
from greenlang_crypto.streams._io import _IterReader as _IterReader
from greenlang_crypto.streams._io import _Readable as _Readable
from greenlang_crypto.streams._io import _ReadAdapter as _ReadAdapter
from greenlang_crypto.streams._io import _Writable as _Writable
from greenlang_crypto.streams._io import _write_all as _write_all
from greenlang_crypto.streams._io import as_reader as as_reader
from greenlang_crypto.streams._io import is_stream
from greenlang_crypto.streams._open import DecryptingReader, decrypt_to, read_header
from greenlang_crypto.streams._pipeline import _write_runs as _write_runs
from greenlang_crypto.streams._pipeline import _Writer as _Writer
from greenlang_crypto.streams._pull import EncryptingReader
from greenlang_crypto.streams._pull import _HandOff as _HandOff
from greenlang_crypto.streams._seal import _seal_runs as _seal_runs
from greenlang_crypto.streams._seal import encrypt_to, sealed_runs

__all__ = [
    "DecryptingReader",
    "EncryptingReader",
    "atomic_output",
    "decrypt_to",
    "encrypt_to",
    "is_stream",
    "read_header",
    "sealed_runs",
]

# Names that tune the machinery, and the module that reads each one when it runs. Setting one
# on the package (``streams.RUN_BYTES = ...``, as tests and callers do) must reach that module,
# or the setting would silently do nothing.
_TUNABLES: dict[str, types.ModuleType] = {"RUN_BYTES": _io, "_Writer": _pipeline}


class _Package(types.ModuleType):
    """The package's module type: forwards assignments of :data:`_TUNABLES` to their owners."""

    def __setattr__(self, name: str, value: Any) -> None:
        owner = _TUNABLES.get(name)
        if owner is not None:
            setattr(owner, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
