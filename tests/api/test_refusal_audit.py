"""Refused requests are audited as counts per source and interval: 2,000 failed
authentications or 2,000 refusals make a handful of records with the right counts, and the
counts pending at shutdown reach the log."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from greenlang_crypto.api import create_app
from greenlang_crypto.api.app import Stack
from greenlang_crypto.api.auth import AuthSettings, JwtAuthorizer
from greenlang_crypto.audit import AuditQuery

from .conftest import TokenFactory, bearer
from .served import API, Served, cli, serve

FLOOD = 2000


def _refusal_records(stack: Stack) -> list[dict[str, Any]]:
    stack.audit.flush()
    found = stack.audit.query(AuditQuery(action="access_refused", limit=500))
    return [r.to_dict() for r in found]


def _total(records: list[dict[str, Any]], key: str) -> int:
    return sum(int(r["details"].get(key, 0)) for r in records)


def test_2000_refusals_make_one_record_per_source(
    app: FastAPI, stack: Stack, make_token: TokenFactory
) -> None:
    encrypter = bearer(make_token(["encryption:encrypt"], subject="mallory"))
    reader = bearer(make_token(["encryption:read"], subject="mallory"))
    body = {"plaintext": "eHh4", "context": {"tenant_id": "tenant-a", "data_class": "pii"}}
    with TestClient(app, raise_server_exceptions=False) as client:
        for i in range(FLOOD // 2):
            # Valid tokens, each on a route whose permission it lacks.
            assert client.get(f"{API}/keys", headers=encrypter).status_code == 403, i
            r = client.post(f"{API}/encrypt", json=body, headers=reader)
            assert r.status_code == 403, i
    # Leaving the client ran the app's shutdown, which wrote the pending counts.
    assert not stack.audit.query(AuditQuery(action="access_denied", limit=500))
    records = _refusal_records(stack)
    assert len(records) == 1, [r["details"] for r in records]
    details = records[0]["details"]
    assert records[0]["outcome"] == "denied"
    assert details["source"] == "testclient"
    assert (details["count"], details["forbidden"], details["unauthenticated"]) == (FLOOD, FLOOD, 0)
    assert details["reason:permission"] == FLOOD
    assert details[f"route:GET {API}/keys"] == FLOOD // 2
    assert details[f"route:POST {API}/encrypt"] == FLOOD // 2
    assert json.loads(details["subjects"]) == ["mallory"]
    assert stack.audit.verify().ok


def test_failed_authentications_are_counted_per_interval(
    stack: Stack, settings: AuthSettings, make_token: TokenFactory
) -> None:
    app = create_app(
        stack.service,
        stack.audit,
        authorizer=JwtAuthorizer(settings),
        registry=stack.registry,
        refusal_interval=0.25,
    )
    forged = bearer(make_token(["encryption:read"])[:-6] + "AAAAAA")
    started = time.monotonic()
    with TestClient(app, raise_server_exceptions=False) as client:
        for i in range(FLOOD):
            headers = forged if i % 2 else {}
            r = client.get(f"{API}/keys", headers=headers)
            assert r.status_code == 401, i
            assert r.json() == {"detail": "unauthorized"}
            if i % 500 == 0:
                time.sleep(0.3)  # let at least one interval end mid-flood
    elapsed = time.monotonic() - started
    records = _refusal_records(stack)
    # One record per interval that saw refusals (one source), never one per request.
    assert 2 <= len(records) <= elapsed / 0.25 + 2, len(records)
    assert _total(records, "count") == FLOOD
    assert _total(records, "unauthenticated") == FLOOD
    assert _total(records, "reason:no_token") == FLOOD // 2
    assert _total(records, "reason:bad_token") == FLOOD // 2
    assert all(r["details"]["source"] == "testclient" for r in records)
    # Nothing of the tokens is kept.
    assert "AAAAAA" not in json.dumps(records)


def test_sources_are_bounded_per_interval(stack: Stack) -> None:
    from greenlang_crypto.api.refusals import RefusalAggregator

    refusals = RefusalAggregator(stack.audit, interval=3600, max_sources=50)
    for i in range(500):
        refusals.note(f"10.0.{i // 250}.{i % 250}", "bad_token", None, None)
    assert refusals.pending() == 500
    refusals.close()
    records = _refusal_records(stack)
    assert len(records) == 51  # 50 sources apart, the rest together
    assert _total(records, "count") == 500
    other = [r for r in records if r["details"]["source"] == "other"]
    assert other and other[0]["details"]["count"] == 450


# -- over HTTP ----------------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Served]:
    with serve(tmp_path) as s:
        yield s


@pytest.mark.integration
def test_served_2000_failed_authentications_are_one_record_written_at_shutdown(
    server: Served,
) -> None:
    garbage = {"Authorization": "Bearer not.a.token"}
    with httpx.Client(base_url=server.base, timeout=10) as http:
        for i in range(FLOOD):
            if i % 2:
                r = http.post(f"{API}/encrypt", content=b"{}", headers=garbage)
            else:
                r = http.get(f"{API}/status")
            assert r.status_code == 401, i
    # The default interval is a minute: everything is still pending when the server stops.
    server.stop()
    assert server.proc.returncode == 0, server.log.read_text()
    tail = cli(server.data_dir, "audit", "tail", "-n", "500")
    assert tail.returncode == 0, tail.stderr
    rows = [json.loads(line) for line in tail.stdout.splitlines()]
    refused = [r for r in rows if r["action"] == "access_refused"]
    assert len(refused) == 1, [r["details"] for r in refused]
    details = refused[0]["details"]
    assert details["source"] == "127.0.0.1"
    assert (details["count"], details["unauthenticated"]) == (FLOOD, FLOOD)
    assert details["reason:no_token"] == details["reason:bad_token"] == FLOOD // 2
    assert len(rows) < 50  # a handful of records for 2,000 refusals
    verify = cli(server.data_dir, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
