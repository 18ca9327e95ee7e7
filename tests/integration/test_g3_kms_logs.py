"""G3 over real KMS traffic: the service against the moto server with every logger at DEBUG
(library, botocore, urllib3); the captured logs hold no DEK and no plaintext in any encoding."""

from __future__ import annotations

import base64
import contextlib
import io
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import EncryptionContext, parse_envelope
from greenlang_crypto._core import EnvelopeSealer, stored_key_ref_id
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.hazmat import export_key_bytes
from greenlang_crypto.service import EncryptionService

pytestmark = pytest.mark.integration
LOGGERS = ["", "greenlang_crypto", "botocore", "boto3", "urllib3"]
PLAINTEXTS = [
    b"G3-kms-alpha-4f2a9d",
    b"G3 kms beta \x00\xfe binary",
    "geheim \u00e4\u00f6".encode(),
]
CTX = EncryptionContext("g3-tenant", "pii")


def _forms(secret: bytes) -> set[str]:
    forms = {
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.b64encode(secret).decode()[:20],
        repr(secret)[2:-1],
    }
    with contextlib.suppress(UnicodeDecodeError):
        forms.add(secret.decode())
    return {f for f in forms if len(f) >= 8}


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in LOGGERS}
    root.addHandler(handler)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def test_g3_kms_debug_logs(
    tmp_path: Path, captured: io.StringIO, kms_keys: Any, make_provider: Callable[..., Any]
) -> None:
    keys = (kms_keys.single_arn,)
    cfg = EncryptionServiceConfig(
        provider="aws-kms",
        kms_key_ids=keys,
        data_dir=tmp_path,
        key_store_url=f"sqlite:///{tmp_path}/ks.db",
    )
    deks: list[bytes] = []
    with EncryptionService(cfg, provider=make_provider(keys=list(keys))) as svc:
        envs = [svc.encrypt(pt, CTX) for pt in PLAINTEXTS]
        envs += [svc.encrypt(pt, CTX, key_reference="inline") for pt in PLAINTEXTS]
        for cache in svc._enc_caches.values():
            item = cache.get(CTX.canonical)
            assert isinstance(item, EnvelopeSealer)
            deks.append(export_key_bytes(item.key))
    with EncryptionService(cfg, provider=make_provider(keys=list(keys))) as cold:
        for env, pt in zip(envs, PLAINTEXTS * 2, strict=True):
            assert cold.decrypt(env, CTX) == pt  # Decrypt calls to KMS, logged at DEBUG
        header = parse_envelope(envs[0])
        assert header.dek_id is not None
        key = cold._dec_cache.get(stored_key_ref_id(header.dek_id))
        assert key is not None
        deks.append(export_key_bytes(key))  # type: ignore[arg-type]
        with pytest.raises(Exception):
            cold.decrypt(envs[0][:-1] + b"\x00", CTX)
    logs = captured.getvalue()
    # The capture really saw the KMS traffic (otherwise this test could not fail).
    assert "GenerateDataKey" in logs and "TrentService.Decrypt" in logs
    assert len(logs) > 5_000
    for secret in [*deks, *PLAINTEXTS]:
        for form in _forms(secret):
            assert form not in logs, "secret material found in DEBUG logs"
