"""Helpers shared by the column-job tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, text
from sqlalchemy.dialects.postgresql import BIGINT
from sqlalchemy.engine import Engine

from greenlang_crypto.sqlalchemy import EMAIL, BlindIndex, EncryptedString
from greenlang_crypto.sqlalchemy.migrate import ColumnSpec

REPO = Path(__file__).resolve().parents[3]


def people_table(svc: Any, name: str, md: MetaData, allow_plaintext: bool = True) -> Table:
    """The model of a table being migrated: email is plaintext or envelope (phase 1)."""
    return Table(
        name,
        md,
        Column("id", BIGINT, primary_key=True, autoincrement=False),
        Column("tenant", String(20)),
        Column(
            "email",
            EncryptedString(
                svc, data_class="pii", tenant_id="acme", allow_plaintext=allow_plaintext
            ),
        ),
        Column("email_key_version", Integer),
        Column("email_bidx", BlindIndex("email", normalizer=EMAIL), index=True),
    )


def spec(name: str, **kw: Any) -> ColumnSpec:
    """The job spec matching :func:`people_table`."""
    base: dict[str, Any] = {
        "table": name,
        "column": "email",
        "tenant_id": "acme",
        "version_column": "email_key_version",
        "index_column": "email_bidx",
        "index_normalizer": EMAIL,
    }
    base.update(kw)
    return ColumnSpec(**base)


def fill_plaintext(engine: Engine, name: str, n: int, *, start: int = 0) -> None:
    """Inserts ``n`` plaintext rows (UTF-8 bytes, as a legacy app wrote them)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO {name} (id, tenant, email) "
                "SELECT g, 'acme', convert_to('user' || g || '@example.com', 'UTF8') "
                "FROM generate_series(CAST(:a AS bigint), CAST(:b AS bigint)) AS g"
            ),
            {"a": start, "b": start + n - 1},
        )


def cli(data_dir: Path, url: str, *args: str) -> list[str]:
    """argv of the CLI in a subprocess."""
    return [
        sys.executable,
        "-m",
        "greenlang_crypto",
        "--data-dir",
        str(data_dir),
        "db",
        *args,
        "--url",
        url,
    ]


def job_args(name: str, *extra: str) -> list[str]:
    """CLI arguments of the email job on table ``name``."""
    return [
        "--table",
        name,
        "--column",
        "email",
        "--tenant",
        "acme",
        "--version-column",
        "email_key_version",
        "--index-column",
        "email_bidx",
        "--index-normalizer",
        "email",
        "--no-progress",
        *extra,
    ]


def run_cli(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Runs the CLI to completion."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
