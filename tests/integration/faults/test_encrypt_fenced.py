"""One service through a PostgreSQL outage, in process: decrypt goes on, encrypt is fenced.

While PostgreSQL is down the service cannot learn of a rotation or retirement made elsewhere.
Decrypting with keys it has cached stays safe and keeps working. Sealing does not: once its
last confirmed keyring read is older than the fence bound it could be sealing under a version
the fleet has retired, so ``encrypt`` must refuse with the typed KeyStoreUnavailableError,
promptly (a caller's request must not hang on a dead database), and work again by itself
soon after PostgreSQL is back. Closing the service must not raise while the database is down.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.exceptions import KeyStoreUnavailableError
from greenlang_crypto.service import EncryptionService
from tests.integration.faults.conftest import FENCE, REFRESH
from tests.pgcluster import PgCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: Longest a refused encrypt (or a close) may take while the database is down: the store's
#: bounded retries, with room for a slow machine, but far from a hang.
REFUSE_WITHIN = 10.0
#: How long PostgreSQL stays down: long enough for the store to give up on its connections
#: (and whatever it builds to replace them) while requests keep coming.
OUTAGE = 12.0
#: How soon after PostgreSQL accepts connections again encrypt must work.
RECOVER_WITHIN = 5.0
#: Longest a close may take while the database is down: it may spend the store's retry
#: budget (10 s) on deregistering the instance, plus its short flush and thread joins; more
#: than that is a hang at shutdown.
CLOSE_WITHIN = 30.0

CTX = EncryptionContext(tenant_id="fenced", data_class="pii")


def _timed(call: Callable[[], Any], limit: float) -> tuple[Any, BaseException | None, float]:
    """Runs ``call`` in a thread; returns (result, exception, seconds). Fails after ``limit``.

    A thread, so that a call blocked on a dead socket fails the test instead of hanging it.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:
            box["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    elapsed = time.monotonic() - started
    assert not thread.is_alive(), f"the call did not return within {limit} s"
    return box.get("result"), box.get("error"), elapsed


def _refused(call: Callable[[], Any], what: str) -> float:
    """Asserts that ``call`` raises KeyStoreUnavailableError in time; returns how long it took."""
    _, error, elapsed = _timed(call, REFUSE_WITHIN)
    assert error is not None, f"{what}: sealed while the keyring could not be confirmed"
    assert isinstance(error, KeyStoreUnavailableError), (what, repr(error))
    return elapsed


def test_encrypt_is_fenced_while_the_key_store_is_down(cluster: PgCluster, tmp_path: Path) -> None:
    config = EncryptionServiceConfig(
        data_dir=tmp_path / "data", key_store_url=cluster.url, keyring_refresh_seconds=REFRESH
    )
    svc = EncryptionService.init_local(config=config)
    closed = False
    try:
        stored = svc.encrypt(b"stored value", CTX, key_reference="stored")
        inline = svc.encrypt(b"inline value", CTX, key_reference="inline")
        assert svc.decrypt(stored, CTX) == b"stored value"
        assert svc.decrypt(inline, CTX) == b"inline value"

        # A few refresh periods first, as a service in production has run: every thread of
        # it (the keyring's included) then holds connections from before the outage.
        time.sleep(3 * REFRESH)
        cluster.stop()
        stopped = time.monotonic()
        # Cached keys decrypt during the outage, before and after the fence bound.
        assert svc.decrypt(stored, CTX) == b"stored value"
        time.sleep(max(0.0, stopped + FENCE + 0.5 - time.monotonic()))
        assert _timed(lambda: svc.decrypt(stored, CTX), REFUSE_WITHIN)[0] == b"stored value"
        assert _timed(lambda: svc.decrypt(inline, CTX), REFUSE_WITHIN)[0] == b"inline value"

        # Past the fence every seal is refused: with a cached DEK (stored or inline) and
        # with a new context, whose stored DEK could not be written anyway.
        fresh = EncryptionContext(tenant_id="fenced-new", data_class="pii")
        _refused(lambda: svc.encrypt(b"x", CTX, key_reference="stored"), "cached stored DEK")
        _refused(lambda: svc.encrypt(b"x", CTX, key_reference="inline"), "cached inline DEK")
        _refused(lambda: svc.encrypt(b"x", fresh, key_reference="stored"), "new stored DEK")
        # Traffic goes on for the rest of the outage, as a service's does, and every call
        # is refused in time; cached keys still decrypt.
        while time.monotonic() < stopped + OUTAGE:
            _refused(lambda: svc.encrypt(b"x", CTX, key_reference="stored"), "during the outage")
            assert _timed(lambda: svc.decrypt(stored, CTX), REFUSE_WITHIN)[0] == b"stored value"
            time.sleep(0.2)

        cluster.start()
        back = time.monotonic()
        while True:
            _, error, _ = _timed(
                lambda: svc.encrypt(b"after", fresh, key_reference="stored"), REFUSE_WITHIN
            )
            if error is None:
                break
            assert isinstance(error, KeyStoreUnavailableError), repr(error)
            assert time.monotonic() - back < RECOVER_WITHIN, "encrypt did not recover"
            time.sleep(0.2)
        assert time.monotonic() - back <= RECOVER_WITHIN

        # Both directions work again, including a stored DEK this service never cached:
        # its broken connections were replaced.
        other = EncryptionService(config)
        try:
            foreign = other.encrypt(b"from another service", fresh, key_reference="stored")
            assert other.decrypt(stored, CTX) == b"stored value"
        finally:
            other.close()
        assert svc.decrypt(foreign, fresh) == b"from another service"
        after = svc.encrypt(b"after", CTX, key_reference="stored")
        assert svc.decrypt(after, CTX) == b"after"

        # Closing while the database is down (use counts cannot be flushed) does not raise.
        cluster.stop()
        _, error, _ = _timed(svc.close, CLOSE_WITHIN)
        closed = True
        assert error is None, repr(error)
    finally:
        if not closed:
            # The test has failed already; its own assertion is the report.
            with contextlib.suppress(Exception):
                svc.close()
