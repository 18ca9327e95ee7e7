"""What the column types share: resolving the service, spotting envelopes, the associated data
that binds a value to its location, and the per-tenant context cache."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService
from greenlang_crypto.sqlalchemy._common import (
    ENVELOPE_MAGIC,
    ContextCache,
    FromRow,
    is_envelope,
    is_service,
    location_aad,
    resolve_service,
    row_aad,
)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncryptionService]:
    data = tmp_path_factory.mktemp("data")
    LocalKeyProvider(data).create_master_key()
    svc = EncryptionService(EncryptionServiceConfig(data_dir=data))
    yield svc
    svc.close()


def test_a_service_resolves_to_itself_and_a_callable_to_what_it_returns(
    service: EncryptionService,
) -> None:
    assert is_service(service) and not is_service(lambda: service)
    assert resolve_service(service) is service
    assert resolve_service(lambda: service) is service


def test_anything_else_is_refused(service: EncryptionService) -> None:
    with pytest.raises(InvalidArgumentError, match="did not return"):
        resolve_service(lambda: "not a service")  # type: ignore[arg-type,return-value]
    with pytest.raises(InvalidArgumentError, match="must be"):
        resolve_service("not a service")  # type: ignore[arg-type]


def test_envelopes_are_spotted_by_their_magic_byte(service: EncryptionService) -> None:
    env = service.encrypt(b"x", {"tenant_id": "t", "data_class": "pii"})
    assert env[0] == ENVELOPE_MAGIC and is_envelope(env)
    assert not is_envelope(b"") and not is_envelope(b"plain text")


def test_location_aad_names_table_and_column() -> None:
    assert location_aad("users", "email") == b"users|email"
    assert location_aad("users", "email") != location_aad("users", "phone")


def test_row_aad_length_prefixes_each_part_so_no_two_locations_collide() -> None:
    assert row_aad("users", "email", 7, "acme") == b"5:users|5:email|1:7|4:acme"
    assert row_aad("users", "email", (1, "a"), None) == b"5:users|5:email|3:1,a|0:"
    # Without the length prefixes these two would share "a|b|c|d".
    assert row_aad("a|b", "c", 1, "d") != row_aad("a", "b|c", 1, "d")
    assert row_aad("t", "c", 1, "acme") != row_aad("t", "c", 1, "other")
    assert row_aad("t", "c", "é", None) == "1:t|1:c|2:é|0:".encode()


def test_from_row_names_an_attribute() -> None:
    assert FromRow("tenant_id").attribute == "tenant_id"
    assert FromRow("tenant_id") == FromRow("tenant_id")


def test_the_context_cache_builds_each_tenant_once() -> None:
    cache = ContextCache("pii")
    ctx = cache.get("acme")
    assert isinstance(ctx, EncryptionContext)
    assert (ctx.tenant_id, ctx.data_class) == ("acme", "pii")
    assert cache.get("acme") is ctx
    assert cache.get("other") is not ctx


def test_the_context_cache_is_bounded() -> None:
    cache = ContextCache("pii")
    first = cache.get("t0")
    for i in range(1, 10_002):
        cache.get(f"t{i}")
    assert cache.get("t0") is not first  # dropped when the cache was emptied
    assert cache.get("t0") == first


# -- off the event loop --------------------------------------------------------------------


def test_off_the_loop_runs_in_place_outside_an_asyncio_session() -> None:
    import threading

    from greenlang_crypto.sqlalchemy._common import in_async_greenlet, off_the_loop

    assert not in_async_greenlet()
    assert off_the_loop(threading.get_ident) == threading.get_ident()


def test_off_the_loop_moves_the_call_to_a_thread_in_the_greenlet() -> None:
    import asyncio
    import threading
    import time

    from sqlalchemy.util import greenlet_spawn

    from greenlang_crypto.sqlalchemy._common import in_async_greenlet, off_the_loop

    def slow_call() -> int:
        time.sleep(0.3)
        return threading.get_ident()

    def in_greenlet() -> tuple[bool, int]:
        # What a flush does when a DEK is not cached: a blocking call, from sync code.
        return in_async_greenlet(), off_the_loop(slow_call)

    async def main() -> tuple[bool, int, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        inside, ident = await greenlet_spawn(in_greenlet)
        ticker.cancel()
        return inside, ident, ticks

    inside, ident, ticks = asyncio.run(main())
    assert inside and ident != threading.get_ident()
    assert ticks >= 10  # the loop went on while the call slept
