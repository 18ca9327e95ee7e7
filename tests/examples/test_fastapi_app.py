"""``examples/fastapi_app`` end to end, against the real PostgreSQL.

The example is copied to a temporary directory and run as its README says, with ``alembic``
and ``uvicorn`` in subprocesses (each with a timeout, so a hang fails the test):

1. ``alembic upgrade 0001``: the plaintext ``users`` table; users of two tenants are inserted
   with plain SQL, as the application did before encryption (the same address in both);
2. ``alembic upgrade 0002``: every address is now an envelope (key version 1) bound to its
   row, with a per-tenant blind index, and the CHECK constraint refuses plaintext;
3. ``alembic upgrade head``: revision 0003 rotated the data and index keys and re-encrypted
   every row under version 2;
4. the sync or the asyncio app under uvicorn: the users inserted before the migration are
   read and found by e-mail through HTTP, a lookup in one tenant never returns the other
   tenant's user, new users are stored encrypted, and the library's admin API, ``/metrics``
   and ``/healthz`` answer;
5. ``alembic check``: the models and the migrated database agree.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from greenlang_crypto import parse_envelope
from tests.conftest import libpq_url, pg_private_database

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "fastapi_app"
TIMEOUT = 90  # seconds for one alembic command or the server's start

ACME, GLOBEX = "acme", "globex"
# Inserted as plaintext before revision 0002. ANN and ANN_GLOBEX are the same address (up to
# case), in two tenants.
ANN = uuid.UUID("00000000-0000-4000-8000-00000000a001")
BOB = uuid.UUID("00000000-0000-4000-8000-00000000a002")
ZOE = uuid.UUID("00000000-0000-4000-8000-00000000a003")
ANN_GLOBEX = uuid.UUID("00000000-0000-4000-8000-00000000b001")
SEED = {
    ANN: (ACME, "Ann.Lee@Example.com", "Ann"),
    BOB: (ACME, "bob@example.com", "Bob"),
    ZOE: (ACME, "Zoë@Exämple.org", "Zoë"),
    ANN_GLOBEX: (GLOBEX, "ann.lee@example.com", "Ann of Globex"),
}


@dataclass
class Example:
    """The example's copy, its database and its key directory."""

    root: Path
    url: str  # SQLAlchemy URL (postgresql+psycopg://)
    data_dir: Path

    @property
    def env(self) -> dict[str, str]:
        # The test services' GLC_* variables are not the example's configuration.
        env = {k: v for k, v in os.environ.items() if not k.startswith("GLC_")}
        env.update(
            DATABASE_URL=self.url,
            GLC_DATA_DIR=str(self.data_dir),
            PYTHONPATH=os.pathsep.join(
                p for p in (str(REPO / "python"), os.environ.get("PYTHONPATH")) if p
            ),
        )
        return env

    def alembic(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``alembic <args>`` in the example's directory, as the README runs it."""
        try:
            done = subprocess.run(
                [sys.executable, "-m", "alembic", *args],
                cwd=self.root,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"alembic {' '.join(args)} hung for {TIMEOUT} s: {exc.stderr!r}")
        if check and done.returncode != 0:
            pytest.fail(f"alembic {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def sql(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(libpq_url(self.url), autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return list(cur.fetchall()) if cur.description else []

    def stored(self) -> dict[uuid.UUID, tuple[str, bytes, bytes]]:
        """``id -> (tenant, stored email, stored blind index)`` as the database holds them."""
        rows = self.sql("SELECT id, tenant_id, email, email_bidx FROM users")
        return {r[0]: (r[1], bytes(r[2]), bytes(r[3])) for r in rows}


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Example]:
    root = tmp_path / "fastapi_app"
    shutil.copytree(
        EXAMPLE, root, ignore=shutil.ignore_patterns("__pycache__", ".*_cache", ".keys")
    )
    with pg_private_database("glc_example_fastapi", sqlalchemy_url=True) as url:
        yield Example(root, url, tmp_path / "keys")


def seed_plaintext(example: Example) -> None:
    for pk, (tenant, email, name) in SEED.items():
        example.sql(
            "INSERT INTO users (id, tenant_id, email, name) VALUES (%s, %s, %s, %s)",
            pk,
            tenant,
            email,
            name,
        )


def assert_encrypted(example: Example, key_version: int) -> dict[uuid.UUID, bytes]:
    """Every stored address is an envelope of ``key_version``; returns the envelopes."""
    stored = example.stored()
    for pk, (_tenant, email, bidx) in stored.items():
        assert email[0] == 0xFA, (pk, email[:1])
        assert parse_envelope(email).key_version == key_version
        assert bidx[0] == key_version  # the index key version (rotated with the data key)
        if pk in SEED:
            assert SEED[pk][1].encode() not in email
    # Per-tenant index keys: the same address has unrelated index values in two tenants.
    assert stored[ANN][2] != stored[ANN_GLOBEX][2]
    return {pk: email for pk, (_, email, _) in stored.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    base: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def serve(example: Example, tmp_path: Path) -> Iterator[Any]:
    """Starts ``uvicorn app.<module>:app`` for the example; stops it at the end."""
    servers: list[Server] = []

    def start(module: str) -> Server:
        port = free_port()
        log = tmp_path / f"uvicorn-{module}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                # As the README runs it: no access log, which would record the addresses
                # in /users/by-email query strings.
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    f"app.{module}:app",
                    "--port",
                    str(port),
                    "--no-access-log",
                ],
                cwd=example.root,
                env=example.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        server = Server(f"http://127.0.0.1:{port}", proc, log)
        servers.append(server)
        deadline = time.monotonic() + TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"uvicorn exited with {proc.returncode}:\n{server.output()}")
            try:
                if httpx.get(f"{server.base}/healthz", timeout=2).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"uvicorn not ready in {TIMEOUT} s:\n{server.output()}")
            time.sleep(0.1)

    yield start
    for server in servers:
        server.proc.send_signal(signal.SIGINT)
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=5)


def ids(users: list[dict[str, Any]]) -> set[uuid.UUID]:
    return {uuid.UUID(u["id"]) for u in users}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("module", ["main", "main_async"])
def test_migrate_serve_and_check(example: Example, serve: Any, module: str) -> None:
    example.alembic("upgrade", "0001")
    seed_plaintext(example)

    encrypted = example.alembic("upgrade", "0002")
    assert "encrypt of users.email" in encrypted.stderr
    phase_one = assert_encrypted(example, key_version=1)
    with pytest.raises(psycopg.errors.CheckViolation, match="glc_email_is_envelope"):
        example.sql(
            "INSERT INTO users (id, tenant_id, email, name) VALUES (%s, 'acme', %s, 'x')",
            uuid.uuid4(),
            b"plain@example.com",
        )

    upgraded = example.alembic("upgrade", "head")
    assert "reencrypt of users.email" in upgraded.stderr
    phase_two = assert_encrypted(example, key_version=2)
    assert all(phase_two[pk] != phase_one[pk] for pk in SEED)

    server = serve(module)
    with httpx.Client(base_url=server.base, timeout=30) as http:
        # The rows written as plaintext before the migration read back through the app.
        for pk, (tenant, email, name) in SEED.items():
            got = http.get(f"/users/{pk}")
            assert got.status_code == 200, got.text
            assert got.json() == {"id": str(pk), "tenant_id": tenant, "email": email, "name": name}

        # Found by e-mail, normalized as the blind index normalizes, in their tenant only.
        def by_email(tenant: str, email: str) -> set[uuid.UUID]:
            found = http.get("/users/by-email", params={"tenant_id": tenant, "email": email})
            assert found.status_code == 200, found.text
            return ids(found.json())

        assert by_email(ACME, "  ANN.LEE@example.COM ") == {ANN}
        assert by_email(GLOBEX, "Ann.Lee@Example.com") == {ANN_GLOBEX}
        assert by_email(ACME, "zoë@exämple.org") == {ZOE}
        assert by_email("initech", "ann.lee@example.com") == set()
        assert by_email(ACME, "nobody@example.com") == set()

        # New users: stored encrypted under the rotated key; one address per tenant.
        created = http.post(
            "/users", json={"tenant_id": ACME, "email": "Carol@Example.com", "name": "Carol"}
        )
        assert created.status_code == 201, created.text
        carol = uuid.UUID(created.json()["id"])
        again = http.post(
            "/users", json={"tenant_id": ACME, "email": " carol@example.com", "name": "C2"}
        )
        assert again.status_code == 409, again.text
        other = http.post(
            "/users", json={"tenant_id": GLOBEX, "email": "carol@example.com", "name": "Carol G"}
        )
        assert other.status_code == 201, other.text
        carol_globex = uuid.UUID(other.json()["id"])
        assert by_email(ACME, "carol@example.com") == {carol}
        assert by_email(GLOBEX, "CAROL@example.com") == {carol_globex}
        assert http.get(f"/users/{carol}").json()["email"] == "Carol@Example.com"
        assert http.get(f"/users/{uuid.uuid4()}").status_code == 404

        # The library's routers, mounted on the app.
        assert http.get("/api/v1/encryption/keys").status_code == 401
        token = _admin_token(example.data_dir)
        keys = http.get("/api/v1/encryption/keys", headers={"Authorization": f"Bearer {token}"})
        assert keys.status_code == 200, keys.text
        assert keys.json()["primary_version"] == 2
        metrics = http.get("/metrics")
        assert metrics.status_code == 200
        assert 'gl_encryption_operations_total{data_class="pii",operation="decrypt"' in (
            metrics.text
        )

    stored = example.stored()
    for pk in (carol, carol_globex):
        envelope = stored[pk][1]
        assert envelope[0] == 0xFA and parse_envelope(envelope).key_version == 2
        assert b"arol@" not in envelope
    assert stored[carol][2] != stored[carol_globex][2]

    done = example.alembic("check")
    assert "No new upgrade operations detected" in done.stdout + done.stderr

    # No address reached a log: the migrations' output (the jobs' reports) or the server's.
    logs = "".join(
        (encrypted.stdout, encrypted.stderr, upgraded.stdout, upgraded.stderr, server.output())
    )
    for _, email, _ in SEED.values():
        assert email.casefold() not in logs.casefold()
    assert "carol@" not in logs.casefold()


def _admin_token(data_dir: Path) -> str:
    from greenlang_crypto.api import dev_secret, mint_token

    return mint_token(
        dev_secret(data_dir, create=False),
        subject="example-test",
        permissions=["encryption:admin", "encryption:fleet"],
    )


@pytest.mark.timeout(300)
def test_downgrade_restores_the_plaintext_and_upgrade_runs_again(example: Example) -> None:
    example.alembic("upgrade", "0001")
    seed_plaintext(example)
    example.alembic("upgrade", "head")
    assert_encrypted(example, key_version=2)

    example.alembic("downgrade", "0001")
    rows = example.sql("SELECT id, tenant_id, email, name FROM users")
    assert {r[0]: tuple(r[1:]) for r in rows} == SEED
    columns = example.sql(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'users' ORDER BY ordinal_position"
    )
    assert ("email", "character varying") in columns
    assert all(name != "email_bidx" for name, _ in columns)

    # Upgrading again encrypts the restored plaintext; the revision rotates once more.
    example.alembic("upgrade", "head")
    assert_encrypted(example, key_version=3)
    example.alembic("check")
