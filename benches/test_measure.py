"""The benchmark gate's ratio helpers: they must see a real difference and ignore stalls.

Kept beside the gate rather than in tests/unit: the install tests run tests/unit against the
wheel in a project copy that has no benches package.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from benches._measure import Ratio, paired_ratio, time_ratio


def _spin(seconds: float) -> None:
    # Busy-wait: sleep() on a loaded 2-core VM overshoots by more than these durations.
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_paired_ratio_sees_a_side_that_takes_twice_as_long() -> None:
    r = paired_ratio("twice", lambda: _spin(200e-6), lambda: _spin(100e-6), 1.5, rounds=5, pairs=40)
    assert 1.7 < r.ratio < 2.3
    assert not r.passed  # 2x against a 1.5x limit
    assert r.ours_seconds > r.peer_seconds


def test_paired_ratio_drops_a_stall_that_hits_one_side_once_per_round() -> None:
    calls = [0]

    def ours() -> None:
        calls[0] += 1
        # Every 40th call stalls for 50 times a normal call: a block timing of 40 calls would
        # read 2.2x; the median call time does not move.
        _spin(5e-3 if calls[0] % 40 == 0 else 100e-6)

    r = paired_ratio("stall", ours, lambda: _spin(100e-6), 1.2, rounds=5, pairs=40)
    assert r.ratio < 1.2, r.line()
    assert r.passed


def test_time_ratio_orders_the_sides() -> None:
    ratio, ours, peer = time_ratio(lambda: _spin(20e-6), lambda: _spin(60e-6), rounds=5)
    assert 0.2 < ratio < 0.5
    assert ours < peer


def test_ratio_verdicts() -> None:
    assert Ratio("x", 1.0, 1.03, False, 0, 0).passed
    assert not Ratio("x", 1.04, 1.03, False, 0, 0).passed
    assert Ratio("x", 0.8, 0.7, True, 0, 0).passed
    assert not Ratio("x", 0.6, 0.7, True, 0, 0).passed
    assert "MISS" in Ratio("x", 0.6, 0.7, True, 0, 0).line()


def test_db_ratios_measures_every_side_against_the_peer_in_the_same_rounds() -> None:
    from benches.gate_sqlalchemy import _db_ratios

    order: list[str] = []
    setups = [0]

    def side(name: str, seconds: float) -> Callable[[], None]:
        def run() -> None:
            order.append(name)
            _spin(seconds)

        return run

    got = _db_ratios(
        {"twice": side("twice", 2e-3), "same": side("same", 1e-3)},
        side("peer", 1e-3),
        rounds=4,
        setup=lambda: setups.__setitem__(0, setups[0] + 1),
    )
    assert set(got) == {"twice", "same"}
    assert 1.6 < got["twice"][0] < 2.4
    assert 0.7 < got["same"][0] < 1.4
    assert got["twice"][2] == got["same"][2]  # one peer timing shared by both sides
    # One warm-up call each, then every round times all three, the order reversed every
    # other round so no side always runs first; the setup runs before every timed call.
    rounds = order[3:]
    assert rounds[:3] == ["same", "twice", "peer"] and rounds[3:6] == ["peer", "twice", "same"]
    assert len(rounds) == 12 and setups[0] == 12
