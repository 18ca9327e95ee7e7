"""Retries, backoff, deadlines and circuit breakers of remote key-service calls, on a fake clock.

Nothing here sleeps: the caller's clock and sleep are one fake that sleeping moves forward, and
the jitter always takes the top of its range, so every schedule is known in advance.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from greenlang_crypto.exceptions import ConfigurationError, KmsError, KmsUnavailableError
from greenlang_crypto.providers._resilience import (
    CircuitBreaker,
    Counters,
    ResiliencePolicy,
    ResilientCaller,
    Transient,
    check_count,
    check_positive,
)

EAST, WEST = "us-east-1", "us-west-2"
OUTAGE = Transient("ServiceUnavailable", region_down=True)
THROTTLED = Transient("ThrottlingException", region_down=False, throttled=True)


class FakeClock:
    """A monotonic clock that only moves when something sleeps or an attempt takes time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class TopOfRange(random.Random):
    """Jitter that always draws the largest delay allowed."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass(frozen=True)
class Place:
    region: str
    name: str


class Remote:
    """Attempts that fail as scripted per region (then succeed), recording what was tried."""

    def __init__(
        self, clock: FakeClock, script: dict[str, list[Exception]], cost: float = 0.0
    ) -> None:
        self.clock = clock
        self.script = {region: list(failures) for region, failures in script.items()}
        self.cost = cost
        self.tried: list[str] = []

    def __call__(self, place: Place) -> str:
        self.tried.append(place.region)
        self.clock.now += self.cost
        failures = self.script.get(place.region, [])
        if failures:
            raise failures.pop(0)
        return f"answer from {place.name}"


class Down(Exception):
    """The region did not answer."""


class Slow(Exception):
    """The region asked to slow down."""


class Refused(Exception):
    """The region answered no."""


def judge(exc: Exception, place: Place) -> Transient | Exception:
    if isinstance(exc, Down):
        return OUTAGE
    if isinstance(exc, Slow):
        return THROTTLED
    return KmsError(f"refused in {place.region}", code="Refused")


def policy(**overrides: Any) -> ResiliencePolicy:
    settings: dict[str, Any] = {
        "max_attempts": 5,
        "base_delay": 0.05,
        "max_delay": 1.0,
        "deadline": 5.0,
        "failure_threshold": 5,
        "reset_timeout": 30.0,
    }
    settings.update(overrides)
    return ResiliencePolicy(**settings)


def make_caller(clock: FakeClock, **overrides: Any) -> tuple[ResilientCaller, Counter[str]]:
    counts: Counter[str] = Counter()

    def count(name: str) -> None:
        counts[name] += 1

    caller = ResilientCaller(
        policy(**overrides),
        [EAST, WEST],
        clock=clock,
        sleep=clock.sleep,
        rng=TopOfRange(),
        count=count,
        service="KMS",
    )
    return caller, counts


PRIMARY = Place(EAST, "primary")
REPLICA = Place(WEST, "replica")


# -- option checks ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, "1", None, math.nan, math.inf, -1, 0])
def test_check_positive_refuses_what_is_not_a_positive_finite_number(value: object) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        check_positive("timeout", value)


def test_check_positive_returns_a_float_and_takes_zero_only_when_allowed() -> None:
    assert check_positive("x", 2) == 2.0 and isinstance(check_positive("x", 2), float)
    assert check_positive("x", 0, allow_zero=True) == 0.0


@pytest.mark.parametrize("value", [0, 21, True, 2.0, "3"])
def test_check_count_refuses_out_of_range_and_non_int(value: object) -> None:
    with pytest.raises(ConfigurationError, match=r"n must be an int in \[1, 20\]"):
        check_count("n", value, 20)


def test_check_count_accepts_the_bounds() -> None:
    assert check_count("n", 1, 20) == 1 and check_count("n", 20, 20) == 20


def test_policy_refuses_a_max_delay_below_the_base_delay() -> None:
    with pytest.raises(ConfigurationError, match="max_delay must be >= base_delay"):
        policy(base_delay=2.0, max_delay=1.0)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"max_attempts": 21}, "max_attempts"),
        ({"max_attempts": 0, "deadline": -1}, "max_attempts"),  # the first bad one is named
        ({"deadline": 0}, "deadline"),
        ({"failure_threshold": 10_001}, "failure_threshold"),
        ({"reset_timeout": math.nan}, "reset_timeout"),
        ({"base_delay": -0.1}, "base_delay"),
    ],
)
def test_policy_names_the_first_bad_option(overrides: dict[str, float], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        policy(**overrides)


def test_policy_stores_numbers_as_floats() -> None:
    checked = policy(base_delay=0, max_delay=2, deadline=3, reset_timeout=4)
    assert [type(v) for v in (checked.base_delay, checked.max_delay)] == [float, float]
    assert [type(v) for v in (checked.deadline, checked.reset_timeout)] == [float, float]


def test_backoff_ceiling_doubles_up_to_the_maximum() -> None:
    ceilings = [policy(base_delay=0.1, max_delay=0.5).backoff_ceiling(n) for n in range(1, 6)]
    assert ceilings == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


# -- circuit breaker --------------------------------------------------------------------------


def test_breaker_opens_after_the_threshold_and_reports_it_once() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(3, 30.0, clock)
    assert [breaker.record_failure() for _ in range(3)] == [False, False, True]
    assert breaker.state == "open" and not breaker.allow()
    assert breaker.record_failure() is False  # already open: not a new opening


def test_a_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(2, 30.0, FakeClock())
    breaker.record_failure()
    breaker.record_success()
    assert breaker.record_failure() is False and breaker.state == "closed"


def test_after_the_pause_exactly_one_probe_goes_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 30.0, clock)
    breaker.record_failure()
    clock.now += 29.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.state == "half_open"
    assert breaker.allow() is True
    assert breaker.allow() is False  # the probe is still out


def test_a_failed_probe_reopens_and_a_good_one_closes() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10.0, clock)
    breaker.record_failure()
    clock.now += 10.0
    assert breaker.allow()
    assert breaker.record_failure() is True and breaker.state == "open"
    clock.now += 10.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_release_frees_the_probe_slot() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10.0, clock)
    breaker.record_failure()
    clock.now += 10.0
    assert breaker.allow()
    breaker.release()
    assert breaker.allow()


# -- the caller -------------------------------------------------------------------------------


def test_first_success_returns_the_answer_and_the_place_used() -> None:
    clock = FakeClock()
    caller, counts = make_caller(clock)
    remote = Remote(clock, {})
    assert caller.call("Op", [PRIMARY, REPLICA], remote, judge) == ("answer from primary", PRIMARY)
    assert remote.tried == [EAST] and counts == Counter(attempts=1) and clock.sleeps == []


def test_transient_failures_are_retried_with_doubling_backoff() -> None:
    clock = FakeClock()
    caller, counts = make_caller(clock, base_delay=0.01, max_delay=0.03)
    remote = Remote(clock, {EAST: [Down(), Down(), Down()]})
    assert caller.call("Op", [PRIMARY], remote, judge)[0] == "answer from primary"
    assert clock.sleeps == pytest.approx([0.01, 0.02, 0.03])
    assert counts["attempts"] == 4 and counts["retries"] == 3


def test_an_outage_fails_over_to_the_replica_in_the_same_round() -> None:
    clock = FakeClock()
    caller, counts = make_caller(clock)
    remote = Remote(clock, {EAST: [Down()]})
    assert caller.call("Op", [PRIMARY, REPLICA], remote, judge) == ("answer from replica", REPLICA)
    assert remote.tried == [EAST, WEST] and counts["failovers"] == 1 and clock.sleeps == []


def test_a_permanent_answer_ends_the_call_without_failover_or_chaining() -> None:
    clock = FakeClock()
    caller, _ = make_caller(clock, failure_threshold=1)
    remote = Remote(clock, {EAST: [Refused()]})
    with pytest.raises(KmsError, match="refused in us-east-1") as caught:
        caller.call("Op", [PRIMARY, REPLICA], remote, judge)
    assert remote.tried == [EAST]
    # The attempt's own exception (it may hold a response body) is not attached.
    assert caught.value.__context__ is None and caught.value.__cause__ is None
    breaker = caller.breaker(EAST)
    assert breaker is not None and breaker.state == "closed"  # the region did answer


def test_giving_up_names_the_rounds_and_the_last_code() -> None:
    clock = FakeClock()
    caller, _ = make_caller(clock, max_attempts=3, failure_threshold=100)
    remote = Remote(clock, {EAST: [Down()] * 10, WEST: [Down()] * 10})
    with pytest.raises(KmsUnavailableError, match=r"KMS Op unavailable after 3 attempt") as got:
        caller.call("Op", [PRIMARY, REPLICA], remote, judge)
    assert got.value.code == "ServiceUnavailable"
    assert remote.tried == [EAST, WEST] * 3 and len(clock.sleeps) == 2


def test_max_rounds_lowers_the_attempt_budget() -> None:
    clock = FakeClock()
    caller, _ = make_caller(clock)
    remote = Remote(clock, {EAST: [Down()] * 10})
    with pytest.raises(KmsUnavailableError, match="after 1 attempt round"):
        caller.call("Op", [PRIMARY], remote, judge, max_rounds=1)
    assert remote.tried == [EAST] and clock.sleeps == []


def test_no_attempt_or_sleep_starts_past_the_deadline() -> None:
    clock = FakeClock()
    caller, _ = make_caller(clock, max_attempts=20, base_delay=0.5, max_delay=0.5, deadline=2.0)
    remote = Remote(clock, {EAST: [Down()] * 20}, cost=0.3)
    start = clock.now
    with pytest.raises(KmsUnavailableError):
        caller.call("Op", [PRIMARY], remote, judge)
    # Attempts at 0, 0.8 and 1.6 s; sleeping 0.5 s more after the third would cross 2.0 s.
    assert remote.tried == [EAST] * 3 and clock.sleeps == [0.5, 0.5]
    assert clock.now - start == pytest.approx(1.9)


def test_an_attempt_that_overruns_the_deadline_ends_the_failover() -> None:
    clock = FakeClock()
    caller, _ = make_caller(clock, deadline=1.0)
    remote = Remote(clock, {EAST: [Down()]}, cost=5.0)
    with pytest.raises(KmsUnavailableError, match="after 1 attempt round") as got:
        caller.call("Op", [PRIMARY, REPLICA], remote, judge)
    assert got.value.code == "ServiceUnavailable"
    assert remote.tried == [EAST]  # the replica would have started past the deadline


def test_outages_open_the_circuit_and_later_calls_skip_the_region() -> None:
    clock = FakeClock()
    caller, counts = make_caller(clock, failure_threshold=2)
    remote = Remote(clock, {EAST: [Down(), Down()]})
    for _ in range(2):
        assert caller.call("Op", [PRIMARY, REPLICA], remote, judge)[1] == REPLICA
    breaker = caller.breaker(EAST)
    assert breaker is not None and breaker.state == "open"
    assert counts["circuit_opened"] == 1 and counts["failovers"] == 2
    healed = Remote(clock, {})
    assert caller.call("Op", [PRIMARY, REPLICA], healed, judge)[1] == REPLICA
    assert healed.tried == [WEST] and counts["circuit_skipped"] == 1
    assert counts["failovers"] == 2  # going straight past an open circuit is not a failover


def test_every_circuit_open_fails_fast_without_an_attempt() -> None:
    clock = FakeClock()
    caller, _ = make_caller(clock, failure_threshold=1)
    for region in (EAST, WEST):
        breaker = caller.breaker(region)
        assert breaker is not None
        breaker.record_failure()
    remote = Remote(clock, {})
    with pytest.raises(KmsUnavailableError, match="every region's circuit breaker is open") as e:
        caller.call("Op", [PRIMARY, REPLICA], remote, judge)
    assert e.value.code == "CircuitOpen" and remote.tried == [] and clock.sleeps == []


def test_throttling_is_retried_but_never_opens_the_circuit() -> None:
    clock = FakeClock()
    caller, counts = make_caller(clock, max_attempts=6, failure_threshold=1, max_delay=0.05)
    remote = Remote(clock, {EAST: [Slow()] * 5})
    assert caller.call("Op", [PRIMARY], remote, judge)[0] == "answer from primary"
    breaker = caller.breaker(EAST)
    assert breaker is not None and breaker.state == "closed"
    assert counts["throttled"] == 5 and counts["circuit_opened"] == 0


def test_an_interrupted_probe_gives_its_slot_back() -> None:
    clock = FakeClock()
    caller, _ = make_caller(clock, failure_threshold=1, reset_timeout=10.0)
    breaker = caller.breaker(EAST)
    assert breaker is not None
    breaker.record_failure()
    clock.now += 10.0

    def interrupted(place: Place) -> str:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        caller.call("Op", [PRIMARY], interrupted, judge)
    assert breaker.allow()  # without the release, the half-open slot would stay taken


def test_unknown_regions_have_no_breaker() -> None:
    caller, _ = make_caller(FakeClock())
    assert caller.breaker("eu-west-1") is None


def test_counters_add_and_snapshot_a_copy() -> None:
    counters = Counters()
    counters.add("a")
    counters.add("a", 2)
    snap = counters.snapshot()
    snap["a"] = 0
    assert counters.snapshot() == {"a": 3}
