"""How many PostgreSQL connections one process holds, directly and through PgBouncer.

64 threads of one process each decrypt a value whose stored DEK that process has not cached
(a fresh process, one context per value), all released at once, so each needs a key-store
read at the same moment. The key store must serve them from one bounded pool: the process
may hold at most the pool size plus the keyring's LISTEN connection, however many threads it
runs. A web server with a large thread pool, times a fleet of instances, would otherwise
exhaust the database's connection slots. The bound also holds while the LISTEN session is
being replaced (it is cut a few times once the pool is full): after a failover every instance
reconnects at once, which is when the slots are scarcest.

Through PgBouncer in transaction mode the same holds for the process's connections to the
bouncer, the bouncer needs no more server connections than that, every read works (no
session state, no server-side prepared statements), and a rotation made by another process
still reaches the instance by polling within the refresh bound: notifications cannot cross a
transaction pooler. Where the pooler is not declared in the configuration, the instance must
find out by itself and keep working the same way: 64 concurrent readers on a few pooled
connections are what makes a server-side prepared statement land, through the pooler, on a
server connection that does not have it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from tests.integration.faults.conftest import REFRESH, Rig, wait_for
from tests.integration.faults.fault_proc import read_log
from tests.pgcluster import pgbouncer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

THREADS = 64
POOL = 3
#: How many times the direct test cuts the keyring's LISTEN session.
LISTEN_CUTS = 4
#: Scheduling slack on top of the refresh bound for the rotation to arrive by polling.
SLACK = 1.0

#: The application name of the test's own sessions, which the counts leave out.
CHECKER = "glc-fault-checker"
BACKENDS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' "
    f"AND backend_type = 'client backend' AND application_name <> '{CHECKER}'"
)


def _backends(conn: psycopg.Connection[Any]) -> int:
    """Client sessions on the ``app`` database other than the test's own."""
    row = conn.execute(BACKENDS).fetchone()
    assert row is not None
    return int(row[0])


def _checker(rig: Rig) -> psycopg.Connection[Any]:
    """A session of the test's own on the cluster (left out of every count)."""
    return psycopg.connect(rig.cluster.url, autocommit=True, application_name=CHECKER)


def _listener(conn: psycopg.Connection[Any]) -> int | None:
    """The backend pid of the keyring's LISTEN session on ``app``, if there is one.

    That session runs nothing after its set-up, so its last statement is its LISTEN or the
    notification that checks it.
    """
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = 'app' "
        f"AND backend_type = 'client backend' AND application_name <> '{CHECKER}' "
        "AND query ~ '(LISTEN|pg_notify)'"
    ).fetchone()
    return None if row is None else int(row[0])


def _sockets_to(pid: int, port: int) -> int:
    """Established TCP connections process ``pid`` has open to ``port`` on this host."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
        count = 0
        for table in ("tcp", "tcp6"):
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                    # State 01 is ESTABLISHED.
                    if fields[3] == "01" and remote_port == port and fields[9] in inodes:
                        count += 1
    except FileNotFoundError:
        return 0  # the process has exited
    return count


@contextmanager
def _peak(sample: Callable[[], int]) -> Iterator[list[int]]:
    """Samples ``sample()`` every 5 ms in a thread for the block; yields the samples."""
    samples: list[int] = []
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            samples.append(sample())
            done.wait(0.005)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join(10)


def _await_reads(rig: Rig, proc: Any) -> None:
    """Returns once every thread of the reader has finished its decrypt."""
    result = rig.out / "threads.json"
    wait_for(lambda: result.exists() or proc.poll() is not None, 60, "the reader hung")
    assert proc.poll() is None, rig.stderr("threads")
    # Keep sampling a moment: connections the reads opened and still hold count too.
    time.sleep(0.5)


def _check_reads(rig: Rig) -> None:
    result = json.loads((rig.out / "threads.json").read_text())
    assert result == {"decrypted": THREADS, "errors": [], "wrong": []}, result


def test_many_threads_share_one_bounded_pool(rig: Rig) -> None:
    rig.run("seed", str(THREADS))
    env = {**rig.env, "GLC_KEY_STORE_POOL_SIZE": str(POOL)}
    with (
        _checker(rig) as conn,
        _checker(rig) as admin,
    ):
        wait_for(lambda: _backends(conn) == 0, 10, "sessions of the set-up are still open")
        # A process opens no connection before its interpreter has started: sampling from
        # right after the spawn sees every one.
        proc = rig.spawn("threads", env=env)
        with _peak(lambda: _backends(conn)) as samples:
            _await_reads(rig, proc)
            # Now that the pool is full, cut the LISTEN session (as a failover or an idle
            # timeout does) a few times: each replacement, however the keyring sets it up,
            # counts against the same bound.
            for _ in range(LISTEN_CUTS):
                wait_for(lambda: _listener(admin) is not None, 15, "no LISTEN session")
                cut = _listener(admin)
                admin.execute("SELECT pg_terminate_backend(%s)", (cut,))

                def replaced(old: int | None = cut) -> bool:
                    return _listener(admin) not in (None, old)

                wait_for(replaced, 15, "the LISTEN session was not replaced")
            time.sleep(0.5)
    rig.stop_all()
    assert proc.returncode == 0, rig.stderr("threads")
    _check_reads(rig)
    assert len(samples) > 20
    # The pool, plus the keyring's LISTEN connection.
    assert max(samples) <= POOL + 1, (max(samples), samples[-20:])
    assert max(samples) >= 1


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "detected"])
def test_through_pgbouncer_in_transaction_mode(rig: Rig, declared: bool) -> None:
    rig.run("seed", str(THREADS))
    with pgbouncer(rig.cluster) as bouncer:
        env = {**rig.env, "GLC_KEY_STORE_URL": bouncer.url, "GLC_KEY_STORE_POOL_SIZE": str(POOL)}
        if declared:
            env["GLC_KEY_STORE_TRANSACTION_POOLER"] = "1"
        with _checker(rig) as conn:
            wait_for(lambda: _backends(conn) == 0, 10, "sessions of the set-up are still open")
            proc = rig.spawn("threads", env=env)
            with (
                _peak(lambda: _backends(conn)) as server,
                _peak(lambda: _sockets_to(proc.pid, bouncer.port)) as client,
            ):
                _await_reads(rig, proc)
        _check_reads(rig)

        # A rotation by another process, straight to PostgreSQL.
        rig.cli_ok("keys", "rotate")
        rotated = time.time()
        log = rig.out / "log-threads.jsonl"
        wait_for(
            lambda: any(r["op"] == "enc" and r["v"] == 2 for r in read_log(log)),
            REFRESH + SLACK + 10,
            "the rotation never reached the instance",
        )
        time.sleep(0.5)
        rig.stop_all()
    assert proc.returncode == 0, rig.stderr("threads")

    records = read_log(log)
    assert not [r for r in records if r["op"] in ("enc_err", "close_err")], records[-3:]
    first_new = min(r["t_end"] for r in records if r["op"] == "enc" and r["v"] == 2)
    assert first_new <= rotated + REFRESH + SLACK, first_new - rotated
    late_old = [r for r in records if r["op"] == "enc" and r["v"] < 2 and r["t"] > first_new]
    assert not late_old, late_old[:3]
    assert len(client) > 20 and max(client) >= 1
    assert max(client) <= POOL + 1, (max(client), client[-20:])
    assert max(server) <= POOL + 1, (max(server), server[-20:])
