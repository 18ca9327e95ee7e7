"""No key or plaintext in DEBUG logs over real KMS traffic: the service against the moto server
with every logger at DEBUG (library, botocore, urllib3); the captured logs hold no DEK and no
plaintext in any encoding."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import EncryptionContext, parse_envelope
from greenlang_crypto._core import EnvelopeSealer, stored_key_ref_id
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.hazmat import export_key_bytes
from greenlang_crypto.service import EncryptionService
from tests.logcapture import capture_debug_logs, encodings

pytestmark = pytest.mark.integration
LOGGERS = ["", "greenlang_crypto", "botocore", "boto3", "urllib3"]
PLAINTEXTS = [
    b"debuglog-kms-alpha-4f2a9d",
    b"debuglog kms beta \x00\xfe binary",
    "geheim \u00e4\u00f6".encode(),
]
CTX = EncryptionContext("debuglog-tenant", "pii")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    with capture_debug_logs(LOGGERS) as buf:
        yield buf


def test_kms_debug_logs_hold_no_keys_or_plaintext(
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
        for reference in ("stored", "inline"):
            item = svc._enc_caches[reference].get(CTX.canonical)
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
        for form in encodings(secret):
            assert form not in logs, "secret material found in DEBUG logs"
