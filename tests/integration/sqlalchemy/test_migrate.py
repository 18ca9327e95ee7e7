"""Column jobs: lost connections, concurrent app writes, quarantine, verify after write, dry
runs, phase 2, re-encryption and retirement."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import MetaData, create_engine, event, insert, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from greenlang_crypto import parse_envelope
from greenlang_crypto.exceptions import KeyStateError, KeyStoreUnavailableError
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy import SealedValue
from greenlang_crypto.sqlalchemy.migrate import (
    ColumnJob,
    PlaintextFoundError,
    enforce_ciphertext,
    retire_if_clear,
)
from tests.integration.sqlalchemy._jobs import fill_plaintext, people_table, spec

pytestmark = pytest.mark.integration


@pytest.fixture
def people(pg_engine: Engine, service: EncryptionService, table_name: str) -> Any:
    md = MetaData()
    t = people_table(service, table_name, md)
    md.create_all(pg_engine)
    yield t
    md.drop_all(pg_engine)


def _all(engine: Engine, t: Any) -> dict[int, str | None]:
    with engine.connect() as conn:
        return dict(conn.execute(select(t.c.id, t.c.email)).all())


def _raw(engine: Engine, t: Any) -> dict[int, bytes | None]:
    with engine.connect() as conn:
        return {
            i: (None if v is None else bytes(v))
            for i, v in conn.execute(text(f"SELECT id, email FROM {t.name}"))
        }


def test_encrypt_job_dry_run_run_and_idempotent_rerun(
    pg_engine: Engine, service: EncryptionService, people: Any
) -> None:
    fill_plaintext(pg_engine, people.name, 120)
    with pg_engine.begin() as conn:
        conn.execute(
            insert(people),
            [
                {"id": 500, "email": None, "email_bidx": None},
                {"id": 501, "email": "app@x.org", "email_bidx": "app@x.org"},
            ],
        )
    job = ColumnJob(pg_engine, service, spec(people.name), batch_size=25)
    before = job.dry_run()
    assert (before.plaintext, before.null, dict(before.by_key_version)) == (120, 1, {1: 1})
    seen: list[tuple[int, int]] = []
    job.progress = lambda done, left: seen.append((done, left))
    from greenlang_crypto.metrics import reencryption_progress

    reencryption_progress().reset()
    report = job.run()
    assert report.written == 120 and not report.quarantined
    assert seen and seen[-1][1] == 0
    rows, remaining = reencryption_progress().snapshot()
    assert rows.get("success") == 120 and rows.get("skipped") == 2 and remaining == 0
    after = job.dry_run()
    assert (after.plaintext, after.null, dict(after.by_key_version)) == (0, 1, {1: 121})
    assert not after.undecryptable
    values = _all(pg_engine, people)
    assert values[7] == "user7@example.com" and values[500] is None and values[501] == "app@x.org"
    with pg_engine.connect() as conn:
        assert conn.execute(select(people.c.id).where(people.c.email == "USER7@example.com")).all()
        assert (
            conn.execute(
                text(f"SELECT count(*) FROM {people.name} WHERE email_key_version = 1")
            ).scalar()
            == 120
        )
    raw = _raw(pg_engine, people)
    again = ColumnJob(pg_engine, service, spec(people.name), batch_size=25)
    again.reset()
    assert again.run().written == 0  # nothing encrypted twice
    assert _raw(pg_engine, people) == raw


def test_undecryptable_rows_are_quarantined_and_reported(
    pg_engine: Engine, service: EncryptionService, people: Any
) -> None:
    fill_plaintext(pg_engine, people.name, 30)
    ColumnJob(pg_engine, service, spec(people.name), batch_size=10).run()
    raw = _raw(pg_engine, people)
    broken = bytearray(raw[3])
    broken[-1] ^= 1
    with pg_engine.begin() as conn:
        conn.execute(
            update(people).where(people.c.id == 3).values(email=SealedValue(bytes(broken)))
        )
        conn.execute(text(f"UPDATE {people.name} SET email = '\\xff'::bytea WHERE id = 4"))
    service.rotate()
    job = ColumnJob(pg_engine, service, spec(people.name), mode="reencrypt", batch_size=10)
    dry = job.dry_run()
    assert dry.undecryptable == {"DecryptionError": 1}
    report = job.run()
    assert sorted((pk, reason) for pk, reason, _ in report.quarantined) == [
        ("3", "DecryptionError"),
        ("4", "plaintext is not UTF-8"),
    ]
    assert ("3", "DecryptionError", 1) in job.quarantined()
    after = _raw(pg_engine, people)
    assert after[3] == bytes(broken) and after[4] == b"\xff"  # never dropped or overwritten
    assert job.dry_run().by_key_version == {2: 28, 1: 1}


def test_verify_after_write_rolls_back(
    pg_engine: Engine, service: EncryptionService, people: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill_plaintext(pg_engine, people.name, 20)
    job = ColumnJob(pg_engine, service, spec(people.name), batch_size=20)
    real = service.decrypt

    def lying(ciphertext: bytes, *a: Any, **kw: Any) -> bytes:
        return real(ciphertext, *a, **kw) + b"!"

    real_opener = service.value_decryptor

    def lying_opener(*a: Any, **kw: Any) -> Any:
        opener = real_opener(*a, **kw)
        return lambda value: opener(value) + b"!"

    # Both ways the job decrypts: per value, and the one-call opener of a fixed context.
    monkeypatch.setattr(service, "decrypt", lying)
    monkeypatch.setattr(service, "value_decryptor", lying_opener)
    with pytest.raises(KeyStateError, match="verification failed"):
        job.run()
    monkeypatch.undo()
    assert job.dry_run().plaintext == 20  # the whole batch rolled back


def test_dry_run_counts_and_retire_only_at_zero(
    pg_engine: Engine, service: EncryptionService, people: Any
) -> None:
    fill_plaintext(pg_engine, people.name, 40)
    ColumnJob(pg_engine, service, spec(people.name), batch_size=16).run()
    service.rotate()
    with pg_engine.begin() as conn:
        conn.execute(insert(people), [{"id": 900, "email": "v2@x.org", "email_bidx": "v2@x.org"}])
    job = ColumnJob(pg_engine, service, spec(people.name), mode="reencrypt", batch_size=16)
    dry = job.dry_run()
    assert dict(dry.by_key_version) == {1: 40, 2: 1} and dry.rows_below(2) == 40
    with pytest.raises(KeyStateError):
        retire_if_clear([job], 2, delete_stored_deks=True)
    assert service.store.min_decryption_version() == 1
    report = job.run()
    assert report.written == 40
    assert dict(job.dry_run().by_key_version) == {2: 41}
    with pg_engine.connect() as conn:
        assert (
            conn.execute(
                text(f"SELECT count(*) FROM {people.name} WHERE email_key_version = 2")
            ).scalar()
            == 40
        )
    assert retire_if_clear([job], 2, delete_stored_deks=True) == {f"{people.name}.email": 0}
    assert _all(pg_engine, people)[5] == "user5@example.com"


def test_phase_2_forbids_plaintext(
    pg_engine: Engine, service: EncryptionService, people: Any
) -> None:
    fill_plaintext(pg_engine, people.name, 10)
    with pytest.raises(PlaintextFoundError, match="10 row"):
        enforce_ciphertext(pg_engine, spec(people.name))
    strict = ColumnJob(pg_engine, service, spec(people.name), forbid_plaintext=True)
    assert len(strict.run().quarantined) == 10
    ColumnJob(pg_engine, service, spec(people.name), job_name="phase1").run()
    enforce_ciphertext(pg_engine, spec(people.name))
    enforce_ciphertext(pg_engine, spec(people.name))  # idempotent
    with pytest.raises(Exception, match="glc_email_is_envelope"), pg_engine.begin() as conn:
        conn.execute(text(f"INSERT INTO {people.name} (id, email) VALUES (99, 'plain'::bytea)"))


def test_injected_commit_failure_rolls_back_and_retries(
    pg_engine: Engine, service: EncryptionService, people: Any
) -> None:
    fill_plaintext(pg_engine, people.name, 100)
    commits = {"n": 0}

    def fail_third(conn: Any) -> None:
        commits["n"] += 1
        if commits["n"] in (5, 6):
            raise OperationalError("COMMIT", {}, Exception("injected: connection lost"))

    event.listen(pg_engine, "commit", fail_third)
    try:
        job = ColumnJob(pg_engine, service, spec(people.name), batch_size=10, retry_delay=0.001)
        report = job.run()
    finally:
        event.remove(pg_engine, "commit", fail_third)
    assert report.retries == 2 and report.written == 100
    assert job.dry_run().by_key_version == {1: 100}


def test_retries_are_bounded(pg_engine: Engine, service: EncryptionService, people: Any) -> None:
    fill_plaintext(pg_engine, people.name, 30)

    def always(conn: Any) -> None:
        raise OperationalError("COMMIT", {}, Exception("injected"))

    job = ColumnJob(
        pg_engine, service, spec(people.name), batch_size=10, max_retries=2, retry_delay=0.001
    )
    job.ensure_tables()
    event.listen(pg_engine, "commit", always)
    try:
        # The typed error of an unreachable database, with the driver's error as its cause.
        with pytest.raises(KeyStoreUnavailableError) as raised:
            job.run()
    finally:
        event.remove(pg_engine, "commit", always)
    assert isinstance(raised.value.__cause__, OperationalError)
    assert job.dry_run().plaintext == 30  # no partial batch


def test_backend_terminated_mid_batch(
    pg_engine: Engine, pg_url: str, service: EncryptionService, people: Any
) -> None:
    fill_plaintext(pg_engine, people.name, 60)
    killer = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    updates = {"n": 0}

    def kill_on_second_update(conn: Any, cursor: Any, statement: str, *a: Any) -> None:
        if statement.startswith("UPDATE") and " FROM unnest(" in statement:
            updates["n"] += 1
            if updates["n"] == 2:
                pid = conn.connection.dbapi_connection.info.backend_pid
                with killer.connect() as k:
                    # Wait until the backend is gone: termination is asynchronous, and a
                    # busy server could run the UPDATE before it takes effect.
                    k.execute(text("SELECT pg_terminate_backend(:p, 5000)"), {"p": pid})

    event.listen(pg_engine, "before_cursor_execute", kill_on_second_update)
    try:
        job = ColumnJob(pg_engine, service, spec(people.name), batch_size=20, retry_delay=0.01)
        report = job.run()
    finally:
        event.remove(pg_engine, "before_cursor_execute", kill_on_second_update)
        killer.dispose()
    assert report.retries == 1 and report.written == 60
    dry = job.dry_run()
    assert dry.plaintext == 0 and dry.by_key_version == {1: 60} and not dry.undecryptable


def test_concurrent_app_writes_are_never_lost(
    pg_engine: Engine, pg_url: str, service: EncryptionService, people: Any
) -> None:
    fill_plaintext(pg_engine, people.name, 200)
    app = create_engine(pg_url)
    written: dict[int, str] = {}
    lock = threading.Lock()
    counter = {"n": 0}

    def app_writes_between_read_and_write(conn: Any, cursor: Any, statement: str, *a: Any) -> None:
        # The application updates rows of the batch after the job read them: half through
        # the encrypted column type, half as legacy plaintext.
        if not (statement.startswith("UPDATE") and " FROM unnest(" in statement):
            return
        with lock:
            counter["n"] += 1
            base = (counter["n"] - 1) * 20
        if base >= 200:
            return
        with app.begin() as c:
            for i in range(base, base + 20, 4):
                value = f"changed{i}@example.com"
                if i % 8:
                    c.execute(update(people).where(people.c.id == i).values(email=value))
                else:
                    c.execute(
                        text(
                            f"UPDATE {people.name} SET email = convert_to(:v, 'UTF8') WHERE id = :i"
                        ),
                        {"v": value, "i": i},
                    )
                written[i] = value

    event.listen(pg_engine, "before_cursor_execute", app_writes_between_read_and_write)
    try:
        job = ColumnJob(pg_engine, service, spec(people.name), batch_size=20)
        report = job.run()
    finally:
        event.remove(pg_engine, "before_cursor_execute", app_writes_between_read_and_write)
        app.dispose()
    assert report.contended > 0 and not report.quarantined
    values = _all(pg_engine, people)
    assert written and all(values[i] == v for i, v in written.items())
    assert all(values[i] == f"user{i}@example.com" for i in range(200) if i not in written)
    dry = job.dry_run()
    assert dry.plaintext == 0 and not dry.undecryptable
    for env in _raw(pg_engine, people).values():
        assert env is not None and parse_envelope(env).key_version == 1
