"""What the key store needs to know about re-encryption jobs: whether ranges remain.

Jobs (``greenlang_crypto.sqlalchemy.migrate``) record their ranges in ``glc_job_ranges``,
which may sit next to the key store's tables or in the jobs' own state schema. Ranges still to
be re-encrypted are among the reasons a retirement is unsafe.
"""

from __future__ import annotations

from greenlang_crypto.keys.connection import Database

__all__ = ["unfinished_job_ranges"]


def unfinished_job_ranges(db: Database) -> int:
    """Ranges of re-encryption jobs not yet done (0 when no job table exists).

    One read-only transaction: safe to repeat while the database is unreachable.
    """
    with db.transaction() as cur:
        if db.dialect == "sqlite":
            cur.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'glc_job_ranges'"
            )
            tables = ["glc_job_ranges"] if cur.fetchone() else []
        else:
            tables = []
            # A job keeps its ranges in the state schema it ran with: the migrations' own by
            # default, the key store's, or public.
            candidates = {f"{db.schema}.glc_job_ranges", "encryption.glc_job_ranges"}
            for name in [*sorted(candidates), "public.glc_job_ranges"]:
                cur.execute("SELECT to_regclass(%s)::text", (name,))
                found = cur.fetchone()[0]
                if found is not None and found not in tables:
                    tables.append(found)
        total = 0
        for table in tables:
            cur.execute(f"SELECT COUNT(*) FROM {table} WHERE state <> 'done'")  # noqa: S608
            total += int(cur.fetchone()[0])
        return total
