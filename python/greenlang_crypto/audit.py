"""Tamper-evident audit log: an observer of the service plus a recorder of admin actions.

What is recorded (never plaintext, DEKs or raw context values; contexts appear only as their
SHA-256 digest and their ``data_class``):

* key events (``key_generated``, ``key_accessed``, ``key_rotated``, ``key_cache_miss``, ...),
  failures (``encryption_failed``, ``decryption_failed``) and admin actions: one record each;
* encryptions and decryptions: by default aggregated per flush interval, with counts by
  operation, data class, outcome and actor read from the service's Rust counters
  (:meth:`EncryptionService.operation_counts`), so the data path pays nothing; with a service
  built with ``per_operation_events=True``, one record per operation instead.

Tamper evidence: every record carries a sequence number and
``hmac = HMAC-SHA256(chain_key, prev_hmac || canonical_record_bytes)``. The chain key is derived
(HKDF label ``audit-chain/v1``) from an audit root key that the service's key provider wraps;
only the wrapped root key is stored, in the sink itself. :meth:`AuditLog.verify` names every
edited, deleted, inserted or reordered record.

Availability policy (TEST-MATRIX J6): a security-relevant admin action writes its intent record
synchronously first, and :meth:`AuditLog.record` raises :class:`AuditSinkUnavailableError` when
the sink cannot take it, so the action fails closed before anything happens. Data-path events
go to a bounded in-memory buffer that a background thread flushes; while the sink is down the
buffer keeps (and, when full, counts dropped) events and :attr:`AuditLog.sink_up` is false
(exported as ``gl_encryption_audit_sink_up``). Every sink write has a timeout.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from greenlang_crypto._core import BlindIndexKey, DataKey
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import AuditSinkUnavailableError, ConfigurationError
from greenlang_crypto.providers.base import KeyLimits, KeyProvider

if TYPE_CHECKING:
    from greenlang_crypto.service import EncryptionService

__all__ = [
    "AUDIT_CONTEXT",
    "AuditEntry",
    "AuditLog",
    "AuditQuery",
    "AuditRecord",
    "AuditSink",
    "JsonLinesAuditSink",
    "PostgresAuditSink",
    "SqliteAuditSink",
    "VerifyProblem",
    "VerifyResult",
    "open_audit_sink",
]

_log = logging.getLogger("greenlang_crypto.audit")

#: The fixed encryption context that binds the wrapped audit root key.
AUDIT_CONTEXT = EncryptionContext(tenant_id="_system", data_class="audit")
_CHAIN_LABEL = b"audit-chain/v1"
_GENESIS = bytes(32)
_ROOT_META = "chain_root_v1"
_HEAD_META = "head"
_ROOT_LIMITS = KeyLimits()

#: Event fields copied into ``details``: scalar, non-secret by the events contract. Anything
#: else an event carries (fingerprints, timings, future fields) is left out on purpose.
_DETAIL_FIELDS = frozenset(
    {
        "error_type",
        "key_reference",
        "dek_id",
        "operation",
        "old_version",
        "new_version",
        "min_version",
        "deleted_stored_deks",
        "count",
        "kms_on_demand",
        "size",
    }
)
_DATA_EVENTS = frozenset(
    {"encryption_performed", "decryption_performed", "key_cache_hit", "key_cache_miss"}
)

Scalar = str | int | float | bool | None


def _now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _scalar(value: object) -> Scalar:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An audit event before it is sealed into the chain.

    Attributes:
        action: What happened (an event name or an admin action such as ``key_rotate``).
        actor: Who did it (token subject, ``service`` for the data path, ``cli:<user>``).
        outcome: ``success``, ``failure``, ``denied`` or ``intent``.
        time: When (ISO 8601, UTC).
        key_id: Wrapping key id (KMS ARN or local master key id), if any.
        key_version: Keyring version, if any.
        context_digest: Hex SHA-256 of the canonical encryption context, if any.
        data_class: The context's data class, if any.
        request_id: The API request id, if any.
        reason: The caller's stated reason (API decrypts, admin actions).
        details: Further non-secret scalars (counts, error type).
    """

    action: str
    actor: str = "service"
    outcome: str = "success"
    time: str = field(default_factory=_now_iso)
    key_id: str | None = None
    key_version: int | None = None
    context_digest: str | None = None
    data_class: str | None = None
    request_id: str | None = None
    reason: str | None = None
    details: Mapping[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A sealed audit record: an entry with its sequence number and chain HMAC.

    Attributes:
        seq: Position in the chain (1, 2, ...).
        entry: The recorded event.
        hmac: Hex HMAC-SHA256 over the previous record's HMAC and this record's canonical bytes.
    """

    seq: int
    entry: AuditEntry
    hmac: str

    def canonical_bytes(self) -> bytes:
        """The bytes the chain HMAC covers (sorted-key compact JSON; excludes ``hmac``)."""
        return canonical_bytes(self.seq, self.entry)

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (what the API and ``audit tail`` show)."""
        e = self.entry
        return {
            "seq": self.seq,
            "time": e.time,
            "actor": e.actor,
            "action": e.action,
            "outcome": e.outcome,
            "key_id": e.key_id,
            "key_version": e.key_version,
            "context_digest": e.context_digest,
            "data_class": e.data_class,
            "request_id": e.request_id,
            "reason": e.reason,
            "details": dict(e.details),
            "hmac": self.hmac,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AuditRecord:
        """Parses :meth:`to_dict` output (for example a JSON-lines row)."""
        entry = AuditEntry(
            action=str(d["action"]),
            actor=str(d["actor"]),
            outcome=str(d["outcome"]),
            time=str(d["time"]),
            key_id=d.get("key_id"),
            key_version=d.get("key_version"),
            context_digest=d.get("context_digest"),
            data_class=d.get("data_class"),
            request_id=d.get("request_id"),
            reason=d.get("reason"),
            details=dict(d.get("details") or {}),
        )
        return cls(int(d["seq"]), entry, str(d["hmac"]))


def canonical_bytes(seq: int, entry: AuditEntry) -> bytes:
    """Canonical encoding of a record: sorted keys, no whitespace, ASCII only."""
    doc = {
        "seq": seq,
        "time": entry.time,
        "actor": entry.actor,
        "action": entry.action,
        "outcome": entry.outcome,
        "key_id": entry.key_id,
        "key_version": entry.key_version,
        "context_digest": entry.context_digest,
        "data_class": entry.data_class,
        "request_id": entry.request_id,
        "reason": entry.reason,
        "details": dict(entry.details),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class ChainKey:
    """Seals and checks records with the chain key (an HMAC key held in Rust)."""

    def __init__(self, key: BlindIndexKey) -> None:
        self._key = key

    def seal(
        self, entries: Sequence[AuditEntry], last_seq: int, last_hmac: str | None
    ) -> list[AuditRecord]:
        """Chains ``entries`` after the record ``(last_seq, last_hmac)``."""
        prev = bytes.fromhex(last_hmac) if last_hmac else _GENESIS
        out: list[AuditRecord] = []
        seq = last_seq
        for entry in entries:
            seq += 1
            mac = self._key.compute(prev + canonical_bytes(seq, entry))
            out.append(AuditRecord(seq, entry, mac.hex()))
            prev = mac
        return out

    def check(self, record: AuditRecord, prev_hmac: str | None) -> bool:
        """Whether ``record.hmac`` is right for its content after ``prev_hmac`` (constant time)."""
        prev = bytes.fromhex(prev_hmac) if prev_hmac else _GENESIS
        try:
            mac = bytes.fromhex(record.hmac)
        except ValueError:
            return False
        return self._key.verify(prev + record.canonical_bytes(), mac)


# -- sinks ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters and keyset pagination for :meth:`AuditSink.query`.

    Attributes:
        action: Only this action.
        actor: Only this actor.
        outcome: Only this outcome.
        key_version: Only this key version.
        since: Only records at or after this ISO 8601 time.
        until: Only records before this ISO 8601 time.
        after_seq: Only records with a larger sequence number (the pagination cursor).
        limit: At most this many records.
    """

    action: str | None = None
    actor: str | None = None
    outcome: str | None = None
    key_version: int | None = None
    since: str | None = None
    until: str | None = None
    after_seq: int = 0
    limit: int = 100

    def matches(self, r: AuditRecord) -> bool:
        """Whether ``r`` passes the filters (used by sinks without a query language)."""
        e = r.entry
        return (
            r.seq > self.after_seq
            and (self.action is None or e.action == self.action)
            and (self.actor is None or e.actor == self.actor)
            and (self.outcome is None or e.outcome == self.outcome)
            and (self.key_version is None or e.key_version == self.key_version)
            and (self.since is None or e.time >= self.since)
            and (self.until is None or e.time < self.until)
        )


class AuditSink(Protocol):
    """Where audit records are stored. Every method raises AuditSinkUnavailableError on failure."""

    description: str

    def append(self, entries: Sequence[AuditEntry], chain: ChainKey) -> list[AuditRecord]:
        """Seals ``entries`` after the current tail (atomically, under a lock) and stores them."""
        ...

    def records(self) -> Iterator[AuditRecord]:
        """Every record, in storage order (what :meth:`AuditLog.verify` walks)."""
        ...

    def query(self, q: AuditQuery) -> list[AuditRecord]:
        """Records matching ``q``, ascending by sequence number."""
        ...

    def tail(self, n: int) -> list[AuditRecord]:
        """The last ``n`` records, ascending."""
        ...

    def head(self) -> tuple[int, str] | None:
        """The ``(seq, hmac)`` the sink last wrote, kept apart from the records, if it has one."""
        ...

    def get_meta(self, name: str) -> str | None:
        """A metadata value (for example the wrapped audit root key)."""
        ...

    def put_meta_if_absent(self, name: str, value: str) -> str:
        """Stores ``value`` unless ``name`` exists; returns the stored value."""
        ...

    def ping(self) -> None:
        """Checks that a write could succeed now (takes and releases the write lock)."""
        ...

    def close(self) -> None:
        """Releases connections and files."""
        ...


_COLUMNS = (
    "seq, time, actor, action, outcome, key_id, key_version, context_digest, data_class, "
    "request_id, reason, details, hmac"
)


def _row(record: AuditRecord) -> tuple[Any, ...]:
    e = record.entry
    details = json.dumps(dict(e.details), sort_keys=True, separators=(",", ":"))
    return (
        record.seq,
        e.time,
        e.actor,
        e.action,
        e.outcome,
        e.key_id,
        e.key_version,
        e.context_digest,
        e.data_class,
        e.request_id,
        e.reason,
        details,
        record.hmac,
    )


def _from_row(row: Sequence[Any]) -> AuditRecord:
    try:
        details = json.loads(row[11])
    except (TypeError, ValueError):
        # A corrupted details column must surface as a failed HMAC in verify(), not a crash.
        details = {"_unparseable": str(row[11])}
    if not isinstance(details, dict):
        details = {"_unparseable": str(row[11])}
    entry = AuditEntry(
        action=row[3],
        actor=row[2],
        outcome=row[4],
        time=row[1],
        key_id=row[5],
        key_version=None if row[6] is None else int(row[6]),
        context_digest=row[7],
        data_class=row[8],
        request_id=row[9],
        reason=row[10],
        details=details,
    )
    return AuditRecord(int(row[0]), entry, str(row[12]))


class _SqlAuditSink:
    """Shared SQL implementation; subclasses provide connections, locking and placeholders."""

    description = "sql"
    _ph = "?"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: Any = None

    # subclass hooks
    def _connect(self) -> Any:
        raise NotImplementedError

    def _begin_write(self, cur: Any) -> None:
        raise NotImplementedError

    def _schema(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS glc_audit (seq BIGINT PRIMARY KEY, time TEXT NOT NULL, "
            "actor TEXT NOT NULL, action TEXT NOT NULL, outcome TEXT NOT NULL, key_id TEXT, "
            "key_version INTEGER, context_digest TEXT, data_class TEXT, request_id TEXT, "
            "reason TEXT, details TEXT NOT NULL, hmac TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS glc_audit_time ON glc_audit (time)",
            "CREATE TABLE IF NOT EXISTS glc_audit_meta "
            "(name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ]

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self._ph)

    def _get_conn(self) -> Any:
        if self._conn is None:
            conn = self._connect()
            cur = conn.cursor()
            try:
                for stmt in self._schema():
                    cur.execute(stmt)
                conn.commit()
            finally:
                cur.close()
            self._conn = conn
        return self._conn

    def _reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _run(self, fn: Callable[[Any], Any], *, write: bool = False) -> Any:
        with self._lock:
            try:
                conn = self._get_conn()
                cur = conn.cursor()
                try:
                    if write:
                        self._begin_write(cur)
                    result = fn(cur)
                    conn.commit()
                    return result
                except BaseException:
                    with contextlib.suppress(Exception):
                        conn.rollback()
                    raise
                finally:
                    cur.close()
            except AuditSinkUnavailableError:
                raise
            except Exception as exc:
                # Locked, timed out, disk full, connection lost: the caller decides (fail
                # closed for admin actions, buffer for data-path events).
                self._reset()
                raise AuditSinkUnavailableError(
                    f"audit sink {self.description} unavailable ({type(exc).__name__})"
                ) from None

    def append(self, entries: Sequence[AuditEntry], chain: ChainKey) -> list[AuditRecord]:
        """Seals and inserts ``entries`` in one transaction after the current tail."""

        def work(cur: Any) -> list[AuditRecord]:
            cur.execute("SELECT seq, hmac FROM glc_audit ORDER BY seq DESC LIMIT 1")
            row = cur.fetchone()
            last_seq, last_hmac = (int(row[0]), str(row[1])) if row else (0, None)
            records = chain.seal(entries, last_seq, last_hmac)
            placeholders = ", ".join([self._ph] * 13)
            cur.executemany(
                f"INSERT INTO glc_audit ({_COLUMNS}) VALUES ({placeholders})",  # noqa: S608
                [_row(r) for r in records],
            )
            if records:
                head = f"{records[-1].seq}:{records[-1].hmac}"
                cur.execute(self._sql("DELETE FROM glc_audit_meta WHERE name = ?"), (_HEAD_META,))
                cur.execute(
                    self._sql("INSERT INTO glc_audit_meta (name, value) VALUES (?, ?)"),
                    (_HEAD_META, head),
                )
            return records

        if not entries:
            return []
        result: list[AuditRecord] = self._run(work, write=True)
        return result

    def records(self) -> Iterator[AuditRecord]:
        """Every record in sequence order (read in pages so memory stays bounded)."""
        last = -1
        while True:

            def page(cur: Any, after: int = last) -> list[AuditRecord]:
                cur.execute(
                    self._sql(
                        f"SELECT {_COLUMNS} FROM glc_audit WHERE seq > ? "  # noqa: S608
                        "ORDER BY seq LIMIT 1000"
                    ),
                    (after,),
                )
                return [_from_row(r) for r in cur.fetchall()]

            rows: list[AuditRecord] = self._run(page)
            if not rows:
                return
            yield from rows
            last = rows[-1].seq

    def query(self, q: AuditQuery) -> list[AuditRecord]:
        """Filtered records (parameterized SQL)."""
        where = ["seq > ?"]
        params: list[Any] = [q.after_seq]
        for column, value in (
            ("action", q.action),
            ("actor", q.actor),
            ("outcome", q.outcome),
            ("key_version", q.key_version),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if q.since is not None:
            where.append("time >= ?")
            params.append(q.since)
        if q.until is not None:
            where.append("time < ?")
            params.append(q.until)
        params.append(q.limit)
        sql = self._sql(
            f"SELECT {_COLUMNS} FROM glc_audit WHERE {' AND '.join(where)} "  # noqa: S608
            "ORDER BY seq LIMIT ?"
        )

        def work(cur: Any) -> list[AuditRecord]:
            cur.execute(sql, tuple(params))
            return [_from_row(r) for r in cur.fetchall()]

        result: list[AuditRecord] = self._run(work)
        return result

    def tail(self, n: int) -> list[AuditRecord]:
        """The last ``n`` records, ascending."""

        def work(cur: Any) -> list[AuditRecord]:
            cur.execute(
                self._sql(f"SELECT {_COLUMNS} FROM glc_audit ORDER BY seq DESC LIMIT ?"),  # noqa: S608
                (n,),
            )
            return [_from_row(r) for r in reversed(cur.fetchall())]

        result: list[AuditRecord] = self._run(work)
        return result

    def head(self) -> tuple[int, str] | None:
        """The last written ``(seq, hmac)`` from the metadata table."""
        value = self.get_meta(_HEAD_META)
        if not value:
            return None
        seq, _, mac = value.partition(":")
        return int(seq), mac

    def get_meta(self, name: str) -> str | None:
        """Reads a metadata value."""

        def work(cur: Any) -> str | None:
            cur.execute(self._sql("SELECT value FROM glc_audit_meta WHERE name = ?"), (name,))
            row = cur.fetchone()
            return None if row is None else str(row[0])

        result: str | None = self._run(work)
        return result

    def put_meta_if_absent(self, name: str, value: str) -> str:
        """Stores a metadata value unless present (first writer wins across processes)."""

        def work(cur: Any) -> str:
            cur.execute(self._sql("SELECT value FROM glc_audit_meta WHERE name = ?"), (name,))
            row = cur.fetchone()
            if row is not None:
                return str(row[0])
            cur.execute(
                self._sql("INSERT INTO glc_audit_meta (name, value) VALUES (?, ?)"), (name, value)
            )
            return value

        result: str = self._run(work, write=True)
        return result

    def ping(self) -> None:
        """Takes the write lock and releases it (raises when it cannot within the timeout)."""
        self._run(lambda cur: None, write=True)

    def close(self) -> None:
        """Closes the connection."""
        with self._lock:
            self._reset()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"


class SqliteAuditSink(_SqlAuditSink):
    """The embedded default: ``<data_dir>/audit.db``.

    Args:
        path: The database file.
        timeout: Seconds to wait for SQLite's write lock before the sink reports itself down.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 2.0) -> None:
        super().__init__()
        self.path = Path(path)
        self.timeout = timeout
        self.description = f"sqlite:///{self.path}"

    def _connect(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: writes open their transaction explicitly (BEGIN IMMEDIATE).
        conn = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def _begin_write(self, cur: Any) -> None:
        # Take the write lock before reading the tail, so two processes never chain after the
        # same record; SQLite's busy timeout bounds the wait.
        cur.execute("BEGIN IMMEDIATE")


#: Where the PostgreSQL sink finds its tables: the V011 migration's schema, else public.
_SEARCH_PATH = "-c search_path=encryption,public"


class PostgresAuditSink(_SqlAuditSink):
    """PostgreSQL sink (psycopg 3), for several service instances sharing one chain.

    Args:
        url: ``postgresql://...`` (``postgresql+psycopg://`` is accepted too).
        timeout: Connect, lock and statement timeout in seconds.
    """

    _ph = "%s"

    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        super().__init__()
        self._dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.timeout = timeout
        self.description = "postgresql://…@" + self._dsn.split("@")[-1]

    def _connect(self) -> Any:
        try:
            import psycopg
        except ImportError:  # pragma: no cover - depends on the install
            raise ConfigurationError(
                "PostgreSQL audit sink needs psycopg: pip install 'greenlang-crypto[sqlalchemy]'"
            ) from None
        ms = max(1, int(self.timeout * 1000))
        return psycopg.connect(
            self._dsn,
            connect_timeout=max(1, int(self.timeout + 0.999)),
            # The V011 migration creates the audit tables in the `encryption` schema; without
            # it they are created in `public` (search_path skips a missing schema).
            options=f"-c statement_timeout={ms} -c lock_timeout={ms} {_SEARCH_PATH}",
        )

    def _begin_write(self, cur: Any) -> None:
        # One chain across instances: a transaction-scoped advisory lock serializes appends.
        cur.execute("SELECT pg_advisory_xact_lock(7304118432)")


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

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        if not self._lock.acquire(timeout=self.timeout):
            raise AuditSinkUnavailableError(f"audit sink {self.description} busy")
        try:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                f = open(self.path, "a+b")  # noqa: SIM115 - closed below
            except OSError as exc:
                raise AuditSinkUnavailableError(
                    f"audit sink {self.description} unavailable ({type(exc).__name__})"
                ) from None
            try:
                deadline = time.monotonic() + self.timeout
                while True:
                    try:
                        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise AuditSinkUnavailableError(
                                f"audit sink {self.description} locked"
                            ) from None
                        time.sleep(0.01)
                yield f
            finally:
                f.close()
        finally:
            self._lock.release()

    def _read_meta(self) -> dict[str, str]:
        try:
            data = json.loads(self.meta_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise AuditSinkUnavailableError(
                f"audit sink {self.description} metadata unreadable ({type(exc).__name__})"
            ) from None
        return {str(k): str(v) for k, v in data.items()}

    def _write_meta(self, meta: Mapping[str, str]) -> None:
        tmp = self.meta_path.with_name(self.meta_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(dict(meta), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.meta_path)

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
                f.seek(0, os.SEEK_END)
                for r in records:
                    line = json.dumps(r.to_dict(), sort_keys=True, separators=(",", ":"))
                    f.write(line.encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
                meta = self._read_meta()
                meta[_HEAD_META] = f"{records[-1].seq}:{records[-1].hmac}"
                self._write_meta(meta)
                return records
            except AuditSinkUnavailableError:
                raise
            except Exception as exc:
                raise AuditSinkUnavailableError(
                    f"audit sink {self.description} write failed ({type(exc).__name__})"
                ) from None

    def records(self) -> Iterator[AuditRecord]:
        """Every line in file order; an unparseable line yields a record that fails its HMAC."""
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            return
        with fh:
            for n, raw in enumerate(fh, start=1):
                line = raw.strip()
                if not line:
                    continue
                try:
                    yield AuditRecord.from_dict(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    yield AuditRecord(-n, AuditEntry(action="_unparseable", time=""), "")

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
                raise AuditSinkUnavailableError(
                    f"audit sink {self.description} unavailable ({type(exc).__name__})"
                ) from None
            return value

    def ping(self) -> None:
        """Takes the file lock and releases it."""
        with self._locked():
            pass

    def close(self) -> None:
        """Nothing to release (files are opened per call)."""

    def __repr__(self) -> str:
        return f"JsonLinesAuditSink({self.description})"


def open_audit_sink(
    url: str | None, data_dir: str | os.PathLike[str], *, timeout: float = 2.0
) -> AuditSink:
    """Opens a sink from a URL: ``sqlite:///path``, ``postgresql://...`` or ``jsonl:///path``.

    Args:
        url: The sink URL; ``None`` means SQLite at ``<data_dir>/audit.db``.
        data_dir: The service's data directory.
        timeout: Write and lock timeout in seconds.

    Raises:
        ConfigurationError: Unknown scheme.
    """
    if url is None:
        return SqliteAuditSink(Path(data_dir) / "audit.db", timeout=timeout)
    if url.startswith("sqlite:///"):
        return SqliteAuditSink(url.removeprefix("sqlite:///"), timeout=timeout)
    if url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        return PostgresAuditSink(url, timeout=timeout)
    if url.startswith("jsonl://"):
        return JsonLinesAuditSink(url.removeprefix("jsonl://"), timeout=timeout)
    raise ConfigurationError("audit URL must start with sqlite:///, postgresql:// or jsonl://")


# -- verification ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifyProblem:
    """One integrity problem found by :meth:`AuditLog.verify`.

    Attributes:
        seq: The sequence number of the record concerned (for a deletion: the missing one).
        kind: ``edited``, ``deleted``, ``inserted``, ``reordered``, ``truncated`` or
            ``unverifiable``.
        detail: A human-readable explanation.
    """

    seq: int
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of :meth:`AuditLog.verify`.

    Attributes:
        records: Records checked.
        problems: Everything found, in log order (empty when the chain is intact).
    """

    records: int
    problems: list[VerifyProblem]

    @property
    def ok(self) -> bool:
        """Whether the chain is intact."""
        return not self.problems


def _verify(
    records: Iterator[AuditRecord], chain: ChainKey, head: tuple[int, str] | None
) -> VerifyResult:
    problems: list[VerifyProblem] = []
    prev_seq, prev_hmac = 0, None
    before_prev: str | None = None
    count = 0
    for r in records:
        count += 1
        if r.seq == prev_seq and r.seq > 0 and chain.check(r, before_prev):
            # Two records claim this seq and this one chains correctly: either an exact
            # replayed copy, or the one before it was a forged insertion.
            last = problems[-1] if problems else None
            if last is not None and last.seq == r.seq and last.kind == "edited":
                problems[-1] = VerifyProblem(
                    r.seq, "inserted", f"a forged record seq {r.seq} precedes the genuine one"
                )
                prev_hmac = r.hmac
            else:
                problems.append(
                    VerifyProblem(r.seq, "inserted", f"record seq {r.seq} appears twice")
                )
            continue
        if r.seq <= prev_seq:
            # A sequence number that does not grow: an insertion or a reordering.
            kind = "inserted" if r.seq == prev_seq or r.seq < 1 else "reordered"
            problems.append(
                VerifyProblem(r.seq, kind, f"record seq {r.seq} appears after seq {prev_seq}")
            )
            continue
        if r.seq > prev_seq + 1:
            chained = chain.check(r, prev_hmac)
            missing = ", ".join(str(s) for s in range(prev_seq + 1, min(r.seq, prev_seq + 6)))
            more = "…" if r.seq - prev_seq - 1 > 5 else ""
            problems.append(
                VerifyProblem(
                    prev_seq + 1,
                    "deleted" if not chained else "reordered",
                    f"record(s) {missing}{more} missing before seq {r.seq}",
                )
            )
        elif not chain.check(r, prev_hmac):
            problems.append(
                VerifyProblem(r.seq, "edited", f"record seq {r.seq} does not match its HMAC")
            )
        # Resynchronize on the stored HMAC so one bad record is reported once.
        before_prev = prev_hmac
        prev_seq, prev_hmac = r.seq, r.hmac
    # A record reported missing that shows up later was moved, not deleted.
    late = {p.seq for p in problems if p.kind == "reordered" and "appears after" in p.detail}
    merged: list[VerifyProblem] = []
    for p in problems:
        if p.kind == "deleted" and p.seq in late:
            merged.append(VerifyProblem(p.seq, "reordered", f"record seq {p.seq} was moved"))
        elif not (p.kind == "reordered" and p.seq in late and "appears after" in p.detail):
            merged.append(p)
    problems = merged
    if head is not None and head[0] > prev_seq:
        problems.append(
            VerifyProblem(
                prev_seq + 1, "truncated", f"records after seq {prev_seq} missing (head {head[0]})"
            )
        )
    return VerifyResult(count, problems)


# -- the log ---------------------------------------------------------------------------------


class AuditLog:
    """The audit log: a :class:`~greenlang_crypto.events.ServiceObserver` and admin recorder.

    Typical wiring (the observer must exist before the service, and the service before the
    chain key, which the service's provider wraps)::

        audit = AuditLog(SqliteAuditSink(data_dir / "audit.db"))
        service = EncryptionService(config, observers=[audit])
        audit.attach(service)        # loads or creates the chain key, starts the flusher

    Args:
        sink: Where records go.
        flush_interval: Seconds between background flushes (aggregates and buffered events).
        max_buffer: Events kept in memory while the sink is down; beyond that the oldest are
            dropped and counted (:attr:`dropped`).
        actor: Actor recorded for data-path events that carry none.
        start_thread: Start the background flusher in :meth:`attach`.
    """

    def __init__(
        self,
        sink: AuditSink,
        *,
        flush_interval: float = 10.0,
        max_buffer: int = 10_000,
        actor: str = "service",
        start_thread: bool = True,
    ) -> None:
        self.sink = sink
        self.flush_interval = flush_interval
        self.actor = actor
        self._start_thread = start_thread
        self._buffer: deque[AuditEntry] = deque()
        self._max_buffer = max_buffer
        self._buffer_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._chain: ChainKey | None = None
        self._service: EncryptionService | None = None
        self._per_op = False
        self._last_ops: dict[tuple[str, str], int] = {}
        self._attributed: Counter[tuple[str, str, str]] = Counter()
        self._carry: Counter[tuple[str, str]] = Counter()
        self._window_start = _now_iso()
        self._sink_up = True
        self._dropped = 0
        self._dropped_reported = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- wiring ------------------------------------------------------------------------

    def bind(self, service: EncryptionService) -> None:
        """Binds the service (counters, provider) without writing or starting anything."""
        self._service = service
        self._per_op = bool(getattr(service, "per_operation_events", False))
        self._last_ops = self._read_ops()

    def attach(self, service: EncryptionService) -> None:
        """Binds the service, loads or creates the chain key, and starts the flusher.

        If the sink is down the chain key is retried at each flush, and events stay buffered
        meanwhile.
        """
        self.bind(service)
        try:
            self._ensure_chain()
        except AuditSinkUnavailableError:
            self._sink_up = False
            _log.warning("audit sink %s is down at start; buffering", self.sink.description)
        if self._start_thread and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="glc-audit-flusher", daemon=True)
            self._thread.start()

    def _ensure_chain(self, *, create: bool = True) -> ChainKey | None:
        if self._chain is not None:
            return self._chain
        if self._service is None:
            raise AuditSinkUnavailableError("audit log is not attached to a service")
        provider = self._service.provider
        stored = self.sink.get_meta(_ROOT_META)
        if stored is None:
            if not create:
                return None
            versions = self._service.versions()
            primary = [v for v in versions if v.state == "primary"] or versions[-1:]
            key_id = primary[0].wrapping_key_id
            generated = provider.generate_data_key(key_id, AUDIT_CONTEXT, _ROOT_LIMITS)
            candidate = json.dumps(
                {
                    "provider": provider.name,
                    "key_id": generated.key_id,
                    "wrapped": base64.b64encode(generated.wrapped).decode(),
                }
            )
            stored = self.sink.put_meta_if_absent(_ROOT_META, candidate)
        self._chain = ChainKey(_unwrap_root(provider, stored).derive_index_key(_CHAIN_LABEL))
        return self._chain

    def _chain_key(self) -> ChainKey:
        chain = self._ensure_chain()
        assert chain is not None  # create=True always yields a key or raises
        return chain

    # -- ServiceObserver ---------------------------------------------------------------

    def on_event(self, event: str, fields: Mapping[str, object]) -> None:
        """Turns a service event into a buffered record (never blocks, never raises)."""
        if event == "key_cache_hit" and not self._per_op:
            return
        details = {k: _scalar(v) for k, v in fields.items() if k in _DETAIL_FIELDS}
        outcome = "failure" if event.endswith("_failed") else "success"
        key_version = fields.get("key_version", fields.get("new_version"))
        entry = AuditEntry(
            action=event,
            actor=self.actor,
            outcome=outcome,
            key_id=_opt_str(fields.get("key_id")),
            key_version=key_version if isinstance(key_version, int) else None,
            context_digest=_opt_str(fields.get("context_digest")),
            data_class=_opt_str(fields.get("data_class")),
            details=details,
        )
        self._enqueue(entry)
        if event not in _DATA_EVENTS:
            # Key events and failures are written soon, not at the next interval.
            self._wake.set()

    def _enqueue(self, entry: AuditEntry) -> None:
        with self._buffer_lock:
            if len(self._buffer) >= self._max_buffer:
                self._buffer.popleft()
                self._dropped += 1
            self._buffer.append(entry)

    # -- admin actions -----------------------------------------------------------------

    def record(
        self,
        action: str,
        *,
        actor: str,
        outcome: str = "success",
        key_id: str | None = None,
        key_version: int | None = None,
        context_digest: str | None = None,
        data_class: str | None = None,
        request_id: str | None = None,
        reason: str | None = None,
        details: Mapping[str, Scalar] | None = None,
        required: bool = True,
    ) -> AuditRecord | None:
        """Writes one record now (admin actions, API decrypts, denials).

        Args:
            action: The action name (for example ``key_rotate``).
            actor: Who acts.
            outcome: ``intent`` before acting, then ``success`` or ``failure``; ``denied``.
            key_id: Wrapping key id.
            key_version: Key version.
            context_digest: Hex context digest (never the context itself).
            data_class: Data class.
            request_id: Request id.
            reason: The stated reason.
            details: Further non-secret scalars.
            required: When true (security-relevant actions) a sink failure raises; when false
                the record is buffered instead.

        Returns:
            The sealed record, or None when it was buffered.

        Raises:
            AuditSinkUnavailableError: ``required`` and the sink did not take the record; the
                caller must not perform the action.
        """
        entry = AuditEntry(
            action=action,
            actor=actor,
            outcome=outcome,
            key_id=key_id,
            key_version=key_version,
            context_digest=context_digest,
            data_class=data_class,
            request_id=request_id,
            reason=reason,
            details=dict(details or {}),
        )
        if not required:
            self._enqueue(entry)
            self._wake.set()
            return None
        records = self._write([entry])
        return records[-1]

    def note_operation(self, operation: str, data_class: str, actor: str) -> None:
        """Attributes one successful encrypt or decrypt to ``actor`` in the next aggregate.

        Costs one counter increment; the API calls it so aggregates carry the caller.
        """
        if not self._per_op:
            with self._buffer_lock:
                self._attributed[(operation, data_class, actor)] += 1

    def require_available(self) -> None:
        """Raises unless the sink takes writes right now.

        Raises:
            AuditSinkUnavailableError: The sink is down.
        """
        try:
            self._ensure_chain()
            self.sink.ping()
        except AuditSinkUnavailableError:
            self._sink_up = False
            raise
        self._sink_up = True

    # -- flushing ----------------------------------------------------------------------

    def _write(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        with self._write_lock:
            try:
                chain = self._chain_key()
                records = self.sink.append(entries, chain)
            except AuditSinkUnavailableError:
                self._sink_up = False
                raise
            except Exception as exc:
                # A provider failure while loading the chain key also makes the log unusable.
                self._sink_up = False
                raise AuditSinkUnavailableError(
                    f"audit log unavailable ({type(exc).__name__})"
                ) from None
            self._sink_up = True
            return records

    def _read_ops(self) -> dict[tuple[str, str], int]:
        if self._service is None:
            return {}
        counts = self._service.operation_counts()
        return {(op, dc): n for op, by_dc in counts.items() for dc, (n, _b) in by_dc.items()}

    def _aggregates(self) -> list[AuditEntry]:
        if self._service is None or self._per_op:
            return []
        # Snapshot the API attributions before the service counters: an operation the API
        # noted has always been counted by the service already.
        with self._buffer_lock:
            attributed, self._attributed = self._attributed, Counter()
        now_ops = self._read_ops()
        start, end = self._window_start, _now_iso()
        self._window_start = end
        out: list[AuditEntry] = []
        for (op, dc), total in sorted(now_ops.items()):
            delta = total - self._last_ops.get((op, dc), 0)
            if delta < 0:  # a counter reset (a new cache after rotation)
                delta = total
            by_actor = {a: n for (o, d, a), n in attributed.items() if o == op and d == dc}
            rest = delta - sum(by_actor.values()) - self._carry[(op, dc)]
            self._carry[(op, dc)] = max(0, -rest)
            if rest > 0:
                by_actor[self.actor] = by_actor.get(self.actor, 0) + rest
            for actor, n in sorted(by_actor.items()):
                if n <= 0:
                    continue
                out.append(
                    AuditEntry(
                        action="encryption_performed"
                        if op == "encrypt"
                        else "decryption_performed",
                        actor=actor,
                        outcome="success",
                        time=end,
                        data_class=dc,
                        details={"aggregated": True, "count": n, "since": start},
                    )
                )
        self._last_ops = now_ops
        return out

    def flush(self) -> int:
        """Writes aggregates and buffered events now; returns the records written.

        A sink failure leaves the events buffered (bounded) and marks the sink down; it does
        not raise.
        """
        with self._flush_lock:
            return self._flush()

    def _flush(self) -> int:
        entries = self._aggregates()
        with self._buffer_lock:
            entries = list(self._buffer) + entries
            self._buffer.clear()
            dropped = self._dropped - self._dropped_reported
        if dropped:
            entries.append(
                AuditEntry(
                    action="audit_events_dropped",
                    actor="audit",
                    outcome="failure",
                    details={"count": dropped},
                )
            )
        if not entries:
            return 0
        try:
            written = self._write(entries)
        except AuditSinkUnavailableError:
            with self._buffer_lock:
                keep = [e for e in entries if e.action != "audit_events_dropped"]
                # Put them back in front of anything enqueued meanwhile, within the bound.
                merged = keep + list(self._buffer)
                overflow = max(0, len(merged) - self._max_buffer)
                self._dropped += overflow
                self._buffer = deque(merged[overflow:])
            _log.warning(
                "audit sink %s unavailable; %d event(s) buffered",
                self.sink.description,
                len(self._buffer),
            )
            return 0
        self._dropped_reported += dropped
        return len(written)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:  # the flusher must survive anything
                _log.warning("audit flush failed: %s", type(exc).__name__)

    def close(self) -> None:
        """Stops the flusher, flushes what is buffered and closes the sink."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.flush_interval))
            self._thread = None
        self.flush()
        self.sink.close()

    # -- reading -----------------------------------------------------------------------

    @property
    def sink_up(self) -> bool:
        """Whether the last write (or check) reached the sink."""
        return self._sink_up

    @property
    def buffered(self) -> int:
        """Events waiting in memory."""
        return len(self._buffer)

    @property
    def dropped(self) -> int:
        """Events dropped because the buffer was full while the sink was down."""
        return self._dropped

    def query(self, q: AuditQuery) -> list[AuditRecord]:
        """Records matching ``q`` (see :class:`AuditQuery`)."""
        return self.sink.query(q)

    def tail(self, n: int = 20) -> list[AuditRecord]:
        """The last ``n`` records."""
        return self.sink.tail(n)

    def verify(self) -> VerifyResult:
        """Checks the whole chain; names each edited, deleted, inserted or reordered record.

        Raises:
            AuditSinkUnavailableError: The sink or the chain key cannot be read.
        """
        chain = self._ensure_chain(create=False)
        if chain is None:
            count = sum(1 for _ in self.sink.records())
            if not count:
                return VerifyResult(0, [])
            missing = VerifyProblem(1, "unverifiable", "the audit root key is missing")
            return VerifyResult(count, [missing])
        return _verify(self.sink.records(), chain, self.sink.head())


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _unwrap_root(provider: KeyProvider, stored: str) -> DataKey:
    try:
        doc = json.loads(stored)
        wrapped = base64.b64decode(doc["wrapped"], validate=True)
        key_id = str(doc["key_id"])
    except (ValueError, KeyError, TypeError):
        raise AuditSinkUnavailableError("the stored audit root key is malformed") from None
    return provider.decrypt_data_key(key_id, wrapped, AUDIT_CONTEXT, _ROOT_LIMITS)
