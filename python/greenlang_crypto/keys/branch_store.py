"""Branch key rows: the wrapped branch keys of each scope, and the log of their changes.

:class:`~greenlang_crypto.keys.branch.BranchKeys` holds this process's view of them (cache,
unwrapping, derivation); this module only reads and writes the rows, on the key store's
database.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from greenlang_crypto._core import random_bytes
from greenlang_crypto.exceptions import KeyStateError, TenantErasingError
from greenlang_crypto.keys.erasures import ERASING, tenant_of_scope
from greenlang_crypto.keys.store import KeyStore

__all__ = ["BranchKeyRecord", "BranchKeyStore"]


@dataclass(frozen=True, slots=True)
class BranchKeyRecord:
    """A branch key row (the key itself only in wrapped form).

    Attributes:
        branch_id: Random 32-bit id written into envelopes.
        scope: The scope (``service``, ``tenant:<id>``, or a mapper's name).
        branch_version: Version within the scope and key version (rotation adds one).
        key_version: Keyring version whose wrapping key wraps it.
        state: ``active`` (new DEKs) or ``decrypt_only`` (rotated away).
        provider: Provider that wrapped it.
        wrapping_key_id: The wrapping key id.
        wrapped: The wrapped branch key.
        created_at: Creation time (UNIX seconds).
    """

    branch_id: int
    scope: str
    branch_version: int
    key_version: int
    state: str
    provider: str
    wrapping_key_id: str
    wrapped: bytes = field(repr=False)
    created_at: float

    def as_json(self) -> dict[str, Any]:
        """A JSON-able form (the wrapped key as hex) for a shared cache."""
        return {
            "branch_id": self.branch_id,
            "scope": self.scope,
            "branch_version": self.branch_version,
            "key_version": self.key_version,
            "state": self.state,
            "provider": self.provider,
            "wrapping_key_id": self.wrapping_key_id,
            "wrapped": self.wrapped.hex(),
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BranchKeyRecord:
        """The inverse of :meth:`as_json`.

        Raises:
            KeyError, ValueError, TypeError: The data is not such a record.
        """
        return cls(
            int(data["branch_id"]),
            str(data["scope"]),
            int(data["branch_version"]),
            int(data["key_version"]),
            str(data["state"]),
            str(data["provider"]),
            str(data["wrapping_key_id"]),
            bytes.fromhex(str(data["wrapped"])),
            float(data["created_at"]),
        )


_COLUMNS = (
    "branch_id, scope, branch_version, key_version, state, provider, wrapping_key_id, wrapped, "
    "created_at"
)


def _record(row: Any) -> BranchKeyRecord:
    return BranchKeyRecord(
        int(row[0]),
        str(row[1]),
        int(row[2]),
        int(row[3]),
        str(row[4]),
        str(row[5]),
        str(row[6]),
        bytes(row[7]),
        float(row[8]),
    )


class BranchKeyStore:
    """Branch key rows in the key store's database (tables from the V013 migration).

    Every change (creation excepted) bumps the keyring epoch in its own transaction and
    records a change row numbered by the new epoch.

    Args:
        store: The key store whose database holds the rows.
    """

    def __init__(self, store: KeyStore) -> None:
        self._db = store.db
        self._changes = store.changes
        self._erasures = store.erasures

    def _changed(self, cur: Any, scope: str, action: str) -> int:
        epoch = self._changes.bump_and_read(cur)
        cur.execute(
            self._db.sql(
                "INSERT INTO glc_branch_key_changes (epoch, scope, action, changed_at) "
                "VALUES (?, ?, ?, ?)"
            ),
            (epoch, scope, action, time.time()),
        )
        return epoch

    def current(self, scope: str, key_version: int) -> BranchKeyRecord | None:
        """The active branch key of ``scope`` under ``key_version`` (None if there is none)."""
        with self._db.transaction() as cur:
            cur.execute(
                self._db.sql(
                    f"SELECT {_COLUMNS} FROM glc_branch_keys WHERE scope = ? "  # noqa: S608
                    "AND key_version = ? AND state = 'active' "
                    "ORDER BY branch_version DESC LIMIT 1"
                ),
                (scope, key_version),
            )
            row = cur.fetchone()
        return None if row is None else _record(row)

    def get(self, branch_id: int) -> BranchKeyRecord | None:
        """One branch key row by id (None when absent, for example deleted)."""
        if not 0 <= branch_id < 2**32:
            return None
        with self._db.transaction() as cur:
            cur.execute(
                self._db.sql(
                    f"SELECT {_COLUMNS} FROM glc_branch_keys WHERE branch_id = ?"  # noqa: S608
                ),
                (branch_id,),
            )
            row = cur.fetchone()
        return None if row is None else _record(row)

    def new_id(self) -> int:
        """A random 32-bit id not in use yet (ids reveal neither volume nor order)."""
        for _ in range(16):
            candidate = int.from_bytes(random_bytes(4), "big")
            # An erased key's id is never reused: its tombstone keeps answering "erased".
            if (
                candidate
                and self.get(candidate) is None
                and not self._erasures.was_erased("branch", candidate)
            ):
                return candidate
        raise KeyStateError("could not allocate a branch key id")

    def insert(self, record: BranchKeyRecord, *, rotate: bool) -> BranchKeyRecord:
        """Stores a new branch key.

        Without ``rotate`` it becomes the scope's first active key, unless another process
        created one first, which is then returned instead (``record`` is discarded). With
        ``rotate`` it replaces the active key, which turns ``decrypt_only``, and the change
        reaches every instance through the keyring.

        Raises:
            TenantErasingError: The scope's tenant is being erased (checked in the same
                serialized transaction, so no branch key of the tenant is stored after its
                erasure began).
        """
        with self._db.transaction(serialized=True) as cur:
            sql = self._db.sql
            tenant = tenant_of_scope(record.scope)
            if tenant is not None:
                cur.execute(
                    sql("SELECT state FROM glc_tenant_erasures WHERE tenant_id = ?"), (tenant,)
                )
                row = cur.fetchone()
                if row is not None and row[0] == ERASING:
                    raise TenantErasingError()
            cur.execute(
                sql(
                    f"SELECT {_COLUMNS} FROM glc_branch_keys WHERE scope = ? "  # noqa: S608
                    "AND key_version = ? ORDER BY branch_version DESC LIMIT 1"
                ),
                (record.scope, record.key_version),
            )
            row = cur.fetchone()
            latest = None if row is None else _record(row)
            if latest is not None and latest.state == "active" and not rotate:
                return latest
            version = 1 if latest is None else latest.branch_version + 1
            if rotate:
                cur.execute(
                    sql(
                        "UPDATE glc_branch_keys SET state = 'decrypt_only' "
                        "WHERE scope = ? AND state = 'active'"
                    ),
                    (record.scope,),
                )
            cur.execute(
                sql(
                    f"INSERT INTO glc_branch_keys ({_COLUMNS}) "  # noqa: S608
                    "VALUES (?, ?, ?, ?, 'active', ?, ?, ?, ?)"
                ),
                (
                    record.branch_id,
                    record.scope,
                    version,
                    record.key_version,
                    record.provider,
                    record.wrapping_key_id,
                    record.wrapped,
                    record.created_at,
                ),
            )
            if rotate:
                self._changed(cur, record.scope, "rotate")
        return BranchKeyRecord(
            record.branch_id,
            record.scope,
            version,
            record.key_version,
            "active",
            record.provider,
            record.wrapping_key_id,
            record.wrapped,
            record.created_at,
        )

    def delete_scope(self, scope: str) -> list[tuple[int, int]]:
        """Deletes every branch key of ``scope``; returns their ``(id, key version)``."""
        with self._db.transaction(serialized=True) as cur:
            sql = self._db.sql
            cur.execute(
                sql("SELECT branch_id, key_version FROM glc_branch_keys WHERE scope = ?"),
                (scope,),
            )
            ids = [(int(r[0]), int(r[1])) for r in cur.fetchall()]
            if ids:
                tenant = tenant_of_scope(scope)
                for branch_id, _version in ids:
                    self._erasures.tombstone(cur, "branch", branch_id, tenant)
                cur.execute(sql("DELETE FROM glc_branch_keys WHERE scope = ?"), (scope,))
                self._changed(cur, scope, "delete")
            return ids

    def erased(self, branch_id: int) -> bool:
        """Whether branch key ``branch_id`` was erased (its tombstone is recorded)."""
        return self._erasures.was_erased("branch", branch_id)

    def was_erased(self, scope: str) -> bool:
        """Whether ``scope``'s branch keys were deleted (erased) at some point.

        (Per key, :meth:`TenantErasures.was_erased` answers from the tombstones.)
        """
        with self._db.transaction() as cur:
            cur.execute(
                self._db.sql(
                    "SELECT 1 FROM glc_branch_key_changes WHERE scope = ? AND action = ? LIMIT 1"
                ),
                (scope, "delete"),
            )
            return cur.fetchone() is not None

    def delete_below(self, min_version: int) -> int:
        """Deletes branch keys of key versions below ``min_version`` (retirement)."""
        with self._db.transaction(serialized=True) as cur:
            cur.execute(
                self._db.sql("DELETE FROM glc_branch_keys WHERE key_version < ?"),
                (min_version,),
            )
            n = int(cur.rowcount)
            if n:
                self._changed(cur, "*", "delete")
            return n

    def oldest_active(self, key_version: int) -> float | None:
        """Creation time of the oldest active branch key under ``key_version`` (None: none)."""
        with self._db.transaction() as cur:
            cur.execute(
                self._db.sql(
                    "SELECT MIN(created_at) FROM glc_branch_keys "
                    "WHERE key_version = ? AND state = 'active'"
                ),
                (key_version,),
            )
            row = cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def scopes_created_before(self, key_version: int, cutoff: float, limit: int) -> list[str]:
        """Up to ``limit`` scopes whose active key under ``key_version`` predates ``cutoff``.

        Oldest first, so a caller working through them in bounded steps never starves one.
        """
        with self._db.transaction() as cur:
            cur.execute(
                self._db.sql(
                    "SELECT scope, MIN(created_at) AS made FROM glc_branch_keys "
                    "WHERE key_version = ? AND state = 'active' GROUP BY scope "
                    "HAVING MAX(created_at) < ? ORDER BY made LIMIT ?"
                ),
                (key_version, cutoff, limit),
            )
            return [str(r[0]) for r in cur.fetchall()]

    def count_by_version(self) -> dict[int, int]:
        """Branch keys per key version."""
        with self._db.transaction() as cur:
            cur.execute("SELECT key_version, COUNT(*) FROM glc_branch_keys GROUP BY key_version")
            return {int(v): int(n) for v, n in cur.fetchall()}

    def iter_all(self, batch_size: int = 500) -> Iterator[list[BranchKeyRecord]]:
        """Every branch key, in batches ordered by id (keyset pagination)."""
        last = -1
        while True:
            with self._db.transaction() as cur:
                cur.execute(
                    self._db.sql(
                        f"SELECT {_COLUMNS} FROM glc_branch_keys "  # noqa: S608
                        "WHERE branch_id > ? ORDER BY branch_id LIMIT ?"
                    ),
                    (last, batch_size),
                )
                rows = [_record(r) for r in cur.fetchall()]
            if not rows:
                return
            yield rows
            last = rows[-1].branch_id

    def replace_wrapped(
        self, branch_id: int, old_wrapped: bytes, new_wrapped: bytes, wrapping_key_id: str
    ) -> bool:
        """Compare-and-swap of a branch key's wrapped form (rewrap)."""
        with self._db.transaction() as cur:
            cur.execute(
                self._db.sql(
                    "UPDATE glc_branch_keys SET wrapped = ?, wrapping_key_id = ?, "
                    "rewrapped_at = ? WHERE branch_id = ? AND wrapped = ?"
                ),
                (new_wrapped, wrapping_key_id, time.time(), branch_id, old_wrapped),
            )
            return bool(cur.rowcount == 1)

    def rewrapped(self) -> None:
        """Announces a completed rewrap (one change row for every scope)."""
        with self._db.transaction(serialized=True) as cur:
            self._changed(cur, "*", "rewrap")

    def changes_since(self, epoch: int) -> list[tuple[int, str, str]]:
        """``(epoch, scope, action)`` of every change after ``epoch``, oldest first."""
        with self._db.transaction() as cur:
            cur.execute(
                self._db.sql(
                    "SELECT epoch, scope, action FROM glc_branch_key_changes "
                    "WHERE epoch > ? ORDER BY epoch"
                ),
                (epoch,),
            )
            return [(int(e), str(s), str(a)) for e, s, a in cur.fetchall()]
