"""Request bodies cannot exhaust the server's memory: a served API (its own process), with its
peak RSS read from /proc/<pid>/status (VmHWM, reset through clear_refs before each attack).

* a token without the route's permission is refused before any body byte is read;
* a body over the route's schema-derived limit is refused from its Content-Length, and a
  chunked one as soon as the limit is passed;
* bodies within the limit are buffered only while a process-wide budget has room: the others
  wait briefly, then get 503.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from greenlang_crypto.api import create_app
from greenlang_crypto.api.app import Stack
from greenlang_crypto.api.auth import AuthSettings, JwtAuthorizer

from .conftest import TENANT, TokenFactory, bearer
from .served import (
    API,
    HeldUpload,
    MiB,
    Served,
    json_body_chunks,
    peak_rss,
    raw_post,
    reset_peak,
    serve,
)

pytestmark = pytest.mark.integration

#: Most the server's peak RSS may grow during an attack.
HEADROOM = 100 * MiB
#: An 80 MiB JSON body whose base64 field stays valid (length a multiple of 4).
_TAIL = len(b'", "context": {"tenant_id": "acme", "data_class": "pii"}}')
HUGE = 80 * MiB + (-(80 * MiB - 15 - _TAIL)) % 4


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Served]:
    with serve(tmp_path) as s:
        yield s


def _idle(served: Served) -> int:
    # Let the first requests' allocations settle, then start the peak from here.
    time.sleep(0.3)
    return reset_peak(served.proc.pid)


def test_read_only_token_posting_80_mib_is_refused_unread(server: Served) -> None:
    reader = server.token("encryption:read", tenant="acme")
    idle = _idle(server)
    up = raw_post(
        server.port, f"{API}/encrypt", reader, json_body_chunks(HUGE, "acme"), length=HUGE
    )
    grown = peak_rss(server.proc.pid) - idle
    assert grown < HEADROOM, f"peak RSS grew {grown / MiB:.0f} MiB"
    assert up.status == 403, up
    assert json.loads(up.body) == {"detail": "forbidden"}
    # The server stopped the upload: only what fits in the socket buffers was ever sent.
    assert up.sent < HUGE


def test_four_80_mib_bodies_at_once_are_refused_by_size(server: Served) -> None:
    encrypter = server.token("encryption:encrypt", tenant="acme")
    idle = _idle(server)
    results: list[tuple[bool, int | None, int]] = []

    def upload(chunked: bool) -> None:
        up = raw_post(
            server.port,
            f"{API}/encrypt",
            encrypter,
            json_body_chunks(HUGE, "acme"),
            length=None if chunked else HUGE,
        )
        results.append((chunked, up.status, up.sent))

    # Two declare their length (refused from the header), two are chunked (refused once the
    # bytes received pass the route's limit).
    threads = [threading.Thread(target=upload, args=(i % 2 == 1,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=55)
    grown = peak_rss(server.proc.pid) - idle
    assert grown < HEADROOM, f"peak RSS grew {grown / MiB:.0f} MiB"
    assert sorted(r[1] or 0 for r in results) == [413] * 4, results
    assert all(sent < HUGE for _, _, sent in results)


def _largest_valid_body() -> bytes:
    # Both base64 fields at the schema's maximum length: the largest body a route must take.
    field = base64.b64encode(os.urandom(1_049_997)).decode()
    assert len(field) <= 1_400_000
    ctx = {"tenant_id": "acme", "data_class": "pii"}
    return json.dumps({"plaintext": field, "associated_data": field, "context": ctx}).encode()


def test_concurrent_bodies_are_bounded_by_the_buffer_budget(server: Served) -> None:
    encrypter = server.token("encryption:encrypt", tenant="acme")
    body = _largest_valid_body()
    warm = raw_post(server.port, f"{API}/encrypt", encrypter, iter([body]), length=len(body))
    assert warm.status == 200, warm
    idle = _idle(server)
    # Each request declares a full-size body, then holds with 64 KiB of it sent: the server has
    # reserved room for the whole body before reading any of it.
    held = [
        HeldUpload(server.port, f"{API}/encrypt", encrypter, body, 64 * 1024) for _ in range(10)
    ]
    try:
        # Requests beyond the budget wait briefly, then are told to come back later.
        time.sleep(3.5)
        early = Counter(h.status(0) for h in held)
        assert early[503] >= 1, early
        assert early[None] >= 1, early  # the admitted ones wait for the rest of their body
        for h in held:
            h.finish()
        final = Counter(h.status(30) for h in held)
    finally:
        for h in held:
            h.close()
    grown = peak_rss(server.proc.pid) - idle
    assert final[200] == early[None] and final[503] == early[503], final
    assert grown < HEADROOM, f"peak RSS grew {grown / MiB:.0f} MiB"


# -- in-process: the limit each route derives from its schema ------------------------------------


@pytest.fixture
def served_in_process(stack: Stack, settings: AuthSettings) -> Iterator[TestClient]:
    # No max_body_bytes: the limits come from the schemas and the service's configuration.
    app = create_app(
        stack.service, stack.audit, authorizer=JwtAuthorizer(settings), registry=stack.registry
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_route_limits_follow_the_schemas(
    served_in_process: TestClient, make_token: TokenFactory
) -> None:
    token = bearer(make_token())
    field = base64.b64encode(os.urandom(1_049_997)).decode()
    ctx = {"tenant_id": TENANT, "data_class": "pii"}
    largest = {"plaintext": field, "associated_data": field, "context": ctx}
    ok = served_in_process.post(f"{API}/encrypt", json=largest, headers=token)
    assert ok.status_code == 200, ok.text
    # Past what the schema accepts (plus its JSON framing): refused by size, not parsed.
    padded = json.dumps(largest).encode()
    over = padded[:-1] + b" " * 300_000 + b"}"
    r = served_in_process.post(
        f"{API}/encrypt", content=over, headers={**token, "Content-Type": "application/json"}
    )
    assert (r.status_code, r.json()) == (413, {"detail": "payload too large"})
    # A route that takes no body refuses one.
    admin = bearer(make_token(["encryption:read", "encryption:fleet"], tenant=None))
    r = served_in_process.request(
        "GET", f"{API}/status", content=b"x" * 10, headers={**admin, "Content-Type": "text/plain"}
    )
    assert r.status_code == 413
