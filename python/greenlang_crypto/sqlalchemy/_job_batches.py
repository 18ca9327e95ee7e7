# ruff: noqa: S608
# SQL text here is assembled only from identifiers quoted by the dialect's identifier preparer
# (table, column and schema names from the job spec) and the pk type read from pg_attribute;
# every value travels as a bound parameter.
"""The batches of column jobs: classify rows, CAS-write them, verify, quarantine, checkpoint."""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import TextClause

from greenlang_crypto import parse_envelope
from greenlang_crypto._core import ENVELOPE_MAGIC
from greenlang_crypto.exceptions import GreenlangCryptoError, KeyStateError
from greenlang_crypto.sqlalchemy._common import location_aad, row_aad
from greenlang_crypto.sqlalchemy._job_ranges import _JobTables
from greenlang_crypto.sqlalchemy._job_spec import JobReport, _Row, _Write
from greenlang_crypto.sqlalchemy._job_sql import _LeaseLostError, _value_rows, _version_byte

# Every part of the column jobs logs under the name of the public module, so that one logging
# setting covers a job whichever of its modules speaks.
_log = logging.getLogger("greenlang_crypto.sqlalchemy.migrate")


@dataclass
class _Prepared:
    """A batch read and planned ahead, outside its transaction (see ``_JobBatches._prepare``).

    Attributes:
        after: The checkpoint the read started after; the batch uses it only if the range's
            checkpoint, locked in the batch's transaction, is still this one.
        rows: The rows read.
        writes: Their planned writes (compare-and-swap on each row's xmin at write time).
        bad: Rows that looked bad when read: read and planned again inside the transaction
            before anything is quarantined.
        skipped: Rows that needed nothing.
    """

    after: str
    rows: list[_Row]
    writes: list[_Write]
    bad: list[tuple[_Row, str, int | None]]
    skipped: int


class _JobBatches(_JobTables):
    """The row work of a column job: one batch is one transaction (see ``ColumnJob``)."""

    #: The connection read-ahead uses (``_prepare``, on the job's read-ahead thread).
    _ahead_conn: Connection | None = None
    #: ``_fixed_opener``'s decryptor, made on first use.
    _opener: Callable[[bytes], bytes] | None = None

    # -- classification ------------------------------------------------------------------

    def _aad(self, row: _Row) -> bytes:
        s = self.spec
        if s.bind_row:
            return row_aad(s.table, s.column, row.pk, row.tenant)
        if self._location_aad is None:
            self._location_aad = location_aad(s.table, s.column)
        return self._location_aad

    def _plan_rows(
        self, rows: Sequence[_Row], report: JobReport
    ) -> tuple[list[_Write], list[tuple[_Row, str, int | None]]]:
        """Decides per row: skip, write (encrypt / re-encrypt / re-index) or quarantine.

        Each row is classified and (when it is an envelope that needs work) decrypted on its
        own, so one bad row is quarantined alone; the new envelopes are then sealed in one
        batch call per tenant, and the index values computed in one call per index key.
        """
        svc = self.service
        writes: list[_Write] = []
        bad: list[tuple[_Row, str, int | None]] = []
        # Writes that get a new envelope, per tenant (one seal_batch call each).
        to_seal: dict[str, list[_Write]] = {}
        # The version byte of an index value is public (like an envelope's key version).
        wanted_kv = self._target_index_version or 0
        reencrypt = self.mode == "reencrypt"
        target = self._target_version
        envelope_format = svc.envelope_format
        has_index = self._index is not None
        utf8 = self.spec.kind == "str"
        decrypt = svc.decrypt
        contexts = self._contexts
        # Most columns have one tenant and one binding for every row: look them up once.
        fixed = self.spec.tenant_id
        fixed_ctx = None if fixed is None else contexts.get(fixed)
        fixed_aad = None if self.spec.bind_row else self._aad(rows[0]) if rows else None
        fixed_open = self._fixed_opener() if fixed_ctx is not None and rows else None
        for row in rows:
            value = row.value
            if value is None:
                report.skipped += 1
                continue
            if not value or value[0] != ENVELOPE_MAGIC:  # not an envelope (is_envelope)
                if self.forbid_plaintext:
                    bad.append((row, "plaintext in phase 2", None))
                    continue
                if utf8:
                    try:
                        value.decode("utf-8")
                    except UnicodeDecodeError:
                        bad.append((row, "plaintext is not UTF-8", None))
                        continue
                w = _Write(row, value, None, target, None)
                writes.append(w)
                to_seal.setdefault(row.tenant, []).append(w)
                continue
            try:
                header = parse_envelope(value)
            except GreenlangCryptoError as exc:
                bad.append((row, f"malformed envelope ({type(exc).__name__})", None))
                continue
            # Re-encryption also moves values of an older envelope format (v1, without key
            # commitment) to the one the service writes, even under the target key version.
            needs_key = reencrypt and (
                header.key_version < target or header.version < envelope_format
            )
            idx_stale = has_index and (
                row.index is None or (reencrypt and _version_byte(row.index) != wanted_kv)
            )
            if not needs_key and not idx_stale:
                report.skipped += 1
                continue
            try:
                if fixed_open is not None:
                    plaintext = fixed_open(value)
                else:
                    plaintext = decrypt(
                        value,
                        contexts.get(row.tenant) if fixed_ctx is None else fixed_ctx,
                        associated_data=self._aad(row) if fixed_aad is None else fixed_aad,
                    )
            except GreenlangCryptoError as exc:
                # The error type tells operators a missing or retired key version from a
                # failed tag, using only the key version in the public header.
                bad.append((row, type(exc).__name__, header.key_version))
                continue
            w = _Write(row, plaintext, None, target if needs_key else header.key_version, None)
            writes.append(w)
            if needs_key:
                to_seal.setdefault(row.tenant, []).append(w)
        for tenant, group in to_seal.items():
            sealed = svc.encrypt_batch(
                [w.plaintext for w in group],
                self._contexts.get(tenant),
                associated_data=[self._aad(w.row) for w in group],
            )
            for w, envelope in zip(group, sealed, strict=True):
                w.new_value = envelope
        if has_index and writes:
            for w, index in zip(writes, self._indexes_of(writes), strict=True):
                w.index = index
        return writes, bad

    def _fixed_opener(self) -> Callable[[bytes], bytes] | None:
        """One-call decryption of this column's values when every row shares its context.

        A fixed tenant and no per-row binding: every value opens under one context and one
        associated data, so a cached DEK opens it in a single Rust call (the service's
        ``value_decryptor``), and anything else takes ``decrypt`` with its errors.
        """
        if self.spec.tenant_id is None or self.spec.bind_row:
            return None
        if self._opener is None:
            self._opener = self.service.value_decryptor(
                self._contexts.get(self.spec.tenant_id),
                associated_data=self._aad(_Row(None, "", None, self.spec.tenant_id, None)),
            )
        return self._opener

    def _index_of(self, plaintext: bytes, row: _Row) -> bytes | None:
        if self._index is None:
            return None
        value: str | bytes = plaintext.decode("utf-8") if self.spec.kind == "str" else plaintext
        return bytes(
            self._index.compute(value, tenant_id=row.tenant, version=self._target_index_version)
        )

    def _indexes_of(self, writes: Sequence[_Write]) -> list[bytes]:
        """:meth:`_index_of` of every write: one MAC call per index key (purpose)."""
        index = self._index
        assert index is not None
        version = self._target_index_version
        if version is None:
            version = index.active_versions()[0]
        if self.spec.kind == "str":
            data = index.normalize_many([w.plaintext.decode("utf-8") for w in writes])
        else:
            data = [bytes(w.plaintext) for w in writes]
        if not index.per_tenant:
            # One key for every row.
            key = index._key(version, index.purpose_for(None))
            return list(map(bytes, key.compute_batch(data, index.length, version)))
        groups: dict[str, list[int]] = {}
        for i, w in enumerate(writes):
            groups.setdefault(index.purpose_for(w.row.tenant), []).append(i)
        out: list[bytes] = [b""] * len(writes)
        for purpose, members in groups.items():
            key = index._key(version, purpose)
            macs = key.compute_batch([data[i] for i in members], index.length, version)
            for i, mac in zip(members, macs, strict=True):
                out[i] = bytes(mac)
        return out

    # -- batches -------------------------------------------------------------------------

    def _columns(self, n: dict[str, str]) -> str:
        """The select list of a row read (pk, pk as text, value, tenant, index, xmin)."""
        tenant = f"t.{n['tenant']}" if self.spec.tenant_column else "NULL"
        index = f"t.{n['idx']}" if self.spec.index_column else "NULL"
        return f"t.{n['pk']}, t.{n['pk']}::text, t.{n['col']}, {tenant}, {index}, t.xmin::text"

    def _rows(self, found: Sequence[Sequence[Any]]) -> list[_Row]:
        fixed = self.spec.tenant_id
        return [
            _Row(
                pk,
                pk_text,
                None if value is None else bytes(value),
                fixed if fixed is not None else str(tenant_value),
                None if index_value is None else bytes(index_value),
                str(xmin),
            )
            for pk, pk_text, value, tenant_value, index_value, xmin in found
        ]

    def _select(
        self, conn: Connection, where: str, params: dict[str, Any], *, limit: bool = False
    ) -> list[_Row]:
        n = self._names(conn)
        sql = f"SELECT {self._columns(n)} FROM {n['t']} AS t WHERE {where} ORDER BY t.{n['pk']}"
        if limit:
            sql += f" LIMIT {int(self.batch_size)}"
        return self._rows(_value_rows(conn, sql, params))

    def _lock_and_read(
        self, conn: Connection, range_id: int, hi: str | None
    ) -> tuple[str | None, list[_Row]]:
        """Locks the range's row (proving this worker owns it) and reads its next batch.

        One statement, one round trip: the lock's checkpoint bounds the read. Returns the
        checkpoint and the rows after it.

        Raises:
            _LeaseLostError: The range is no longer this worker's (nothing is locked).
        """
        if self._batch_sql is None:
            n = self._names(conn)
            pk, pk_type = n["pk"], self._pk_sql_type(conn)
            upper = f" AND t.{pk} <= CAST(:hi AS {pk_type})"
            limit = f" ORDER BY t.{pk} LIMIT {int(self.batch_size)}"
            read = f"SELECT {self._columns(n)} FROM {n['t']} AS t WHERE "
            # Two branches, one of which the checkpoint switches off, rather than one
            # "checkpoint IS NULL OR pk > checkpoint" condition: that one could not bound the
            # primary-key index scan, which would then pass every row already done.
            body = (
                f"({read}r.last IS NULL{{upper}}{limit}) UNION ALL "
                f"({read}t.{pk} > CAST(r.last AS {pk_type}){{upper}}{limit})"
            )
            self._batch_sql = {
                bounded: (
                    f"WITH r AS (SELECT COALESCE(last_pk, lo) AS last FROM {n['ranges']} "
                    "WHERE job = :j AND range_id = :i AND owner = :w AND state = 'running' "
                    "FOR UPDATE) "
                    "SELECT r.last, b.* FROM r LEFT JOIN LATERAL ("
                    f"{body.format(upper=upper if bounded else '')}"
                    ") AS b(pk, pk_text, value, tenant, idx, row_xmin) ON true ORDER BY b.pk"
                )
                for bounded in (False, True)
            }
        params: dict[str, Any] = {"j": self.job_name, "i": range_id, "w": self.worker}
        if hi is not None:
            params["hi"] = hi
        found = _value_rows(conn, self._batch_sql[hi is not None], params)
        if not found:
            raise _LeaseLostError(range_id)
        # No row after the checkpoint: the outer join's one row carries the checkpoint only.
        return found[0][0], self._rows([r[1:] for r in found if r[1] is not None])

    # -- read-ahead ----------------------------------------------------------------------

    def _prepare(self, after: str, hi: str | None) -> _Prepared | None:
        """Reads and plans the batch after ``after`` on a connection of its own.

        Runs on the job's read-ahead thread while the current batch writes and commits, so
        the next batch's read, decryption, sealing and index values overlap the database's
        work on this one. No lock is taken: the batch that uses the result locks its range,
        checks the checkpoint is still ``after`` and writes compare-and-swap on each row's
        xmin, so a row changed since is read again inside the transaction. Returns ``None``
        on any failure: the batch then reads and plans for itself, with its retries and its
        errors (a key store outage raised here would otherwise surface on the wrong batch).
        """
        try:
            if self._ahead_conn is None:
                # Autocommit: one read statement, no transaction to begin or commit.
                self._ahead_conn = self.engine.connect().execution_options(
                    isolation_level="AUTOCOMMIT"
                )
            conn = self._ahead_conn
            n = self._names(conn)
            pk, pk_type = n["pk"], self._pk_sql_type(conn)
            where = f"t.{pk} > CAST(:after AS {pk_type})"
            params: dict[str, Any] = {"after": after}
            if hi is not None:
                where += f" AND t.{pk} <= CAST(:hi AS {pk_type})"
                params["hi"] = hi
            rows = self._select(conn, where, params, limit=True)
            local = JobReport(self.job_name)
            writes, bad = self._plan_rows(rows, local) if rows else ([], [])
        except DBAPIError:
            self._drop_ahead()
            return None
        except Exception:  # the batch redoes the work and reports what fails there
            return None
        return _Prepared(after, rows, writes, bad, local.skipped)

    def _drop_ahead(self) -> None:
        conn, self._ahead_conn = self._ahead_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a dead connection: the pool discards it
                conn.close()

    def _lock_checkpoint(self, conn: Connection, range_id: int) -> str | None:
        """Locks the range's row (proving this worker owns it); returns its checkpoint.

        Raises:
            _LeaseLostError: The range is no longer this worker's (nothing is locked).
        """
        n = self._names(conn)
        found = conn.execute(
            text(
                f"SELECT COALESCE(last_pk, lo) FROM {n['ranges']} WHERE job = :j AND "
                "range_id = :i AND owner = :w AND state = 'running' FOR UPDATE"
            ),
            {"j": self.job_name, "i": range_id, "w": self.worker},
        ).first()
        if found is None:
            raise _LeaseLostError(range_id)
        return None if found[0] is None else str(found[0])

    def _write_statement(self, conn: Connection) -> TextClause:
        """The batch's compare-and-swap UPDATE, built once per job.

        One statement text for every batch, so SQLAlchemy's compiled cache, psycopg's query
        cache and the server's prepared statements all serve each one.
        """
        if self._write_sql is None:
            n = self._names(conn)
            pk_type = self._pk_sql_type(conn)
            sets = [f"{n['col']} = COALESCE(v.new_value, t.{n['col']})"]
            if self.spec.version_column:
                sets.append(f"{n['ver']} = v.key_version")
            if self.spec.index_column:
                sets.append(f"{n['idx']} = v.idx")
            returned_index = f"t.{n['idx']}" if self.spec.index_column else "NULL"
            # One array parameter per field, whatever the batch size: a VALUES list of one
            # row per parameter set costs the driver and the server a new parse and plan of
            # a statement thousands of parameters long for every batch.
            self._write_sql = text(
                f"UPDATE {n['t']} AS t SET {', '.join(sets)} "
                f"FROM unnest(CAST(:pks AS {pk_type}[]), CAST(:olds AS xid[]), "
                "CAST(:new_values AS bytea[]), CAST(:key_versions AS integer[]), "
                "CAST(:indexes AS bytea[])) AS v(pk, old, new_value, key_version, idx) "
                f"WHERE t.{n['pk']} = v.pk AND t.xmin = v.old "
                # The same keys once more, as a condition on the table alone: the planner
                # cannot see into the arrays, and without it may join by hashing every row
                # of the table, a scan of the whole table for each batch.
                f"AND t.{n['pk']} = ANY(CAST(:pks AS {pk_type}[])) "
                f"RETURNING t.{n['pk']}::text, t.{n['col']}, {returned_index}"
            )
        return self._write_sql

    def _write(self, conn: Connection, writes: Sequence[_Write]) -> list[_Write]:
        """CAS-updates ``writes``; verifies what was written; returns the rows that lost."""
        if not writes:
            return []
        params = {
            "pks": [w.row.pk_text for w in writes],
            # Compare on the row version (xmin), never on the old value: in phase 1 that is
            # the plaintext, and bound values end up in statement logs and exceptions.
            "olds": [w.row.xmin for w in writes],
            # NULL: only the index changes; the column keeps its value.
            "new_values": [w.new_value for w in writes],
            "key_versions": [w.key_version for w in writes],
            "indexes": [w.index for w in writes],
        }
        # The UPDATE runs through SQLAlchemy (its events, its error handling); the rows it
        # returns, the values as the database now holds them, are fetched from the DBAPI
        # cursor, not through the result object, which would log each row at DEBUG level.
        result = conn.execute(self._write_statement(conn), params)
        try:
            stored_rows = result.cursor.fetchall()
        finally:
            result.close()
        if not stored_rows:
            return list(writes)
        by_pk = {w.row.pk_text: w for w in writes}
        done: set[str] = set()
        decrypt = self.service.decrypt
        contexts = self._contexts
        fixed = self.spec.tenant_id
        fixed_ctx = None if fixed is None else contexts.get(fixed)
        fixed_aad = None if self.spec.bind_row else self._aad(writes[0].row)
        fixed_open = self._fixed_opener()
        same = hmac.compare_digest
        for pk_text, stored, index in stored_rows:
            w = by_pk[pk_text]
            # Verify after write, before the batch commits: what the database now holds
            # (returned by the UPDATE itself, from the row versions it wrote and keeps
            # locked until the commit) decrypts to the plaintext.
            if fixed_open is not None:
                back = fixed_open(bytes(stored))
            else:
                back = decrypt(
                    bytes(stored),
                    contexts.get(w.row.tenant) if fixed_ctx is None else fixed_ctx,
                    associated_data=self._aad(w.row) if fixed_aad is None else fixed_aad,
                )
            if not same(back, w.plaintext):
                raise KeyStateError(f"verification failed for row {pk_text}; batch rolled back")
            if w.index is not None and not same(bytes(index), w.index):
                raise KeyStateError(f"index verification failed for row {pk_text}")
            done.add(pk_text)
        return [w for w in writes if w.row.pk_text not in done]

    def _quarantine(
        self, conn: Connection, bad: Sequence[tuple[_Row, str, int | None]], report: JobReport
    ) -> None:
        n = self._names(conn)
        for row, reason, version in bad:
            conn.execute(
                text(
                    f"INSERT INTO {n['quarantine']} "
                    "(job, table_name, column_name, pk, reason, key_version) "
                    "VALUES (:j, :t, :c, :pk, :r, :v) ON CONFLICT (job, pk) DO UPDATE SET "
                    "reason = EXCLUDED.reason, key_version = EXCLUDED.key_version, "
                    "detected_at = now()"
                ),
                {
                    "j": self.job_name,
                    "t": self.spec.table,
                    "c": self.spec.column,
                    "pk": row.pk_text,
                    "r": reason,
                    "v": version,
                },
            )
            report.quarantined.append((row.pk_text, reason, version))
            _log.warning(
                "quarantined %s.%s pk=%s: %s (key version %s)",
                self.spec.table,
                self.spec.column,
                row.pk_text,
                reason,
                version,
            )

    def _batch(
        self,
        range_id: int,
        hi: str | None,
        report: JobReport,
        prepared: _Prepared | None = None,
        read_ahead: Callable[[str], None] | None = None,
    ) -> tuple[bool, int]:
        """One transaction: renew the lease, read, write, verify, quarantine, checkpoint.

        Args:
            range_id: The range (claimed by this worker).
            hi: Its upper bound (``None``: none).
            report: The run's totals, added to once the batch commits.
            prepared: This batch read and planned ahead (used only if the range's checkpoint
                is still the one it was read after).
            read_ahead: Called with the batch's last primary key when another batch follows,
                before this one writes (to read and plan that one meanwhile).

        Returns:
            Whether the range is finished, and the rows read.

        Raises:
            _LeaseLostError: Another worker holds the range now (nothing was written).
        """
        with self._begin() as conn:
            n = self._names(conn)
            pk_type = self._pk_sql_type(conn)
            local = JobReport(self.job_name)
            # Locking the range's row first proves this worker still owns the range and keeps
            # it until the batch commits: a claim skips locked rows, so nobody takes over the
            # range meanwhile, however long the batch takes. The lease itself is renewed by
            # the checkpoint below, in the same transaction (a renewal at the start would be
            # overwritten by it before anyone could see it). The checkpoint comes from the
            # table, so a range taken back resumes where its last committed batch ended.
            planned: tuple[list[_Write], list[tuple[_Row, str, int | None]]] | None = None
            if prepared is not None:
                last = self._lock_checkpoint(conn, range_id)
                if last == prepared.after:
                    rows = prepared.rows
                    planned = prepared.writes, []
                    local.skipped += prepared.skipped
                    if prepared.bad:
                        # Judged on a read outside this transaction: read them again here
                        # before quarantining anything on a value that may have changed.
                        fresh = self._select(
                            conn,
                            f"t.{n['pk']} = ANY(CAST(:pks AS {pk_type}[]))",
                            {"pks": [row.pk_text for row, _, _ in prepared.bad]},
                        )
                        more, bad_now = self._plan_rows(fresh, local)
                        planned = prepared.writes + more, bad_now
                else:
                    last, rows = self._lock_and_read(conn, range_id, hi)
            else:
                last, rows = self._lock_and_read(conn, range_id, hi)
            if read_ahead is not None and len(rows) >= self.batch_size:
                read_ahead(rows[-1].pk_text)
            if rows:
                writes, bad = planned if planned is not None else self._plan_rows(rows, local)
                lost = self._write(conn, writes)
                # Every CAS round counts the rows it really changed, so the total is exact
                # however many rounds the application's own writes force.
                local.written += len(writes) - len(lost)
                for _ in range(3):
                    if not lost:
                        break
                    # The application changed these rows after they were read: re-read and
                    # decide again on their current values (never overwrite the new value).
                    local.contended += len(lost)
                    fresh = self._select(
                        conn,
                        f"t.{n['pk']} = ANY(CAST(:pks AS {pk_type}[]))",
                        {"pks": [w.row.pk_text for w in lost]},
                    )
                    writes, more_bad = self._plan_rows(fresh, local)
                    bad.extend(more_bad)
                    lost = self._write(conn, writes)
                    local.written += len(writes) - len(lost)
                for w in lost:
                    bad.append((w.row, "concurrent updates (retry the job)", w.key_version))
                self._quarantine(conn, bad, local)
            finished = len(rows) < self.batch_size
            conn.execute(
                text(
                    f"UPDATE {n['ranges']} SET last_pk = :last, processed = processed + :n, "
                    "state = :state, lease_until = clock_timestamp() + "
                    "make_interval(secs => :lease) WHERE job = :j AND range_id = :i"
                ),
                {
                    "last": rows[-1].pk_text if rows else last,
                    "n": len(rows),
                    "state": "done" if finished else "running",
                    "lease": self.lease_seconds,
                    "j": self.job_name,
                    "i": range_id,
                },
            )
        # Only a committed batch counts.
        report.scanned += len(rows)
        report.written += local.written
        report.skipped += local.skipped
        report.contended += local.contended
        report.quarantined.extend(local.quarantined)
        return finished, len(rows)
