"""``serve``, ``token`` and ``audit`` (:mod:`greenlang_crypto.api.commands`), in process.

The server itself runs over real HTTP in ``tests/api/test_http_serve.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jwt
import pytest

from greenlang_crypto import cli
from greenlang_crypto.api import commands
from greenlang_crypto.api.auth import DEV_AUDIENCE, DEV_ISSUER, FLEET_PERMISSION, dev_secret


@pytest.fixture
def data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Path:
    monkeypatch.delenv("GLC_AUDIT_URL", raising=False)
    monkeypatch.delenv("GLC_AUDIT_ANCHORS", raising=False)
    d = tmp_path / "data"
    assert cli.main(["--data-dir", str(d), "init"]) == 0
    capsys.readouterr()
    return d


def _main(capsys: pytest.CaptureFixture[str], data: Path, *args: str) -> tuple[int, str, str]:
    code = cli.main(["--data-dir", str(data), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_token_is_signed_with_the_local_secret(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _main(
        capsys, data, "token", "--tenant", "acme", "--subject", "bob",
        "--permissions", "encryption:encrypt,encryption:decrypt", "--ttl", "60",
    )  # fmt: skip
    assert code == 0, err
    claims = jwt.decode(
        out.strip(),
        dev_secret(data, create=False),
        algorithms=["HS256"],
        audience=DEV_AUDIENCE,
        issuer=DEV_ISSUER,
    )
    assert claims["sub"] == "bob" and claims["tenant_id"] == "acme"
    assert sorted(claims["permissions"]) == ["encryption:decrypt", "encryption:encrypt"]
    assert 0 < claims["exp"] - claims["iat"] <= 60


def test_token_refuses_unknown_and_fleet_with_tenant(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _main(capsys, data, "token", "--permissions", "encryption:everything")
    assert code == 2 and out == ""
    assert "unknown permission(s) ['encryption:everything']" in err
    code, out, err = _main(
        capsys, data, "token", "--tenant", "acme", "--permissions", FLEET_PERMISSION
    )
    assert code == 2 and out == "" and "cannot be combined with --tenant" in err


def test_audit_tail_and_verify(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(capsys, data, "keys", "rotate")[0] == 0
    code, out, err = _main(capsys, data, "audit", "tail", "-n", "5")
    assert code == 0, err
    actions = [json.loads(line)["action"] for line in out.splitlines()]
    assert "key_rotate" in actions
    code, out, err = _main(capsys, data, "audit", "verify")
    assert code == 0, err
    assert out.startswith("ok: ") and "chain intact" in out


def test_audit_verify_refuses_an_unreadable_checkpoint(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _main(capsys, data, "audit", "verify", "--checkpoint", "not a checkpoint")
    assert code == 2 and out == ""
    # The type only: the line given is not echoed.
    assert err == "error: unreadable checkpoint (JSONDecodeError)\n"


def test_serve_names_an_unreadable_key_file_without_starting(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-key.pem"
    code, _, err = _main(capsys, data, "serve", "--port", "1", "--jwt-key-file", str(missing))
    assert code == 2
    assert f"cannot read --jwt-key-file {missing}: No such file or directory" in err


def test_anchor_urls_come_from_the_flag_else_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GLC_AUDIT_ANCHORS", " file:///a , ,stdout")
    assert commands._anchor_urls(argparse.Namespace(anchor=None)) == ["file:///a", "stdout"]
    assert commands._anchor_urls(argparse.Namespace(anchor=["syslog"])) == ["syslog"]


def test_register_adds_the_three_commands() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    commands.register(sub, lambda a: None, lambda a: None)
    assert set(sub.choices) == {"serve", "token", "audit"}
    args = parser.parse_args(["serve"])
    assert (args.host, args.port, args.jwt_algorithms) == ("127.0.0.1", 8080, "RS256")
    args = parser.parse_args(["audit", "tail"])
    assert args.audit_command == "tail" and args.n == 20
