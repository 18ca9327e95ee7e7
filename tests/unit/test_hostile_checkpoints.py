"""``audit verify --checkpoint-file`` reads every format the anchors write.

The attacker can write the data directory: they cut the log's tail, re-point its head and
delete the anchor file beside it. What was kept elsewhere exposes the cut, whatever its
form: a copy of a file anchor (JSON lines), the objects of the S3 anchor (one JSON document
each, a single object or a synced prefix), or the stdout/syslog anchor's lines inside a
collector's log (plain, or as a field of JSON log lines). A file that yields no checkpoint
is refused: it must not let the cut log pass as verified.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from greenlang_crypto import cli
from greenlang_crypto.audit import AuditLog, FileAnchor, SqliteAuditSink, StreamAnchor
from greenlang_crypto.audit.records import Checkpoint
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService


@pytest.fixture(autouse=True)
def _no_configured_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLC_AUDIT_URL", raising=False)
    monkeypatch.delenv("GLC_AUDIT_ANCHORS", raising=False)


def _write_log(data: Path, offsite: Path, shipped: io.StringIO, records: int) -> None:
    LocalKeyProvider(data).create_master_key()
    anchors = [FileAnchor(data / "audit.db.anchor"), FileAnchor(offsite), StreamAnchor(shipped)]
    audit = AuditLog(SqliteAuditSink(data / "audit.db"), start_thread=False, anchors=anchors)
    svc = EncryptionService.init_local(data)
    audit.attach(svc)
    for i in range(records):
        audit.record("key_rotate", actor="op", details={"i": i})
        if i % 2:
            audit.checkpoint()  # several checkpoints, as a long-running writer leaves
    audit.close()
    svc.close()


def _cut(data: Path, keep: int) -> None:
    con = sqlite3.connect(data / "audit.db")
    with con:
        seq, mac = con.execute("SELECT seq, hmac FROM glc_audit WHERE seq = ?", (keep,)).fetchone()
        con.execute("DELETE FROM glc_audit WHERE seq > ?", (keep,))
        con.execute("UPDATE glc_audit_meta SET value = ? WHERE name = 'head'", (f"{seq}:{mac}",))
    con.close()
    (data / "audit.db.anchor").unlink()


@pytest.fixture
def attacked(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A log of 6 records anchored three ways, then cut to 4 records."""
    data = tmp_path / "data"
    offsite = tmp_path / "offsite" / "audit.anchor"
    shipped = io.StringIO()
    _write_log(data, offsite, shipped, 6)
    _cut(data, 4)
    return data, offsite, shipped.getvalue().splitlines()


def _verify(capsys: pytest.CaptureFixture[str], data: Path, *files: Path) -> tuple[int, str]:
    argv = ["--data-dir", str(data), "audit", "verify"]
    for f in files:
        argv += ["--checkpoint-file", str(f)]
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


def _as_form(form: str, offsite: Path, lines: list[str], where: Path) -> Path:
    checkpoints = [Checkpoint.from_json(line) for line in offsite.read_text().splitlines()]
    newest = max(checkpoints, key=lambda cp: cp.seq)
    target = where / f"collected-{form}"
    if form == "anchor-copy":
        shutil.copy(offsite, target)
    elif form == "anchor-copy-torn-tail":
        # Copied while the anchor was appending: the last line is cut short.
        text = offsite.read_text()
        target.write_text(text + text.splitlines()[-1][:25])
    elif form == "s3-object":
        target.write_text(newest.to_json())  # an object body, no final newline
    elif form == "s3-prefix":
        target.mkdir()
        for cp in checkpoints:
            (target / f"{cp.seq:020d}-{cp.time}.json").write_text(cp.to_json())
    elif form == "syslog":
        target.write_text(
            "Dec  2 02:00:00 host app[1]: started\n"
            + "".join(f"Dec  2 02:00:01 host app[1]: {line}\n" for line in lines)
            + "Dec  2 02:00:02 host app[1]: other news\n"
        )
    elif form == "container-json-log":
        target.write_text(
            json.dumps({"log": "starting\n", "stream": "stdout"})
            + "\n"
            + "".join(
                json.dumps({"log": line + "\n", "stream": "stdout", "time": "2026-12-02"}) + "\n"
                for line in lines
            )
        )
    else:
        raise AssertionError(form)
    return target


@pytest.mark.parametrize(
    "form",
    [
        "anchor-copy",
        "anchor-copy-torn-tail",
        "s3-object",
        "s3-prefix",
        "container-json-log",
    ],
)
def test_every_anchor_format_exposes_the_cut(
    attacked: tuple[Path, Path, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    form: str,
) -> None:
    data, offsite, lines = attacked
    # Without anything kept elsewhere, the cut log verifies: that is the attack.
    assert _verify(capsys, data)[0] == 0
    code, out = _verify(capsys, data, _as_form(form, offsite, lines, tmp_path))
    assert code == 1, out
    assert "FAILED" in out and "truncated" in out and "seq 6" in out


def test_a_file_without_checkpoints_is_refused(
    attacked: tuple[Path, Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, offsite, _ = attacked
    empty = tmp_path / "emptied.anchor"
    empty.write_bytes(b"")
    unrelated = tmp_path / "unrelated.log"
    unrelated.write_text('Dec  2 02:00:00 host app[1]: started\n{"level": "info"}\n')
    for path in (empty, unrelated):
        code, out = _verify(capsys, data, path)
        assert code == 2, out
        assert "holds no checkpoint" in out and str(path) in out
        assert out.count("\n") == 1 and "Traceback" not in out
    # One good file does not excuse an empty one beside it.
    code, out = _verify(capsys, data, offsite, empty)
    assert code == 2, out
    # A checkpoint line that does not parse, inside the file, is refused too (by number).
    broken = tmp_path / "broken.anchor"
    text = offsite.read_text().splitlines()
    broken.write_text("\n".join([text[0], text[1][:30], *text[2:]]) + "\n")
    code, out = _verify(capsys, data, broken)
    assert code == 2 and "line 2" in out, out
    assert text[1][:30] not in out  # the file's contents are not echoed
    missing = tmp_path / "absent.anchor"
    code, out = _verify(capsys, data, missing)
    assert code == 2 and f"cannot read {missing}" in out, out


def test_an_untouched_log_passes_with_each_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    offsite = tmp_path / "offsite" / "audit.anchor"
    shipped = io.StringIO()
    _write_log(data, offsite, shipped, 6)
    lines = shipped.getvalue().splitlines()
    forms = ["anchor-copy", "s3-object", "s3-prefix", "syslog", "container-json-log"]
    files = [_as_form(form, offsite, lines, tmp_path) for form in forms]
    code, out = _verify(capsys, data, *files)
    assert code == 0, out
    assert "chain intact" in out
