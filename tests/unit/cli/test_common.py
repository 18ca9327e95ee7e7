"""What every command starts from (:mod:`greenlang_crypto.cli._common`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from greenlang_crypto.cli import _common
from greenlang_crypto.exceptions import ConfigurationError, GreenlangCryptoError


def _args(**kw: object) -> argparse.Namespace:
    values: dict[str, object] = {"config": None, "data_dir": None, "context": None}
    values.update(kw)
    return argparse.Namespace(**values)


def test_context_of_reads_tenant_class_and_pairs() -> None:
    ctx = _common.context_of(
        _args(tenant="acme", data_class="pii", context=["purpose=backup", "empty=", "k=a=b"])
    )
    assert ctx.tenant_id == "acme" and ctx.data_class == "pii"
    assert dict(ctx.extra) == {"purpose": "backup", "empty": "", "k": "a=b"}
    with pytest.raises(GreenlangCryptoError, match="KEY=VALUE, got 'novalue'"):
        _common.context_of(_args(tenant="acme", data_class="pii", context=["novalue"]))


def test_data_dir_overrides_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLC_DATA_DIR", str(tmp_path / "from-env"))
    assert _common.config_of(_args()).data_dir == tmp_path / "from-env"
    cfg = _common.config_of(_args(data_dir=str(tmp_path / "given")))
    assert cfg.data_dir == tmp_path / "given"


def test_config_file_is_read(tmp_path: Path) -> None:
    toml = tmp_path / "glc.toml"
    toml.write_text(f'data_dir = "{tmp_path / "from-file"}"\n')
    assert _common.config_of(_args(config=str(toml))).data_dir == tmp_path / "from-file"


def test_an_uninitialized_default_is_refused_and_left_uncreated(tmp_path: Path) -> None:
    data = tmp_path / "never"
    with pytest.raises(ConfigurationError, match="run `greenlang-crypto init` first"):
        _common.initialized_config(_args(data_dir=str(data)))
    with pytest.raises(ConfigurationError):
        _ = _common.one_shot(_args(data_dir=str(data))).service
    assert not data.exists()


def test_cli_actor_names_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "alice")
    assert _common.cli_actor() == "cli:alice"
    monkeypatch.delenv("USER")
    assert _common.cli_actor().removeprefix("cli:").isdigit()


def test_one_shot_opens_nothing_until_asked(initialized: Path) -> None:
    stack = _common.one_shot(_args(data_dir=str(initialized)))
    assert not stack.opened_service
    assert _common.service_of(_args(data_dir=str(initialized))).primary_version == 1
