"""The embedded default key provider: local master keys in a data directory.

``greenlang-crypto init`` creates the first master key (32 random bytes, file mode 0600). Each
rotation adds a new master key version; older versions stay to unwrap existing DEKs. DEKs are
wrapped with AES-256-GCM under the master key, with the key id and the canonical encryption
context as associated data, so a wrapped DEK unwraps only under the same id and context (the
same guarantee KMS gives with ``EncryptionContext``). Nothing here touches the network.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import threading
from pathlib import Path

from greenlang_crypto import _forks
from greenlang_crypto._core import DataKey, export_key_bytes
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import (
    ConfigurationError,
    DecryptionError,
    KmsAccessDeniedError,
)
from greenlang_crypto.providers.base import GeneratedDataKey, KeyLimits, ProviderHealth

__all__ = ["LocalKeyProvider"]

_KEY_FILE = re.compile(r"^master-v(\d+)\.key$")
_KEY_ID = re.compile(r"^local:master-v(\d+)$")
#: ``link`` errors meaning "this filesystem has no hard links", not "the name is taken".
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    """Makes a new directory entry durable (the file's own fsync does not cover its name)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _wrap_aad(key_id: str, context: EncryptionContext) -> bytes:
    return b"greenlang-crypto/local-wrap/v1|" + key_id.encode() + b"|" + context.canonical


class LocalKeyProvider:
    """Wraps DEKs under master keys kept in ``<data_dir>/master-keys``.

    Args:
        data_dir: The data directory (created by :meth:`init`).
    """

    name = "local"

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self._dir = Path(data_dir) / "master-keys"
        self._lock = threading.Lock()
        self._masters: dict[int, DataKey] = {}
        _forks.fresh_locks_after_fork(self, "_lock")

    @staticmethod
    def key_id_for(version: int) -> str:
        """The key id of master key ``version``."""
        return f"local:master-v{version}"

    def versions(self) -> list[int]:
        """Master key versions present on disk, ascending."""
        if not self._dir.is_dir():
            return []
        found = (_KEY_FILE.match(p.name) for p in self._dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def current_key_id(self) -> str:
        """The newest master key id.

        Raises:
            ConfigurationError: No master key exists (run ``greenlang-crypto init``).
        """
        versions = self.versions()
        if not versions:
            raise ConfigurationError(
                f"no master key in {self._dir}; run `greenlang-crypto init` first"
            )
        return self.key_id_for(versions[-1])

    def create_master_key(self) -> str:
        """Creates the next free master key version (0600) and returns its id.

        Other processes (two ``keys rotate`` at once) may create keys in the same directory,
        and a key file that was ever handed out may already wrap DEKs, so an existing name is
        never written over: the key is written and synced under a private temporary name,
        then hard-linked to its final name, which fails if that name exists; the next number
        is tried then. Readers therefore only ever see complete key files.
        """
        with self._lock:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = DataKey.generate()
            # The temporary name is unique to this call (no other process can open it), and
            # it does not match the key-file pattern, so versions() never lists it.
            tmp = self._dir / f".new-master-{os.getpid()}-{secrets.token_hex(8)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                try:
                    _write_all(fd, export_key_bytes(key))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                version = self._claim_next_name(tmp)
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(self._dir)
            self._masters[version] = key
            return self.key_id_for(version)

    def _claim_next_name(self, tmp: Path) -> int:
        """Links ``tmp`` to the lowest free ``master-vN.key`` above the newest; returns N."""
        versions = self.versions()
        version = (versions[-1] + 1) if versions else 1
        while True:
            path = self._dir / f"master-v{version}.key"
            try:
                os.link(tmp, path)
            except FileExistsError:
                # Someone else took this number between our listing and the link: it is
                # theirs; look again rather than counting up one by one behind a busy writer.
                newest = self.versions()
                version = max(version + 1, (newest[-1] + 1) if newest else 1)
                continue
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                return self._claim_without_links(tmp, version)
            return version

    def _claim_without_links(self, tmp: Path, version: int) -> int:
        """The same claim on a filesystem without hard links: exclusive create, then copy.

        ``O_EXCL`` still refuses an existing name; a reader racing this write may see a
        short file for a moment (it fails to load rather than loading a wrong key).
        """
        data = tmp.read_bytes()
        while True:
            path = self._dir / f"master-v{version}.key"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                version += 1
                continue
            try:
                _write_all(fd, data)
                os.fsync(fd)
            except BaseException:
                # A half-written file under a key name would be listed as the newest key.
                os.close(fd)
                path.unlink(missing_ok=True)
                raise
            os.close(fd)
            return version

    def _master(self, key_id: str) -> DataKey:
        m = _KEY_ID.match(key_id)
        if not m:
            raise KmsAccessDeniedError("unknown local key id", code="NotFoundException")
        version = int(m.group(1))
        with self._lock:
            cached = self._masters.get(version)
            if cached is not None:
                return cached
            path = self._dir / f"master-v{version}.key"
            # Whoever can write the directory can swap the key file, whatever its own mode.
            from greenlang_crypto._files import check_private_dir

            if self._dir.is_dir():
                check_private_dir(self._dir, "master-key directory")
            try:
                mode = path.stat().st_mode & 0o777
                if mode & 0o077:
                    raise ConfigurationError(
                        f"{path} must not be readable by group or others (mode {mode:o})"
                    )
                raw = path.read_bytes()
            except FileNotFoundError:
                raise KmsAccessDeniedError(
                    f"master key {key_id} not found", code="NotFoundException"
                ) from None
            key = DataKey.from_bytes(raw)
            del raw
            self._masters[version] = key
            return key

    def generate_data_key(
        self, key_id: str, context: EncryptionContext, limits: KeyLimits
    ) -> GeneratedDataKey:
        """Generates a DEK inside Rust and wraps it under master key ``key_id``."""
        master = self._master(key_id)
        dek = DataKey.generate(max_messages=limits.max_messages, max_bytes=limits.max_bytes)
        wrapped = master.wrap_key(dek, _wrap_aad(key_id, context))
        return GeneratedDataKey(key=dek, wrapped=wrapped, key_id=key_id)

    def decrypt_data_key(
        self, key_id: str, wrapped: bytes, context: EncryptionContext, limits: KeyLimits
    ) -> DataKey:
        """Unwraps a DEK; any mismatch (key, context, bytes) is one opaque DecryptionError."""
        master = self._master(key_id)
        try:
            return master.unwrap_key(
                wrapped,
                _wrap_aad(key_id, context),
                max_messages=limits.max_messages,
                max_bytes=limits.max_bytes,
            )
        except DecryptionError:
            raise DecryptionError() from None

    def reencrypt_data_key(
        self, source_key_id: str, wrapped: bytes, dest_key_id: str, context: EncryptionContext
    ) -> bytes:
        """Rewraps a DEK from one master key to another; the DEK stays in Rust."""
        dek = self.decrypt_data_key(source_key_id, wrapped, context, KeyLimits())
        return self._master(dest_key_id).wrap_key(dek, _wrap_aad(dest_key_id, context))

    def health(self) -> ProviderHealth:
        """Reports whether a master key is present and readable."""
        try:
            self._master(self.current_key_id())
        except Exception as exc:  # health checks report, never raise
            return ProviderHealth(ok=False, detail=type(exc).__name__)
        return ProviderHealth(ok=True, detail=f"{len(self.versions())} master key version(s)")

    def __repr__(self) -> str:
        return f"LocalKeyProvider(dir={str(self._dir)!r}, versions={self.versions()})"
