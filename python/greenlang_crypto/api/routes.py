"""The ``/api/v1/encryption`` router: encrypt, decrypt, keys, erasure, rewrap, audit, status.

Every route depends on :func:`require_permission`, and a test walks ``app.routes`` to keep it
that way. The dependency names the route's permission and scope: ``tenant`` routes (encrypt,
decrypt) act on the data of the tenant the token names; ``fleet`` routes (keys, rotation,
tenant erasure, rewrap, audit reads, status) act on the shared keyring or on every tenant's
records and need the fleet grant (:data:`~greenlang_crypto.api.auth.FLEET_PERMISSION`),
which no tenant-scoped token carries. The guard in front of the router reads the same
declarations to refuse a request before its body is read. Payloads are strict base64 (RFC
4648 alphabet with padding, no whitespace, ASCII only); bad input is a 422 whose body never
echoes the request. Plaintext is never logged, audited or returned by any route except
``/decrypt``.

Error responses are the router's own business (:class:`ApiRoute`): its routes answer a fixed
422, their ``HTTPException`` as FastAPI's default would, and an unexpected error as a bare 500,
without an exception handler on the host application, whose own routes keep FastAPI's errors.
"""

# No ``from __future__ import annotations`` here: FastAPI must evaluate the route signatures,
# whose Annotated dependencies name local variables of build_router.
import base64
import binascii
import logging
import re
import uuid
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException

from greenlang_crypto._core import parse_envelope
from greenlang_crypto.api.auth import Principal
from greenlang_crypto.api.guard import SCOPE_FLEET, SCOPE_TENANT
from greenlang_crypto.api.refusals import RefusalAggregator
from greenlang_crypto.audit import AuditLog, AuditQuery, acting_as
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import (
    AuditSinkUnavailableError,
    DecryptionError,
    GreenlangCryptoError,
    InvalidArgumentError,
    InvalidContextError,
    KeyNotFoundError,
    KeyRetiredError,
    KeyStateError,
    KeyVersionUnavailableError,
    KmsError,
    PayloadTooLargeError,
    UnavailableError,
)
from greenlang_crypto.service import EncryptionService, tenant_digest

__all__ = [
    "API_PREFIX",
    "PERMISSION_ATTR",
    "SCOPE_ATTR",
    "SCOPE_FLEET",
    "SCOPE_TENANT",
    "ApiRoute",
    "build_router",
    "require_permission",
]

_log = logging.getLogger("greenlang_crypto.api")

API_PREFIX = "/api/v1/encryption"
#: Attribute set on every permission dependency; the route-walk test and the guard read it.
PERMISSION_ATTR = "__glc_permission__"
#: Attribute naming the dependency's scope (``tenant`` or ``fleet``); the guard reads it.
SCOPE_ATTR = "__glc_scope__"

#: Largest base64 payload accepted (about 1 MiB of binary data).
MAX_B64_CHARS = 1_400_000
_B64_PATTERN = r"^[A-Za-z0-9+/]*={0,2}$"
_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

Base64 = Annotated[
    str,
    StringConstraints(strict=True, max_length=MAX_B64_CHARS, pattern=_B64_PATTERN),
    Field(description="Standard base64 with padding; no whitespace."),
]
Label = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=256)]
DataClass = Annotated[
    str, StringConstraints(strict=True, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
]


class ContextModel(BaseModel):
    """The encryption context (non-secret, bound to the ciphertext)."""

    model_config = ConfigDict(extra="forbid")

    tenant_id: Label
    data_class: DataClass
    extra: dict[Label, Label] = Field(default_factory=dict, max_length=32)


class EncryptRequest(BaseModel):
    """Body of ``POST /encrypt``."""

    model_config = ConfigDict(extra="forbid")

    plaintext: Base64
    context: ContextModel
    associated_data: Base64 | None = None


class EnvelopeResponse(BaseModel):
    """An envelope and the key version that sealed it."""

    ciphertext: str
    key_version: int


class DecryptRequest(BaseModel):
    """Body of ``POST /decrypt``; ``reason`` goes to the audit log."""

    model_config = ConfigDict(extra="forbid")

    ciphertext: Base64
    context: ContextModel
    associated_data: Base64 | None = None
    reason: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=500)]


class DecryptResponse(BaseModel):
    """The plaintext, base64."""

    plaintext: str


class RewrapRequest(BaseModel):
    """Body of ``POST /rewrap``."""

    model_config = ConfigDict(extra="forbid")

    ciphertext: Base64
    context: ContextModel
    associated_data: Base64 | None = None
    reason: Annotated[str, StringConstraints(strict=True, max_length=500)] | None = None


class RotateRequest(BaseModel):
    """Optional body of ``POST /keys/rotate``."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, StringConstraints(strict=True, max_length=500)] | None = None


class EraseTenantRequest(BaseModel):
    """Body of ``POST /keys/erase-tenant``; ``reason`` goes to the audit log."""

    model_config = ConfigDict(extra="forbid")

    tenant_id: Label
    reason: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=500)]
    #: Then schedule the deletion of the tenant's own KMS key (``tenant_kms_keys``).
    schedule_kms_key_deletion: StrictBool = False
    pending_window_days: Annotated[int, Field(strict=True, ge=7, le=30)] = 30


class EraseTenantResponse(BaseModel):
    """What an erasure did (see :class:`~greenlang_crypto.service.ErasureReport`)."""

    tenant_id: str
    stored_deks_destroyed: int
    branch_keys_destroyed: int
    instances_acknowledged: int
    began: bool
    completed: bool
    epoch: int
    seconds: float
    kms_key_deletion_date: str | None = None


class KeyVersionModel(BaseModel):
    """One keyring version."""

    version: int
    state: str
    provider: str
    wrapping_key_id: str
    created_at: float
    rotated_at: float | None


class KeysResponse(BaseModel):
    """Keyring versions."""

    primary_version: int
    versions: list[KeyVersionModel]


class RotateResponse(BaseModel):
    """Outcome of a rotation."""

    old_version: int | None
    new_version: int


class AuditRecordModel(BaseModel):
    """One audit record."""

    seq: int
    time: str
    actor: str
    action: str
    outcome: str
    key_id: str | None
    key_version: int | None
    context_digest: str | None
    data_class: str | None
    request_id: str | None
    reason: str | None
    details: dict[str, Any]
    hmac: str


class AuditPage(BaseModel):
    """A page of audit records; pass ``next_after_seq`` as ``after_seq`` for the next one."""

    records: list[AuditRecordModel]
    next_after_seq: int | None


class StatusResponse(BaseModel):
    """Service status."""

    provider: str
    provider_ok: bool
    primary_version: int
    min_decryption_version: int
    stored_deks_by_version: dict[str, int]
    cache: dict[str, dict[str, int]]
    audit_sink_up: bool
    audit_buffered: int


class ApiRoute(APIRoute):
    """The route class of the API router: its errors are answered here, not by the app.

    A host application keeps its own exception handlers and FastAPI's field-level 422 for
    its own routes; the API's routes answer the same way whatever the host installed:

    * a request that fails validation: 422 ``{"detail": "invalid request"}`` (FastAPI's
      default body would echo the offending input, which may be plaintext);
    * an ``HTTPException`` (401, 403 and the mapped library errors): its status, headers and
      ``{"detail": ...}``, as FastAPI's default handler writes it;
    * a library error no route mapped: its typed answer, as the routes map it;
    * any other exception: 500 ``{"detail": "internal error"}``, logged by type only, unless
      it was raised by the host's code without passing through the library's (an exception
      of the host's own authorizer, say) and the host registered a handler for its class,
      which then answers it.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The route's handler, wrapped to answer its errors itself."""
        handler = super().get_route_handler()

        async def answer_errors(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError:
                return JSONResponse(status_code=422, content={"detail": "invalid request"})
            except StarletteHTTPException as exc:
                return _http_error(exc)
            except GreenlangCryptoError as exc:
                # A library error a route did not map (none should): its typed answer, never
                # the host's handler, which may echo its message.
                return _http_error(_error(exc))
            except Exception as exc:
                if _host_handles(request, exc):
                    raise
                _log.error("unhandled error on %s: %s", self.path, type(exc).__name__)
                return JSONResponse(status_code=500, content={"detail": "internal error"})

        return answer_errors


def _http_error(exc: StarletteHTTPException) -> Response:
    headers = getattr(exc, "headers", None)
    if exc.status_code < 200 or exc.status_code in (204, 205, 304):
        return Response(status_code=exc.status_code, headers=headers)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


# A host's handler for these covers every error: it is no claim on the API's errors.
_CATCH_ALL = frozenset({Exception, BaseException, object})


def _host_handles(request: Request, exc: Exception) -> bool:
    """Whether the host app should answer ``exc``: its code raised it, and it has a handler.

    Only an exception that never passed through the library's code (the host's authorizer
    raised it) qualifies: a ``ValueError`` or a driver error from inside the library would
    otherwise reach a host handler registered for its class, which may echo its message
    (plaintext, a key store address) to the caller.
    """
    if _raised_in_library(exc):
        return False
    handlers = getattr(request.scope.get("app"), "exception_handlers", None)
    if not isinstance(handlers, dict):
        return False
    return any(cls in handlers for cls in type(exc).__mro__ if cls not in _CATCH_ALL)


def _raised_in_library(exc: BaseException) -> bool:
    """Whether a frame of ``exc``'s traceback, below the route wrapper, is the library's."""
    tb = exc.__traceback__
    # The first frame is the wrapper that caught it (this package's): not evidence.
    tb = tb.tb_next if tb is not None else None
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if isinstance(module, str) and (
            module == "greenlang_crypto" or module.startswith("greenlang_crypto.")
        ):
            return True
        tb = tb.tb_next
    return False


def _b64(value: str) -> bytes:
    if len(value) % 4:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid request")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid request") from None


def _context(model: ContextModel) -> EncryptionContext:
    try:
        return EncryptionContext(
            tenant_id=model.tenant_id, data_class=model.data_class, extra=model.extra
        )
    except InvalidContextError:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid request") from None


def _error(exc: Exception) -> HTTPException:
    """Maps a library error to a response that carries nothing from the request."""
    if isinstance(exc, PayloadTooLargeError):
        return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "payload too large")
    if isinstance(exc, InvalidContextError | InvalidArgumentError | TypeError):
        return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid request")
    if isinstance(exc, KeyVersionUnavailableError | KeyRetiredError):
        # The version comes from the envelope's public header: naming it adds no decryption
        # oracle, and it lets operators tell a missing key version from a failed tag.
        return HTTPException(status.HTTP_409_CONFLICT, str(exc))
    if isinstance(exc, DecryptionError | KeyNotFoundError):
        return HTTPException(status.HTTP_400_BAD_REQUEST, "decryption failed")
    if isinstance(exc, KeyStateError):
        return HTTPException(status.HTTP_409_CONFLICT, "key state does not allow this")
    if isinstance(exc, KmsError):
        return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "key service unavailable")
    if isinstance(exc, AuditSinkUnavailableError):
        return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "audit log unavailable")
    if isinstance(exc, UnavailableError):
        # The key store out of reach (or this instance fenced): the same call may succeed
        # later, which a 400 would deny.
        return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "service unavailable")
    if isinstance(exc, GreenlangCryptoError):
        return HTTPException(status.HTTP_400_BAD_REQUEST, "request failed")
    raise exc


def _tenant_id(value: str) -> str:
    """``value`` checked as the tenant of an encryption context is (422 when it is not one)."""
    try:
        EncryptionContext(tenant_id=value, data_class="erasure")
    except InvalidContextError:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid request") from None
    return value


def _key_version(envelope: bytes) -> int | None:
    try:
        return parse_envelope(envelope).key_version
    except GreenlangCryptoError:
        return None


def request_id(request: Request, response: Response) -> str:
    """The caller's ``X-Request-ID`` when well-formed, else a new one; echoed in the response."""
    rid = request.headers.get("x-request-id")
    if not rid or not _RID.fullmatch(rid):
        rid = uuid.uuid4().hex
    request.state.glc_request_id = rid
    response.headers["X-Request-ID"] = rid
    return rid


def _client(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


def _route(request: Request) -> str | None:
    # The matched route's template, never the path as the client wrote it.
    path = getattr(request.scope.get("route"), "path", None)
    return f"{request.method} {path}" if isinstance(path, str) else None


def require_permission(
    permission: str,
    authorizer: Callable[..., Any],
    audit: AuditLog,
    *,
    scope: str = SCOPE_FLEET,
    refusals: RefusalAggregator | None = None,
) -> Callable[..., Principal]:
    """A dependency that authenticates with ``authorizer`` and requires ``permission``.

    With ``scope="fleet"`` (the default, so a route that says nothing is closed to tenant
    tokens) the principal must also be fleet-wide (:attr:`Principal.fleet`); with
    ``scope="tenant"`` it must name a tenant, which the route then compares with the request.
    A refusal answers 403 and is counted in ``refusals`` (one audit record per source and
    interval, not one per request).

    Args:
        permission: The permission required.
        authorizer: The dependency returning the :class:`Principal`.
        audit: The audit log (refusal counts go there when ``refusals`` is not given).
        scope: ``fleet`` or ``tenant``.
        refusals: Where refusals are counted; pass the router's.
    """
    if scope not in (SCOPE_FLEET, SCOPE_TENANT):
        raise ValueError(f"scope must be {SCOPE_FLEET!r} or {SCOPE_TENANT!r}")
    counter = refusals if refusals is not None else RefusalAggregator(audit)

    def dependency(request: Request, principal: Principal = Depends(authorizer)) -> Principal:  # noqa: B008
        reason = None
        if permission not in principal.permissions:
            reason = "permission"
        elif scope == SCOPE_FLEET and not principal.fleet:
            reason = "fleet_scope"
        elif scope == SCOPE_TENANT and principal.tenant is None:
            reason = "no_tenant"
        if reason is not None:
            counter.note(_client(request), reason, principal.subject, _route(request))
            raise HTTPException(status.HTTP_403_FORBIDDEN, "forbidden")
        return principal

    setattr(dependency, PERMISSION_ATTR, permission)
    setattr(dependency, SCOPE_ATTR, scope)
    return dependency


def _same_tenant(
    principal: Principal, ctx: EncryptionContext, refusals: RefusalAggregator, request: Request
) -> None:
    if principal.tenant is None or principal.tenant != ctx.tenant_id:
        reason = "no_tenant" if principal.tenant is None else "tenant_mismatch"
        refusals.note(_client(request), reason, principal.subject, _route(request))
        raise HTTPException(status.HTTP_403_FORBIDDEN, "forbidden")


def build_router(
    service: EncryptionService,
    audit: AuditLog,
    *,
    authorizer: Callable[..., Any],
    prefix: str = API_PREFIX,
    refusals: RefusalAggregator | None = None,
) -> APIRouter:
    """The API router. Mount it with :func:`greenlang_crypto.api.mount_encryption_api`.

    Args:
        service: The encryption service the routes call.
        audit: The audit log (admin actions fail closed when it is down).
        authorizer: A FastAPI dependency returning a :class:`Principal` (for example a
            :class:`~greenlang_crypto.api.auth.JwtAuthorizer`).
        prefix: Path prefix.
        refusals: Where 403s are counted. Default: a new aggregator, written at the app's
            shutdown through the router's shutdown handler.
    """
    router = APIRouter(prefix=prefix, tags=["encryption"], route_class=ApiRoute)
    if refusals is None:
        refusals = RefusalAggregator(audit)
        router.on_shutdown.append(refusals.close)
    # Bound to a name of its own: the closures below need the non-optional type.
    denials = refusals

    def permission(name: str, scope: str) -> Callable[..., Principal]:
        return require_permission(name, authorizer, audit, scope=scope, refusals=denials)

    can_encrypt = permission("encryption:encrypt", SCOPE_TENANT)
    can_decrypt = permission("encryption:decrypt", SCOPE_TENANT)
    # The keyring is shared by every tenant: listing, rotating and rewrapping are fleet-wide.
    is_admin = permission("encryption:admin", SCOPE_FLEET)
    # Audit records do not name their tenant (only a context digest), so they cannot be
    # filtered per tenant: reading them is fleet-wide.
    can_audit = permission("encryption:audit", SCOPE_FLEET)
    can_read = permission("encryption:read", SCOPE_FLEET)
    # Erasure acts in the shared key store and cannot be undone: fleet-wide, and a permission
    # of its own, so neither a tenant's application nor a rotation operator can shred data.
    can_erase = permission("encryption:erase", SCOPE_FLEET)
    rid_dep = Depends(request_id)

    @router.post("/encrypt", response_model=EnvelopeResponse)
    def encrypt(
        request: Request,
        body: EncryptRequest,
        principal: Annotated[Principal, Depends(can_encrypt)],
        rid: Annotated[str, rid_dep],
    ) -> EnvelopeResponse:
        """Encrypts base64 ``plaintext`` under ``context`` (the token's tenant only)."""
        ctx = _context(body.context)
        _same_tenant(principal, ctx, denials, request)
        data = _b64(body.plaintext)
        aad = _b64(body.associated_data) if body.associated_data is not None else None
        try:
            envelope = service.encrypt(data, ctx, associated_data=aad)
        except (GreenlangCryptoError, TypeError) as exc:
            raise _error(exc) from None
        audit.note_operation("encrypt", ctx.data_class, principal.subject)
        return EnvelopeResponse(
            ciphertext=base64.b64encode(envelope).decode(),
            key_version=_key_version(envelope) or service.primary_version,
        )

    @router.post("/decrypt", response_model=DecryptResponse)
    def decrypt(
        request: Request,
        body: DecryptRequest,
        principal: Annotated[Principal, Depends(can_decrypt)],
        rid: Annotated[str, rid_dep],
    ) -> DecryptResponse:
        """Decrypts an envelope of the token's tenant; the stated ``reason`` is audited."""
        ctx = _context(body.context)
        _same_tenant(principal, ctx, denials, request)
        envelope = _b64(body.ciphertext)
        aad = _b64(body.associated_data) if body.associated_data is not None else None
        fields: dict[str, Any] = {
            "actor": principal.subject,
            "key_version": _key_version(envelope),
            "context_digest": ctx.digest.hex(),
            "data_class": ctx.data_class,
            "request_id": rid,
            "reason": body.reason,
            "details": {"via": "api"},
            # Data path: buffered, never blocking; a sink outage shows on the gauge (only
            # security-relevant admin actions fail closed when the audit sink is down).
            "required": False,
        }
        try:
            plaintext = service.decrypt(envelope, ctx, associated_data=aad)
        except (GreenlangCryptoError, TypeError) as exc:
            audit.record("decryption_performed", outcome="failure", **fields)
            raise _error(exc) from None
        audit.record("decryption_performed", outcome="success", **fields)
        audit.note_operation("decrypt", ctx.data_class, principal.subject)
        return DecryptResponse(plaintext=base64.b64encode(plaintext).decode())

    @router.get("/keys", response_model=KeysResponse)
    def keys(principal: Annotated[Principal, Depends(is_admin)]) -> KeysResponse:
        """Lists keyring versions (metadata only)."""
        try:
            versions = service.versions()
        except GreenlangCryptoError as exc:
            raise _error(exc) from None
        return KeysResponse(
            primary_version=service.primary_version,
            versions=[
                KeyVersionModel(
                    version=v.version,
                    state=v.state,
                    provider=v.provider,
                    wrapping_key_id=v.wrapping_key_id,
                    created_at=v.created_at,
                    rotated_at=v.rotated_at,
                )
                for v in versions
            ],
        )

    @router.post("/keys/rotate", response_model=RotateResponse)
    def rotate(
        principal: Annotated[Principal, Depends(is_admin)],
        rid: Annotated[str, rid_dep],
        body: RotateRequest | None = None,
    ) -> RotateResponse:
        """Makes a new primary key version. Refused (503) while the audit sink is down."""
        reason = body.reason if body is not None else None
        old = service.primary_version
        try:
            # One audited path: the intent is on record before anything changes (fail closed
            # with 503 when it cannot be), the outcome after. The service's own key-change
            # guard sees the open block and adds no second pair of records.
            with (
                acting_as(principal.subject),
                audit.audited(
                    "key_rotate",
                    principal.subject,
                    key_version=old,
                    request_id=rid,
                    reason=reason,
                ) as outcome,
            ):
                result = service.rotate()
                outcome["old_version"] = result.old_version
                outcome["key_version"] = result.new_version
                outcome["key_id"] = result.wrapping_key_id
        except GreenlangCryptoError as exc:
            raise _error(exc) from None
        return RotateResponse(old_version=result.old_version, new_version=result.new_version)

    @router.post("/keys/erase-tenant", response_model=EraseTenantResponse)
    def erase_tenant(
        body: EraseTenantRequest,
        principal: Annotated[Principal, Depends(can_erase)],
        rid: Annotated[str, rid_dep],
    ) -> EraseTenantResponse:
        """Crypto-shreds one tenant: its data can never be decrypted again (fleet-wide).

        The tenant id travels in the body, as in every other route, so it stays out of access
        logs, and the audit records name it by digest only
        (:func:`~greenlang_crypto.service.tenant_digest`). Refused (503, nothing erased) while
        the audit sink is down. Idempotent: erasing again erases what was written since.
        """
        tenant = _tenant_id(body.tenant_id)
        try:
            with (
                acting_as(principal.subject),
                audit.audited(
                    "tenant_erase",
                    principal.subject,
                    request_id=rid,
                    reason=body.reason,
                    details={"tenant_digest": tenant_digest(tenant), "scope_kind": "tenant"},
                ) as outcome,
            ):
                report = service.erase_tenant(
                    tenant,
                    schedule_kms_key_deletion=body.schedule_kms_key_deletion,
                    pending_window_days=body.pending_window_days,
                )
                outcome.update(
                    stored_deks=report.stored_deks_destroyed,
                    branch_keys=report.branch_keys_destroyed,
                    instances=report.instances_acknowledged,
                    began=report.began,
                    completed=report.completed,
                    epoch=report.epoch,
                )
        except GreenlangCryptoError as exc:
            raise _error(exc) from None
        return EraseTenantResponse(
            tenant_id=report.tenant_id,
            stored_deks_destroyed=report.stored_deks_destroyed,
            branch_keys_destroyed=report.branch_keys_destroyed,
            instances_acknowledged=report.instances_acknowledged,
            began=report.began,
            completed=report.completed,
            epoch=report.epoch,
            seconds=report.seconds,
            kms_key_deletion_date=report.kms_key_deletion_date,
        )

    @router.post("/rewrap", response_model=EnvelopeResponse)
    def rewrap(
        body: RewrapRequest,
        principal: Annotated[Principal, Depends(is_admin)],
        rid: Annotated[str, rid_dep],
    ) -> EnvelopeResponse:
        """Re-encrypts an envelope of any tenant under the primary version (fleet-wide).

        Moving envelopes to the primary version is the second half of a keyring rotation,
        which is fleet-wide; it never returns plaintext.
        """
        ctx = _context(body.context)
        envelope = _b64(body.ciphertext)
        aad = _b64(body.associated_data) if body.associated_data is not None else None
        common: dict[str, Any] = {
            "actor": principal.subject,
            "context_digest": ctx.digest.hex(),
            "data_class": ctx.data_class,
            "request_id": rid,
            "reason": body.reason,
        }
        try:
            audit.record(
                "envelope_rewrap", outcome="intent", key_version=_key_version(envelope), **common
            )
        except AuditSinkUnavailableError as exc:
            raise _error(exc) from None
        try:
            out = service.reencrypt(envelope, ctx, associated_data=aad)
        except (GreenlangCryptoError, TypeError) as exc:
            audit.record("envelope_rewrap", outcome="failure", required=False, **common)
            raise _error(exc) from None
        version = _key_version(out) or service.primary_version
        audit.record(
            "envelope_rewrap", outcome="success", key_version=version, required=False, **common
        )
        return EnvelopeResponse(ciphertext=base64.b64encode(out).decode(), key_version=version)

    @router.get("/audit", response_model=AuditPage)
    def audit_records(
        principal: Annotated[Principal, Depends(can_audit)],
        rid: Annotated[str, rid_dep],
        action: Annotated[str | None, Query(max_length=64)] = None,
        actor: Annotated[str | None, Query(max_length=256)] = None,
        outcome: Annotated[str | None, Query(max_length=32)] = None,
        key_version: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
        since: Annotated[str | None, Query(max_length=40)] = None,
        until: Annotated[str | None, Query(max_length=40)] = None,
        after_seq: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> AuditPage:
        """Audit records of every tenant, filtered, ascending by sequence (keyset pages)."""
        q = AuditQuery(
            action=action,
            actor=actor,
            outcome=outcome,
            key_version=key_version,
            since=since,
            until=until,
            after_seq=after_seq,
            limit=limit,
        )
        try:
            records = audit.query(q)
        except AuditSinkUnavailableError as exc:
            raise _error(exc) from None
        audit.record(
            "audit_read",
            actor=principal.subject,
            request_id=rid,
            details={"returned": len(records)},
            required=False,
        )
        return AuditPage(
            records=[AuditRecordModel(**r.to_dict()) for r in records],
            next_after_seq=records[-1].seq if len(records) == limit else None,
        )

    @router.get("/status", response_model=StatusResponse)
    def service_status(principal: Annotated[Principal, Depends(can_read)]) -> StatusResponse:
        """Provider health, key versions, cache counters and audit sink state (the fleet's)."""
        try:
            st = service.status()
        except GreenlangCryptoError as exc:
            raise _error(exc) from None
        return StatusResponse(
            provider=st.provider,
            provider_ok=st.provider_ok,
            primary_version=st.primary_version,
            min_decryption_version=st.min_decryption_version,
            stored_deks_by_version={str(k): v for k, v in st.deks_by_version.items()},
            cache=st.cache,
            audit_sink_up=audit.sink_up,
            audit_buffered=audit.buffered,
        )

    return router
