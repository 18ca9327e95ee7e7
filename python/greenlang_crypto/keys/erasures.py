"""Tenant erasure records and the tombstones of erased keys (tables from the V015 migration).

Erasing a tenant is two key-state changes (see ``KeyAdmin.erase_tenant``):

1. :meth:`TenantErasures.begin` marks the tenant ``erasing`` and bumps the keyring epoch. Every
   instance that loads that epoch refuses new encryptions for the tenant, and the admin waits
   until every live instance has confirmed it (or fenced itself).
2. :meth:`TenantErasures.complete` deletes, in one transaction, the tenant's stored DEKs and
   its branch keys (scope ``tenant:<id>``), leaves a tombstone per deleted key, marks the
   tenant ``erased`` with a fresh random blind-index salt, and bumps the epoch again.

Both steps run serialized across processes, and :meth:`~TenantErasures.complete` deletes only
while the tenant is still ``erasing``: two admins erasing the same tenant at once join one
erasure, and the slower one finds it done instead of deleting keys made after it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from greenlang_crypto._core import random_bytes
from greenlang_crypto.keys.changes import KeyringChanges
from greenlang_crypto.keys.connection import Database, idempotent

__all__ = [
    "BRANCH_TENANT_PREFIX",
    "ERASED",
    "ERASING",
    "ErasedKeys",
    "TenantErasure",
    "TenantErasures",
    "tenant_of_scope",
]

#: A tenant whose keys are being erased: no instance encrypts for it.
ERASING = "erasing"
#: A tenant whose keys were erased (new encryptions use fresh keys).
ERASED = "erased"
#: Branch-key scopes of one tenant are named with this prefix (the ``tenant`` scope policy).
BRANCH_TENANT_PREFIX = "tenant:"

_COLUMNS = (
    "tenant_id, state, started_epoch, changed_epoch, started_at, erased_at, erasures, index_salt"
)


def tenant_of_scope(scope: str) -> str | None:
    """The tenant a branch-key scope belongs to (``tenant:<id>``), or None for other scopes."""
    if scope.startswith(BRANCH_TENANT_PREFIX):
        return scope[len(BRANCH_TENANT_PREFIX) :]
    return None


@dataclass(frozen=True, slots=True)
class TenantErasure:
    """The erasure record of one tenant.

    Attributes:
        tenant_id: The tenant.
        state: :data:`ERASING` or :data:`ERASED`.
        started_epoch: The keyring epoch at which the current (or last) erasure began.
        changed_epoch: The keyring epoch of the record's last change.
        started_at: When the current (or last) erasure began (UNIX seconds).
        erased_at: When the last erasure completed (None before the first completes).
        erasures: How many erasures of the tenant have completed.
        index_salt: Random bytes mixed into the tenant's blind-index keys since the last
            completed erasure (None before it); each erasure replaces them.
    """

    tenant_id: str
    state: str
    started_epoch: int
    changed_epoch: int
    started_at: float
    erased_at: float | None
    erasures: int
    index_salt: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ErasedKeys:
    """What :meth:`TenantErasures.complete` deleted.

    Attributes:
        dek_ids: Stored DEKs deleted.
        branch_ids: Branch keys deleted, with their key version.
        epoch: The keyring epoch of the completion.
    """

    dek_ids: tuple[int, ...]
    branch_ids: tuple[tuple[int, int], ...]
    epoch: int


def _erasure(row: Any) -> TenantErasure:
    return TenantErasure(
        str(row[0]),
        str(row[1]),
        int(row[2]),
        int(row[3]),
        float(row[4]),
        None if row[5] is None else float(row[5]),
        int(row[6]),
        None if row[7] is None else bytes(row[7]),
    )


class TenantErasures:
    """Erasure records and tombstones of one key store.

    Args:
        db: The key store's database.
        changes: Its change counter (every state change here bumps it).
    """

    def __init__(self, db: Database, changes: KeyringChanges) -> None:
        self.db = db
        self._changes = changes

    def _tenant_context_sql(self) -> str:
        # Stored DEKs written before V015 carry their tenant only inside the context JSON.
        if self.db.dialect == "postgresql":
            return "(context_json::jsonb ->> 'tenant_id')"
        return "json_extract(context_json, '$.tenant_id')"

    def _get(self, cur: Any, tenant_id: str, *, lock: bool = False) -> TenantErasure | None:
        suffix = " FOR UPDATE" if lock and self.db.dialect == "postgresql" else ""
        cur.execute(
            self.db.sql(
                f"SELECT {_COLUMNS} FROM glc_tenant_erasures WHERE tenant_id = ?{suffix}"  # noqa: S608
            ),
            (tenant_id,),
        )
        row = cur.fetchone()
        return None if row is None else _erasure(row)

    @idempotent
    def get(self, tenant_id: str) -> TenantErasure | None:
        """The erasure record of ``tenant_id`` (None when it was never erased)."""
        with self.db.one() as cur:
            return self._get(cur, tenant_id)

    @idempotent
    def erasing(self) -> frozenset[str]:
        """Tenants being erased now (phase 1 done, keys not yet deleted)."""
        with self.db.one() as cur:
            cur.execute(
                self.db.sql("SELECT tenant_id FROM glc_tenant_erasures WHERE state = ?"),
                (ERASING,),
            )
            return frozenset(str(r[0]) for r in cur.fetchall())

    @idempotent
    def last_change(self) -> int:
        """The keyring epoch of the latest erasure change (0 when there was none)."""
        with self.db.one() as cur:
            cur.execute("SELECT MAX(changed_epoch) FROM glc_tenant_erasures")
            row = cur.fetchone()
            return 0 if row is None or row[0] is None else int(row[0])

    def begin(self, tenant_id: str) -> tuple[TenantErasure, bool]:
        """Marks ``tenant_id`` as being erased (phase 1).

        Returns the record and whether this call began the erasure (False: it joined one
        already under way). Beginning bumps the keyring epoch (in the same transaction), so
        every instance learns of it through the keyring's propagation. Not retried
        automatically: a failed commit leaves it unknown whether the tenant is marked, and
        the caller runs the (idempotent) erasure again.
        """
        with self.db.transaction(serialized=True) as cur:
            current = self._get(cur, tenant_id, lock=True)
            if current is not None and current.state == ERASING:
                return current, False
            epoch = self._changes.bump_and_read(cur)
            now = time.time()
            sql = self.db.sql
            if current is None:
                cur.execute(
                    sql(
                        "INSERT INTO glc_tenant_erasures (tenant_id, state, started_epoch, "
                        "changed_epoch, started_at, erasures) VALUES (?, ?, ?, ?, ?, 0)"
                    ),
                    (tenant_id, ERASING, epoch, epoch, now),
                )
            else:
                cur.execute(
                    sql(
                        "UPDATE glc_tenant_erasures SET state = ?, started_epoch = ?, "
                        "changed_epoch = ?, started_at = ? WHERE tenant_id = ?"
                    ),
                    (ERASING, epoch, epoch, now, tenant_id),
                )
            record = self._get(cur, tenant_id)
            assert record is not None
            return record, True

    def complete(
        self, tenant_id: str, branch_scope: str, *, stored: bool = True
    ) -> ErasedKeys | None:
        """Deletes the tenant's keys and marks it erased (phase 2), in one transaction.

        Deletes every stored DEK whose context names ``tenant_id`` and every branch key of
        ``branch_scope``, keeping a tombstone for each, replaces the tenant's blind-index
        salt, and bumps the keyring epoch (with a branch-key change row when branch keys
        went, so instances drop them). Returns None, deleting nothing, when the tenant is
        not being erased (another admin completed the erasure first, or it never began).

        With ``stored=False`` only the branch keys go (``keys branch-delete``): the stored
        DEKs and the blind-index salt stay as they are.
        """
        with self.db.transaction(serialized=True) as cur:
            sql = self.db.sql
            current = self._get(cur, tenant_id, lock=True)
            if current is None or current.state != ERASING:
                return None
            now = time.time()
            dek_ids: tuple[int, ...] = ()
            # Set-based, inside the serialized transaction: no DEK or branch key of the
            # tenant can be added meanwhile (the tenant is "erasing", which their inserts check).
            mine = (
                "FROM glc_deks WHERE tenant_id = ? OR "
                f"(tenant_id IS NULL AND {self._tenant_context_sql()} = ?)"
            )
            if stored:
                cur.execute(sql(f"SELECT dek_id {mine}"), (tenant_id, tenant_id))
                dek_ids = tuple(int(r[0]) for r in cur.fetchall())
            if dek_ids:
                cur.execute(
                    sql(
                        "INSERT INTO glc_erased_keys (kind, key_id, tenant_id, erased_at) "
                        f"SELECT 'stored', dek_id, ?, ? {mine} "
                        "ON CONFLICT (kind, key_id) DO NOTHING"
                    ),
                    (tenant_id, now, tenant_id, tenant_id),
                )
                cur.execute(sql(f"DELETE {mine}"), (tenant_id, tenant_id))
            cur.execute(
                sql("SELECT branch_id, key_version FROM glc_branch_keys WHERE scope = ?"),
                (branch_scope,),
            )
            branch_ids = tuple((int(r[0]), int(r[1])) for r in cur.fetchall())
            for branch_id, _version in branch_ids:
                self.tombstone(cur, "branch", branch_id, tenant_id)
            epoch = self._changes.bump_and_read(cur)
            if branch_ids:
                cur.execute(sql("DELETE FROM glc_branch_keys WHERE scope = ?"), (branch_scope,))
                cur.execute(
                    sql(
                        "INSERT INTO glc_branch_key_changes (epoch, scope, action, changed_at) "
                        "VALUES (?, ?, 'delete', ?)"
                    ),
                    (epoch, branch_scope, now),
                )
            cur.execute(
                sql(
                    "UPDATE glc_tenant_erasures SET state = ?, changed_epoch = ?, erased_at = ?, "
                    "erasures = erasures + 1, index_salt = ? WHERE tenant_id = ?"
                ),
                (ERASED, epoch, now, random_bytes(32) if stored else current.index_salt, tenant_id),
            )
            return ErasedKeys(dek_ids, branch_ids, epoch)

    # -- tombstones ----------------------------------------------------------------------

    def tombstone(self, cur: Any, kind: str, key_id: int, tenant_id: str | None) -> None:
        """Records on ``cur`` (in the caller's transaction) that a key was erased."""
        cur.execute(
            self.db.sql(
                "INSERT INTO glc_erased_keys (kind, key_id, tenant_id, erased_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (kind, key_id) DO NOTHING"
            ),
            (kind, key_id, tenant_id, time.time()),
        )

    @idempotent
    def was_erased(self, kind: str, key_id: int) -> bool:
        """Whether the key ``kind`` (``stored`` or ``branch``) ``key_id`` was erased."""
        if not 0 <= key_id < 2**63:
            return False  # no key ever had such an id (and BIGINT would overflow)
        with self.db.one() as cur:
            cur.execute(
                self.db.sql("SELECT 1 FROM glc_erased_keys WHERE kind = ? AND key_id = ?"),
                (kind, key_id),
            )
            return cur.fetchone() is not None

    @idempotent
    def count_tombstones(self, tenant_id: str) -> int:
        """Erased keys recorded for ``tenant_id``."""
        with self.db.one() as cur:
            cur.execute(
                self.db.sql("SELECT COUNT(*) FROM glc_erased_keys WHERE tenant_id = ?"),
                (tenant_id,),
            )
            row = cur.fetchone()
            return int(row[0]) if row else 0
