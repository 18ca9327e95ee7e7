"""AWS KMS key provider: data keys from GenerateDataKey, unwrapped with a pinned Decrypt.

Design choices (see also the :class:`AwsKmsKeyProvider` docstring):

* **Retries are ours.** botocore's own retries are switched off (``total_max_attempts=1``) and
  every call goes through :class:`~greenlang_crypto.providers._resilience.ResilientCaller`:
  exponential backoff and full jitter, bounded both by ``max_attempts`` and by an overall
  per-call ``deadline``, so the worst-case latency of a call is known and testable. Every
  attempt still goes through botocore's real request path.
* **Explicit key ids.** Every KMS call pins ``KeyId``; the keys a provider may use are exactly
  the ``keys`` it was built with (an allow-list), so a key id read from storage cannot make the
  provider unwrap under some other, attacker-chosen key.
* **Multi-Region keys.** The first key is the primary; further ARNs with the same ``mrk-`` id
  in other regions are its replicas. Decrypt fails over to them, in order, when a region is
  unavailable. Generation uses only the region of the requested key (fail closed): a write
  during a regional outage fails instead of silently producing envelopes that name a replica.
* **Defensive answers.** A returned plaintext that is not exactly 32 bytes, or a returned
  ``KeyId`` other than the one pinned, is rejected. Plaintext goes straight into the Rust
  :class:`~greenlang_crypto._core.DataKey` and the Python reference is dropped.
* **No DEKs in logs.** botocore logs KMS response bodies (which carry the base64 plaintext
  DEK) at DEBUG; constructing a provider installs :class:`PlaintextRedactingFilter` on the
  botocore loggers.

Beside this module: ``_key_ids`` parses key ARNs, aliases and key ids, ``_kms_errors`` says
what a failed call means, ``_resilience`` retries and breaks circuits, and ``_log_redaction``
keeps data keys out of botocore's logs.

boto3 and botocore are imported by this module's helpers (``_kms_clients``, ``_kms_errors``),
which nothing else imports, so ``import greenlang_crypto`` works without them.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

from greenlang_crypto import _forks
from greenlang_crypto._core import DataKey
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import (
    ConfigurationError,
    DecryptionError,
    GreenlangCryptoError,
    InvalidArgumentError,
    InvalidContextError,
    KmsAccessDeniedError,
    KmsError,
    KmsKeyDisabledError,
)
from greenlang_crypto.providers import _kms_errors, _log_redaction
from greenlang_crypto.providers._key_ids import (
    AliasTargets,
    KeyRef,
    is_region,
    parse_key,
    parse_key_list,
    returned_matches,
    same_key,
)
from greenlang_crypto.providers._kms_clients import build_clients, check_endpoints
from greenlang_crypto.providers._log_redaction import (
    PlaintextRedactingFilter,
    install_botocore_log_redaction,
)
from greenlang_crypto.providers._resilience import (
    Counters,
    ResiliencePolicy,
    ResilientCaller,
    check_positive,
)
from greenlang_crypto.providers.base import GeneratedDataKey, KeyLimits, ProviderHealth

if TYPE_CHECKING:
    from mypy_boto3_kms.client import KMSClient

__all__ = [
    "AwsKmsKeyProvider",
    "Observer",
    "PlaintextRedactingFilter",
    "install_botocore_log_redaction",
]

#: ``(operation, status, seconds)``; status is one of ``ok``, ``unavailable``, ``disabled``,
#: ``denied``, ``invalid_ciphertext``, ``invalid_response`` or ``error``.
Observer = Callable[[str, str, float], None]

_DEK_LEN: Final = 32
# KMS accepts ciphertext blobs of 1..6144 bytes.
_MAX_WRAPPED_LEN: Final = 6144
_MAX_ROTATION_PAGES: Final = 100
#: How often a configured alias may be asked (DescribeKey) where it points, when an envelope
#: names a key ARN this provider has not seen it resolve to.
_ALIAS_RECHECK_SECONDS: Final = 1.0

if not TYPE_CHECKING:  # hidden from mypy, which would otherwise accept any name here

    def __getattr__(name: str) -> Any:
        # The log filter's lock moved with the filter; code that reached it here still does.
        # It is looked up on each access, not copied, because a forked child replaces it.
        if name == "_FILTER_LOCK":
            return _log_redaction._FILTER_LOCK
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _iso(value: object) -> str | None:
    isoformat = getattr(value, "isoformat", None)
    return str(isoformat()) if callable(isoformat) else None


# ---------------------------------------------------------------------------------------------
# The provider
# ---------------------------------------------------------------------------------------------


class AwsKmsKeyProvider:
    """A :class:`~greenlang_crypto.providers.base.KeyProvider` backed by AWS KMS.

    ``keys`` is both the topology and the allow-list. The first entry is the primary key used
    for generation. Later entries that share the primary's ``mrk-`` id are its Multi-Region
    replicas (other regions), tried in order when decrypting and the primary region is
    unavailable (connection errors, timeouts, 5xx, throttling or an open circuit) -- never
    after an answer such as ``InvalidCiphertextException``, ``AccessDeniedException`` or
    ``DisabledException``. Any other entry is an extra key this provider may use (for example a
    retired CMK still needed for decryption). Calls naming a key outside ``keys`` are refused
    with :class:`KmsAccessDeniedError` (code ``KeyNotAllowed``) before any request.

    Key ids in a call match an entry when they name the same key in the same region: a key ARN
    matches that ARN or the bare key id configured for its region. An entry configured as an
    alias allows ``generate_data_key`` with that alias (the returned ARN is accepted if it is a
    key in the alias's region and account) and allows the ARNs the alias has been seen to
    resolve to (from GenerateDataKey answers or a DescribeKey on the alias). Prefer key ARNs:
    after an alias is retargeted, list the old key's ARN too to keep decrypting older data.

    Each call is retried on transient errors with exponential backoff and full jitter (delay
    drawn uniformly from ``[0, min(max_delay, base_delay * 2**n))``), for at most
    ``max_attempts`` rounds over the candidate regions and never starting an attempt or sleep
    past ``deadline`` seconds from the start of the call. One attempt can still take up to
    ``connect_timeout + read_timeout``, which bounds the overshoot.

    Construction validates everything (raising :class:`ConfigurationError`) and creates the
    boto3 clients but does not contact KMS.
    """

    name: str = "aws-kms"
    #: Every call checks the key id against ``keys`` (and the ARNs their aliases resolved
    #: to) before any request, so the service may hand it key ids read from envelopes.
    enforces_key_allow_list: bool = True

    def __init__(
        self,
        keys: Sequence[str],
        *,
        client: KMSClient | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        endpoint_urls: Mapping[str, str] | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_attempts: int = 5,
        base_delay: float = 0.05,
        max_delay: float = 1.0,
        deadline: float = 5.0,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """Validates the configuration and builds one KMS client per region.

        Args:
            keys: Key ARNs, primary first, then its Multi-Region replicas in other regions
                (plus any extra allowed keys). A bare key id or alias uses ``region``.
            client: A boto3 KMS client to use for the primary key's region (it should have
                botocore retries off, or they multiply with this provider's own).
            region: Region for bare key ids and aliases; defaults to the primary ARN's region.
            endpoint_url: Endpoint for every region (tests, VPC endpoints).
            endpoint_urls: Per-region endpoints, overriding ``endpoint_url``.
            aws_access_key_id: Static credentials (tests); default is the boto3 chain.
            aws_secret_access_key: Static credentials (tests).
            aws_session_token: Static credentials (tests).
            connect_timeout: botocore connect timeout per attempt, seconds.
            read_timeout: botocore read timeout per attempt, seconds.
            max_attempts: Attempt rounds per call (a round tries each available region once).
            base_delay: First backoff ceiling, seconds.
            max_delay: Largest backoff ceiling, seconds.
            deadline: Overall time budget per call, seconds.
            failure_threshold: Consecutive outage failures that open a region's circuit.
            reset_timeout: Seconds an open circuit waits before letting one probe through.
            observer: Called as ``observer(operation, status, seconds)`` after each call;
                exceptions it raises are swallowed.
            clock: Monotonic clock (injectable for tests).
            sleep: Sleep function (injectable for tests).
            rng: Random source for jitter.

        Raises:
            ConfigurationError: If any option is invalid.
        """
        self._connect_timeout = check_positive("connect_timeout", connect_timeout)
        self._read_timeout = check_positive("read_timeout", read_timeout)
        policy = ResiliencePolicy(
            max_attempts=max_attempts,
            base_delay=base_delay,
            max_delay=max_delay,
            deadline=deadline,
            failure_threshold=failure_threshold,
            reset_timeout=reset_timeout,
        )
        for fn_name, fn in (("observer", observer), ("clock", clock), ("sleep", sleep)):
            if fn is not None and not callable(fn):
                raise ConfigurationError(f"{fn_name} must be callable")
        if rng is not None and not isinstance(rng, random.Random):
            raise ConfigurationError("rng must be a random.Random")
        if region is not None and not is_region(region):
            raise ConfigurationError("region must be an AWS region name such as us-east-1")
        urls = check_endpoints(endpoint_url, endpoint_urls)
        if (aws_access_key_id is None) != (aws_secret_access_key is None):
            raise ConfigurationError("give both aws_access_key_id and aws_secret_access_key")

        self._keys = parse_key_list(keys, region)
        self._region = region or self._keys[0].region
        self._observer = observer
        self._stats = Counters()
        self._aliases = AliasTargets(_ALIAS_RECHECK_SECONDS)

        regions = list(dict.fromkeys(k.region for k in self._keys))
        self._caller = ResilientCaller(
            policy,
            regions,
            clock=clock,
            sleep=sleep,
            # Jitter only spreads retries out; it needs no cryptographic randomness.
            rng=rng if rng is not None else random.Random(),  # noqa: S311
            # The counters, not a bound method of self: no reference cycle through the caller.
            count=self._stats.add,
            service="KMS",
        )
        self._clients = build_clients(
            regions,
            client,
            primary_region=self._keys[0].region,
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            endpoint_url=endpoint_url,
            urls=urls,
            access_key=aws_access_key_id,
            secret_key=aws_secret_access_key,
            session_token=aws_session_token,
        )
        install_botocore_log_redaction()
        _forks.register(self, _forks.STORE)

    def _after_fork_in_child(self) -> None:
        # No keep-alive connection shared with the parent. (The counters, circuit breakers and
        # alias memory renew their own locks, which a parent thread may have held.)
        for client in self._clients.values():
            _forks.clear_http_pools(client)

    # -- introspection ------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of the provider's counters.

        Keys: ``<Operation>.<status>`` per call, and ``attempts``, ``retries``, ``failovers``,
        ``throttled``, ``circuit_skipped`` and ``circuit_opened``.
        """
        return self._stats.snapshot()

    @property
    def clients(self) -> Mapping[str, KMSClient]:
        """The boto3 KMS client used for each region (for event hooks and diagnostics)."""
        return dict(self._clients)

    @property
    def primary_key_id(self) -> str:
        """The primary key identifier, as configured."""
        return self._keys[0].raw

    def circuit_state(self, region: str) -> str:
        """``closed``, ``open`` or ``half_open`` for ``region``'s circuit breaker."""
        breaker = self._caller.breaker(region)
        if breaker is None:
            raise InvalidArgumentError(f"no KMS client for region {region}")
        return breaker.state

    # -- allow-list and key-id checks ---------------------------------------------------------

    def _resolve(self, key_id: str) -> list[KeyRef]:
        """Returns the configured entries to try for ``key_id``, in order, or refuses it."""
        if not isinstance(key_id, str):
            raise InvalidArgumentError("key_id must be a str")
        ref = parse_key(key_id, self._region)
        if ref is not None:
            match = next((k for k in self._keys if same_key(ref, k)), None)
            if match is None and not ref.is_alias and self._match_alias_target(ref) is not None:
                # Allowed because a configured alias resolved to it; pin the call to the key
                # itself, since the alias may point elsewhere by now (a re-pointed alias).
                return [ref]
            if match is not None:
                if match.mrk_id is None:
                    return [match]
                # The configured order puts the primary first, then the replicas.
                return [k for k in self._keys if k.mrk_id == match.mrk_id]
        raise KmsAccessDeniedError(
            "key is not configured for this provider", code="KeyNotAllowed"
        ) from None

    def _match_alias_target(self, ref: KeyRef) -> KeyRef | None:
        """Finds a configured alias that resolves to the key ARN ``ref``."""
        for alias in (k for k in self._keys if k.is_alias and k.region == ref.region):
            if ref.raw in self._aliases.seen(alias):
                return alias
        for alias in (k for k in self._keys if k.is_alias and k.region == ref.region):
            if not self._aliases.may_ask(alias):
                # Key ids come from envelopes: without this bound, every forged envelope
                # naming an unknown key would cost a KMS request.
                continue
            try:
                resp = self._call("DescribeKey", [alias], lambda c, t: c.describe_key(KeyId=t.raw))
            except (KmsAccessDeniedError, KmsKeyDisabledError):
                # This alias cannot vouch for the key; an outage, though, must surface as one.
                continue
            arn = str(resp.get("KeyMetadata", {}).get("Arn", ""))
            if returned_matches(alias, arn):
                self._aliases.remember(alias, arn)
                if arn == ref.raw:
                    return alias
        return None

    # -- every KMS request goes through the retry / failover engine ---------------------------

    def _call(
        self,
        operation: str,
        targets: Sequence[KeyRef],
        invoke: Callable[[KMSClient, KeyRef], Any],
        *,
        max_rounds: int | None = None,
    ) -> dict[str, Any]:
        """Runs ``invoke`` against the targets with retries, backoff and failover.

        Returns the response of the first attempt that succeeds, with the target used stored
        under the private key ``"__target__"``. No botocore exception (which may hold a
        response) ends up in the ``__context__`` of an error raised from here.
        """
        resp, target = self._caller.call(
            operation,
            targets,
            lambda t: invoke(self._clients[t.region], t),
            lambda exc, t: _kms_errors.judge(operation, exc, t),
            max_rounds=max_rounds,
        )
        result = cast(dict[str, Any], resp)
        result["__target__"] = target
        return result

    def _observed(self, operation: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            return fn()
        except BaseException as exc:
            error = exc
            raise
        finally:
            status = _kms_errors.status_of(error)
            error = None  # do not keep the traceback alive through this frame
            self._stats.add(f"{operation}.{status}")
            if self._observer is not None:
                # Metrics must never break (or change the outcome of) a crypto call.
                with contextlib.suppress(Exception):
                    self._observer(operation, status, time.perf_counter() - start)

    # -- KeyProvider --------------------------------------------------------------------------

    def generate_data_key(
        self, key_id: str, context: EncryptionContext, limits: KeyLimits
    ) -> GeneratedDataKey:
        """Creates a 256-bit DEK with KMS GenerateDataKey, bound to ``context``.

        Uses only the requested key's region (no failover on generation: fail closed).

        Args:
            key_id: A configured key (ARN, or the alias / bare id as configured).
            context: Sent as the KMS ``EncryptionContext``.
            limits: Usage budget of the returned DEK.

        Returns:
            The DEK handle, the wrapped DEK, and the ARN of the key that wrapped it.

        Raises:
            KmsUnavailableError: KMS unreachable or throttling past the retry budget.
            KmsKeyDisabledError: The key is disabled or pending deletion.
            KmsAccessDeniedError: Access denied, key not found, or key not in ``keys``.
            KmsError: Any other failure, including a malformed answer.
        """
        ctx = self._context(context)

        def run() -> GeneratedDataKey:
            target = self._resolve(key_id)[0]
            resp = self._call(
                "GenerateDataKey",
                [target],
                lambda c, t: c.generate_data_key(
                    KeyId=t.raw, KeySpec="AES_256", EncryptionContext=ctx
                ),
            )
            plaintext = resp.pop("Plaintext", None)
            returned = resp.get("KeyId")
            wrapped = resp.get("CiphertextBlob")
            del resp
            problem = self._answer_problem(target, returned, plaintext)
            if problem is None and (not isinstance(wrapped, bytes) or not wrapped):
                problem = "no CiphertextBlob"
            if problem is not None:
                del plaintext
                raise KmsError(
                    f"KMS GenerateDataKey answer rejected: {problem}", code="InvalidResponse"
                )
            key = DataKey.from_bytes(
                plaintext, max_messages=limits.max_messages, max_bytes=limits.max_bytes
            )
            del plaintext  # the Rust handle owns the key now
            if target.is_alias:
                self._aliases.remember(target, str(returned))
            return GeneratedDataKey(
                key=key, wrapped=bytes(cast(bytes, wrapped)), key_id=str(returned)
            )

        return cast(GeneratedDataKey, self._observed("GenerateDataKey", run))

    def decrypt_data_key(
        self, key_id: str, wrapped: bytes, context: EncryptionContext, limits: KeyLimits
    ) -> DataKey:
        """Unwraps a DEK with KMS Decrypt, pinning ``KeyId``, failing over to MRK replicas.

        Args:
            key_id: The key ARN recorded when the DEK was generated.
            wrapped: The wrapped DEK.
            context: Must equal the context used at generation (KMS enforces it).
            limits: Usage budget of the returned DEK.

        Returns:
            The DEK as an opaque handle.

        Raises:
            DecryptionError: Wrong context or corrupted/foreign ``wrapped`` blob.
            KmsUnavailableError: No region could answer within the retry budget.
            KmsKeyDisabledError: The key is disabled or pending deletion.
            KmsAccessDeniedError: Access denied, key not found, or key not in ``keys``.
            KmsError: Any other failure, including a malformed answer.
        """
        ctx = self._context(context)
        blob = self._wrapped(wrapped)

        def run() -> DataKey:
            targets = self._resolve(key_id)
            resp = self._call(
                "Decrypt",
                targets,
                lambda c, t: c.decrypt(
                    CiphertextBlob=blob,
                    KeyId=t.raw,
                    EncryptionContext=ctx,
                    EncryptionAlgorithm="SYMMETRIC_DEFAULT",
                ),
            )
            target = cast(KeyRef, resp.pop("__target__"))
            plaintext = resp.pop("Plaintext", None)
            returned = resp.get("KeyId")
            del resp
            problem = self._answer_problem(target, returned, plaintext)
            if problem is not None:
                del plaintext
                raise KmsError(f"KMS Decrypt answer rejected: {problem}", code="InvalidResponse")
            key = DataKey.from_bytes(
                plaintext, max_messages=limits.max_messages, max_bytes=limits.max_bytes
            )
            del plaintext
            return key

        return cast(DataKey, self._observed("Decrypt", run))

    def reencrypt_data_key(
        self, source_key_id: str, wrapped: bytes, dest_key_id: str, context: EncryptionContext
    ) -> bytes:
        """Rewraps a DEK under ``dest_key_id`` with KMS ReEncrypt (the DEK never leaves KMS).

        The call runs in the source key's region (no failover). Both keys must be in ``keys``.

        Args:
            source_key_id: The key that wrapped ``wrapped``.
            wrapped: The wrapped DEK.
            dest_key_id: The key to wrap under.
            context: Used as both the source and destination encryption context.

        Returns:
            The new wrapped DEK.

        Raises:
            DecryptionError: Wrong context or corrupted ``wrapped`` blob.
            KmsUnavailableError: KMS unreachable within the retry budget.
            KmsKeyDisabledError: A key is disabled or pending deletion.
            KmsAccessDeniedError: Access denied, key not found, or a key not in ``keys``.
            KmsError: Any other failure, including a malformed answer.
        """
        ctx = self._context(context)
        blob = self._wrapped(wrapped)

        def run() -> bytes:
            source = self._resolve(source_key_id)[0]
            dest = self._resolve(dest_key_id)[0]
            resp = self._call(
                "ReEncrypt",
                [source],
                lambda c, t: c.re_encrypt(
                    CiphertextBlob=blob,
                    SourceKeyId=t.raw,
                    SourceEncryptionContext=ctx,
                    DestinationKeyId=dest.raw,
                    DestinationEncryptionContext=ctx,
                ),
            )
            new_blob = resp.get("CiphertextBlob")
            if not returned_matches(dest, resp.get("KeyId")):
                problem = "destination KeyId differs from the one requested"
            elif "SourceKeyId" in resp and not returned_matches(source, resp["SourceKeyId"]):
                problem = "SourceKeyId differs from the one requested"
            elif not isinstance(new_blob, bytes) or not new_blob:
                problem = "no CiphertextBlob"
            else:
                return bytes(new_blob)
            raise KmsError(f"KMS ReEncrypt answer rejected: {problem}", code="InvalidResponse")

        return cast(bytes, self._observed("ReEncrypt", run))

    def health(self) -> ProviderHealth:
        """DescribeKey on the primary key (one attempt, never raises).

        Returns:
            ``ok`` when KMS answered and the key is enabled; otherwise a short reason.
        """
        try:
            info = self._describe(self._keys[0], max_rounds=1)
        except GreenlangCryptoError as exc:
            code = getattr(exc, "code", None) or type(exc).__name__
            return ProviderHealth(ok=False, detail=f"kms unavailable: {code}")
        except Exception as exc:
            return ProviderHealth(ok=False, detail=f"kms health check failed: {type(exc).__name__}")
        state = info.get("key_state")
        if state != "Enabled":
            return ProviderHealth(ok=False, detail=f"kms key state is {state}")
        return ProviderHealth(ok=True, detail="kms ok")

    # -- key administration -------------------------------------------------------------------

    def describe_key(self, key_id: str) -> dict[str, Any]:
        """Non-secret metadata of a configured key (KMS DescribeKey).

        Returns:
            ``key_id``, ``arn``, ``enabled``, ``key_state``, ``key_usage``, ``key_spec``,
            ``origin``, ``multi_region``, ``multi_region_key_type``, ``creation_date`` and
            ``deletion_date`` (ISO 8601 or None), ``description``.
        """
        target = self._resolve(key_id)[0]
        return cast(dict[str, Any], self._observed("DescribeKey", lambda: self._describe(target)))

    def _describe(self, target: KeyRef, *, max_rounds: int | None = None) -> dict[str, Any]:
        resp = self._call(
            "DescribeKey", [target], lambda c, t: c.describe_key(KeyId=t.raw), max_rounds=max_rounds
        )
        meta = resp.get("KeyMetadata", {})
        return {
            "key_id": meta.get("KeyId"),
            "arn": meta.get("Arn"),
            "enabled": meta.get("Enabled"),
            "key_state": meta.get("KeyState"),
            "key_usage": meta.get("KeyUsage"),
            "key_spec": meta.get("KeySpec"),
            "origin": meta.get("Origin"),
            "multi_region": meta.get("MultiRegion"),
            "multi_region_key_type": meta.get("MultiRegionConfiguration", {}).get(
                "MultiRegionKeyType"
            ),
            "creation_date": _iso(meta.get("CreationDate")),
            "deletion_date": _iso(meta.get("DeletionDate")),
            "description": meta.get("Description"),
        }

    def rotate_key_on_demand(self, key_id: str) -> None:
        """Starts an on-demand rotation of a configured key's material (KMS RotateKeyOnDemand).

        Raises:
            KmsError: Or a subclass, as for the other calls.
        """
        target = self._resolve(key_id)[0]
        self._observed(
            "RotateKeyOnDemand",
            lambda: self._call(
                "RotateKeyOnDemand", [target], lambda c, t: c.rotate_key_on_demand(KeyId=t.raw)
            ),
        )

    def schedule_key_deletion(self, key_id: str, pending_window_days: int = 30) -> str:
        """Schedules the deletion of a configured key (KMS ScheduleKeyDeletion).

        Used by a tenant erasure for a tenant with a KMS key of its own. The key is disabled
        for use at once and deleted after ``pending_window_days`` (7-30); until then an
        operator can still cancel in KMS. Returns the deletion date (ISO 8601).

        Raises:
            KmsAccessDeniedError: ``key_id`` is not on this provider's allow-list.
            KmsError: Or a subclass, as for the other calls.
        """
        target = self._resolve(key_id)[0]
        answer = self._observed(
            "ScheduleKeyDeletion",
            lambda: self._call(
                "ScheduleKeyDeletion",
                [target],
                # The key id, not the ARN: the client is the key's own region's, so both name
                # the same key, and some KMS emulators accept only the id here.
                lambda c, t: c.schedule_key_deletion(
                    KeyId=t.resource, PendingWindowInDays=pending_window_days
                ),
            ),
        )
        return _iso(answer.get("DeletionDate")) or ""

    def rotation_status(self, key_id: str) -> dict[str, Any]:
        """Automatic-rotation settings and rotation history of a configured key.

        Returns:
            ``key_id``, ``rotation_enabled``, ``rotation_period_days``, ``next_rotation_date``,
            ``on_demand_rotation_start_date`` and ``rotations`` (a list of
            ``{"rotation_date", "rotation_type"}``), dates as ISO 8601 strings.
        """
        target = self._resolve(key_id)[0]

        def run() -> dict[str, Any]:
            status = self._call(
                "GetKeyRotationStatus",
                [target],
                lambda c, t: c.get_key_rotation_status(KeyId=t.raw),
            )
            rotations: list[dict[str, Any]] = []
            marker: str | None = None
            for _ in range(_MAX_ROTATION_PAGES):

                def list_page(c: KMSClient, t: KeyRef, m: str | None = marker) -> Any:
                    if m:
                        return c.list_key_rotations(KeyId=t.raw, Marker=m)
                    return c.list_key_rotations(KeyId=t.raw)

                page = self._call("ListKeyRotations", [target], list_page)
                rotations.extend(
                    {
                        "rotation_date": _iso(item.get("RotationDate")),
                        "rotation_type": item.get("RotationType"),
                    }
                    for item in page.get("Rotations", [])
                )
                marker = page.get("NextMarker") if page.get("Truncated") else None
                if not marker:
                    break
            return {
                "key_id": status.get("KeyId", target.raw),
                "rotation_enabled": bool(status.get("KeyRotationEnabled")),
                "rotation_period_days": status.get("RotationPeriodInDays"),
                "next_rotation_date": _iso(status.get("NextRotationDate")),
                "on_demand_rotation_start_date": _iso(status.get("OnDemandRotationStartDate")),
                "rotations": rotations,
            }

        return cast(dict[str, Any], self._observed("RotationStatus", run))

    # -- argument checks ----------------------------------------------------------------------

    @staticmethod
    def _context(context: EncryptionContext) -> dict[str, str]:
        if not isinstance(context, EncryptionContext):
            raise InvalidContextError("context must be an EncryptionContext")
        return context.as_dict()

    @staticmethod
    def _wrapped(wrapped: bytes) -> bytes:
        if not isinstance(wrapped, bytes | bytearray | memoryview):
            raise InvalidArgumentError("wrapped must be bytes")
        blob = bytes(wrapped)
        if not 1 <= len(blob) <= _MAX_WRAPPED_LEN:
            # Not a KMS ciphertext at all: same opaque error as any other bad blob.
            raise DecryptionError()
        return blob

    def _answer_problem(self, target: KeyRef, returned: object, plaintext: object) -> str | None:
        """Why a GenerateDataKey/Decrypt answer is unacceptable (never mentions key bytes)."""
        if not returned_matches(target, returned):
            return f"KeyId is not {target.raw}"
        if not isinstance(plaintext, bytes) or len(plaintext) != _DEK_LEN:
            return f"plaintext data key is not {_DEK_LEN} bytes"
        return None
