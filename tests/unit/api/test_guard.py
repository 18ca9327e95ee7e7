"""The ASGI guard driven message by message, and the bounds it derives from request schemas.

No HTTP server and no service: the guard wraps a stand-in app that records what reached it.
The guard in front of the real API is covered in ``tests/api/test_guard.py`` and
``tests/api/test_body_memory.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from greenlang_crypto.api.auth import FLEET_PERMISSION, Principal
from greenlang_crypto.api.guard import (
    DEFAULT_BUFFER_BYTES,
    BodyBudget,
    BodyGuard,
    RoutePolicy,
    default_body_limit,
    process_budget,
    route_policies,
    schema_body_bound,
)
from greenlang_crypto.api.routes import EncryptRequest, require_permission

PREFIX = "/api/v1/encryption"
SLACK = 4096  # the whitespace allowance schema_body_bound adds once

Message = MutableMapping[str, Any]


# -- body limits ---------------------------------------------------------------------------


def test_the_default_limit_covers_the_base64_of_the_largest_envelope() -> None:
    assert default_body_limit(0) == 152_920  # ceil(64 KiB / 3) * 4 + 64 KiB
    for size in (1, 1000, 1 << 20):
        limit = default_body_limit(size)
        assert limit >= (size + 64 * 1024) * 4 // 3 + 64 * 1024
        assert limit < (size + 64 * 1024) * 4 // 3 + 64 * 1024 + 8


def test_strings_count_their_longest_json_escape_unless_they_are_base64() -> None:
    assert schema_body_bound({"type": "string", "maxLength": 10}) == 2 + 10 * 12 + SLACK
    b64 = {"type": "string", "maxLength": 10, "pattern": r"^[A-Za-z0-9+/]*={0,2}$"}
    assert schema_body_bound(b64) == 2 + 10 + SLACK
    assert schema_body_bound({"type": "string"}) is None


@pytest.mark.parametrize(
    ("kind", "size"), [("integer", 24), ("number", 32), ("boolean", 5), ("null", 4)]
)
def test_scalars_have_fixed_bounds(kind: str, size: int) -> None:
    assert schema_body_bound({"type": kind}) == size + SLACK


def test_arrays_need_a_max_item_count() -> None:
    assert schema_body_bound({"type": "array", "items": {"type": "integer"}, "maxItems": 3}) == (
        2 + 3 * 25 + SLACK
    )
    assert schema_body_bound({"type": "array", "items": {"type": "integer"}}) is None


def test_objects_count_their_properties_and_their_bounded_extras() -> None:
    closed = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "additionalProperties": False,
    }
    assert schema_body_bound(closed) == 2 + (2 + 1 * 12 + 1 + 24 + 1) + SLACK
    open_ended = {"type": "object", "properties": {"n": {"type": "integer"}}}
    assert schema_body_bound(open_ended) is None
    mapping = {
        "type": "object",
        "additionalProperties": {"type": "boolean"},
        "maxProperties": 2,
        "propertyNames": {"maxLength": 3},
    }
    assert schema_body_bound(mapping) == 2 + 2 * ((2 + 3 * 12) + 1 + 5 + 1) + SLACK
    no_count = {"type": "object", "additionalProperties": {"type": "boolean"}}
    assert schema_body_bound(no_count) is None


def test_refs_and_alternatives_are_followed() -> None:
    schema = {
        "$defs": {"Small": {"type": "integer"}, "Big": {"type": "string", "maxLength": 100}},
        "anyOf": [{"$ref": "#/$defs/Small"}, {"$ref": "#/$defs/Big"}, {"type": "null"}],
    }
    assert schema_body_bound(schema) == 2 + 100 * 12 + SLACK
    assert schema_body_bound({"$ref": "#/$defs/Missing"}) is None
    unbounded = {"oneOf": [{"type": "integer"}, {"type": "string"}]}
    assert schema_body_bound(unbounded) is None


def test_a_recursive_model_is_unbounded() -> None:
    loop = {"$defs": {"Node": {"$ref": "#/$defs/Node"}}, "$ref": "#/$defs/Node"}
    assert schema_body_bound(loop) is None


def test_the_encrypt_request_is_bounded_by_its_payload_field() -> None:
    bound = schema_body_bound(EncryptRequest.model_json_schema())
    assert bound is not None
    assert 2 * 1_400_000 < bound < 2 * 1_400_000 + 2 * 1024 * 1024  # two base64 fields


# -- the route table -------------------------------------------------------------------------


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # open objects have no bound

    text: Annotated[str, Field(max_length=50)]


class Unbounded(BaseModel):
    text: str


def principal_of(request: Any) -> Principal:
    del request
    return Principal("x", None, frozenset())


class NoAudit:
    def record(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("nothing is recorded while the table is built")


def _router() -> APIRouter:
    router = APIRouter(prefix=PREFIX)
    audit: Any = NoAudit()
    tenant = require_permission("encryption:encrypt", principal_of, audit, scope="tenant")
    fleet = require_permission("encryption:admin", principal_of, audit)

    # Dependencies as defaults: this module's postponed annotations cannot name locals.
    @router.post("/small")
    def small(body: Body, p: Principal = Depends(tenant)) -> None: ...  # noqa: B008

    @router.post("/big")
    def big(body: Unbounded, p: Principal = Depends(fleet)) -> None: ...  # noqa: B008

    @router.api_route("/status", methods=["GET", "HEAD"])
    def status_(p: Principal = Depends(fleet)) -> None: ...  # noqa: B008

    return router


def test_the_table_reads_permission_scope_and_body_bound_from_each_route() -> None:
    table = route_policies(_router().routes, max_body_bytes=10_000, prefix=PREFIX)
    assert table == {
        ("POST", f"{PREFIX}/small"): RoutePolicy(
            "encryption:encrypt", "tenant", 2 + (2 + 4 * 12 + 1 + 2 + 50 * 12 + 1) + SLACK
        ),
        ("POST", f"{PREFIX}/big"): RoutePolicy("encryption:admin", "fleet", 10_000),
        ("GET", f"{PREFIX}/status"): RoutePolicy("encryption:admin", "fleet", 0),
        ("HEAD", f"{PREFIX}/status"): RoutePolicy("encryption:admin", "fleet", 0),
    }


def test_the_configured_cap_wins_over_a_larger_schema_bound() -> None:
    table = route_policies(_router().routes, max_body_bytes=100, prefix=PREFIX)
    assert table[("POST", f"{PREFIX}/small")].body_limit == 100


def test_a_route_without_a_permission_is_refused_unless_outside_the_prefix() -> None:
    router = _router()

    @router.get("/open")
    def open_() -> None: ...

    with pytest.raises(ValueError, match=f"API route {PREFIX}/open declares no permission"):
        route_policies(router.routes, max_body_bytes=1000, prefix=PREFIX)
    elsewhere = APIRouter()

    @elsewhere.get("/healthz")
    def healthz() -> None: ...

    assert route_policies(elsewhere.routes, max_body_bytes=1000, prefix=PREFIX) == {}


# -- the budget ------------------------------------------------------------------------------


def test_the_budget_reserves_and_releases() -> None:
    async def scenario() -> list[Any]:
        budget = BodyBudget(100, wait=0.05)
        got = [await budget.reserve(60), budget.used, await budget.reserve(50)]
        budget.release(60)
        got += [budget.used, await budget.reserve(100), await budget.reserve(0)]
        got += [await budget.reserve(101), budget.used]
        return got

    assert asyncio.run(scenario()) == [True, 60, False, 0, True, True, False, 100]


def test_waiting_requests_are_served_in_arrival_order() -> None:
    async def scenario() -> list[str]:
        budget = BodyBudget(100, wait=2.0)
        order: list[str] = []
        assert await budget.reserve(100)

        async def take(name: str, size: int) -> None:
            assert await budget.reserve(size)
            order.append(name)

        big = asyncio.create_task(take("big", 90))
        await asyncio.sleep(0.01)
        small = asyncio.create_task(take("small", 10))
        await asyncio.sleep(0.01)
        budget.release(20)  # room for the small one, but the big one is first in line
        await asyncio.sleep(0.05)
        assert order == []
        budget.release(80)
        await asyncio.gather(big, small)
        assert budget.used == 100
        return order

    assert asyncio.run(scenario()) == ["big", "small"]


def test_a_request_that_waited_too_long_lets_the_next_in() -> None:
    async def scenario() -> tuple[bool, bool, int]:
        budget = BodyBudget(100, wait=0.05)
        await budget.reserve(50)
        too_big = await budget.reserve(60)  # times out: 50 + 60 > 100
        fits = await budget.reserve(50)
        return too_big, fits, budget.used

    assert asyncio.run(scenario()) == (False, True, 100)


def test_a_cancelled_wait_gives_nothing_away() -> None:
    async def scenario() -> int:
        budget = BodyBudget(10, wait=5.0)
        await budget.reserve(10)
        waiter = asyncio.create_task(budget.reserve(5))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        budget.release(10)
        return budget.used

    assert asyncio.run(scenario()) == 0


def test_the_budget_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity must be positive"):
        BodyBudget(0)


def test_there_is_one_process_budget() -> None:
    assert process_budget() is process_budget()
    assert process_budget().capacity == DEFAULT_BUFFER_BYTES


# -- the guard -------------------------------------------------------------------------------


class Refusals:
    def __init__(self) -> None:
        self.noted: list[tuple[Any, ...]] = []
        self.closed = 0

    def note(self, *args: Any) -> None:
        self.noted.append(args)

    def close(self) -> None:
        self.closed += 1


class App:
    """Records the scope and the body it was given, then answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[bytes] = []
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope.get("method") in ("POST", "PUT"):
            message = await receive()
            assert message["more_body"] is False
            self.bodies.append(message["body"])
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def authenticate(token: str) -> Principal:
    if token == "tenant":
        return Principal("alice", "acme", frozenset({"encryption:encrypt", "encryption:admin"}))
    if token == "fleet":
        return Principal("ops", None, frozenset({"encryption:admin", FLEET_PERMISSION}))
    if token == "nothing":
        return Principal("eve", "acme", frozenset())
    raise ValueError("bad token")


POLICIES = {
    ("POST", f"{PREFIX}/encrypt"): RoutePolicy("encryption:encrypt", "tenant", 100),
    ("POST", f"{PREFIX}/keys/rotate"): RoutePolicy("encryption:admin", "fleet", 100),
    ("GET", f"{PREFIX}/status"): RoutePolicy("encryption:admin", "fleet", 0),
}


def request(
    path: str = f"{PREFIX}/encrypt",
    *,
    method: str = "POST",
    token: str | None = "tenant",
    length: int | str | None = None,
    kind: str = "http",
) -> dict[str, Any]:
    headers = []
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {
        "type": kind,
        "method": method,
        "path": path,
        "headers": headers,
        "client": ("10.1.2.3", 5555),
    }


def chunks(*parts: bytes) -> Callable[[], Awaitable[Message]]:
    queue = [
        {"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
        for i, p in enumerate(parts)
    ]

    async def receive() -> Message:
        if not queue:
            await asyncio.sleep(3600)
        return queue.pop(0)

    return receive


def run(guard: BodyGuard, scope: dict[str, Any], receive: Any = None) -> tuple[int | None, Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(guard(scope, receive or chunks(b""), send))
    if not sent:
        return None, {}
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    headers = {k.decode(): v.decode() for k, v in start.get("headers", [])}
    return start.get("status"), {"headers": headers, "body": body}


def guard(app: Any, **options: Any) -> BodyGuard:
    options.setdefault("authenticate", authenticate)
    options.setdefault("max_body_bytes", 1000)
    options.setdefault("prefix", PREFIX)
    options.setdefault("policies", POLICIES)
    options.setdefault("budget", BodyBudget(10_000, wait=0.05))
    return BodyGuard(app, **options)


def test_an_authorized_body_is_read_then_handed_over_in_one_piece() -> None:
    app = App()
    g = guard(app)
    status, _ = run(g, request(length=10), chunks(b"0123", b"456789"))
    assert status == 200 and app.bodies == [b"0123456789"]
    assert g.budget.used == 0  # released once the app answered


@pytest.mark.parametrize(("token", "reason"), [(None, "no_token"), ("garbage", "bad_token")])
def test_no_or_a_bad_token_is_401_before_the_body_and_counted(
    token: str | None, reason: str
) -> None:
    app, refusals = App(), Refusals()
    status, response = run(guard(app, refusals=refusals), request(token=token, length=5))
    assert status == 401
    assert json.loads(response["body"]) == {"detail": "unauthorized"}
    assert response["headers"]["www-authenticate"] == "Bearer"
    assert response["headers"]["connection"] == "close"
    assert app.calls == 0
    assert refusals.noted == [("10.1.2.3", reason, None, f"POST {PREFIX}/encrypt")]


@pytest.mark.parametrize(
    ("path", "method", "token", "reason"),
    [
        (f"{PREFIX}/encrypt", "POST", "nothing", "permission"),
        (f"{PREFIX}/keys/rotate", "POST", "tenant", "fleet_scope"),
        (f"{PREFIX}/encrypt", "POST", "fleet", "permission"),
    ],
)
def test_a_token_without_the_route_permission_or_scope_is_403(
    path: str, method: str, token: str, reason: str
) -> None:
    app, refusals = App(), Refusals()
    status, response = run(guard(app, refusals=refusals), request(path, method=method, token=token))
    assert status == 403 and json.loads(response["body"]) == {"detail": "forbidden"}
    assert app.calls == 0
    assert refusals.noted[0][1] == reason and refusals.noted[0][3] == f"{method} {path}"


def test_a_tenant_route_needs_a_token_that_names_a_tenant() -> None:
    policies = {("POST", f"{PREFIX}/encrypt"): RoutePolicy("encryption:admin", "tenant", 100)}
    refusals = Refusals()
    status, _ = run(guard(App(), policies=policies, refusals=refusals), request(token="fleet"))
    assert status == 403 and refusals.noted[0][1] == "no_tenant"


def test_a_declared_length_over_the_route_limit_is_413_unread() -> None:
    app = App()

    async def never() -> Message:
        raise AssertionError("the body must not be read")

    status, response = run(guard(app), request(length=101), never)
    assert status == 413 and json.loads(response["body"]) == {"detail": "payload too large"}
    assert app.calls == 0


@pytest.mark.parametrize("length", ["ten", "-1"])
def test_a_malformed_length_is_400(length: str) -> None:
    status, response = run(guard(App()), request(length=length))
    assert status == 400 and json.loads(response["body"]) == {"detail": "invalid request"}


def test_a_body_without_a_length_is_cut_off_as_soon_as_it_is_too_long() -> None:
    app = App()
    status, _ = run(guard(app), request(), chunks(b"x" * 60, b"x" * 60, b"never read"))
    assert status == 413 and app.calls == 0


def test_a_body_that_lies_about_its_length_is_never_buffered_past_it() -> None:
    app = App()
    status, _ = run(guard(app), request(length=5), chunks(b"0123456789"))
    assert status == 413 and app.calls == 0


def test_a_client_too_slow_to_send_its_body_gets_408() -> None:
    app = App()
    g = guard(app, body_timeout=0.05)
    first: list[Message] = [{"type": "http.request", "body": b"01234", "more_body": True}]

    async def trickle() -> Message:
        if first:
            return first.pop()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    status, _ = run(g, request(length=10), trickle)
    assert status == 408 and app.calls == 0
    assert g.budget.used == 0


def test_a_client_that_goes_away_gets_no_answer() -> None:
    app = App()

    async def disconnect() -> Message:
        return {"type": "http.disconnect"}

    assert run(guard(app), request(length=10), disconnect) == (None, {})
    assert app.calls == 0


def test_no_room_in_the_budget_is_503_with_retry_after() -> None:
    budget = BodyBudget(50, wait=0.01)
    status, response = run(guard(App(), budget=budget), request(length=60))
    assert status == 503
    assert response["headers"]["retry-after"] == "1"


def test_an_unknown_route_takes_no_body_and_is_left_to_the_app() -> None:
    app = App(status=404)
    status, _ = run(guard(app), request(f"{PREFIX}/nope", length=1), chunks(b"x"))
    assert status == 413 and app.calls == 0
    status, _ = run(guard(app), request(f"{PREFIX}/nope", method="GET"))
    assert status == 404 and app.calls == 1


def test_requests_outside_the_prefix_and_other_protocols_pass_untouched() -> None:
    app = App()
    g = guard(app)
    assert run(g, request("/healthz", method="GET", token=None))[0] == 200
    assert run(g, request(f"{PREFIX}/encrypt", kind="websocket", token=None))[0] == 200
    assert app.calls == 2


def test_without_a_table_only_bodies_are_bounded_and_reads_pass() -> None:
    app = App()
    g = guard(app, policies=None, authenticate=None, max_body_bytes=8)
    assert run(g, request(method="GET", token=None))[0] == 200
    assert run(g, request(token=None, length=9))[0] == 413
    assert run(g, request(token=None, length=8), chunks(b"12345678"))[0] == 200
    assert app.bodies == [b"12345678"]


def test_a_401_from_the_app_itself_is_counted() -> None:
    refusals = Refusals()
    g = guard(App(status=401), authenticate=None, refusals=refusals)
    assert run(g, request(token="whatever", length=2), chunks(b"{}"))[0] == 401
    assert refusals.noted == [("10.1.2.3", "bad_token", None, f"POST {PREFIX}/encrypt")]


def test_pending_refusals_are_written_at_lifespan_shutdown() -> None:
    refusals = Refusals()
    g = guard(App(), refusals=refusals)

    async def shutdown() -> Message:
        return {"type": "lifespan.shutdown"}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(g({"type": "lifespan"}, shutdown, send))
    assert refusals.closed == 1
    assert sent == [{"type": "lifespan.shutdown.complete"}]
