"""Tenant erasure gate: ``erase_tenant`` on a live fleet finishes within 2x the refresh bound.

Three instances (separate processes) share a PostgreSQL key store, each refreshing its keyring
every ``REFRESH_SECONDS`` and encrypting for the tenant without pause, as application servers
would. This process erases the tenant (both phases: every instance confirms that it stopped
encrypting for the tenant, then that it dropped the deleted keys) and the check compares the
wall time of the erasure with ``keyring_refresh_seconds``: at most 2x. Change notifications
(LISTEN/NOTIFY) normally make it a matter of milliseconds; polling alone, one refresh period
per phase, would sit at the bound.

The ratio is the median over several erasures (the tenant writes again under fresh keys
between them, so each erasure destroys keys). Needs ``GLC_PG_URL``; the key store lives in a
schema of its own, dropped afterwards. Imported by benches/gate.py.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from benches._measure import Ratio

#: The refresh period of every instance in the fleet (and of the erasing process).
REFRESH_SECONDS = 1.0
#: Instances in the fleet.
FLEET = 3
#: Erasures measured; the median counts.
ROUNDS = 5
NAME = f"erase_tenant on a {FLEET}-instance fleet vs keyring_refresh_seconds (goal 2x)"

_REPO = Path(__file__).resolve().parent.parent

# One instance of the fleet: registers, says so, then encrypts for the tenant until stdin
# closes. Refusals while an erasure runs are expected and counted, nothing else is.
_INSTANCE = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from greenlang_crypto import EncryptionContext
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.exceptions import TenantErasingError
    from greenlang_crypto.keys.store import open_key_store
    from greenlang_crypto.service import EncryptionService

    data_dir, url, schema, refresh = sys.argv[1:5]
    cfg = EncryptionServiceConfig(data_dir=Path(data_dir), keyring_refresh_seconds=float(refresh))
    svc = EncryptionService(cfg, key_store=open_key_store(url, schema=schema))
    ctx = EncryptionContext(tenant_id="gate-tenant", data_class="pii")
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    print("ready", flush=True)
    refused = 0
    while not done.wait(0.005):
        try:
            svc.encrypt(b"x" * 64, ctx)
        except TenantErasingError:
            refused += 1
    svc.close()
    print(refused, flush=True)
    """
)


def checks() -> list[Callable[[], Ratio]]:
    """The erasure check (empty without ``GLC_PG_URL``)."""
    if not os.environ.get("GLC_PG_URL"):
        return []
    return [run]


def run() -> Ratio:
    """Measures ``ROUNDS`` erasures on a fresh fleet; returns the median against the bound."""
    import psycopg

    from greenlang_crypto import EncryptionContext
    from greenlang_crypto._db import pg_dsn
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.keys.store import open_key_store
    from greenlang_crypto.providers.local import LocalKeyProvider
    from greenlang_crypto.service import EncryptionService

    url = pg_dsn(os.environ["GLC_PG_URL"])
    schema = f"gate_erase_{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        os.environ.get("PYTHONPATH"), str(_REPO)
    ])))  # fmt: skip
    fleet: list[subprocess.Popen[str]] = []
    admin: EncryptionService | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="glc-gate-erase-") as data_dir:
            LocalKeyProvider(data_dir).create_master_key()
            cfg = EncryptionServiceConfig(
                data_dir=Path(data_dir), keyring_refresh_seconds=REFRESH_SECONDS
            )
            admin = EncryptionService(cfg, key_store=open_key_store(url, schema=schema))
            for _ in range(FLEET):
                fleet.append(
                    subprocess.Popen(
                        [sys.executable, "-c", _INSTANCE, data_dir, url, schema,
                         str(REFRESH_SECONDS)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                        env=env,
                    )
                )  # fmt: skip
            for proc in fleet:
                assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            ctx = EncryptionContext(tenant_id="gate-tenant", data_class="pii")
            times: list[float] = []
            for _ in range(ROUNDS):
                admin.encrypt(b"x", ctx)  # at least one key to destroy in every round
                time.sleep(REFRESH_SECONDS / 2)  # the fleet writes under the current keys
                started = time.perf_counter()
                report = admin.erase_tenant("gate-tenant")
                times.append(time.perf_counter() - started)
                if report.instances_acknowledged != FLEET or not report.keys_destroyed:
                    raise RuntimeError(f"the erasure did not cover the fleet: {report}")
            for proc in fleet:
                proc.communicate(input="", timeout=60)
                if proc.returncode != 0:
                    raise RuntimeError("a fleet instance failed")
    finally:
        for proc in fleet:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if admin is not None:
            admin.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    median = statistics.median(times)
    return Ratio(NAME, median / REFRESH_SECONDS, 2.0, False, median, REFRESH_SECONDS)


if __name__ == "__main__":
    print(run().line())
