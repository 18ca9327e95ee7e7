"""The key store's probe of re-encryption job ranges on SQLite."""

from __future__ import annotations

from pathlib import Path

from greenlang_crypto.keys.connection import Database, sqlite_connector
from greenlang_crypto.keys.jobs import unfinished_job_ranges


def test_ranges_not_done_are_counted_and_no_table_counts_none(tmp_path: Path) -> None:
    path = str(tmp_path / "keystore.db")
    db = Database(sqlite_connector(path), "sqlite", "test", retry_seconds=0.5)
    db.migrate()
    assert unfinished_job_ranges(db) == 0
    with db.transaction() as cur:
        cur.execute("CREATE TABLE glc_job_ranges (job TEXT, state TEXT)")
        cur.executemany(
            "INSERT INTO glc_job_ranges VALUES (?, ?)",
            [("j", "done"), ("j", "pending"), ("k", "running")],
        )
    assert unfinished_job_ranges(db) == 2
    db.close()
