"""An ASGI guard in front of the API router: who may send a body, how large, and how many.

FastAPI reads and parses a request body before it runs the route's dependencies, so whatever
the routes check comes too late to protect memory: any token holder could make the server
buffer and parse a body of any size (and anyone could learn from a 422 that validation ran
before authentication). The guard, for every request under the API prefix, before reading a
single body byte:

1. authenticates the ``Authorization`` header with the authorizer's ``authenticate(token)``
   (when it has one) and answers the uniform 401;
2. looks the method and path up in the route table (:func:`route_policies`, read from the
   router itself) and answers 403 unless the token holds the route's permission and scope;
3. answers 413 when ``Content-Length`` exceeds the route's own limit, derived from what its
   request schema can accept (:func:`schema_body_bound`);
4. reserves the body's bytes in a process-wide :class:`BodyBudget`; while the budget is
   taken, the request waits briefly, then gets 503 (it is never buffered beyond the budget);
5. reads the body, stopping with 413 as soon as the bytes received exceed the route's limit
   (chunked uploads have no ``Content-Length``) and with 408 when it takes too long, then hands
   the buffered body to the app and releases the reservation when the app has answered.

Refusals (401, 403) are counted by a :class:`~greenlang_crypto.api.refusals.RefusalAggregator`
instead of being audited one by one. On the ASGI lifespan shutdown the guard writes the
pending counts, so nothing counted is lost when the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from greenlang_crypto.api.refusals import RefusalAggregator

__all__ = [
    "DEFAULT_BUFFER_BYTES",
    "BodyBudget",
    "BodyGuard",
    "RoutePolicy",
    "default_body_limit",
    "process_budget",
    "route_policies",
    "schema_body_bound",
]

_log = logging.getLogger("greenlang_crypto.api")
# Token rejections are authentication events: logged where the authorizer logs its own.
_auth_log = logging.getLogger("greenlang_crypto.api.auth")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: Scope values a route declares (see :func:`greenlang_crypto.api.routes.require_permission`).
SCOPE_TENANT = "tenant"
SCOPE_FLEET = "fleet"

#: Default of the process-wide bound on request bodies buffered at once. A buffered body
#: costs several times its size while it is parsed and served (the JSON text, the decoded
#: bytes, the envelope, the response), so this is set to keep the whole of it well under
#: 100 MiB while still letting a few of the largest requests run side by side.
DEFAULT_BUFFER_BYTES = 12 * 1024 * 1024
#: How long a request waits for room in the budget before it gets 503.
DEFAULT_BUDGET_WAIT = 2.0
#: How long a client may take to send a whole body before it gets 408. Reserved bytes are
#: held meanwhile, so a client trickling its body must not hold them for ever.
DEFAULT_BODY_TIMEOUT = 30.0

# Room for whitespace and formatting around the fields a schema bounds.
_JSON_SLACK = 4096
# The most JSON text one character of a free-text field can take: a character outside the
# Basic Multilingual Plane written as two \uXXXX escapes.
_MAX_BYTES_PER_CHAR = 12
# Patterns whose characters JSON writes as themselves, one byte each (base64 fields): a client
# that escapes them needlessly may be refused with 413, which costs it nothing it needs.
_ONE_BYTE_PATTERNS = frozenset({r"^[A-Za-z0-9+/]*={0,2}$"})
_SCALAR_BYTES = {"integer": 24, "number": 32, "boolean": 5, "null": 4}


def default_body_limit(max_plaintext_bytes: int) -> int:
    """A little over ``max_plaintext_bytes`` in base64: the configured cap on a request body.

    The base64 text of the largest plaintext (or of its envelope, whose header adds less than
    64 KiB) plus 64 KiB for the JSON around it (context, reason, associated data). Each
    route's own limit is the smaller of this and what its schema accepts.
    """
    envelope = max_plaintext_bytes + 64 * 1024
    return -(-envelope // 3) * 4 + 64 * 1024


def schema_body_bound(schema: Mapping[str, Any]) -> int | None:
    """The largest JSON text a request schema can accept, in bytes; None when unbounded.

    Walks a JSON schema (as pydantic writes it): strings count ``maxLength`` characters
    (one byte each for base64 fields, else the longest escape), objects their properties,
    ``additionalProperties`` times ``maxProperties``, and arrays ``maxItems`` items; plus
    quotes, separators and a few KiB of whitespace. A string, object or array with no bound
    makes the whole schema unbounded.
    """
    defs: Mapping[str, Any] = schema.get("$defs", {})
    inner = _bound(schema, defs, 0)
    return None if inner is None else inner + _JSON_SLACK


def _bound(node: Mapping[str, Any], defs: Mapping[str, Any], depth: int) -> int | None:
    if depth > 32:
        return None  # a recursive model has no bound
    ref = node.get("$ref")
    if isinstance(ref, str):
        target = defs.get(ref.rsplit("/", 1)[-1])
        return None if target is None else _bound(target, defs, depth + 1)
    options = node.get("anyOf") or node.get("oneOf")
    if options:
        sizes = [_bound(o, defs, depth + 1) for o in options]
        return None if any(s is None for s in sizes) else max(s for s in sizes if s is not None)
    kind = node.get("type")
    if kind == "string":
        return _string_bound(node)
    if kind in _SCALAR_BYTES:
        return _SCALAR_BYTES[kind]
    if kind == "array":
        items, count = node.get("items", {}), node.get("maxItems")
        if not isinstance(count, int):
            return None
        item = _bound(items, defs, depth + 1)
        return None if item is None else 2 + count * (item + 1)
    if kind == "object":
        return _object_bound(node, defs, depth)
    return None


def _string_bound(node: Mapping[str, Any]) -> int | None:
    chars = node.get("maxLength")
    if not isinstance(chars, int):
        return None
    per_char = 1 if node.get("pattern") in _ONE_BYTE_PATTERNS else _MAX_BYTES_PER_CHAR
    return 2 + chars * per_char


def _object_bound(node: Mapping[str, Any], defs: Mapping[str, Any], depth: int) -> int | None:
    total = 2
    for name, prop in dict(node.get("properties", {})).items():
        value = _bound(prop, defs, depth + 1)
        if value is None:
            return None
        # "name": value, (the name as written in the schema, escaped at worst)
        total += 2 + len(name) * _MAX_BYTES_PER_CHAR + 1 + value + 1
    extra = node.get("additionalProperties", True)
    if extra is False:
        return total
    count = node.get("maxProperties")
    if not isinstance(count, int) or extra is True:
        return None
    names = node.get("propertyNames", {"type": "string"})
    key = _string_bound({**names, "type": "string"})
    value = _bound(extra, defs, depth + 1)
    if key is None or value is None:
        return None
    return total + count * (key + 1 + value + 1)


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """What the guard enforces for one method and path.

    Attributes:
        permission: The permission the route requires.
        scope: ``tenant`` (the token must name a tenant; the route checks it against the
            request) or ``fleet`` (the token must hold the fleet grant and name no tenant).
        body_limit: Largest body accepted, in bytes (0: the route takes no body).
    """

    permission: str
    scope: str
    body_limit: int


def route_policies(
    routes: Iterable[Any], *, max_body_bytes: int, prefix: str
) -> dict[tuple[str, str], RoutePolicy]:
    """The route table the guard enforces, read from the routes themselves.

    Each API route under ``prefix`` must depend on a permission dependency (see
    :func:`greenlang_crypto.api.routes.require_permission`), whose permission and scope are
    read from it; its body limit is the smaller of ``max_body_bytes`` and
    :func:`schema_body_bound` of its body model.

    Raises:
        ValueError: A route under ``prefix`` declares no permission, so the guard could not
            check it before its body is read.
    """
    from pydantic import TypeAdapter

    from greenlang_crypto.api.routes import PERMISSION_ATTR, SCOPE_ATTR

    table: dict[tuple[str, str], RoutePolicy] = {}
    for route in routes:
        path = getattr(route, "path", "")
        dependant = getattr(route, "dependant", None)
        if dependant is None or not str(path).startswith(prefix):
            continue
        found = _declared_permission(dependant, PERMISSION_ATTR, SCOPE_ATTR)
        if found is None:
            raise ValueError(f"API route {path} declares no permission")
        permission, scope = found
        limit = 0
        if dependant.body_params:
            bounds = []
            for param in dependant.body_params:
                annotation = param.field_info.annotation
                bounds.append(schema_body_bound(TypeAdapter(annotation).json_schema()))
            if len(bounds) == 1 and bounds[0] is not None:
                limit = min(max_body_bytes, bounds[0])
            else:
                # Several body parameters are embedded under their names; rather than model
                # that, such a route falls back to the configured cap.
                limit = max_body_bytes
        for method in getattr(route, "methods", None) or ():
            table[(method.upper(), path)] = RoutePolicy(permission, scope, limit)
    return table


def _declared_permission(
    dependant: Any, permission_attr: str, scope_attr: str
) -> tuple[str, str] | None:
    stack = list(dependant.dependencies)
    while stack:
        dep = stack.pop()
        permission = getattr(dep.call, permission_attr, None)
        if isinstance(permission, str):
            return permission, str(getattr(dep.call, scope_attr, SCOPE_FLEET))
        stack.extend(dep.dependencies)
    return None


class _Waiter:
    __slots__ = ("future", "granted", "loop", "size")

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.size = size
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.granted = False


class BodyBudget:
    """A bound on request-body bytes buffered at once, shared by every guard that uses it.

    :meth:`reserve` takes room for a body before it is read and :meth:`release` gives it back
    when the request is answered. Requests that do not fit wait in arrival order (so a large
    body is not starved by a stream of small ones) for up to ``wait`` seconds, then are told
    no. Thread-safe and usable from several event loops (each in-process server runs its own).

    Args:
        capacity: Bytes that may be reserved at once.
        wait: Seconds a request waits for room.
    """

    def __init__(self, capacity: int, *, wait: float = DEFAULT_BUDGET_WAIT) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.wait = wait
        self._lock = threading.Lock()
        self._used = 0
        self._waiters: deque[_Waiter] = deque()

    @property
    def used(self) -> int:
        """Bytes reserved now."""
        return self._used

    async def reserve(self, size: int) -> bool:
        """Reserves ``size`` bytes, waiting up to :attr:`wait`; whether it got them."""
        if size <= 0:
            return True
        if size > self.capacity:
            return False
        with self._lock:
            if not self._waiters and self._used + size <= self.capacity:
                self._used += size
                return True
            waiter = _Waiter(size, asyncio.get_running_loop())
            self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self.wait)
        except TimeoutError:
            with self._lock:
                if waiter.granted:  # room came as the wait ran out: keep it
                    return True
                self._waiters.remove(waiter)
                # The one that timed out may have been first in line; those behind may fit.
                self._grant_locked()
            return False
        except asyncio.CancelledError:
            with self._lock:
                if waiter.granted:
                    self._used -= size
                else:
                    self._waiters.remove(waiter)
                self._grant_locked()
            raise
        return True

    def release(self, size: int) -> None:
        """Gives back ``size`` reserved bytes and lets waiting requests in."""
        if size <= 0:
            return
        with self._lock:
            self._used -= size
            self._grant_locked()

    def _grant_locked(self) -> None:
        while self._waiters and self._used + self._waiters[0].size <= self.capacity:
            waiter = self._waiters.popleft()
            try:
                waiter.loop.call_soon_threadsafe(_wake, waiter.future)
            except RuntimeError:
                continue  # its event loop is gone, and the request with it
            self._used += waiter.size
            waiter.granted = True


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_process_budget: BodyBudget | None = None
_process_budget_lock = threading.Lock()


def process_budget() -> BodyBudget:
    """The budget shared by every guard in this process that is not given its own."""
    global _process_budget  # noqa: PLW0603 - one budget per process is the point
    with _process_budget_lock:
        if _process_budget is None:
            _process_budget = BodyBudget(DEFAULT_BUFFER_BYTES)
        return _process_budget


class BodyGuard:
    """ASGI middleware: authenticate and authorize before reading, and bound the body.

    Args:
        app: The wrapped ASGI app.
        authenticate: ``authenticate(token) -> principal``, raising on a bad token; None when
            the authorizer has no such method (then only the body is bounded here, and the
            routes check the token and permission after reading it).
        max_body_bytes: Largest body of a request under ``prefix`` that ``policies`` does not
            name (and every request when ``policies`` is None).
        prefix: Path prefix of the guarded routes.
        policies: The route table (:func:`route_policies`). Without it the guard only
            authenticates and bounds bodies by ``max_body_bytes``.
        budget: The bound on bodies buffered at once (default: :func:`process_budget`).
        refusals: Where 401s and 403s are counted; None: not counted.
        body_timeout: Seconds a client has to send a whole body.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticate: Callable[[str], Any] | None,
        max_body_bytes: int,
        prefix: str,
        policies: Mapping[tuple[str, str], RoutePolicy] | None = None,
        budget: BodyBudget | None = None,
        refusals: RefusalAggregator | None = None,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.max_body_bytes = max_body_bytes
        self.prefix = prefix
        self.policies = policies
        self.budget = budget if budget is not None else process_budget()
        self.refusals = refusals
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Guards one request (and writes pending refusal counts at shutdown)."""
        kind = scope.get("type")
        if kind == "lifespan":
            await self.app(scope, receive, self._on_shutdown(send))
            return
        path = str(scope.get("path", ""))
        if kind != "http" or not path.startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method", "")).upper()
        if self.policies is None and method not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        source = _source(scope)
        policy = None if self.policies is None else self.policies.get((method, path))
        # Only routes the API serves are named in refusal counts, never a path a client chose.
        route = None if policy is None else f"{method} {path}"
        principal: Any = None
        if self.authenticate is not None:
            principal, reason = self._principal(headers)
            if principal is None:
                self._note(source, reason, None, route)
                await _respond(
                    send, 401, {"detail": "unauthorized"}, {"WWW-Authenticate": "Bearer"}
                )
                return
        limit = self.max_body_bytes
        if self.policies is not None:
            # A method or path the router does not serve takes no body: the app answers it
            # (404, 405) without anything having been read.
            limit = 0 if policy is None else policy.body_limit
            if policy is not None and principal is not None:
                refused = _refusal(policy, principal)
                if refused is not None:
                    subject = getattr(principal, "subject", None)
                    self._note(source, refused, subject, route)
                    await _respond(send, 403, {"detail": "forbidden"})
                    return
        await self._with_body(scope, receive, send, headers, limit, (source, route))

    async def _with_body(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: Mapping[str, bytes],
        limit: int,
        origin: tuple[str | None, str | None],
    ) -> None:
        declared = headers.get("content-length")
        length: int | None = None
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _respond(send, 400, {"detail": "invalid request"})
                return
            if length < 0:
                await _respond(send, 400, {"detail": "invalid request"})
                return
            if length > limit:
                await _respond(send, 413, {"detail": "payload too large"})
                return
        # A body of unknown length (chunked) may be as large as the limit: its room is taken
        # up front.
        size = length if length is not None else limit
        if not await self.budget.reserve(size):
            _log.info("request body refused for lack of buffer room (%d bytes)", size)
            await _respond(send, 503, {"detail": "server busy"}, {"Retry-After": "1"})
            return
        try:
            try:
                async with asyncio.timeout(self.body_timeout):
                    # Never more than was reserved, whatever the framing turns out to carry.
                    body = await _read_body(receive, size)
            except TimeoutError:
                await _respond(send, 408, {"detail": "request timeout"})
                return
            if body is None:  # the client went away
                return
            if isinstance(body, int):
                await _respond(send, 413, {"detail": "payload too large"})
                return
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, self._watch(send, origin))
        finally:
            self.budget.release(size)

    def _principal(self, headers: Mapping[str, bytes]) -> tuple[Any, str]:
        assert self.authenticate is not None
        scheme, _, token = headers.get("authorization", b"").decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None, "no_token"
        try:
            return self.authenticate(token), ""
        except Exception as exc:  # any failure is the same opaque 401
            _auth_log.info("token rejected before the body: %s", type(exc).__name__)
            return None, "bad_token"

    def _note(
        self, source: str | None, reason: str, subject: str | None, route: str | None
    ) -> None:
        if self.refusals is not None:
            self.refusals.note(source, reason, subject, route)

    def _watch(self, send: Send, origin: tuple[str | None, str | None]) -> Send:
        """``send`` that counts a 401 the app itself answers (a host authorizer's)."""
        if self.refusals is None:
            return send

        async def watched(message: Message) -> None:
            if message.get("type") == "http.response.start" and message.get("status") == 401:
                self._note(origin[0], "bad_token", None, origin[1])
            await send(message)

        return watched

    def _on_shutdown(self, send: Send) -> Send:
        refusals = self.refusals
        if refusals is None:
            return send

        async def on_lifespan(message: Message) -> None:
            if message.get("type") in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                # Before the server returns, so the records reach the audit log before the
                # process closes it.
                refusals.close()
            await send(message)

        return on_lifespan


def _refusal(policy: RoutePolicy, principal: Any) -> str | None:
    """Why ``principal`` may not call a route with ``policy``; None when it may."""
    permissions: frozenset[str] = getattr(principal, "permissions", frozenset())
    if policy.permission not in permissions:
        return "permission"
    if policy.scope == SCOPE_FLEET and not getattr(principal, "fleet", False):
        return "fleet_scope"
    if policy.scope == SCOPE_TENANT and getattr(principal, "tenant", None) is None:
        return "no_tenant"
    return None


def _source(scope: Scope) -> str | None:
    client = scope.get("client")
    if client:
        with contextlib.suppress(IndexError, TypeError):
            return str(client[0])
    return None


async def _read_body(receive: Receive, limit: int) -> bytes | int | None:
    """The whole body; the byte count once it exceeds ``limit``; None on disconnect."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return size
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(
    send: Send, status: int, content: dict[str, str], headers: dict[str, str] | None = None
) -> None:
    body = json.dumps(content).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    # Close the connection: the unread body must not be parsed as the next request.
    raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
