"""JSON-lines file sink."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from greenlang_crypto import _forks
from greenlang_crypto._files import atomic_output, open_private_append
from greenlang_crypto.audit.chain import _HEAD_META, ChainKey
from greenlang_crypto.audit.records import AuditEntry, AuditRecord
from greenlang_crypto.audit.sinks.base import AuditQuery
from greenlang_crypto.exceptions import AuditSinkUnavailableError


class JsonLinesAuditSink:
    """One JSON object per line, appended under an exclusive ``flock``.

    The wrapped root key and the head live in a sidecar file ``<path>.meta.json``.

    Args:
        path: The log file.
        timeout: Seconds to wait for the file lock.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 2.0) -> None:
        self.path = Path(path)
        self.meta_path = self.path.with_name(self.path.name + ".meta.json")
        self.timeout = timeout
        self.description = f"jsonl://{self.path}"
        self._lock = threading.Lock()
        # Files are opened per write; only the lock could be held by a thread of the parent.
        _forks.fresh_locks_after_fork(self, "_lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        if not self._lock.acquire(timeout=self.timeout):
            raise AuditSinkUnavailableError(f"audit sink {self.description} busy")
        try:
            try:
                # 0600 whatever the umask; O_APPEND kept, reads still work through "a+b".
                os.close(open_private_append(self.path))
                f = open(self.path, "a+b")  # noqa: SIM115 - closed below
            except OSError as exc:
                raise self._down(exc) from exc
            try:
                deadline = time.monotonic() + self.timeout
                while True:
                    try:
                        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError as exc:
                        if time.monotonic() > deadline:
                            raise AuditSinkUnavailableError(
                                f"audit sink {self.description} locked"
                            ) from exc
                        time.sleep(0.01)
                    except OSError as exc:  # no locks on this file system, out of locks
                        raise self._down(exc) from exc
                yield f
            finally:
                # Closing only releases the lock and a read handle (writes were fsync'd):
                # a late error here must not replace the one on its way, or a success.
                with contextlib.suppress(OSError):
                    f.close()
        finally:
            self._lock.release()

    def _down(self, exc: BaseException) -> AuditSinkUnavailableError:
        """The error for an OS failure (the caller chains ``exc``); names no path contents."""
        return AuditSinkUnavailableError(
            f"audit sink {self.description} unavailable ({type(exc).__name__})"
        )

    def _read_meta(self) -> dict[str, str]:
        try:
            data = json.loads(self.meta_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise AuditSinkUnavailableError(
                f"audit sink {self.description} metadata unreadable ({type(exc).__name__})"
            ) from exc
        return {str(k): str(v) for k, v in data.items()}

    def _write_meta(self, meta: Mapping[str, str]) -> None:
        # Whole or not at all: a full disk leaves the previous sidecar untouched.
        with atomic_output(self.meta_path, mode=0o600) as fh:
            fh.write(json.dumps(dict(meta)).encode())

    @staticmethod
    def _last_line(f: Any) -> bytes | None:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        if end == 0:
            return None
        pos, chunk = end, b""
        while pos > 0:
            step = min(4096, pos)
            pos -= step
            f.seek(pos)
            chunk = bytes(f.read(step)) + chunk
            lines = chunk.rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or pos == 0:
                return lines[-1]
        return None

    def append(self, entries: Sequence[AuditEntry], chain: ChainKey) -> list[AuditRecord]:
        """Seals ``entries`` after the file's last line and appends them (fsync'd)."""
        if not entries:
            return []
        with self._locked() as f:
            try:
                last = self._last_line(f)
                if last:
                    tail = AuditRecord.from_dict(json.loads(last))
                    last_seq, last_hmac = tail.seq, tail.hmac
                else:
                    last_seq, last_hmac = 0, None
                records = chain.seal(entries, last_seq, last_hmac)
                payload = b"".join(
                    json.dumps(r.to_dict(), sort_keys=True, separators=(",", ":")).encode() + b"\n"
                    for r in records
                )
                end = f.seek(0, os.SEEK_END)
                try:
                    # Straight to the descriptor: a buffered writer would flush what a full
                    # disk refused once more when closed, after the clean-up below.
                    view = memoryview(payload)
                    while view:
                        view = view[os.write(f.fileno(), view) :]
                    os.fsync(f.fileno())
                    meta = self._read_meta()
                    meta[_HEAD_META] = f"{records[-1].seq}:{records[-1].hmac}"
                    self._write_meta(meta)
                except BaseException:
                    # All or nothing, still under the lock: a line cut short by a full disk
                    # would stay the last line, which no later append could chain after.
                    with contextlib.suppress(OSError):
                        os.ftruncate(f.fileno(), end)
                    raise
                return records
            except AuditSinkUnavailableError:
                raise
            except Exception as exc:
                raise AuditSinkUnavailableError(
                    f"audit sink {self.description} write failed ({type(exc).__name__})"
                ) from exc

    def records(self) -> Iterator[AuditRecord]:
        """Every line in file order; an unparseable line yields a record that fails its HMAC.

        Raises:
            AuditSinkUnavailableError: The file cannot be opened or read (permissions, an I/O
                error); a file that does not exist yet holds no records.
        """
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._down(exc) from exc
        with fh:
            n = 0
            while True:
                try:
                    raw = fh.readline()
                except OSError as exc:
                    raise self._down(exc) from exc
                if not raw:
                    return
                n += 1
                line = raw.strip()
                if not line:
                    continue
                try:
                    record = AuditRecord.from_dict(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    record = AuditRecord(-n, AuditEntry(action="_unparseable", time=""), "")
                yield record

    def query(self, q: AuditQuery) -> list[AuditRecord]:
        """Filtered records (a scan; the file sink is for small installations)."""
        out: list[AuditRecord] = []
        for r in self.records():
            if q.matches(r):
                out.append(r)
                if len(out) >= q.limit:
                    break
        return out

    def tail(self, n: int) -> list[AuditRecord]:
        """The last ``n`` records."""
        return list(deque(self.records(), maxlen=n))

    def head(self) -> tuple[int, str] | None:
        """The last written ``(seq, hmac)`` from the sidecar."""
        value = self._read_meta().get(_HEAD_META)
        if not value:
            return None
        seq, _, mac = value.partition(":")
        return int(seq), mac

    def get_meta(self, name: str) -> str | None:
        """Reads a sidecar value."""
        return self._read_meta().get(name)

    def put_meta_if_absent(self, name: str, value: str) -> str:
        """Stores a sidecar value unless present."""
        with self._locked():
            meta = self._read_meta()
            if name in meta:
                return meta[name]
            meta[name] = value
            try:
                self._write_meta(meta)
            except OSError as exc:
                raise self._down(exc) from exc
            return value

    def ping(self) -> None:
        """Opens the log for appending under its lock (a read-only file or directory fails)."""
        with self._locked():
            pass

    def close(self) -> None:
        """Nothing to release (files are opened per call)."""

    def __repr__(self) -> str:
        return f"JsonLinesAuditSink({self.description})"
