"""AWS KMS key provider: data keys from GenerateDataKey, unwrapped with a pinned Decrypt.

Design choices (see also the :class:`AwsKmsKeyProvider` docstring):

* **Retries are ours.** botocore's own retries are switched off (``total_max_attempts=1``) and
  this module retries with exponential backoff and full jitter, bounded both by
  ``max_attempts`` and by an overall per-call ``deadline``, so the worst-case latency of a call
  is known and testable. Every attempt still goes through botocore's real request path.
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

boto3 is imported here only, so ``import greenlang_crypto`` works without it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, cast

import boto3
import botocore.exceptions as botocore_exc
from botocore.config import Config

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
    KmsUnavailableError,
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

_KEY_ARN_RE: Final = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):kms:(?P<region>[a-z]{2}(?:-[a-z0-9]+)+-\d+):"
    r"(?P<account>\d{12}):(?P<kind>key|alias)/(?P<resource>[A-Za-z0-9/_+=,.@:-]+)$"
)
_KEY_ID_RE: Final = re.compile(
    r"^(?:mrk-[0-9a-f]{32}|(?:mrk-)?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$",
    re.IGNORECASE,
)
#: How often a configured alias may be asked (DescribeKey) where it points, when an envelope
#: names a key ARN this provider has not seen it resolve to.
_ALIAS_RECHECK_SECONDS: Final = 1.0
_ALIAS_RE: Final = re.compile(r"^alias/[A-Za-z0-9/_-]{1,250}$")
_REGION_RE: Final = re.compile(r"^[a-z]{2}(?:-[a-z0-9]+)+-\d+$")

# Error codes, per the KMS API reference and the botocore service model.
_RETRYABLE_CODES: Final = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "KMSInternalException",
        "DependencyTimeoutException",
        "KeyUnavailableException",
        "InternalFailure",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
# Throttling means the region answered: retry, but do not count it against the region's
# circuit breaker (that is for outages, and opening it would turn load into failover storms).
_THROTTLING_CODES: Final = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
)
_DISABLED_CODES: Final = frozenset({"DisabledException", "KMSInvalidStateException"})
_DENIED_CODES: Final = frozenset(
    {
        "NotFoundException",
        "AccessDeniedException",
        "InvalidKeyUsageException",
        "IncorrectKeyException",
    }
)
_INVALID_CIPHERTEXT_CODES: Final = frozenset({"InvalidCiphertextException"})

# ---------------------------------------------------------------------------------------------
# Log redaction: no DEK or plaintext in botocore's DEBUG logs
# ---------------------------------------------------------------------------------------------

# A Plaintext field as JSON ("Plaintext": "...") or in a Python dict repr ('Plaintext': b'...'),
# the value being a quoted literal that may contain backslash escapes.
_PLAINTEXT_LITERAL_RE: Final = re.compile(
    r"""(["']Plaintext["']\s*:\s*)(b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*")""", re.DOTALL
)
# The same JSON inside a repr that escaped its double quotes: \"Plaintext\": \"...\".
_PLAINTEXT_ESCAPED_RE: Final = re.compile(r"""(\\["']Plaintext\\["']\s*:\s*\\["'])[^"'\\]*""")
_REDACTED: Final = "***REDACTED***"

# botocore loggers that log request parameters or response bodies. Filters attached to a
# parent logger do not see records created by its children, so each gets its own filter.
_BOTOCORE_BODY_LOGGERS: Final = (
    "botocore",
    "botocore.parsers",
    "botocore.endpoint",
    "botocore.hooks",
    "botocore.client",
    "botocore.httpsession",
    "botocore.awsrequest",
    "botocore.retryhandler",
    "botocore.retries.standard",
    "botocore.history",
)


def _redact(text: str) -> str:
    text = _PLAINTEXT_LITERAL_RE.sub(lambda m: f"{m.group(1)}'{_REDACTED}'", text)
    return _PLAINTEXT_ESCAPED_RE.sub(lambda m: f"{m.group(1)}{_REDACTED}", text)


class PlaintextRedactingFilter(logging.Filter):
    """Rewrites log records so that no ``Plaintext`` value (a KMS data key) survives.

    The record's message is formatted once, redacted, and stored back with empty ``args``, so
    handlers see only the redacted text. Records without the word ``Plaintext`` are untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redacts ``record`` in place; always lets it through."""
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's problem, not ours
            return True
        if "Plaintext" in message:
            record.msg = _redact(message)
            record.args = None
        return True


_FILTER_LOCK = threading.Lock()
_forks.fresh_locks_after_fork(sys.modules[__name__], "_FILTER_LOCK")
_FILTER: Final = PlaintextRedactingFilter()


def install_botocore_log_redaction() -> None:
    """Installs the redacting filter on every botocore logger (idempotent, thread-safe).

    Covers the loggers that exist now plus the known body-logging ones, so it should be called
    after botocore modules are imported (constructing a provider does this).
    """
    with _FILTER_LOCK:
        names = set(_BOTOCORE_BODY_LOGGERS)
        for name, obj in list(logging.Logger.manager.loggerDict.items()):
            if isinstance(obj, logging.Logger) and (
                name == "botocore" or name.startswith("botocore.")
            ):
                names.add(name)
        for name in sorted(names):
            logger = logging.getLogger(name)
            if not any(isinstance(f, PlaintextRedactingFilter) for f in logger.filters):
                logger.addFilter(_FILTER)


# ---------------------------------------------------------------------------------------------
# Key references
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _KeyRef:
    """A parsed key identifier: key ARN, alias ARN, bare key id or alias name."""

    raw: str
    region: str
    resource: str  # key id ("1234abcd-..." / "mrk-...") or alias name ("alias/...")
    is_alias: bool
    account: str | None = None
    partition: str | None = None

    @property
    def mrk_id(self) -> str | None:
        if not self.is_alias and self.resource.startswith("mrk-"):
            return self.resource
        return None


def _parse_key(value: str, default_region: str | None) -> _KeyRef | None:
    m = _KEY_ARN_RE.match(value)
    if m:
        is_alias = m["kind"] == "alias"
        resource = f"alias/{m['resource']}" if is_alias else m["resource"]
        if is_alias and not _ALIAS_RE.match(resource):
            return None
        if not is_alias and not _KEY_ID_RE.match(resource):
            return None
        return _KeyRef(
            raw=value,
            region=m["region"],
            resource=resource,
            is_alias=is_alias,
            account=m["account"],
            partition=m["partition"],
        )
    if default_region is None:
        return None
    if _ALIAS_RE.match(value):
        return _KeyRef(raw=value, region=default_region, resource=value, is_alias=True)
    if _KEY_ID_RE.match(value):
        return _KeyRef(raw=value, region=default_region, resource=value, is_alias=False)
    return None


def _same_key(a: _KeyRef, b: _KeyRef) -> bool:
    """Whether two references name the same key (or alias) in the same region."""
    if a.is_alias != b.is_alias or a.region != b.region:
        return False
    # Key ids are hex UUIDs (case-insensitive); alias names are case-sensitive.
    same = a.resource == b.resource if a.is_alias else a.resource.lower() == b.resource.lower()
    if not same:
        return False
    # A bare id or alias name has no account/partition: it means "the caller's".
    if a.account and b.account and a.account != b.account:
        return False
    return not (a.partition and b.partition and a.partition != b.partition)


# ---------------------------------------------------------------------------------------------
# Circuit breaker
# ---------------------------------------------------------------------------------------------


class _State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class _CircuitBreaker:
    """Per-region breaker: opens after N consecutive outage failures, probes after a pause."""

    def __init__(self, threshold: int, reset_timeout: float, clock: Callable[[], float]) -> None:
        self._threshold = threshold
        self._reset_timeout = reset_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._state = _State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> str:
        with self._lock:
            if (
                self._state is _State.OPEN
                and self._clock() - self._opened_at >= self._reset_timeout
            ):
                return _State.HALF_OPEN.value
            return self._state.value

    def allow(self) -> bool:
        with self._lock:
            if self._state is _State.CLOSED:
                return True
            if self._state is _State.OPEN:
                if self._clock() - self._opened_at < self._reset_timeout:
                    return False
                self._state = _State.HALF_OPEN
                self._probe_in_flight = False
            # Half-open: exactly one probe at a time decides whether the region is back.
            if self._probe_in_flight:
                return False
            self._probe_in_flight = True
            return True

    def release(self) -> None:
        """An allowed attempt ended without a verdict on the region."""
        with self._lock:
            self._probe_in_flight = False

    def record_success(self) -> None:
        """The region answered (including with an error that is not an outage)."""
        with self._lock:
            self._state = _State.CLOSED
            self._failures = 0
            self._probe_in_flight = False

    def record_failure(self) -> bool:
        """The region looked down; returns True if this opened the circuit."""
        with self._lock:
            self._failures += 1
            was_open = self._state is _State.OPEN
            if self._state is _State.HALF_OPEN or self._failures >= self._threshold:
                self._state = _State.OPEN
                self._opened_at = self._clock()
                self._probe_in_flight = False
                return not was_open
            return False


# ---------------------------------------------------------------------------------------------
# Error classification
# ---------------------------------------------------------------------------------------------


class _Kind(Enum):
    RETRY = "unavailable"
    DISABLED = "disabled"
    DENIED = "denied"
    INVALID_CIPHERTEXT = "invalid_ciphertext"
    OTHER = "error"


@dataclass(frozen=True, slots=True)
class _Failure:
    kind: _Kind
    code: str
    region_down: bool  # counts against the region's circuit breaker


def _classify(exc: Exception) -> _Failure:
    if isinstance(exc, botocore_exc.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _DISABLED_CODES:
            return _Failure(_Kind.DISABLED, code, region_down=False)
        if code in _DENIED_CODES:
            return _Failure(_Kind.DENIED, code, region_down=False)
        if code in _INVALID_CIPHERTEXT_CODES:
            return _Failure(_Kind.INVALID_CIPHERTEXT, code, region_down=False)
        if code in _RETRYABLE_CODES:
            return _Failure(_Kind.RETRY, code, region_down=code not in _THROTTLING_CODES)
        if isinstance(status, int) and status >= 500:
            return _Failure(_Kind.RETRY, code, region_down=True)
        return _Failure(_Kind.OTHER, code, region_down=False)
    # Connect/read timeouts, refused connections, dropped connections, proxy/TLS failures.
    if isinstance(exc, botocore_exc.HTTPClientError | botocore_exc.ConnectionError):
        return _Failure(_Kind.RETRY, type(exc).__name__, region_down=True)
    return _Failure(_Kind.OTHER, type(exc).__name__, region_down=False)


def _status_of(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, KmsUnavailableError):
        return "unavailable"
    if isinstance(exc, KmsKeyDisabledError):
        return "disabled"
    if isinstance(exc, KmsAccessDeniedError):
        return "denied"
    if isinstance(exc, DecryptionError):
        return "invalid_ciphertext"
    if isinstance(exc, KmsError) and exc.code == "InvalidResponse":
        return "invalid_response"
    return "error"


def _check_positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise ConfigurationError(f"{name} must be a finite number > 0")
    return number


def _check_count(name: str, value: object, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ConfigurationError(f"{name} must be an int in [1, {maximum}]")
    return value


def _check_url(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ConfigurationError(f"{name} must be an http(s) URL")
    return value


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
        self._connect_timeout = _check_positive("connect_timeout", connect_timeout)
        self._read_timeout = _check_positive("read_timeout", read_timeout)
        self._max_attempts = _check_count("max_attempts", max_attempts, 20)
        self._base_delay = _check_positive("base_delay", base_delay, allow_zero=True)
        self._max_delay = _check_positive("max_delay", max_delay, allow_zero=True)
        if self._max_delay < self._base_delay:
            raise ConfigurationError("max_delay must be >= base_delay")
        self._deadline = _check_positive("deadline", deadline)
        self._failure_threshold = _check_count("failure_threshold", failure_threshold, 10_000)
        self._reset_timeout = _check_positive("reset_timeout", reset_timeout)
        for fn_name, fn in (("observer", observer), ("clock", clock), ("sleep", sleep)):
            if fn is not None and not callable(fn):
                raise ConfigurationError(f"{fn_name} must be callable")
        if rng is not None and not isinstance(rng, random.Random):
            raise ConfigurationError("rng must be a random.Random")
        if region is not None and (not isinstance(region, str) or not _REGION_RE.match(region)):
            raise ConfigurationError("region must be an AWS region name such as us-east-1")
        if endpoint_url is not None:
            _check_url("endpoint_url", endpoint_url)
        urls: dict[str, str] = {}
        if endpoint_urls is not None:
            if not isinstance(endpoint_urls, Mapping):
                raise ConfigurationError("endpoint_urls must map region names to URLs")
            for r, url in endpoint_urls.items():
                if not isinstance(r, str) or not _REGION_RE.match(r):
                    raise ConfigurationError("endpoint_urls keys must be region names")
                urls[r] = _check_url(f"endpoint_urls[{r!r}]", url)
        if (aws_access_key_id is None) != (aws_secret_access_key is None):
            raise ConfigurationError("give both aws_access_key_id and aws_secret_access_key")

        self._keys = self._parse_keys(keys, region)
        self._region = region or self._keys[0].region
        self._observer = observer
        self._clock = clock
        self._sleep = sleep
        # Jitter only spreads retries out; it needs no cryptographic randomness.
        self._rng = rng if rng is not None else random.Random()  # noqa: S311
        self._stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._alias_targets: dict[tuple[str, str], set[str]] = {}
        self._alias_lock = threading.Lock()
        # When each alias was last asked about a key it did not vouch for (monotonic).
        self._alias_asked: dict[tuple[str, str], float] = {}

        regions = list(dict.fromkeys(k.region for k in self._keys))
        self._breakers = {
            r: _CircuitBreaker(self._failure_threshold, self._reset_timeout, clock) for r in regions
        }
        self._clients = self._build_clients(
            regions,
            client,
            endpoint_url=endpoint_url,
            urls=urls,
            access_key=aws_access_key_id,
            secret_key=aws_secret_access_key,
            session_token=aws_session_token,
        )
        install_botocore_log_redaction()
        _forks.register(self, _forks.STORE)

    def _after_fork_in_child(self) -> None:
        # Fresh locks (a parent thread may have held one), and no keep-alive connection
        # shared with the parent.
        self._stats_lock = threading.Lock()
        self._alias_lock = threading.Lock()
        for breaker in self._breakers.values():
            breaker._lock = threading.Lock()
        for client in self._clients.values():
            _forks.clear_http_pools(client)

    # -- construction helpers -----------------------------------------------------------------

    @staticmethod
    def _parse_keys(keys: Sequence[str], region: str | None) -> list[_KeyRef]:
        if isinstance(keys, str | bytes) or not isinstance(keys, Sequence) or not keys:
            raise ConfigurationError("keys must be a non-empty sequence of key ARNs")
        parsed: list[_KeyRef] = []
        for i, value in enumerate(keys):
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"keys[{i}] must be a non-empty str")
            ref = _parse_key(value, region)
            if ref is None:
                hint = "" if region else " (bare key ids and aliases need region=)"
                raise ConfigurationError(f"keys[{i}] is not a KMS key ARN, key id or alias{hint}")
            if any(_same_key(ref, other) for other in parsed):
                raise ConfigurationError(f"keys[{i}] duplicates an earlier entry")
            parsed.append(ref)
        primary = parsed[0]
        for i, ref in enumerate(parsed[1:], start=1):
            if ref.mrk_id and ref.mrk_id == primary.mrk_id and ref.region == primary.region:
                raise ConfigurationError(f"keys[{i}] is in the primary's region, not a replica")
        return parsed

    def _build_clients(
        self,
        regions: list[str],
        client: KMSClient | None,
        *,
        endpoint_url: str | None,
        urls: Mapping[str, str],
        access_key: str | None,
        secret_key: str | None,
        session_token: str | None,
    ) -> dict[str, KMSClient]:
        config = Config(
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            # total_max_attempts=1 means no botocore retries at all ("max_attempts" in this
            # dict counts *retries*, so max_attempts=1 would still allow a second attempt).
            retries={"total_max_attempts": 1, "mode": "standard"},
            user_agent_extra="greenlang-crypto",
        )
        clients: dict[str, KMSClient] = {}
        primary_region = self._keys[0].region
        if client is not None:
            meta = getattr(client, "meta", None)
            service = getattr(getattr(meta, "service_model", None), "service_name", None)
            if service != "kms":
                raise ConfigurationError("client must be a boto3 KMS client")
            if getattr(meta, "region_name", None) != primary_region:
                raise ConfigurationError("client's region must be the primary key's region")
            clients[primary_region] = client
        try:
            session = boto3.session.Session(
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                aws_session_token=session_token,
            )
            for r in regions:
                if r not in clients:
                    clients[r] = session.client(
                        "kms",
                        region_name=r,
                        endpoint_url=urls.get(r, endpoint_url),
                        config=config,
                    )
        except (botocore_exc.BotoCoreError, ValueError) as exc:
            raise ConfigurationError(f"cannot build KMS client: {type(exc).__name__}") from None
        return clients

    # -- introspection ------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of the provider's counters.

        Keys: ``<Operation>.<status>`` per call, and ``attempts``, ``retries``, ``failovers``,
        ``throttled``, ``circuit_skipped`` and ``circuit_opened``.
        """
        with self._stats_lock:
            return dict(self._stats)

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
        breaker = self._breakers.get(region)
        if breaker is None:
            raise InvalidArgumentError(f"no KMS client for region {region}")
        return breaker.state

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[key] += n

    # -- allow-list and key-id checks ---------------------------------------------------------

    def _resolve(self, key_id: str) -> list[_KeyRef]:
        """Returns the configured entries to try for ``key_id``, in order, or refuses it."""
        if not isinstance(key_id, str):
            raise InvalidArgumentError("key_id must be a str")
        ref = _parse_key(key_id, self._region)
        if ref is not None:
            match = next((k for k in self._keys if _same_key(ref, k)), None)
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

    def _match_alias_target(self, ref: _KeyRef) -> _KeyRef | None:
        """Finds a configured alias that resolves to the key ARN ``ref``."""
        for alias in (k for k in self._keys if k.is_alias and k.region == ref.region):
            if ref.raw in self._alias_seen(alias):
                return alias
        for alias in (k for k in self._keys if k.is_alias and k.region == ref.region):
            if not self._may_ask_alias(alias):
                # Key ids come from envelopes: without this bound, every forged envelope
                # naming an unknown key would cost a KMS request.
                continue
            try:
                resp = self._call("DescribeKey", [alias], lambda c, t: c.describe_key(KeyId=t.raw))
            except (KmsAccessDeniedError, KmsKeyDisabledError):
                # This alias cannot vouch for the key; an outage, though, must surface as one.
                continue
            arn = str(resp.get("KeyMetadata", {}).get("Arn", ""))
            if self._returned_matches(alias, arn):
                self._remember_alias(alias, arn)
                if arn == ref.raw:
                    return alias
        return None

    def _may_ask_alias(self, alias: _KeyRef) -> bool:
        """Whether KMS may be asked where ``alias`` points now: once per second at most."""
        now = time.monotonic()
        with self._alias_lock:
            last = self._alias_asked.get((alias.region, alias.resource))
            if last is not None and now - last < _ALIAS_RECHECK_SECONDS:
                return False
            self._alias_asked[(alias.region, alias.resource)] = now
            return True

    def _alias_seen(self, alias: _KeyRef) -> set[str]:
        with self._alias_lock:
            return set(self._alias_targets.get((alias.region, alias.resource), ()))

    def _remember_alias(self, alias: _KeyRef, arn: str) -> None:
        with self._alias_lock:
            self._alias_targets.setdefault((alias.region, alias.resource), set()).add(arn)

    @staticmethod
    def _returned_matches(target: _KeyRef, returned: object) -> bool:
        """Whether the KeyId KMS returned is the key that ``target`` pinned."""
        if not isinstance(returned, str):
            return False
        got = _parse_key(returned, None)
        if got is None or got.is_alias or got.region != target.region:
            return False
        if target.account and got.account != target.account:
            return False
        if target.partition and got.partition != target.partition:
            return False
        # An alias resolves to some key in its region and account; KMS is the authority.
        return target.is_alias or got.resource.lower() == target.resource.lower()

    # -- the retry / failover engine ----------------------------------------------------------

    def _call(
        self,
        operation: str,
        targets: Sequence[_KeyRef],
        invoke: Callable[[KMSClient, _KeyRef], Any],
        *,
        max_rounds: int | None = None,
    ) -> dict[str, Any]:
        """Runs ``invoke`` against the targets with retries, backoff and failover.

        Returns the response of the first attempt that succeeds, with the target used stored
        under the private key ``"__target__"``. Errors are raised outside ``except`` blocks, so
        no botocore exception (which may hold a response) ends up in ``__context__``.
        """
        rounds_allowed = max_rounds or self._max_attempts
        deadline_at = self._clock() + self._deadline
        last: _Failure | None = None
        rounds = 0
        while True:
            attempted = False
            out_of_time = False
            for index, target in enumerate(targets):
                if self._clock() >= deadline_at:
                    out_of_time = True
                    break
                breaker = self._breakers[target.region]
                if not breaker.allow():
                    self._count("circuit_skipped")
                    continue
                if index > 0 and attempted:
                    self._count("failovers")
                attempted = True
                self._count("attempts")
                failure: _Failure
                try:
                    resp = invoke(self._clients[target.region], target)
                except Exception as exc:  # classified below; never propagated raw
                    failure = _classify(exc)
                except BaseException:
                    # Interrupted (KeyboardInterrupt, ...): free a half-open probe slot.
                    breaker.release()
                    raise
                else:
                    breaker.record_success()
                    result = cast(dict[str, Any], resp)
                    result["__target__"] = target
                    return result
                if failure.kind is not _Kind.RETRY:
                    # The region answered; it is up even if the answer is "no".
                    breaker.record_success()
                    raise self._permanent_error(operation, failure, target)
                last = failure
                if failure.region_down:
                    if breaker.record_failure():
                        self._count("circuit_opened")
                else:
                    breaker.record_success()
                if failure.code in _THROTTLING_CODES:
                    self._count("throttled")
            rounds += 1
            if not attempted and not out_of_time:
                raise KmsUnavailableError(
                    f"KMS {operation}: every region's circuit breaker is open",
                    code=last.code if last else "CircuitOpen",
                )
            if out_of_time or rounds >= rounds_allowed:
                break
            ceiling = min(self._max_delay, self._base_delay * (2 ** (rounds - 1)))
            delay = self._rng.uniform(0.0, ceiling)
            if self._clock() + delay >= deadline_at:
                break
            self._count("retries")
            self._sleep(delay)
        code = last.code if last else "DeadlineExceeded"
        raise KmsUnavailableError(
            f"KMS {operation} unavailable after {rounds} attempt round(s) ({code})", code=code
        )

    @staticmethod
    def _permanent_error(operation: str, failure: _Failure, target: _KeyRef) -> Exception:
        where = f"KMS {operation} with key {target.raw} in {target.region}"
        if failure.kind is _Kind.DISABLED:
            return KmsKeyDisabledError(
                f"{where}: key disabled or pending deletion", code=failure.code
            )
        if failure.kind is _Kind.DENIED:
            return KmsAccessDeniedError(f"{where}: refused ({failure.code})", code=failure.code)
        if failure.kind is _Kind.INVALID_CIPHERTEXT:
            # One opaque error whatever the cause (wrong context, corrupted blob).
            return DecryptionError()
        return KmsError(f"{where} failed ({failure.code})", code=failure.code)

    def _observed(self, operation: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            return fn()
        except BaseException as exc:
            error = exc
            raise
        finally:
            status = _status_of(error)
            error = None  # do not keep the traceback alive through this frame
            self._count(f"{operation}.{status}")
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
                self._remember_alias(target, str(returned))
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
            target = cast(_KeyRef, resp.pop("__target__"))
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
            if not self._returned_matches(dest, resp.get("KeyId")):
                problem = "destination KeyId differs from the one requested"
            elif "SourceKeyId" in resp and not self._returned_matches(source, resp["SourceKeyId"]):
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

    def _describe(self, target: _KeyRef, *, max_rounds: int | None = None) -> dict[str, Any]:
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

                def list_page(c: KMSClient, t: _KeyRef, m: str | None = marker) -> Any:
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

    def _answer_problem(self, target: _KeyRef, returned: object, plaintext: object) -> str | None:
        """Why a GenerateDataKey/Decrypt answer is unacceptable (never mentions key bytes)."""
        if not self._returned_matches(target, returned):
            return f"KeyId is not {target.raw}"
        if not isinstance(plaintext, bytes) or len(plaintext) != _DEK_LEN:
            return f"plaintext data key is not {_DEK_LEN} bytes"
        return None
