"""The CLI and the SQL audit sink when PostgreSQL goes away, on a private cluster.

A stopped database is an outage, not a bug: each command prints one ``error:`` line (no
traceback) and exits 3, "retry later". The PostgreSQL audit sink reconnects by itself after
the server restarts. The shared test cluster is never touched; each test stops and starts a
cluster of its own (tests/pgcluster.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from greenlang_crypto._core import DataKey
from greenlang_crypto.audit import AuditEntry, PostgresAuditSink
from greenlang_crypto.audit.chain import ChainKey
from greenlang_crypto.exceptions import AuditSinkUnavailableError
from tests.pgcluster import PgCluster, pgbin, private_cluster

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    if pgbin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (scripts/setup.sh installs it)")
        pytest.skip("PostgreSQL is not installed")
    with private_cluster() as c:
        yield c


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "greenlang_crypto", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )


def _outage_line(res: subprocess.CompletedProcess[str], error: str) -> str:
    """Checks exit code 3 and exactly one ``error:`` line naming ``error``; returns it.

    Lines a command prints on purpose beforehand (``warning: ...``) are allowed; a traceback
    or a driver's own multi-line message is not.
    """
    assert res.returncode == 3, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.splitlines()
    assert all(ln.startswith(("error: ", "warning: ")) for ln in lines), res.stderr
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {error}:"), res.stderr
    assert lines[-1] == errors[0]
    return errors[0]


def test_key_store_down_exits_3_with_one_line(cluster: PgCluster, tmp_path: Path) -> None:
    cluster.stop()
    # With a key store URL the embedded-default check does not apply: the first thing the
    # commands need is the key store, which is down.
    env = dict(os.environ, GLC_DATA_DIR=str(tmp_path / "data"), GLC_KEY_STORE_URL=cluster.url)
    env.pop("GLC_AUDIT_URL", None)
    for args in (("keys", "list"), ("status",)):
        _outage_line(_run(env, *args), "KeyStoreUnavailableError")


def test_audit_sink_down_exits_3_and_key_changes_fail_closed(
    cluster: PgCluster, tmp_path: Path
) -> None:
    env = dict(os.environ, GLC_DATA_DIR=str(tmp_path / "data"))
    env.pop("GLC_KEY_STORE_URL", None)
    env.pop("GLC_AUDIT_URL", None)
    assert _run(env, "init").returncode == 0
    env["GLC_AUDIT_URL"] = cluster.url
    assert _run(env, "keys", "rotate").returncode == 0
    cluster.stop()
    for args in (("audit", "verify"), ("audit", "tail"), ("keys", "rotate")):
        _outage_line(_run(env, *args), "AuditSinkUnavailableError")
    # The refused rotation changed nothing; the audit log is whole once the server is back.
    listing = _run(env, "keys", "list")
    assert listing.returncode == 0 and listing.stdout.count("\n") == 2, listing.stdout
    cluster.start()
    verify = _run(env, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_other_databases_down_exit_3(cluster: PgCluster, tmp_path: Path) -> None:
    env = dict(os.environ, GLC_DATA_DIR=str(tmp_path / "data"))
    for name in ("GLC_KEY_STORE_URL", "GLC_AUDIT_URL", "GLC_DATABASE_URL", "GLC_PG_URL"):
        env.pop(name, None)
    assert _run(env, "init").returncode == 0
    cluster.stop()
    url = cluster.url.replace("postgresql://", "postgresql+psycopg://", 1)
    # The migration commands get SQLAlchemy's own OperationalError: main() types it.
    _outage_line(_run(env, "db", "status", "--url", url), "UnavailableError")
    # The compliance report's column check on a database that is down.
    res = _run(env, "verify", "--db", url, "--column", "users.email", "--terraform", str(tmp_path))
    line = _outage_line(res, "UnavailableError")
    assert "--db" in line


def test_postgres_audit_sink_survives_a_restart(cluster: PgCluster) -> None:
    chain = ChainKey.from_root(DataKey.generate())
    sink = PostgresAuditSink(cluster.url)
    try:
        assert [r.seq for r in sink.append([AuditEntry(action="before")], chain)] == [1]
        cluster.restart(3.0)
        # The connection the sink holds died with the server: the write still succeeds,
        # on a new connection.
        assert [r.seq for r in sink.append([AuditEntry(action="after")], chain)] == [2]
        cluster.stop()
        with pytest.raises(AuditSinkUnavailableError) as info:
            sink.append([AuditEntry(action="while-down")], chain)
        assert isinstance(info.value.__cause__, psycopg.OperationalError)
        sink.close()  # a dead connection: closing must not raise
        sink.close()
        cluster.start()
        assert [r.entry.action for r in sink.records()] == ["before", "after"]
        # Dropped again while idle: the next read reconnects too.
        cluster.restart(1.0)
        assert [r.seq for r in sink.tail(5)] == [1, 2]
    finally:
        sink.close()
