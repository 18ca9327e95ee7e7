"""No plaintext and no key in any PostgreSQL log: a cluster of its own that logs every
statement with its bind parameters (``log_statement=all``, ``log_min_duration_statement=0``).

Against it run: the key store, the column types with a blind index (ORM inserts, selects,
lookups), the column jobs through the CLI (phase 1, re-encryption after a rotation with
retirement, phase 2) and pgcrypto mode, which must refuse to run at all on such a server.
Then the server log and everything the clients printed (CLI stdout and stderr, the library's
and SQLAlchemy's DEBUG logs) are searched for every plaintext, in text, hex (how bytea
parameters are logged) and base64, and for the pgcrypto column key: nothing may be found. A
control value bound the same way must be found, so the search itself is shown to work.
"""

from __future__ import annotations

import base64
import glob
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LoggingCluster:
    """A PostgreSQL cluster that logs every statement and its parameters."""

    url: str
    log: Path


def _pgbin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    return Path(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _as_postgres(*argv: str) -> list[str]:
    # initdb refuses to run as root; the cluster belongs to the postgres user then.
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LoggingCluster]:
    pgbin = _pgbin()
    if pgbin is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (CI installs it: scripts/services.sh)")
        pytest.skip("PostgreSQL is not installed")
    base = REPO / ".ci-state"
    base.mkdir(exist_ok=True)
    root = base / f"pg-logall-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    port = _free_port()
    subprocess.run(
        _as_postgres(
            str(pgbin / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--no-sync",
        ),
        check=True,
        capture_output=True,
    )  # fmt: skip
    options = (
        f"-p {port} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c log_statement=all -c log_min_duration_statement=0 -c logging_collector=off "
        "-c log_parameter_max_length=-1 -c log_parameter_max_length_on_error=-1"
    )
    subprocess.run(
        _as_postgres(
            str(pgbin / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "30",
            "-o", options, "start",
        ),
        check=True,
        capture_output=True,
    )  # fmt: skip
    try:
        import psycopg

        admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE leak")
        url = f"postgresql://postgres@127.0.0.1:{port}/leak"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
        yield LoggingCluster(url, log)
    finally:
        subprocess.run(
            _as_postgres(str(pgbin / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def _forms(secret: str) -> list[bytes]:
    """The ways a secret can appear in a log: text, bytea hex, base64."""
    raw = secret.encode()
    return [raw, raw.hex().encode(), base64.b64encode(raw), base64.b64encode(raw).rstrip(b"=")]


def _found(haystack: bytes, secrets: list[str]) -> list[str]:
    return [s for s in secrets if any(form in haystack for form in _forms(s))]


def _cli(data_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    argv = [sys.executable, "-m", "greenlang_crypto", "--data-dir", str(data_dir), *args]
    return subprocess.run(argv, capture_output=True, env=env, timeout=180, check=False)


def test_no_plaintext_or_key_reaches_a_statement_log(
    cluster: LoggingCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg

    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.exceptions import ConfigurationError
    from greenlang_crypto.providers.local import LocalKeyProvider
    from greenlang_crypto.service import EncryptionService
    from greenlang_crypto.sqlalchemy import (
        EMAIL,
        BlindIndex,
        EncryptedString,
        PgcryptoString,
        lookup,
        psycopg_engine_options,
    )

    caplog.set_level(logging.DEBUG)
    tag = uuid.uuid4().hex[:10]
    app_values = [f"app-{tag}-{i}@example.com" for i in range(20)]
    legacy_values = [f"legacy-{tag}-{i}@example.com" for i in range(40)]
    card = f"4111-{tag}-card"
    data_dir = tmp_path / "keys"
    LocalKeyProvider(data_dir).create_master_key()
    sa_url = cluster.url.replace("postgresql://", "postgresql+psycopg://", 1)
    config = EncryptionServiceConfig(
        data_dir=data_dir, key_store_url=cluster.url, keyring_refresh_seconds=0
    )
    svc = EncryptionService(config)

    class Base(DeclarativeBase):
        pass

    class Person(Base):
        __tablename__ = "people"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        email: Mapped[str | None] = mapped_column(
            EncryptedString(svc, data_class="pii", tenant_id="acme", allow_plaintext=True)
        )
        email_bidx: Mapped[bytes | None] = mapped_column(
            BlindIndex("email", normalizer=EMAIL), index=True
        )

    class Payment(Base):
        __tablename__ = "payments"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        card: Mapped[str | None] = mapped_column(PgcryptoString(svc))

    engine = create_engine(sa_url, **psycopg_engine_options())
    try:
        Base.metadata.create_all(engine)
        # The legacy application's plaintext rows, written with this session's statement
        # logging off (a superuser may): they are the job's input, not what is under test.
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute("SET log_statement = 'none'")
            conn.execute("SET log_min_duration_statement = -1")
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO people (id, email) VALUES (%s, %s)",
                    [(1000 + i, v.encode()) for i, v in enumerate(legacy_values)],
                )
        # Column types: ORM inserts, a select, blind-index lookups, a Core select.
        with Session(engine) as s:
            s.add_all(Person(id=i, email=v) for i, v in enumerate(app_values))
            s.commit()
            assert s.get(Person, 3) is not None
            assert [p.id for p in lookup(s, Person.email, app_values[7].upper())] == [7]
            assert [p.id for p in lookup(s, Person.email, legacy_values[0])] == []
        with engine.connect() as conn:
            got = dict(conn.execute(select(Person.id, Person.email)).all())
        assert got[5] == app_values[5] and got[1005] == legacy_values[5]
        # pgcrypto mode refuses to send its key to a server that logs it.
        with Session(engine) as s, pytest.raises(ConfigurationError, match="log_statement"):
            s.add(Payment(id=1, card=card))
            s.commit()
        with engine.connect() as conn:
            with pytest.raises(ConfigurationError):
                conn.execute(select(Payment.card)).all()
            assert conn.execute(text("SELECT count(*) FROM payments")).scalar() == 0
        pgcrypto_key = Payment.__table__.c.card.type._key()
    finally:
        engine.dispose()
        svc.close()

    # The jobs, as an operator runs them.
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO / "python"),
        GLC_KEY_STORE_URL=cluster.url,
        GLC_KEYRING_REFRESH_SECONDS="0",
    )
    env.pop("GLC_AUDIT_URL", None)
    job = ["--table", "people", "--column", "email", "--tenant", "acme", "--no-progress"]
    job += ["--index-column", "email_bidx", "--index-normalizer", "email", "--url", sa_url]
    outputs: list[bytes] = []
    for args in (
        ["db", "encrypt-column", *job],
        ["keys", "rotate"],
        ["db", "reencrypt", *job, "--retire", "--delete-stored-deks"],
        ["db", "encrypt-column", *job, "--phase", "2"],
    ):
        done = _cli(data_dir, env, *args)
        outputs += [done.stdout, done.stderr]
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    with psycopg.connect(cluster.url) as conn:
        rows = conn.execute("SELECT email FROM people").fetchall()
    assert rows and all(bytes(r[0]).startswith(b"\xfa") for r in rows)

    # A control value bound as a parameter: the log must show it, or the search is blind.
    control = f"control-{tag}"
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute("SELECT %s::text", (control,))
        conn.execute("SELECT %s::bytea", (control.encode(),))
    time.sleep(0.2)  # the server writes its log asynchronously to our reads
    server_log = cluster.log.read_bytes()
    assert _found(server_log, [control]) == [control]
    assert control.encode().hex().encode() in server_log  # bytea parameters: hex

    secrets = [*app_values, *legacy_values, card, pgcrypto_key]
    assert _found(server_log, secrets) == []
    client = b"".join(outputs) + caplog.text.encode()
    assert _found(client, secrets) == []
