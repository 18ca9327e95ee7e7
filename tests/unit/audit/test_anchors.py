"""Tamper-evidence that survives truncation: checkpoints anchored outside the audit database.

Each attack is what someone with write access to the audit database (but not to the anchor
or the chain key) can do; every one must make ``verify`` fail.
"""

from __future__ import annotations

import io
import os
import sqlite3
from pathlib import Path

import pytest

from greenlang_crypto.audit import (
    AuditLog,
    FileAnchor,
    SqliteAuditSink,
    StreamAnchor,
    open_anchor,
)
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService


def _write_log(data: Path, n: int = 6, **kw: object) -> None:
    """Writes ``n`` key-event records through a service, then closes (which anchors)."""
    if not (data / "master-keys").exists():
        LocalKeyProvider(data).create_master_key()
    audit = AuditLog(SqliteAuditSink(data / "audit.db"), start_thread=False, **kw)  # type: ignore[arg-type]
    svc = EncryptionService.init_local(data)
    audit.attach(svc)
    for i in range(n):
        audit.record("key_accessed", actor="test", outcome="success", details={"i": i})
    audit.flush()
    audit.close()
    svc.close()


def _open(data: Path, **kw: object) -> tuple[AuditLog, EncryptionService]:
    audit = AuditLog(SqliteAuditSink(data / "audit.db"), start_thread=False, **kw)  # type: ignore[arg-type]
    svc = EncryptionService.init_local(data)
    audit.bind(svc)
    return audit, svc


def _problems(data: Path, checkpoint: str | None = None, **kw: object) -> set[str]:
    """The kinds of problem verification names (empty: the log verifies).

    A crash is not a refusal: exceptions propagate and fail the test.
    """
    audit, svc = _open(data, **kw)
    try:
        result = audit.verify(checkpoint)
        assert result.ok == (not result.problems)
        return {p.kind for p in result.problems}
    finally:
        audit.sink.close()
        svc.close()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    _write_log(d)
    assert (d / "audit.db.anchor").exists()
    assert _problems(d) == set()
    return d


def _sql(data: Path, *statements: str) -> None:
    con = sqlite3.connect(data / "audit.db")
    with con:
        for s in statements:
            con.execute(s)
    con.close()


def test_truncating_the_tail_and_rewriting_the_head_is_detected(data: Path) -> None:
    con = sqlite3.connect(data / "audit.db")
    seq, mac = con.execute(
        "SELECT seq, hmac FROM glc_audit ORDER BY seq DESC LIMIT 1 OFFSET 2"
    ).fetchone()
    con.close()
    _sql(
        data,
        f"DELETE FROM glc_audit WHERE seq > {seq}",
        f"UPDATE glc_audit_meta SET value = '{seq}:{mac}' WHERE name LIKE '%head%'",
    )
    assert _problems(data) == {"truncated"}


def test_deleting_every_record_is_detected(data: Path) -> None:
    _sql(data, "DELETE FROM glc_audit")
    assert _problems(data) == {"truncated"}


def test_deleting_the_audit_database_is_detected_and_nothing_is_recreated(data: Path) -> None:
    (data / "audit.db").unlink()
    assert _problems(data) == {"missing"}


def test_editing_one_record_is_detected(data: Path) -> None:
    _sql(data, "UPDATE glc_audit SET actor = 'someone-else' WHERE seq = 2")
    assert _problems(data) == {"edited"}


def test_reordering_records_is_detected(data: Path) -> None:
    _sql(
        data,
        "UPDATE glc_audit SET seq = -1 WHERE seq = 2",
        "UPDATE glc_audit SET seq = 2 WHERE seq = 3",
        "UPDATE glc_audit SET seq = 3 WHERE seq = -1",
    )
    assert _problems(data) == {"edited"}


def test_a_forged_checkpoint_is_rejected(data: Path) -> None:
    anchor = data / "audit.db.anchor"
    lines = anchor.read_text().splitlines()
    # A later head, made up without the chain key: its MAC cannot be right.
    head, sep, tail = lines[-1].partition('"seq":')
    assert sep
    forged = head + sep + "9" + tail
    anchor.write_text("\n".join([*lines, forged]) + "\n")
    assert _problems(data) == {"anchor"}


def test_an_untouched_log_keeps_verifying_as_it_grows(data: Path) -> None:
    _write_log(data, n=3)
    assert _problems(data) == set()
    checkpoints = list(FileAnchor(data / "audit.db.anchor").checkpoints() or [])
    assert len(checkpoints) >= 2
    assert checkpoints[-1].seq > checkpoints[0].seq


def test_stream_anchor_lines_verify_the_log(tmp_path: Path) -> None:
    data = tmp_path / "data"
    out = io.StringIO()
    _write_log(data, anchors=[StreamAnchor(out)])
    line = out.getvalue().strip().splitlines()[-1]
    assert _problems(data, line, anchors=[]) == set()
    assert _problems(data, line.replace('"mac":"', '"mac":"00', 1), anchors=[]) == {"anchor"}
    assert _problems(data, "not a checkpoint", anchors=[]) == {"anchor"}
    _sql(data, "DELETE FROM glc_audit WHERE seq > 2")
    assert _problems(data, line, anchors=[]) == {"truncated"}


def test_anchor_urls(tmp_path: Path) -> None:
    assert isinstance(open_anchor(f"file://{tmp_path}/a.anchor"), FileAnchor)
    assert isinstance(open_anchor("stdout"), StreamAnchor)
    with pytest.raises(Exception):
        open_anchor("ftp://nowhere")


def test_anchor_file_is_private_and_append_only(data: Path) -> None:
    anchor = data / "audit.db.anchor"
    assert (anchor.stat().st_mode & 0o777) == 0o600
    before = anchor.read_text()
    _write_log(data, n=2)
    assert anchor.read_text().startswith(before)


def test_a_record_the_sink_cannot_encode_never_wedges_the_chain(tmp_path: Path) -> None:
    data = tmp_path / "data"
    audit = AuditLog(SqliteAuditSink(data / "audit.db"), start_thread=False)
    svc = EncryptionService.init_local(data)
    audit.attach(svc)
    audit.record("token_used", actor="j\udcf6rg", outcome="success")
    audit.record("key_accessed", actor="test", outcome="success")
    audit.flush()
    assert audit.buffered == 0
    records = audit.tail(10)
    assert any(r.entry.action == "key_accessed" for r in records)
    assert any(r.entry.action == "token_used" for r in records)
    assert all("\udcf6" not in r.entry.actor for r in records)
    assert audit.verify().ok
    audit.close()
    svc.close()
    assert os.path.exists(data / "audit.db")
