from __future__ import annotations

from typing import Any

from greenlang_crypto.engine.monitoring import Events
from greenlang_crypto.exceptions import DecryptionError
from greenlang_crypto.service import EncryptionService

from .conftest import CTX, store_state


class Recorder:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_event(self, event: str, fields: dict[str, Any]) -> None:
        self.seen.append(event)


class Broken:
    def on_event(self, event: str, fields: dict[str, Any]) -> None:
        raise RuntimeError("observer bug")


def test_a_failing_observer_never_stops_the_others() -> None:
    recorder = Recorder()
    events = Events((Broken(), recorder), per_operation_events=True)
    events.emit("key_rotated", old_version=1)
    events.failed("decryption_failed", "decrypt", DecryptionError(), CTX)
    assert recorder.seen == ["key_rotated", "decryption_failed"]
    assert events.failures == {("decrypt", "DecryptionError"): 1}
    assert events.per_op


def test_status_and_stats_are_reads(svc: EncryptionService) -> None:
    svc.encrypt(b"x" * 10, CTX, key_reference="stored")  # use counts tracked, not written
    before = store_state(svc)
    epoch = svc.keyring_epoch
    status = svc.status()
    assert (status.primary_version, status.keyring_epoch) == (1, epoch)
    svc.stats()
    svc.cache_stats()
    svc.latency()
    svc.provider_health()
    assert svc.key_store_health()
    assert store_state(svc) == before
    assert svc.keyring_epoch == epoch


def test_seals_stay_counted_after_the_caches_are_replaced(svc: EncryptionService) -> None:
    svc.encrypt(b"abc", CTX)
    svc.rotate()  # replaces the encryption caches
    svc.encrypt(b"de", CTX)
    assert svc.operation_counts()["encrypt"]["pii"] == (2, 5)
    assert svc.stats().operations["encrypt"]["pii"].count == 2
