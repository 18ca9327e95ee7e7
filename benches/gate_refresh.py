"""Keyring refresh gate: keeping the keyring current costs the data path nothing measurable.

A 64-byte encrypt loop on a service whose keyring refreshes every 5 s (the default bound: a
background thread polls the key store's change counter, heartbeats and purges expired keys)
against the same loop on a service with refresh off. Target: at most 1.02x. The data path
reads only an in-memory epoch, so the only cost is the background thread's share of the
process.

Measured in CPU time of this process (``time.process_time``), which counts our own work,
the refresh thread's included, and not the bursts other processes take from the shared
2-core machine: measured that way two identical services agree within 1%, while wall-clock
medians of the same loops drift by up to 7% under a neighbour's build. The ratio is the mean
of interleaved per-round ratios over about 12 s, so the refresh thread wakes (and its cost is
counted) in at least two measured rounds. Imported by benches/gate.py.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable

from benches._measure import Ratio, calibrate

#: The refresh period under test: the default ``keyring_refresh_seconds``.
REFRESH_SECONDS = 5.0
#: Wall time the check spends measuring, a few refresh periods.
MEASURE_SECONDS = 12.0


def _cpu_time(fn: Callable[[], object], number: int) -> float:
    start = time.process_time()
    for _ in range(number):
        fn()
    return time.process_time() - start


def cpu_ratio(
    ours: Callable[[], object], peer: Callable[[], object], seconds: float, budget: float = 0.02
) -> tuple[float, float, float]:
    """Mean over interleaved rounds of cpu(ours)/cpu(peer), and both mean times per call."""
    n_ours, n_peer = calibrate(ours, budget), calibrate(peer, budget)
    ratios: list[float] = []
    t_ours: list[float] = []
    t_peer: list[float] = []
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline or len(ratios) < 10:
        # Alternate which side goes first so neither always gets the warmer cache.
        if i % 2:
            a = _cpu_time(ours, n_ours) / n_ours
            b = _cpu_time(peer, n_peer) / n_peer
        else:
            b = _cpu_time(peer, n_peer) / n_peer
            a = _cpu_time(ours, n_ours) / n_ours
        i += 1
        if a <= 0 or b <= 0:  # a round shorter than the clock's resolution
            continue
        ratios.append(a / b)
        t_ours.append(a)
        t_peer.append(b)

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    return mean(ratios), mean(t_ours), mean(t_peer)


def checks() -> list[Callable[[], Ratio]]:
    from greenlang_crypto import EncryptionContext
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.providers.local import LocalKeyProvider
    from greenlang_crypto.service import EncryptionService

    def service(refresh: float) -> EncryptionService:
        data_dir = tempfile.mkdtemp(prefix="glc-gate-refresh-")
        LocalKeyProvider(data_dir).create_master_key()
        return EncryptionService(
            EncryptionServiceConfig(data_dir=data_dir, keyring_refresh_seconds=refresh)
        )

    on, off = service(REFRESH_SECONDS), service(0.0)
    ctx = EncryptionContext(tenant_id="t1", data_class="pii")
    pt = os.urandom(64)
    on.encrypt(pt, ctx)
    off.encrypt(pt, ctx)

    def run() -> Ratio:
        r, ta, tb = cpu_ratio(
            lambda: on.encrypt(pt, ctx), lambda: off.encrypt(pt, ctx), MEASURE_SECONDS
        )
        return Ratio(
            f"encrypt 64 B, keyring refresh every {REFRESH_SECONDS:g} s vs off",
            r,
            1.02,
            False,
            ta,
            tb,
        )

    return [run]
