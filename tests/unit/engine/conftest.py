"""A service on the embedded local provider, without the keyring's background thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.service import EncryptionService

CTX = EncryptionContext(tenant_id="t1", data_class="pii")


def make_service(data_dir: Path, **cfg: Any) -> EncryptionService:
    """No background refresh: its heartbeat would write the instance row between two reads."""
    cfg.setdefault("keyring_refresh_seconds", 0)
    return EncryptionService.init_local(config=EncryptionServiceConfig(data_dir=data_dir, **cfg))


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[EncryptionService]:
    service = make_service(tmp_path)
    try:
        yield service
    finally:
        service.close()


def store_state(svc: EncryptionService) -> tuple[Any, ...]:
    """Everything the key store holds that a read might change."""
    store = svc.store
    return (
        store.epoch(),
        store.versions(),
        store.index_keys(),
        store.wrapping_keys(),
        store.count_deks_by_version(),
        store.usage_by_version(),
        store.instances(),
    )
