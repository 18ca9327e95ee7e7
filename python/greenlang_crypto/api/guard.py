"""An ASGI guard in front of the API router: authentication first, then a bounded body.

FastAPI reads and parses a request body before it runs the route's dependencies, so without
this guard an unauthenticated client can make the server buffer and parse any amount of JSON
(and learn from a 422 that validation ran before authentication). The guard, for requests
under the API prefix that carry a body:

1. authenticates the ``Authorization`` header with the authorizer's ``authenticate(token)``
   (when it has one) and answers the uniform 401 *without reading the body*;
2. answers 413 at once when ``Content-Length`` exceeds the limit, without reading the body;
3. reads the body itself, stopping with 413 as soon as the bytes received exceed the limit
   (chunked uploads have no ``Content-Length``), then hands the buffered body to the app.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["BodyGuard", "default_body_limit"]

_log = logging.getLogger("greenlang_crypto.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def default_body_limit(max_plaintext_bytes: int) -> int:
    """A little over ``max_plaintext_bytes`` in base64: the largest useful request body.

    The base64 text of the largest plaintext (or of its envelope, whose header adds less than
    64 KiB) plus 64 KiB for the JSON around it (context, reason, associated data).
    """
    envelope = max_plaintext_bytes + 64 * 1024
    return -(-envelope // 3) * 4 + 64 * 1024


class BodyGuard:
    """ASGI middleware: authenticate before reading, and bound the body.

    Args:
        app: The wrapped ASGI app.
        authenticate: ``authenticate(token) -> principal``, raising on a bad token; None to
            only bound the body (an authorizer without such a method).
        max_body_bytes: Largest request body accepted under ``prefix``.
        prefix: Path prefix of the guarded routes.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticate: Callable[[str], Any] | None,
        max_body_bytes: int,
        prefix: str,
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.max_body_bytes = max_body_bytes
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Guards one request."""
        if (
            scope.get("type") != "http"
            or scope.get("method") not in _BODY_METHODS
            or not str(scope.get("path", "")).startswith(self.prefix)
        ):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        if self.authenticate is not None and not self._authenticated(headers):
            await _respond(send, 401, {"detail": "unauthorized"}, {"WWW-Authenticate": "Bearer"})
            return
        declared = headers.get("content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _respond(send, 400, {"detail": "invalid request"})
                return
            if length > self.max_body_bytes:
                await _respond(send, 413, {"detail": "payload too large"})
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _respond(send, 413, {"detail": "payload too large"})
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _authenticated(self, headers: dict[str, bytes]) -> bool:
        assert self.authenticate is not None
        scheme, _, token = headers.get("authorization", b"").decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        try:
            self.authenticate(token)
        except Exception as exc:  # any failure is the same opaque 401
            _log.info("token rejected before the body: %s", type(exc).__name__)
            return False
        return True


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
