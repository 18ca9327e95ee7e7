"""Typed service events: observers (the audit log, the metrics) receive frozen event objects,
and every exception carries a ``reason`` that they record instead of mapping class names."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto import exceptions as exc_module
from greenlang_crypto.audit import AuditLog, AuditQuery, SqliteAuditSink
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.events import (
    EVENTS,
    DecryptionFailed,
    KeyGenerated,
    KeyRotated,
    OtherEvent,
    ServiceEvent,
    TypedServiceObserver,
    make_event,
)
from greenlang_crypto.exceptions import DecryptionError, GreenlangCryptoError
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService

CTX = EncryptionContext(tenant_id="t1", data_class="pii")


class Typed:
    """A typed observer that keeps what it gets."""

    def __init__(self) -> None:
        self.events: list[ServiceEvent] = []

    def on_service_event(self, event: ServiceEvent) -> None:
        self.events.append(event)


class Legacy:
    """An observer of names and fields only."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def on_event(self, event: str, fields: Mapping[str, object]) -> None:
        self.events.append((event, dict(fields)))


def _service(tmp_path: Path, *observers: object) -> EncryptionService:
    LocalKeyProvider(tmp_path).create_master_key()
    return EncryptionService(
        EncryptionServiceConfig(data_dir=tmp_path, keyring_refresh_seconds=0),
        observers=observers,  # type: ignore[arg-type]
    )


def test_observers_get_one_frozen_typed_event_per_emission(tmp_path: Path) -> None:
    typed, other, legacy = Typed(), Typed(), Legacy()
    assert isinstance(typed, TypedServiceObserver)
    svc = _service(tmp_path, typed, legacy, other)
    env = svc.encrypt(b"x", CTX)
    svc.rotate()
    with pytest.raises(DecryptionError):
        svc.decrypt(env[:-1] + bytes([env[-1] ^ 1]), CTX)
    svc.close()
    names = [e.event_name for e in typed.events]
    assert names == [name for name, _ in legacy.events]
    assert set(names) <= EVENTS
    # Both typed observers got the same object, not a copy each.
    assert all(a is b for a, b in zip(typed.events, other.events, strict=True))
    generated = next(e for e in typed.events if isinstance(e, KeyGenerated))
    assert generated.data_class == "pii" and generated.key_version == 1
    rotated = next(e for e in typed.events if isinstance(e, KeyRotated))
    assert (rotated.old_version, rotated.new_version) == (1, 2)
    failed = next(e for e in typed.events if isinstance(e, DecryptionFailed))
    assert (failed.error_type, failed.reason, failed.data_class) == (
        "DecryptionError",
        "authentication",
        "pii",
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        failed.reason = "other"  # type: ignore[misc]
    # The legacy observer gets the same facts by name.
    legacy_failed = dict(legacy.events)["decryption_failed"]
    assert legacy_failed["reason"] == "authentication"


def test_make_event_keeps_undeclared_fields_and_unknown_names() -> None:
    ev = make_event("key_rotated", {"new_version": 3, "branch_id": "b1"})
    assert isinstance(ev, KeyRotated) and ev.new_version == 3
    assert ev.extra == {"branch_id": "b1"}
    assert ev.fields() == {"new_version": 3, "branch_id": "b1"}
    other = make_event("something_new", {"a": 1})
    assert isinstance(other, OtherEvent) and other.event_name == "something_new"
    assert other.fields() == {"a": 1}


def test_every_exception_declares_a_reason() -> None:
    classes = [
        c
        for c in vars(exc_module).values()
        if isinstance(c, type) and issubclass(c, GreenlangCryptoError)
    ]
    assert len(classes) >= 15
    for cls in classes:
        assert isinstance(cls.reason, str) and cls.reason.replace("_", "").isalpha()
    assert exc_module.InvalidEnvelopeError.reason == "malformed"
    assert exc_module.KmsAccessDeniedError.reason == "kms"
    assert exc_module.KeyRetiredError.reason == "key_retired"


def test_audit_records_carry_the_reason(tmp_path: Path) -> None:
    audit = AuditLog(SqliteAuditSink(tmp_path / "audit.db"), start_thread=False)
    svc = _service(tmp_path, audit)
    audit.attach(svc)
    env = svc.encrypt(b"x", CTX)
    with pytest.raises(GreenlangCryptoError):
        svc.decrypt(b"\xfa" + env[1:3], CTX)
    audit.flush()
    failed = audit.query(AuditQuery(action="decryption_failed"))
    assert [r.entry.details.get("reason") for r in failed] == ["malformed"]
    assert failed[0].entry.outcome == "failure"
    assert audit.verify().ok
    audit.close()
    svc.close()


def test_metrics_label_decrypt_failures_by_the_exception_reason(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from greenlang_crypto.metrics import EncryptionMetrics, register_metrics

    metrics = EncryptionMetrics()
    svc = _service(tmp_path, metrics)
    registry = CollectorRegistry(auto_describe=False)
    register_metrics(svc, registry=registry, metrics=metrics)
    env = svc.encrypt(b"x", CTX)
    for bad in (env[:-1] + bytes([env[-1] ^ 1]), b"\xfa\x01"):
        with pytest.raises(GreenlangCryptoError):
            svc.decrypt(bad, CTX)
    text = generate_latest(registry).decode()
    assert 'gl_encryption_decrypt_failures_total{reason="authentication"} 1.0' in text
    assert 'gl_encryption_decrypt_failures_total{reason="malformed"} 1.0' in text
    assert (
        'gl_encryption_operations_total{data_class="pii",operation="decrypt",status="failure"} 2.0'
        in text
    )
    svc.close()
