"""SQL sinks: SQLite (the embedded default) and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from greenlang_crypto import _forks
from greenlang_crypto._db import (
    is_data_error,
    open_postgres,
    open_sqlite,
    pg_dsn,
    run_ddl,
    schema_name,
)
from greenlang_crypto.audit.chain import _HEAD_META, ChainKey
from greenlang_crypto.audit.records import AuditEntry, AuditRecord
from greenlang_crypto.audit.sinks.base import AuditQuery, AuditRecordRejectedError
from greenlang_crypto.exceptions import AuditSinkUnavailableError

_PROBE_META = "probe"

#: Tries of one call when the connection turns out dead (a database restart or failover):
#: the first on the dead connection, then on new ones, all within the sink's timeout.
_ATTEMPTS = 3
#: Pause before the second and third try (the server may be finishing its start).
_BACKOFF = (0.1, 0.3)


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
    timeout = 2.0
    _ph = "?"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: Any = None
        _forks.register(self, _forks.STORE)

    def _after_fork_in_child(self) -> None:
        # The parent's connection shares its socket with the parent: dropped, never used or
        # closed here; the child opens its own on first use.
        self._lock = threading.Lock()
        self._conn = None

    # subclass hooks
    def _connect(self) -> Any:
        raise NotImplementedError

    def _begin_write(self, cur: Any) -> None:
        raise NotImplementedError

    def _ddl(self, cur: Any) -> None:
        """Creates the tables once per connection: the ``audit`` group of the migrations."""
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self._ph)

    def _retryable(self, conn: Any) -> bool:
        """Whether a failed call may be tried again on a new connection.

        ``conn`` is the connection it failed on, ``None`` when connecting failed. Never,
        unless a subclass says so.
        """
        return False

    def _get_conn(self) -> Any:
        if self._conn is None:
            conn = self._connect()
            try:
                cur = conn.cursor()
                try:
                    self._ddl(cur)
                    conn.commit()
                finally:
                    cur.close()
            except BaseException:
                # Half set up: closed here, or its socket (or file handle) would leak.
                with contextlib.suppress(Exception):
                    conn.close()
                raise
            self._conn = conn
        return self._conn

    def _reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # A connection the server already dropped may raise on close; it is gone anyway.
            with contextlib.suppress(Exception):
                conn.close()

    def _run(self, fn: Callable[[Any], Any], *, write: bool = False) -> Any:
        with self._lock:
            deadline = time.monotonic() + self.timeout
            attempt = 0
            while True:
                attempt += 1
                conn: Any = None
                committing = False
                try:
                    conn = self._get_conn()
                    cur = conn.cursor()
                    try:
                        if write:
                            self._begin_write(cur)
                        result = fn(cur)
                        committing = True
                        conn.commit()
                        return result
                    except BaseException:
                        with contextlib.suppress(Exception):
                            conn.rollback()
                        raise
                    finally:
                        with contextlib.suppress(Exception):
                            cur.close()
                except AuditSinkUnavailableError:
                    raise
                except Exception as exc:
                    if write and is_data_error(exc):
                        # The store is fine; these values are not. Retrying cannot help.
                        raise AuditRecordRejectedError(
                            f"audit sink {self.description} rejected the record(s) "
                            f"({type(exc).__name__})"
                        ) from exc
                    self._reset()
                    # Once COMMIT was sent its outcome is unknown: trying again could store
                    # the records twice. Before that, the server rolled the work back with
                    # the connection, so it may run again on a new one.
                    if (
                        not committing
                        and attempt < _ATTEMPTS
                        and self._retryable(conn)
                        and time.monotonic() + _BACKOFF[attempt - 1] < deadline
                    ):
                        time.sleep(_BACKOFF[attempt - 1])
                        continue
                    # Locked, timed out, disk full, read-only, connection lost: the caller
                    # decides (fail closed for admin actions, buffer for data-path events).
                    raise AuditSinkUnavailableError(
                        f"audit sink {self.description} unavailable ({type(exc).__name__})"
                    ) from exc

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
        """Writes a probe row in the metadata table (a read-only or full database fails).

        Taking the lock alone is not enough: SQLite grants ``BEGIN IMMEDIATE`` on a read-only
        file, and the health check would then report a sink that cannot store anything as up.
        """

        def work(cur: Any) -> None:
            cur.execute(self._sql("DELETE FROM glc_audit_meta WHERE name = ?"), (_PROBE_META,))
            cur.execute(
                self._sql("INSERT INTO glc_audit_meta (name, value) VALUES (?, ?)"),
                (_PROBE_META, str(time.time())),
            )

        self._run(work, write=True)

    def close(self) -> None:
        """Closes the connection; never raises (a connection the server dropped is fine)."""
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
        # A log this process may read but not write (a read-only mount, an immutable evidence
        # copy) opens read-only, so verify and tail still work and every write is an outage.
        # Autocommit mode: writes open their transaction explicitly (BEGIN IMMEDIATE).
        return open_sqlite(
            self.path, timeout=self.timeout, autocommit=True, read_only_fallback=True
        )

    def _ddl(self, cur: Any) -> None:
        run_ddl(cur, "audit", "sqlite", schema="encryption", lock_id=_PG_LOCK)

    def _begin_write(self, cur: Any) -> None:
        # Take the write lock before reading the tail, so two processes never chain after the
        # same record; SQLite's busy timeout bounds the wait.
        cur.execute("BEGIN IMMEDIATE")


#: Advisory lock id serializing appends (and the DDL at connect) across instances.
_PG_LOCK = 7304118432


class PostgresAuditSink(_SqlAuditSink):
    """PostgreSQL sink (psycopg 3), for several service instances sharing one chain.

    A connection the server dropped (a restart, a failover) is replaced by a new one, and
    the call that found it dead runs again on it, up to three tries within ``timeout``;
    past that the call raises :class:`AuditSinkUnavailableError` (the driver's error is its
    ``__cause__``).

    Args:
        url: ``postgresql://...`` (``postgresql+psycopg://`` is accepted too).
        timeout: Connect, lock and statement timeout in seconds.
    """

    _ph = "%s"

    def __init__(self, url: str, *, timeout: float = 2.0, schema: str = "encryption") -> None:
        super().__init__()
        self.schema = schema_name(schema, "audit")
        self._dsn = pg_dsn(url)
        self.timeout = timeout
        self.description = "postgresql://…@" + self._dsn.split("@")[-1]

    def _connect(self) -> Any:
        return open_postgres(
            self._dsn,
            schema=self.schema,
            connect_timeout=self.timeout,
            statement_timeout=self.timeout,
            what="the PostgreSQL audit sink",
        )

    def _ddl(self, cur: Any) -> None:
        # Tables created before V012 (in `public`) move here (the V012 migration's audit
        # part); the advisory lock serializes instances connecting at once.
        run_ddl(cur, "audit", "postgresql", schema=self.schema, lock_id=_PG_LOCK)

    def _begin_write(self, cur: Any) -> None:
        # One chain across instances: a transaction-scoped advisory lock serializes appends.
        cur.execute(f"SELECT pg_advisory_xact_lock({_PG_LOCK})")

    def _retryable(self, conn: Any) -> bool:
        # A connection PostgreSQL closed (a restart, a failover, an idle timeout) is dropped
        # and the call tried again on a new one, as is a connect that failed while the
        # server comes back; an error on a live connection (a lock or statement timeout) is
        # not: the timeout already spent the wait the caller allows.
        return conn is None or bool(getattr(conn, "closed", False))
