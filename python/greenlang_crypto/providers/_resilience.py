"""Retries, deadlines and per-region circuit breakers for calls to a remote key service.

Nothing here knows about a particular service: a provider hands :class:`ResilientCaller` the
places to try (anything with a ``region``), a function that makes one attempt, and a function
that says what a failed attempt means (try again, or this exception). The provider's own
client library should not retry as well, or the attempts multiply and the latency bound below
no longer holds.

The policy, per call:

* Each *round* tries the candidate regions in order, skipping those whose circuit is open; the
  first success ends the call. A permanent answer (access denied, bad ciphertext...) ends it at
  once: it would be the same in every region.
* Between rounds the caller sleeps with exponential backoff and full jitter: a delay drawn
  uniformly from ``[0, min(max_delay, base_delay * 2**n))``.
* At most ``max_attempts`` rounds, and no attempt or sleep is started past ``deadline`` seconds
  from the start of the call, so the worst-case latency is known and testable.
* A region's breaker opens after ``failure_threshold`` consecutive outage failures and lets one
  probe through ``reset_timeout`` seconds later.

Clock, sleep and random source are injectable, so all of this is testable without waiting.
"""

from __future__ import annotations

import math
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final, Protocol, TypeVar

from greenlang_crypto import _forks
from greenlang_crypto.exceptions import ConfigurationError, KmsUnavailableError

__all__ = [
    "CircuitBreaker",
    "Counters",
    "ResiliencePolicy",
    "ResilientCaller",
    "Transient",
    "check_count",
    "check_positive",
]

_MAX_ATTEMPTS: Final = 20
_MAX_FAILURE_THRESHOLD: Final = 10_000


def check_positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    """``value`` as a float, if it is a finite number > 0 (or >= 0 with ``allow_zero``).

    Raises:
        ConfigurationError: Otherwise (``bool`` is not a number here).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise ConfigurationError(f"{name} must be a finite number > 0")
    return number


def check_count(name: str, value: object, maximum: int) -> int:
    """``value``, if it is an ``int`` in ``[1, maximum]``.

    Raises:
        ConfigurationError: Otherwise (``bool`` is not a count here).
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ConfigurationError(f"{name} must be an int in [1, {maximum}]")
    return value


@dataclass(frozen=True, slots=True)
class ResiliencePolicy:
    """How hard a call is retried, and when a region is given up on for a while.

    Construction validates every field (numbers become ``float``).

    Attributes:
        max_attempts: Attempt rounds per call, 1 to 20 (a round tries each region once).
        base_delay: First backoff ceiling, seconds (0 allowed).
        max_delay: Largest backoff ceiling, seconds; at least ``base_delay``.
        deadline: Overall time budget per call, seconds.
        failure_threshold: Consecutive outage failures that open a region's circuit.
        reset_timeout: Seconds an open circuit waits before letting one probe through.

    Raises:
        ConfigurationError: A field is out of range.
    """

    max_attempts: int
    base_delay: float
    max_delay: float
    deadline: float
    failure_threshold: int
    reset_timeout: float

    def __post_init__(self) -> None:
        # The checks run in field order, so the first bad option is the one reported.
        checked = {
            "max_attempts": check_count("max_attempts", self.max_attempts, _MAX_ATTEMPTS),
            "base_delay": check_positive("base_delay", self.base_delay, allow_zero=True),
            "max_delay": check_positive("max_delay", self.max_delay, allow_zero=True),
        }
        if checked["max_delay"] < checked["base_delay"]:
            raise ConfigurationError("max_delay must be >= base_delay")
        checked["deadline"] = check_positive("deadline", self.deadline)
        checked["failure_threshold"] = check_count(
            "failure_threshold", self.failure_threshold, _MAX_FAILURE_THRESHOLD
        )
        checked["reset_timeout"] = check_positive("reset_timeout", self.reset_timeout)
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def backoff_ceiling(self, rounds: int) -> float:
        """The largest delay before round ``rounds + 1`` (``rounds`` rounds done, >= 1)."""
        ceiling: float = min(self.max_delay, self.base_delay * (2 ** (rounds - 1)))
        return ceiling


class Counters:
    """Named event counters, safe to bump from many threads."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        _forks.fresh_locks_after_fork(self, "_lock")

    def add(self, key: str, n: int = 1) -> None:
        """Adds ``n`` to counter ``key``."""
        with self._lock:
            self._counts[key] += n

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter."""
        with self._lock:
            return dict(self._counts)


class _State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Per-region breaker: opens after N consecutive outage failures, probes after a pause.

    Args:
        threshold: Consecutive failures that open the circuit.
        reset_timeout: Seconds the circuit stays open before one probe is let through.
        clock: Monotonic clock, seconds.
    """

    def __init__(self, threshold: int, reset_timeout: float, clock: Callable[[], float]) -> None:
        self._threshold = threshold
        self._reset_timeout = reset_timeout
        self._clock = clock
        self._lock = threading.Lock()
        # A request thread of the parent may hold the lock at fork(); the child's copy must
        # not stay locked.
        _forks.fresh_locks_after_fork(self, "_lock")
        self._state = _State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open`` (an open circuit whose pause is over)."""
        with self._lock:
            if (
                self._state is _State.OPEN
                and self._clock() - self._opened_at >= self._reset_timeout
            ):
                return _State.HALF_OPEN.value
            return self._state.value

    def allow(self) -> bool:
        """Whether an attempt may go to the region now (a granted probe must get a verdict)."""
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


@dataclass(frozen=True, slots=True)
class Transient:
    """A failed attempt that another region, or a later round, may get past.

    Attributes:
        code: The service's error code (or exception name), reported if the call gives up.
        region_down: Counts against the region's circuit breaker (an outage, not load).
        throttled: The service asked to slow down (counted as ``throttled``).
    """

    code: str
    region_down: bool
    throttled: bool = False


class _Located(Protocol):
    @property
    def region(self) -> str: ...


_T = TypeVar("_T", bound=_Located)
_R = TypeVar("_R")


class ResilientCaller:
    """Runs a remote operation against candidate regions with retries, backoff and failover.

    Counts, through ``count``: ``attempts``, ``retries``, ``failovers``, ``throttled``,
    ``circuit_skipped`` and ``circuit_opened``.

    Args:
        policy: Retry and circuit-breaker settings.
        regions: Every region a call may go to (each gets its own breaker).
        clock: Monotonic clock, seconds.
        sleep: Sleeps between rounds.
        rng: Random source for the jitter.
        count: Called with the name of each event counted.
        service: Names the service in error messages (``"KMS"``).
    """

    def __init__(
        self,
        policy: ResiliencePolicy,
        regions: Iterable[str],
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        rng: random.Random,
        count: Callable[[str], None],
        service: str,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._count = count
        self._service = service
        self._breakers = {
            r: CircuitBreaker(policy.failure_threshold, policy.reset_timeout, clock)
            for r in regions
        }

    def breaker(self, region: str) -> CircuitBreaker | None:
        """The circuit breaker of ``region``, or None if calls never go there."""
        return self._breakers.get(region)

    def call(
        self,
        operation: str,
        targets: Sequence[_T],
        attempt: Callable[[_T], _R],
        judge: Callable[[Exception, _T], Transient | Exception],
        *,
        max_rounds: int | None = None,
    ) -> tuple[_R, _T]:
        """Returns the first successful ``attempt`` over ``targets``, and the target it used.

        Args:
            operation: Names the operation in error messages.
            targets: Where to try, in order (failover goes down the list).
            attempt: Makes one attempt at one target.
            judge: What a failed attempt means: :class:`Transient` to go on, or the exception
                to raise at once (the service answered and it would answer the same again).
            max_rounds: Fewer rounds than the policy allows (a health check wants one).

        Raises:
            KmsUnavailableError: Every circuit is open, or the rounds or the deadline ran out.
            Exception: Whatever ``judge`` returned for a permanent failure.

        Errors are raised outside ``except`` blocks, so the attempt's exception (which may hold
        a response body) never ends up in the raised error's ``__context__``.
        """
        policy = self._policy
        rounds_allowed = max_rounds or policy.max_attempts
        deadline_at = self._clock() + policy.deadline
        last: Transient | None = None
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
                verdict: Transient | Exception
                try:
                    result = attempt(target)
                except Exception as exc:  # judged below; never propagated raw
                    verdict = judge(exc, target)
                except BaseException:
                    # Interrupted (KeyboardInterrupt, ...): free a half-open probe slot.
                    breaker.release()
                    raise
                else:
                    breaker.record_success()
                    return result, target
                if isinstance(verdict, Exception):
                    # The region answered; it is up even if the answer is "no".
                    breaker.record_success()
                    raise verdict
                last = verdict
                if verdict.region_down:
                    if breaker.record_failure():
                        self._count("circuit_opened")
                else:
                    breaker.record_success()
                if verdict.throttled:
                    self._count("throttled")
            rounds += 1
            if not attempted and not out_of_time:
                raise KmsUnavailableError(
                    f"{self._service} {operation}: every region's circuit breaker is open",
                    code=last.code if last else "CircuitOpen",
                )
            if out_of_time or rounds >= rounds_allowed:
                break
            delay = self._rng.uniform(0.0, policy.backoff_ceiling(rounds))
            if self._clock() + delay >= deadline_at:
                break
            self._count("retries")
            self._sleep(delay)
        code = last.code if last else "DeadlineExceeded"
        raise KmsUnavailableError(
            f"{self._service} {operation} unavailable after {rounds} attempt round(s) ({code})",
            code=code,
        )
