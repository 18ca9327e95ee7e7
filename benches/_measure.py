"""Ratio measurement shared by the benchmark gate: interleaved rounds, medians of ratios.

These machines are shared and noisy, so no absolute time is ever compared with a target.
Each round times our operation and the peer's back to back; the gate uses the median of the
per-round ratios, which cancels slow drifts that hit both sides alike.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Ratio:
    """Outcome of one ratio check."""

    name: str
    ratio: float
    target: float
    higher_is_better: bool
    ours_seconds: float
    peer_seconds: float

    @property
    def passed(self) -> bool:
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target

    def line(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        verdict = "ok  " if self.passed else "MISS"
        return (
            f"{verdict} {self.name:<58} {self.ratio:7.3f}x (target {op} {self.target}x)"
            f"  ours {self.ours_seconds * 1e6:9.2f} us  peer {self.peer_seconds * 1e6:9.2f} us"
        )


def _time(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def calibrate(fn: Callable[[], object], budget: float = 0.02) -> int:
    """Number of calls that take roughly ``budget`` seconds."""
    n = 1
    while True:
        t = _time(fn, n) * n
        if t >= budget / 4 or n >= 1_000_000:
            return max(1, int(n * budget / max(t, 1e-9)))
        n *= 4


def time_ratio(
    ours: Callable[[], object],
    peer: Callable[[], object],
    rounds: int = 15,
    budget: float = 0.02,
) -> tuple[float, float, float]:
    """Median over interleaved rounds of time(ours)/time(peer), and both median times."""
    for fn in (ours, peer):
        fn()
    n_ours, n_peer = calibrate(ours, budget), calibrate(peer, budget)
    ratios, t_ours, t_peer = [], [], []
    for i in range(rounds):
        # Alternate which side goes first so neither always gets the warmer cache.
        if i % 2:
            a = _time(ours, n_ours)
            b = _time(peer, n_peer)
        else:
            b = _time(peer, n_peer)
            a = _time(ours, n_ours)
        ratios.append(a / b)
        t_ours.append(a)
        t_peer.append(b)
    return statistics.median(ratios), statistics.median(t_ours), statistics.median(t_peer)


#: Untimed samples of each side before :func:`paired_ratio` starts timing.
WARM_SAMPLES = 5


def paired_ratio(
    name: str,
    ours: Callable[[], object],
    peer: Callable[[], object],
    target: float,
    rounds: int = 15,
    pairs: int = 200,
    *,
    ours_setup: Callable[[], object] | None = None,
    peer_setup: Callable[[], object] | None = None,
    calls: int = 1,
) -> Ratio:
    """For round trips (a database point query, a Redis command: well under a millisecond each):
    each round times ``pairs`` calls of each side, ours and the peer's alternating call by
    call, and takes the ratio of the two sides' median call times; the result is the median
    over rounds.

    Timing a block of 200 calls of one side and then a block of the other lets a neighbour's
    burst land on one block only: a CI run measured the ORM get-by-primary-key check at
    1.065-1.12x that way while every timing on the machine was twice its usual value.
    Alternating call by call puts both sides inside the same few milliseconds, and the medians
    drop the calls a stall lands on.

    ``ours_setup`` and ``peer_setup`` run before each sample of their side, untimed (clearing
    a cache, moving a fence). A sub-microsecond call needs ``calls`` above 1: a sample then
    times that many calls together.
    """

    loop = range(calls)

    def timer(fn: Callable[[], object], setup: Callable[[], object] | None) -> Callable[[], float]:
        def once() -> float:
            if setup is not None:
                setup()  # untimed: a step that must come first is charged to neither side
            start = time.perf_counter()
            for _ in loop:
                fn()
            return (time.perf_counter() - start) / calls

        return once

    time_ours, time_peer = timer(ours, ours_setup), timer(peer, peer_setup)
    for _ in range(WARM_SAMPLES):
        time_ours()
        time_peer()
    ratios, t_ours, t_peer = [], [], []
    for i in range(rounds):
        a_times, b_times = [], []
        gc.collect()
        gc.disable()
        try:
            for j in range(pairs):
                if (i + j) % 2:
                    a_times.append(time_ours())
                    b_times.append(time_peer())
                else:
                    b_times.append(time_peer())
                    a_times.append(time_ours())
        finally:
            gc.enable()
        a, b = statistics.median(a_times), statistics.median(b_times)
        ratios.append(a / b)
        t_ours.append(a)
        t_peer.append(b)
    return ratio_of_rounds(name, ratios, t_ours, t_peer, target)


def ratio_of_rounds(
    name: str, ratios: list[float], ours: list[float], peer: list[float], target: float
) -> Ratio:
    """The lower-is-better check of paired rounds: the median ratio and each side's median."""
    return Ratio(
        name,
        statistics.median(ratios),
        target,
        False,
        statistics.median(ours),
        statistics.median(peer),
    )
