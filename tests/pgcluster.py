"""A PostgreSQL cluster of a test's own, which the test may stop, restart and proxy.

Fault tests restart PostgreSQL for real. They must never take down the shared test cluster
(``scripts/services.sh``) under other tests, so each gets a private one: ``initdb`` into a
directory under ``.ci-state/``, a free port on 127.0.0.1, trust authentication, no fsync.
:class:`PgBouncer` puts Debian's pgbouncer in transaction mode in front of such a cluster.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def pgbin() -> Path | None:
    """The newest installed PostgreSQL's bin directory, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    return Path(found[-1]) if found else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _as_postgres(*argv: str) -> list[str]:
    # initdb and postgres refuse to run as root; the cluster belongs to the postgres user.
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)


@dataclass
class PgCluster:
    """A running private cluster with one database, ``app``.

    Attributes:
        port: Its port on 127.0.0.1.
        root: Its directory (data directory and server log inside).
    """

    port: int
    root: Path
    bin: Path
    options: str = ""
    database: str = "app"
    _stopped_at: float | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """``postgresql://`` URL of the ``app`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def data(self) -> Path:
        """The data directory."""
        return self.root / "data"

    def _ctl(self, *args: str, check: bool = True) -> None:
        subprocess.run(
            _as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), *args),
            check=check,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        """Starts the server and waits until it accepts connections."""
        opts = (
            f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c max_connections=200 {self.options}"
        )
        self._ctl("-l", str(self.root / "server.log"), "-w", "-t", "60", "-o", opts, "start")
        self._stopped_at = None

    def stop(self) -> None:
        """Stops the server the way a failover does (``-m fast``: sessions are cut)."""
        self._ctl("-w", "-m", "fast", "stop")
        self._stopped_at = time.monotonic()

    def restart(self, down_seconds: float) -> None:
        """Stops the server, keeps it down ``down_seconds``, and starts it again."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def psql(self, sql: str) -> str:
        """Runs ``sql`` as the superuser on ``app``; returns the unaligned output."""
        out = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d",
             self.database, "-XAtc", sql],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        return out.stdout.strip()

    def destroy(self) -> None:
        """Stops the server (if running) and deletes its files."""
        self._ctl("-m", "immediate", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(*, options: str = "") -> PgCluster:
    """Creates and starts a private cluster with database ``app`` and pgcrypto.

    Raises:
        RuntimeError: PostgreSQL is not installed.
    """
    bindir = pgbin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (scripts/setup.sh installs it)")
    base = REPO / ".ci-state"
    base.mkdir(exist_ok=True)
    root = base / f"pg-fault-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    subprocess.run(
        _as_postgres(
            str(bindir / "initdb"), "-D", str(root / "data"), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--no-sync",
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    cluster = PgCluster(port=free_port(), root=root, bin=bindir, options=options)
    cluster.start()
    cluster.database = "postgres"
    cluster.psql("CREATE DATABASE app")
    cluster.database = "app"
    cluster.psql("CREATE EXTENSION IF NOT EXISTS pgcrypto")
    return cluster


@contextmanager
def private_cluster(*, options: str = "") -> Iterator[PgCluster]:
    """A private cluster for the duration of the block, destroyed afterwards."""
    cluster = start_cluster(options=options)
    try:
        yield cluster
    finally:
        cluster.destroy()


@dataclass
class PgBouncer:
    """Debian's pgbouncer in transaction mode in front of a cluster (trust auth, loopback)."""

    cluster: PgCluster
    port: int
    root: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """``postgresql://`` URL of the cluster's ``app`` database through the bouncer."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.cluster.database}"

    def stop(self) -> None:
        """Stops the bouncer."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@contextmanager
def pgbouncer(cluster: PgCluster, *, pool_size: int = 20) -> Iterator[PgBouncer]:
    """Runs pgbouncer (``pool_mode = transaction``) in front of ``cluster`` for the block.

    Raises:
        RuntimeError: pgbouncer is not installed.
    """
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(exe).exists():
        raise RuntimeError("pgbouncer is not installed (scripts/setup.sh installs it)")
    root = cluster.root / f"bouncer-{uuid.uuid4().hex[:6]}"
    root.mkdir()
    port = free_port()
    (root / "users.txt").write_text('"postgres" ""\n')
    ini = root / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"{cluster.database} = host=127.0.0.1 port={cluster.port} dbname={cluster.database}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {root / 'users.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {pool_size}\n"
        "max_client_conn = 500\nignore_startup_parameters = extra_float_digits\n"
        f"logfile = {root / 'pgbouncer.log'}\npidfile = {root / 'pgbouncer.pid'}\n"
    )
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        for f in root.iterdir():
            shutil.chown(f, "postgres")
    proc = subprocess.Popen(
        _as_postgres(exe, str(ini)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not start; see {root}") from None
            time.sleep(0.05)
    bouncer = PgBouncer(cluster, port, root, proc)
    try:
        yield bouncer
    finally:
        bouncer.stop()
