"""Envelope format gate checks: v2 (key-committing) against v1 in the same run. Imported by
gate.py (core suite).

v2 adds a 32-byte commitment to the header and runs AES-GCM under a key derived from the
DEK. The derivation and the commitment are computed once per DEK, so what a v2 seal or open
pays per value is only the longer header: 32 more bytes to write and to authenticate, and a
32-byte constant-time compare on open. The issue's bound is 1.05x of v1 for 64 B values.

Both sides run the same code path (an envelope sealer for seals, the DEK cache for opens, as
the service does on a cache hit), over one DEK and one context.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from benches._measure import Ratio, time_ratio

Check = Callable[[], Ratio]


def checks() -> list[Check]:
    from greenlang_crypto import _core as core

    key = core.DataKey.generate()
    ctx = core.canonical_context({"tenant_id": "t1", "data_class": "pii"})
    v1 = core.EnvelopeSealer(key, key_version=1, context=ctx, dek_id=1, format_version=1)
    v2 = core.EnvelopeSealer(key, key_version=1, context=ctx, dek_id=1, format_version=2)
    cache = core.DekCache()
    cache.put(core.stored_key_ref_id(1), key)
    pt64 = os.urandom(64)
    env1, env2 = v1.seal(pt64), v2.seal(pt64)
    assert cache.open(env1, ctx) == cache.open(env2, ctx) == pt64

    def paired(name: str, a: Callable[[], object], b: Callable[[], object]) -> Check:
        def run() -> Ratio:
            # Close to its bound by design (the work differs by 32 header bytes): many rounds
            # narrow the median's spread.
            r, ta, tb = time_ratio(a, b, rounds=61)
            return Ratio(name, r, 1.05, False, ta, tb)

        return run

    return [
        paired("envelope v2 seal 64 B vs v1 seal", lambda: v2.seal(pt64), lambda: v1.seal(pt64)),
        paired(
            "envelope v2 open 64 B vs v1 open (cached DEK)",
            lambda: cache.open(env2, ctx),
            lambda: cache.open(env1, ctx),
        ),
    ]


if __name__ == "__main__":
    for check in checks():
        print(check().line())
