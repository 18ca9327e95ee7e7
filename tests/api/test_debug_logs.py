"""No key or plaintext in DEBUG logs: a whole API flow with every logger at DEBUG; the captured
logs must contain no DEK, no master or audit root key, and no plaintext, in any encoding."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from greenlang_crypto._core import DataKey, EnvelopeSealer
from greenlang_crypto.api.app import Stack
from greenlang_crypto.api.routes import API_PREFIX
from greenlang_crypto.audit import _ROOT_META, AUDIT_CONTEXT, _unwrap_root
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.hazmat import export_key_bytes
from tests.logcapture import capture_debug_logs, encodings

from .conftest import ALL, TENANT, TokenFactory, bearer

LOGGERS = ["", "greenlang_crypto", "botocore", "urllib3", "httpx", "httpcore", "fastapi", "uvicorn"]
PLAINTEXTS = [
    b"debuglog-plaintext-alpha-7c1e",
    b"debuglog plaintext beta \x00\xff binary",
    "sehr geheim \u00e4".encode(),
]


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    with capture_debug_logs(LOGGERS) as buf:
        yield buf


def _reachable_keys(stack: Stack, contexts: list[EncryptionContext]) -> list[bytes]:
    svc: Any = stack.service
    keys: list[bytes] = []
    for ctx in contexts:
        for cache in svc._enc_caches.values():
            item = cache.get(ctx.canonical)
            if isinstance(item, EnvelopeSealer):
                keys.append(export_key_bytes(item.key))
    for path in (svc.config.data_dir / "master-keys").glob("master-v*.key"):
        keys.append(path.read_bytes())
    root = stack.audit.sink.get_meta(_ROOT_META)
    assert root is not None
    keys.append(export_key_bytes(_unwrap_root(svc.unwrap_system_key, root)))
    return keys


def test_debug_logs_hold_no_keys_or_plaintext(
    captured: io.StringIO, stack: Stack, app: Any, make_token: TokenFactory
) -> None:
    token = make_token(subject="debuglog")
    # Rotation, rewrap and audit reads are fleet-wide: a token without tenant, with the grant.
    fleet = make_token([*ALL, "encryption:fleet"], tenant=None, subject="debuglog-fleet")
    ctx = {"tenant_id": TENANT, "data_class": "pii"}
    decrypt_keys: list[DataKey] = []
    with TestClient(app, raise_server_exceptions=False) as client:
        envelopes = []
        for pt in PLAINTEXTS:
            r = client.post(
                f"{API_PREFIX}/encrypt",
                json={"plaintext": base64.b64encode(pt).decode(), "context": ctx},
                headers=bearer(token),
            )
            assert r.status_code == 200
            envelopes.append(r.json()["ciphertext"])
        for env in envelopes:
            r = client.post(
                f"{API_PREFIX}/decrypt",
                json={"ciphertext": env, "context": ctx, "reason": "debuglog"},
                headers=bearer(token),
            )
            assert r.status_code == 200
        bad = base64.b64decode(envelopes[0])
        bad = base64.b64encode(bad[:-2] + b"\x00\x00").decode()
        r = client.post(
            f"{API_PREFIX}/decrypt",
            json={"ciphertext": bad, "context": ctx, "reason": "debuglog"},
            headers=bearer(token),
        )
        assert r.status_code == 400
        # Bodies that fail validation, carrying a plaintext.
        client.post(
            f"{API_PREFIX}/encrypt",
            json={"plaintext": PLAINTEXTS[0].decode(), "context": ctx},
            headers=bearer(token),
        )
        client.post(f"{API_PREFIX}/keys/rotate", headers=bearer(fleet))
        r = client.post(
            f"{API_PREFIX}/rewrap",
            json={"ciphertext": envelopes[1], "context": ctx},
            headers=bearer(fleet),
        )
        assert r.status_code == 200
        client.get(f"{API_PREFIX}/audit", headers=bearer(fleet))
        client.get(f"{API_PREFIX}/audit", headers=bearer(fleet[:-4] + "AAAA"))
        client.get("/metrics")
        client.get("/healthz")
    stack.audit.flush()
    assert stack.audit.verify().ok
    ectx = EncryptionContext(tenant_id=TENANT, data_class="pii")
    svc: Any = stack.service
    for env in envelopes:
        item = svc._dec_cache.get(svc_header_ref(base64.b64decode(env)))
        if isinstance(item, DataKey):
            decrypt_keys.append(item)
    keys = _reachable_keys(stack, [ectx, AUDIT_CONTEXT])
    keys += [export_key_bytes(k) for k in decrypt_keys]
    assert len(keys) >= 4  # DEKs of v1 and v2, master keys, the audit root key
    logs = captured.getvalue()
    assert "greenlang_crypto.api.auth" in logs  # the capture works: the bad token was logged
    secrets = [*keys, *PLAINTEXTS]
    hits = [form for s in secrets for form in encodings(s) if form in logs]
    assert not hits, f"{len(hits)} secret form(s) found in the debug logs"


def svc_header_ref(envelope: bytes) -> bytes:
    from greenlang_crypto._core import parse_envelope

    return parse_envelope(envelope).key_ref_id


def test_log_detector_finds_a_planted_key(captured: io.StringIO) -> None:
    key = export_key_bytes(DataKey.generate())
    logging.getLogger("greenlang_crypto.test").debug("leak %s", base64.b64encode(key).decode())
    logs = captured.getvalue()
    assert any(form in logs for form in encodings(key))
