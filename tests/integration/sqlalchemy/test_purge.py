"""``purge_erased`` and ``db purge-erased`` on PostgreSQL: only an erased tenant's rows go.

Rows of three tenants are written through the ORM (row-bound ``FromRow`` column, per-tenant
blind index); one tenant is erased; the purge NULLs or deletes exactly its rows, judged from
the envelope headers. A purge killed with SIGKILL mid-run resumes from its checkpoint and
counts every row once. Each test has a database of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from greenlang_crypto import parse_envelope
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import InvalidArgumentError, KeyStoreUnavailableError
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import PurgeReport, purge_erased
from greenlang_crypto.sqlalchemy._purge import PurgeTarget
from tests.integration.sqlalchemy._jobs import REPO
from tests.integration.sqlalchemy._model_module import model_module, private_engine, raw_rows

pytestmark = pytest.mark.integration

TENANTS = ("t0", "t1", "t2")
PER_TENANT = 12


@pytest.fixture(params=["stored", "branch"])
def erasable(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[EncryptionService]:
    """A service whose tenants can be erased, with stored DEKs or per-tenant branch keys."""
    provider = LocalKeyProvider(data_dir)
    if not provider.versions():
        provider.create_master_key()
    svc = EncryptionService(
        EncryptionServiceConfig(
            data_dir=data_dir, key_reference=request.param, keyring_refresh_seconds=0
        )
    )
    yield svc
    svc.close()


@pytest.fixture
def app(tmp_path: Path, erasable: EncryptionService) -> Iterator[tuple[ModuleType, Engine, str]]:
    with private_engine("glc_purge") as (url, engine), model_module(tmp_path, erasable) as models:
        models.Base.metadata.create_all(engine)
        _fill(models, engine)
        yield models, engine, url


def _fill(models: ModuleType, engine: Engine) -> None:
    """PER_TENANT rows per tenant, interleaved by pk, plus one NULL row."""
    with Session(engine) as s:
        for i in range(PER_TENANT * len(TENANTS)):
            tenant = TENANTS[i % len(TENANTS)]
            s.add(models.Doc(id=i + 1, tenant_id=tenant, email=f"u{i}@{tenant}.example"))
        s.add(models.Doc(id=1000, tenant_id="t1", email=None))
        s.commit()
    with engine.begin() as conn:
        conn.execute(text("UPDATE docs SET email_kv = 1 WHERE email IS NOT NULL"))


def _by_tenant(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {t: [] for t in TENANTS}
    with engine.connect() as conn:
        for row in conn.execute(
            text("SELECT id, tenant_id, email, email_bidx, email_kv FROM docs ORDER BY id")
        ):
            out[row[1]].append(tuple(row))
    return out


def _readable(models: ModuleType, engine: Engine, tenants: tuple[str, ...]) -> None:
    with Session(engine) as s:
        docs = s.scalars(
            select(models.Doc).where(
                models.Doc.tenant_id.in_(tenants), models.Doc.email.is_not(None)
            )
        ).all()
        assert len(docs) == PER_TENANT * len(tenants)
        for d in docs:
            assert d.email == f"u{d.id - 1}@{d.tenant_id}.example"


def test_purge_nulls_only_the_erased_tenant(
    app: tuple[ModuleType, Engine, str], erasable: EncryptionService
) -> None:
    models, engine, _ = app
    before = _by_tenant(engine)
    erasable.erase_tenant("t1")
    dry = purge_erased(engine, models.Doc.email, erasable, dry_run=True, batch_size=5)
    assert (dry.scanned, dry.erased, dry.purged, dry.dry_run) == (36, 12, 0, True)
    assert _by_tenant(engine) == before  # a dry run changes nothing
    seen: list[tuple[int, int]] = []
    report = purge_erased(
        engine,
        models.Doc.email,
        erasable,
        batch_size=5,
        version_column="email_kv",
        progress=lambda r: seen.append((r.scanned, r.purged)),
    )
    assert (report.scanned, report.erased, report.purged, report.finished) == (36, 12, 12, True)
    assert [n for n, _ in seen] == [5, 10, 15, 20, 25, 30, 35, 36]  # after every batch
    assert seen[-1] == (36, 12)
    assert report.not_envelope == report.unreadable_header == 0
    after = _by_tenant(engine)
    # The erased tenant: value, blind index and key version NULL; the rows themselves stay.
    assert [r[0] for r in after["t1"]] == [r[0] for r in before["t1"]]
    assert all(r[2:] == (None, None, None) for r in after["t1"])
    assert after["t0"] == before["t0"] and after["t2"] == before["t2"]
    _readable(models, engine, ("t0", "t2"))
    # A second purge is a new run that finds nothing left.
    again = purge_erased(engine, models.Doc.email, erasable)
    assert (again.scanned, again.erased, again.purged) == (24, 0, 0)
    assert again.run != report.run


def test_purge_deletes_the_erased_tenant_s_rows(
    app: tuple[ModuleType, Engine, str], erasable: EncryptionService
) -> None:
    models, engine, _ = app
    erasable.erase_tenant("t2")
    report = purge_erased(engine, models.Doc.email, erasable, action="delete", batch_size=7)
    assert (report.scanned, report.erased, report.purged) == (36, 12, 12)
    after = _by_tenant(engine)
    assert after["t2"] == []
    assert len(after["t1"]) == PER_TENANT + 1  # the NULL row of t1 is not erased data
    _readable(models, engine, ("t0", "t1"))


def test_values_that_are_not_envelopes_are_left_alone(
    app: tuple[ModuleType, Engine, str], erasable: EncryptionService
) -> None:
    models, engine, _ = app
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO docs (id, tenant_id, email) VALUES (2000, 't1', 'x')"))
        conn.execute(text("INSERT INTO docs (id, tenant_id, email) VALUES (2001, 't1', '\\xfa00')"))
    erasable.erase_tenant("t1")
    report = purge_erased(engine, models.Doc.email, erasable)
    assert (report.erased, report.not_envelope, report.unreadable_header) == (12, 1, 1)
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT count(*) FROM docs WHERE id >= 2000")).scalar()
    assert kept == 2


def test_bad_arguments_change_nothing(
    app: tuple[ModuleType, Engine, str], erasable: EncryptionService
) -> None:
    models, engine, _ = app
    erasable.erase_tenant("t1")
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM docs WHERE email IS NULL"))
        conn.execute(text("ALTER TABLE docs ALTER COLUMN email_bidx SET NOT NULL"))
        conn.execute(text("ALTER TABLE docs ADD COLUMN alt integer UNIQUE"))  # NULLs allowed
    before = raw_rows(engine)
    cases: list[tuple[Any, dict[str, Any], str]] = [
        (models.Doc.email, {}, "docs.email_bidx is NOT NULL: use action 'delete'"),
        (PurgeTarget("nowhere", "email"), {}, "no table 'nowhere'"),
        (PurgeTarget("docs", "mail"), {}, "no column 'mail' in 'docs'"),
        (PurgeTarget("docs", "email", pk="uid"), {}, "no column 'uid'"),
        # Pages are read by `pk > checkpoint`: rows sharing a value with a page's last row
        # would be passed over, so the key must be unique.
        (PurgeTarget("docs", "email", pk="tenant_id"), {}, "docs.tenant_id is not unique"),
        (PurgeTarget("docs", "email", pk="alt"), {}, "docs.alt is not unique and NOT NULL"),
        (PurgeTarget("docs", "tenant_id"), {}, "is not a bytea column"),
        (models.Doc.email, {"version_column": "kv"}, "no column 'kv'"),
        (models.Doc.tenant_id, {}, "not an encrypted column"),
    ]
    for column, kwargs, message in cases:
        with pytest.raises(InvalidArgumentError, match=message):
            purge_erased(engine, column, erasable, **kwargs)
    assert raw_rows(engine) == before
    with engine.connect() as conn:
        assert (
            conn.execute(text("SELECT to_regclass('encryption.glc_purge_runs')")).scalar() is None
        )


def _cli(data_dir: Path, url: str, module: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "greenlang_crypto",
        "--data-dir",
        str(data_dir),
        "db",
        "purge-erased",
        "--model",
        f"{module}:Doc.email",
        "--version-column",
        "email_kv",
        "--url",
        url,
        *extra,
    ]


def _env(models: ModuleType) -> dict[str, str]:
    module_dir = str(Path(str(models.__file__)).parent)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([module_dir, str(REPO / "python")]))


def _waiting_for_a_lock(engine: Engine) -> int:
    """How many sessions of the test's database wait for a lock."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


def test_sigkill_mid_purge_then_resume_counts_every_row_once(
    app: tuple[ModuleType, Engine, str], erasable: EncryptionService, data_dir: Path
) -> None:
    models, engine, url = app
    erasable.erase_tenant("t1")
    argv = _cli(data_dir, url, models.__name__, "--batch-size", "4", "--json")
    # Hold a lock on a row in the middle: the purge commits the batches before it and then
    # waits, mid-run, for as long as the test wants.
    blocker = engine.connect()
    blocker.execute(text("SELECT 1 FROM docs WHERE id = 22 FOR UPDATE"))
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(models)
    )
    assert proc.returncode is None
    try:
        deadline = time.monotonic() + 60
        while not _waiting_for_a_lock(engine):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the purge never reached the locked row"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        blocker.rollback()
        blocker.close()
    with engine.connect() as conn:
        state = conn.execute(
            text("SELECT state, last_pk, scanned, erased, purged FROM encryption.glc_purge_runs")
        ).one()
    assert state[0] == "running" and state[1] == "20"  # five batches of four committed
    assert (state[2], state[3]) == (20, 7)  # t1 holds ids 2, 5, 8, ...: seven up to 20
    assert state[4] == 7
    with engine.connect() as conn:
        nulled = conn.execute(
            text("SELECT count(*) FROM docs WHERE tenant_id = 't1' AND email IS NULL")
        ).scalar()
    assert nulled == 7 + 1  # the committed batches, and the row that was NULL already
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env=_env(models), check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["resumed_after"] == "20"
    assert (report["scanned"], report["erased"], report["purged"]) == (36, 12, 12)
    assert report["finished"] is True
    after = _by_tenant(engine)
    assert all(r[2:] == (None, None, None) for r in after["t1"])
    _readable(models, engine, ("t0", "t2"))


@pytest.mark.parametrize("erasable", ["stored"], indirect=True)
def test_a_lost_connection_mid_batch_is_retried_and_counted_once(
    app: tuple[ModuleType, Engine, str], erasable: EncryptionService, data_dir: Path
) -> None:
    models, engine, url = app
    erasable.erase_tenant("t1")
    argv = _cli(data_dir, url, models.__name__, "--batch-size", "4", "--json")
    blocker = engine.connect()
    blocker.execute(text("SELECT 1 FROM docs WHERE id = 14 FOR UPDATE"))
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(models)
    )
    try:
        deadline = time.monotonic() + 60
        while not _waiting_for_a_lock(engine):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the purge never reached the locked row"
            time.sleep(0.05)
        # The server ends the purge's session in the middle of a batch (as a restart or a
        # failover would): that batch rolls back and is retried on a new connection.
        with engine.connect() as conn:
            ended = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).all()
        assert ended == [(True,)]
    finally:
        blocker.rollback()
        blocker.close()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "retry 1/8" in err
    report = json.loads(out)
    assert (report["scanned"], report["erased"], report["purged"]) == (36, 12, 12)
    assert all(r[2:] == (None, None, None) for r in _by_tenant(engine)["t1"])


# The CLI's own mechanics: one kind of key reference is enough (both are covered above).
@pytest.mark.parametrize("erasable", ["stored"], indirect=True)
def test_two_admins_purging_at_once_share_one_run(
    app: tuple[ModuleType, Engine, str], erasable: EncryptionService, data_dir: Path
) -> None:
    models, engine, url = app
    erasable.erase_tenant("t0")
    argv = _cli(data_dir, url, models.__name__, "--batch-size", "2", "--json")
    # Both must join one run: hold a row until one waits for it and the other waits for the
    # run the first holds, then let them go.
    blocker = engine.connect()
    blocker.execute(text("SELECT 1 FROM docs WHERE id = 8 FOR UPDATE"))
    procs = [
        subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(models)
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        while _waiting_for_a_lock(engine) < 2:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "the purges never met"
            time.sleep(0.05)
    finally:
        blocker.rollback()
        blocker.close()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    reports = [json.loads(o[0]) for o in outs]
    # Each batch was processed by one of them; the totals are the run's, counted once.
    assert len({r["run"] for r in reports}) == 1
    assert all((r["scanned"], r["erased"], r["purged"]) == (36, 12, 12) for r in reports)
    assert all(r[2] is None for r in _by_tenant(engine)["t0"])


# The CLI's own mechanics: one kind of key reference is enough (both are covered above).
@pytest.mark.parametrize("erasable", ["stored"], indirect=True)
def test_the_cli_reports_and_refuses_typed(
    app: tuple[ModuleType, Engine, str], erasable: EncryptionService, data_dir: Path
) -> None:
    models, engine, url = app
    erasable.erase_tenant("t2")
    env = _env(models)
    before = raw_rows(engine)
    dry = subprocess.run(
        _cli(data_dir, url, models.__name__, "--dry-run"),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("docs.email: scanned 36, erased 12, would purge 12 (action null)")
    bad = subprocess.run(
        [*_cli(data_dir, url, models.__name__), "--table", "other"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert bad.returncode == 2
    assert "JobSpecMismatchError" in bad.stderr and "table (--table)" in bad.stderr
    missing = subprocess.run(
        [*_cli(data_dir, url, models.__name__)[:7], "--url", url, "--table", "docs"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert missing.returncode == 2 and "--column" in missing.stderr
    assert raw_rows(engine) == before
    # With flags instead of --model: the same purge.
    flags = subprocess.run(
        [
            *_cli(data_dir, url, models.__name__)[:7],
            "--table",
            "docs",
            "--column",
            "email",
            "--index-column",
            "email_bidx",
            "--action",
            "delete",
            "--url",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert flags.returncode == 0, flags.stderr
    assert "scanned 36, erased 12, purged 12 (action delete)" in flags.stdout
    assert _by_tenant(engine)["t2"] == []


def test_other_tenants_values_keep_their_bytes(
    app: tuple[ModuleType, Engine, str], erasable: EncryptionService
) -> None:
    """Values of other tenants are untouched bytes: their headers still parse the same."""
    models, engine, _ = app
    with engine.connect() as conn:
        heads = {
            i: parse_envelope(bytes(v)).key_version
            for i, v in conn.execute(text("SELECT id, email FROM docs WHERE email IS NOT NULL"))
        }
    erasable.erase_tenant("t0")
    report: PurgeReport = purge_erased(engine, models.Doc.email, erasable)
    assert report.purged == PER_TENANT
    with engine.connect() as conn:
        left = {
            i: parse_envelope(bytes(v)).key_version
            for i, v in conn.execute(text("SELECT id, email FROM docs WHERE email IS NOT NULL"))
        }
    assert left == {i: v for i, v in heads.items() if (i - 1) % 3 != 0}


@pytest.mark.timeout(180)
def test_a_key_store_outage_stops_the_purge_instead_of_skipping_rows(
    tmp_path: Path, data_dir: Path
) -> None:
    # Whether a key was erased is a key-store read. When the key store cannot be reached, the
    # rows of the batch must not be counted as "unreadable header" and passed over (the
    # checkpoint would move past erased rows and the run would report itself finished): the
    # purge stops with the key store's error, and a rerun resumes where it stopped.
    import psycopg

    from tests.conftest import libpq_url, pg_private_database, pg_server_url

    LocalKeyProvider(data_dir).create_master_key()
    with (
        pg_private_database("glc_purge_ks") as store_url,
        private_engine("glc_purge") as (_, engine),
    ):
        svc = EncryptionService(
            EncryptionServiceConfig(
                data_dir=data_dir, key_store_url=store_url, keyring_refresh_seconds=0
            )
        )
        store_db = store_url.rpartition("/")[2].partition("?")[0]
        admin = libpq_url(pg_server_url())
        try:
            with model_module(tmp_path, svc) as models:
                models.Base.metadata.create_all(engine)
                _fill(models, engine)
                before = _by_tenant(engine)
                svc.erase_tenant("t1")
                with psycopg.connect(admin, autocommit=True) as conn:
                    # The key store's server refuses its clients (a failover in progress).
                    conn.execute(f'ALTER DATABASE "{store_db}" ALLOW_CONNECTIONS false')
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (store_db,),
                    )
                try:
                    with pytest.raises(KeyStoreUnavailableError):
                        purge_erased(engine, models.Doc.email, svc, batch_size=5, max_retries=0)
                    assert _by_tenant(engine) == before  # nothing purged, nothing skipped
                finally:
                    with psycopg.connect(admin, autocommit=True) as conn:
                        conn.execute(f'ALTER DATABASE "{store_db}" ALLOW_CONNECTIONS true')
                report = purge_erased(
                    engine, models.Doc.email, svc, batch_size=5, version_column="email_kv"
                )
                assert (report.scanned, report.erased, report.purged) == (36, 12, 12)
                assert report.finished and report.unreadable_header == 0
                assert all(r[2:] == (None, None, None) for r in _by_tenant(engine)["t1"])
        finally:
            svc.close()


@pytest.mark.parametrize("erasable", ["stored"], indirect=True)
def test_a_delete_the_database_refuses_is_a_typed_error_naming_no_rows(
    app: tuple[ModuleType, Engine, str], erasable: EncryptionService
) -> None:
    # Another table references the erased tenant's rows: the database refuses the DELETE.
    # The batch rolls back, and the error is the library's, naming neither SQL nor keys.
    models, engine, _ = app
    erasable.erase_tenant("t2")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE refs (doc_id integer REFERENCES docs (id))"))
        conn.execute(text("INSERT INTO refs VALUES (3)"))  # a t2 row (ids 3, 6, ...)
    before = raw_rows(engine)
    with pytest.raises(InvalidArgumentError, match="refused") as refused:
        purge_erased(engine, models.Doc.email, erasable, action="delete", batch_size=50)
    message = str(refused.value)
    assert "ForeignKeyViolation, constraint refs_doc_id_fkey" in message
    assert "DELETE" not in message and "pks" not in message and "[SQL" not in message
    assert raw_rows(engine) == before


@pytest.mark.parametrize("erasable", ["stored"], indirect=True)
def test_awkward_identifiers_are_quoted_for_the_driver(erasable: EncryptionService) -> None:
    # A percent sign reads as a placeholder to the driver; a quote and capitals need quoting.
    from greenlang_crypto import EncryptionContext

    gone = erasable.encrypt(b"x", EncryptionContext(tenant_id="gone", data_class="pii"))
    kept = erasable.encrypt(b"y", EncryptionContext(tenant_id="kept", data_class="pii"))
    with private_engine("glc_purge_names") as (_, engine):
        with engine.begin() as conn:
            conn.exec_driver_sql('CREATE SCHEMA "App"')
            conn.exec_driver_sql(
                'CREATE TABLE "App"."Do""cs" ("I%%d" int PRIMARY KEY, "e%%mail" bytea)'
            )
            conn.execute(
                text('INSERT INTO "App"."Do""cs" VALUES (1, :g), (2, :k)'), {"g": gone, "k": kept}
            )
        erasable.erase_tenant("gone")
        target = PurgeTarget('App.Do"cs', "e%mail", pk="I%d")
        dry = purge_erased(engine, target, erasable, dry_run=True)
        assert (dry.scanned, dry.erased) == (2, 1)
        report = purge_erased(engine, target, erasable, batch_size=1)
        assert (report.scanned, report.erased, report.purged) == (2, 1, 1)
        with engine.connect() as conn:
            rows = conn.execute(text('SELECT * FROM "App"."Do""cs" ORDER BY 1')).all()
        assert [(r[0], None if r[1] is None else bytes(r[1])) for r in rows] == [
            (1, None),
            (2, kept),
        ]
