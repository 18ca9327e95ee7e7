"""Tenant-scoped tokens act on their tenant only: every fleet-wide route (the shared keyring,
audit reads, the service status) refuses them, audit reads never show another tenant's
records, and the fleet grant cannot ride on a tenant-scoped token."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient

from greenlang_crypto.api.app import Stack
from greenlang_crypto.api.auth import DEV_AUDIENCE, DEV_ISSUER, mint_token
from greenlang_crypto.audit import AuditQuery

from .conftest import ALL, TokenFactory, bearer
from .served import API, Served, cli, serve

FLEET_GRANT = "encryption:fleet"
ACME = {"tenant_id": "acme", "data_class": "pii"}
ACME_REASON = "acme case 4471: refund dispute"

#: The operations that act beyond one tenant.
FLEET_ROUTES = {
    ("GET", f"{API}/keys"),
    ("POST", f"{API}/keys/rotate"),
    ("POST", f"{API}/keys/erase-tenant"),
    ("POST", f"{API}/rewrap"),
    ("GET", f"{API}/audit"),
    ("GET", f"{API}/status"),
}
TENANT_ROUTES = {("POST", f"{API}/encrypt"), ("POST", f"{API}/decrypt")}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _acme_envelope(client: TestClient, make_token: TokenFactory) -> str:
    r = client.post(
        f"{API}/encrypt",
        json={"plaintext": _b64(b"acme ledger row"), "context": ACME},
        headers=bearer(make_token(tenant="acme")),
    )
    assert r.status_code == 200, r.text
    ciphertext: str = r.json()["ciphertext"]
    return ciphertext


def _bodies(envelope: str) -> dict[tuple[str, str], Any]:
    return {
        ("POST", f"{API}/keys/rotate"): {"reason": "routine"},
        # Another tenant than the envelope's, which the rewrap after it still reads.
        ("POST", f"{API}/keys/erase-tenant"): {"tenant_id": "globex", "reason": "offboarding"},
        ("POST", f"{API}/rewrap"): {"ciphertext": envelope, "context": ACME},
    }


def test_tenant_token_gets_403_on_every_fleet_route(
    client: TestClient, stack: Stack, make_token: TokenFactory
) -> None:
    # Every published operation is in one class or the other (a new route must be added).
    published = {
        (method.upper(), path)
        for path, ops in client.app.openapi()["paths"].items()  # type: ignore[attr-defined]
        if path.startswith(API)
        for method in ops
    }
    assert published == FLEET_ROUTES | TENANT_ROUTES
    envelope = _acme_envelope(client, make_token)
    before = [(v.version, v.state) for v in stack.service.versions()]
    bodies = _bodies(envelope)
    # Every operation permission, but scoped to one tenant: globex, then acme itself.
    for tenant in ("globex", "acme"):
        token = bearer(make_token(ALL, tenant=tenant, subject=f"{tenant}-admin"))
        for method, path in sorted(FLEET_ROUTES):
            r = client.request(method, path, json=bodies.get((method, path)), headers=token)
            assert (r.status_code, r.json()) == (403, {"detail": "forbidden"}), (tenant, path)
    assert [(v.version, v.state) for v in stack.service.versions()] == before
    assert stack.service.primary_version == 1
    # The refusals are counted by reason for the audit log.
    client.app.state.glc_refusals.flush()  # type: ignore[attr-defined]
    stack.audit.flush()
    (record,) = stack.audit.query(AuditQuery(action="access_refused"))
    assert record.entry.details["reason:fleet_scope"] == 2 * len(FLEET_ROUTES)
    assert json.loads(str(record.entry.details["subjects"])) == ["acme-admin", "globex-admin"]
    # The same routes answer a token without tenant that holds the fleet grant.
    fleet = bearer(make_token([*ALL, FLEET_GRANT], tenant=None, subject="fleet-ops"))
    for method, path in sorted(FLEET_ROUTES):
        r = client.request(method, path, json=bodies.get((method, path)), headers=fleet)
        assert r.status_code == 200, (path, r.text)
    assert stack.service.primary_version == 2
    # And the fleet token, naming no tenant, has no tenant data to act on.
    r = client.post(
        f"{API}/encrypt", json={"plaintext": _b64(b"x"), "context": ACME}, headers=fleet
    )
    assert r.status_code == 403
    body = {"ciphertext": envelope, "context": ACME, "reason": "curious"}
    assert client.post(f"{API}/decrypt", json=body, headers=fleet).status_code == 403


def test_audit_reads_by_tenant_tokens_never_show_other_tenants(
    client: TestClient, stack: Stack, make_token: TokenFactory
) -> None:
    envelope = _acme_envelope(client, make_token)
    r = client.post(
        f"{API}/decrypt",
        json={"ciphertext": envelope, "context": ACME, "reason": ACME_REASON},
        headers=bearer(make_token(tenant="acme", subject="acme-support")),
    )
    assert r.status_code == 200, r.text
    stack.audit.flush()
    # Records name no tenant (a context digest only), so no tenant token may read them.
    for tenant in ("globex", "acme"):
        reader = bearer(make_token(["encryption:audit", "encryption:read"], tenant=tenant))
        for params in ({}, {"action": "decryption_performed"}, {"actor": "acme-support"}):
            r = client.get(f"{API}/audit", params=params, headers=reader)
            assert r.status_code == 403, (tenant, r.text)
            assert ACME_REASON not in r.text and "acme-support" not in r.text
    auditor = bearer(make_token(["encryption:audit", FLEET_GRANT], tenant=None))
    r = client.get(f"{API}/audit", params={"action": "decryption_performed"}, headers=auditor)
    assert r.status_code == 200
    assert [x["reason"] for x in r.json()["records"] if x["reason"]] == [ACME_REASON]


def test_the_fleet_grant_never_rides_on_a_tenant_token(
    client: TestClient, secret: str, data_dir: Path
) -> None:
    with pytest.raises(ValueError, match="tenant"):
        mint_token(secret, subject="x", permissions=["encryption:admin", FLEET_GRANT], tenant="a")
    done = cli(
        data_dir, "token", "--tenant", "globex", "--permissions", f"encryption:admin,{FLEET_GRANT}"
    )
    assert done.returncode == 2 and not done.stdout
    # A token signed elsewhere with both is refused outright, like any invalid token.
    now = int(time.time())
    claims = {
        "sub": "confused", "iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "iat": now, "exp": now + 60,
        "permissions": [*ALL, FLEET_GRANT], "tenant_id": "globex",
    }  # fmt: skip
    both = bearer(jwt.encode(claims, secret, algorithm="HS256"))
    for method, path in sorted(FLEET_ROUTES | TENANT_ROUTES):
        r = client.request(method, path, headers=both)
        assert (r.status_code, r.json()) == (401, {"detail": "unauthorized"}), path


# -- over HTTP ----------------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Served]:
    with serve(tmp_path) as s:
        yield s


@pytest.mark.integration
def test_served_tenant_admin_cannot_rotate_or_read_other_tenants(server: Served) -> None:
    acme = server.token("encryption:encrypt,encryption:decrypt", tenant="acme", subject="acme")
    globex = server.token(
        "encryption:admin,encryption:audit,encryption:read", tenant="globex", subject="globex"
    )
    with httpx.Client(base_url=server.base, timeout=10) as http:
        r = http.post(
            f"{API}/encrypt",
            json={"plaintext": _b64(b"acme data"), "context": ACME},
            headers=bearer(acme),
        )
        envelope = r.json()["ciphertext"]
        r = http.post(
            f"{API}/decrypt",
            json={"ciphertext": envelope, "context": ACME, "reason": ACME_REASON},
            headers=bearer(acme),
        )
        assert r.status_code == 200
        time.sleep(0.5)  # the served audit log flushes every 0.2 s
        for method, path in sorted(FLEET_ROUTES):
            body = _bodies(envelope).get((method, path))
            r = http.request(method, path, json=body, headers=bearer(globex))
            assert r.status_code == 403, (path, r.text)
            assert ACME_REASON not in r.text
        fleet = server.token(f"encryption:admin,{FLEET_GRANT}", subject="ops")
        r = http.get(f"{API}/keys", headers=bearer(fleet))
        assert r.json()["primary_version"] == 1  # globex rotated nothing
