"""Gate checks for encrypted Redis values: SET+GET through the wrapper vs plain redis-py.

Both sides talk to the same redis-server over loopback in the same rounds, so the ratio is the
cost of encryption on top of a real round trip.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

from benches._measure import Ratio, paired_ratio


def checks() -> list[Callable[[], Ratio]]:
    import redis

    from greenlang_crypto.redis import EncryptedRedis, KeyPattern
    from greenlang_crypto.service import EncryptionService

    url = os.environ["GLC_REDIS_URL"]
    value = os.urandom(64)

    def run() -> Ratio:
        with tempfile.TemporaryDirectory() as data:
            svc = EncryptionService.init_local(data)
            plain = redis.Redis.from_url(url, db=4)
            wrapped = EncryptedRedis(
                redis.Redis.from_url(url, db=4),
                svc,
                [KeyPattern("bench:enc:*", data_class="session", tenant_id="acme")],
            )

            def ours() -> None:
                wrapped.set("bench:enc:1", value)
                wrapped.get("bench:enc:1")

            def peer() -> None:
                plain.set("bench:plain:1", value)
                plain.get("bench:plain:1")

            ours()  # the first call fetches the data key
            try:
                # Round trips alternate call by call (see paired_ratio).
                return paired_ratio(
                    "Redis SET+GET 64 B encrypted vs plain redis-py", ours, peer, 1.15
                )
            finally:
                plain.flushdb()
                plain.close()
                wrapped.raw.close()
                svc.close()

    return [run]
