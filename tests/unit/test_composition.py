"""What the application opens, and on what (:mod:`greenlang_crypto.composition`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenlang_crypto import EncryptionContext, composition
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import ConfigurationError
from greenlang_crypto.providers.local import LocalKeyProvider


def _local(data: Path) -> EncryptionServiceConfig:
    return EncryptionServiceConfig(data_dir=data)


def test_audit_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(composition.AUDIT_URL_ENV, raising=False)
    assert composition.audit_url_from_env() is None
    monkeypatch.setenv(composition.AUDIT_URL_ENV, "")
    assert composition.audit_url_from_env() is None
    monkeypatch.setenv(composition.AUDIT_URL_ENV, "jsonl:///x/audit.jsonl")
    assert composition.audit_url_from_env() == "jsonl:///x/audit.jsonl"
    assert repr(composition.FROM_ENV) == "FROM_ENV"


def test_the_master_key_of_the_embedded_default(tmp_path: Path) -> None:
    assert not composition.local_master_key_exists(tmp_path)
    composition.create_local_master_key(tmp_path)
    assert composition.local_master_key_exists(tmp_path)
    assert isinstance(composition.build_provider(_local(tmp_path)), LocalKeyProvider)


def test_require_initialized_refuses_only_an_empty_embedded_default(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with pytest.raises(ConfigurationError, match="run `greenlang-crypto init` first"):
        composition.require_initialized(_local(data))
    assert not data.exists()
    # A configured key store or another provider is the operator's: not checked here.
    composition.require_initialized(
        EncryptionServiceConfig(data_dir=data, key_store_url=f"sqlite:///{tmp_path}/k.db")
    )
    composition.require_initialized(
        EncryptionServiceConfig(provider="aws-kms", kms_key_ids=("k",), data_dir=data)
    )
    composition.init_local_service(_local(data)).close()
    composition.require_initialized(_local(data))


def test_a_missing_aws_extra_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "greenlang_crypto.providers.aws_kms", None)
    cfg = EncryptionServiceConfig(provider="aws-kms", kms_key_ids=("k",), data_dir=tmp_path)
    with pytest.raises(ConfigurationError, match=r"greenlang-crypto\[aws\]"):
        composition.build_provider(cfg)


def test_the_composition_opens_on_first_use_and_closes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    composition.init_local_service(_local(data)).close()
    with composition.Composition(_local(data), actor="cli:test") as stack:
        assert not stack.opened_service
        svc = stack.service
        assert stack.opened_service and stack.service is svc
        ctx = EncryptionContext("t", "d")
        assert svc.decrypt(svc.encrypt(b"v", ctx), ctx) == b"v"
    assert not stack.opened_service
    unchecked = composition.Composition(_local(tmp_path / "new"), check_initialized=False)
    with pytest.raises(ConfigurationError):
        _ = composition.Composition(_local(tmp_path / "other")).service
    assert not (tmp_path / "other").exists()
    unchecked.close()


def test_audited_writes_the_action_as_the_actor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    composition.init_local_service(_local(data)).close()
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv(composition.AUDIT_URL_ENV, f"jsonl://{log}")
    with composition.Composition(_local(data), actor="cli:test") as stack:
        with stack.audited("key_rotate"):
            stack.service.rotate()
        assert stack.service.primary_version == 2
    text = log.read_text()
    assert "key_rotate" in text and "cli:test" in text


def test_open_audit_log_takes_an_explicit_url_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(composition.AUDIT_URL_ENV, f"jsonl://{tmp_path / 'env.jsonl'}")
    given = tmp_path / "given.jsonl"
    audit = composition.open_audit_log(_local(tmp_path), url=f"jsonl://{given}", start_thread=False)
    try:
        assert audit.sink.description == f"jsonl://{given}"
    finally:
        audit.close()
    from_env = composition.open_audit_log(_local(tmp_path), start_thread=False)
    try:
        assert from_env.sink.description == f"jsonl://{tmp_path / 'env.jsonl'}"
    finally:
        from_env.close()


def test_build_observed_service_wires_audit_and_metrics(tmp_path: Path) -> None:
    data = tmp_path / "data"
    composition.init_local_service(_local(data)).close()
    wired = composition.build_observed_service(
        _local(data), audit_url=f"jsonl://{tmp_path / 'audit.jsonl'}"
    )
    try:
        ctx = EncryptionContext("t", "d")
        wired.service.decrypt(wired.service.encrypt(b"v", ctx), ctx)
        assert wired.metrics is not None and wired.audit is not None
    finally:
        wired.service.close()
        wired.audit.close()


def test_init_local_refuses_other_providers(tmp_path: Path) -> None:
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.exceptions import ConfigurationError
    from greenlang_crypto.service import EncryptionService

    with pytest.raises(ConfigurationError):
        EncryptionService.init_local(
            config=EncryptionServiceConfig(provider="aws-kms", kms_key_ids=("k",))
        )
    with pytest.raises(ConfigurationError):
        EncryptionService.init_local(tmp_path, config=EncryptionServiceConfig(data_dir=tmp_path))
    assert list(tmp_path.iterdir()) == []
