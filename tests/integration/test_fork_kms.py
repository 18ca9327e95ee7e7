"""A KMS provider made before ``os.fork()``: the child never reuses the parent's connections."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto.providers.base import KeyLimits
from tests._forking import fork

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
]


def pooled_connections(client: Any) -> int:
    pools = client._endpoint.http_session._manager.pools
    return sum(len(pools[key].pool.queue) for key in list(pools.keys()))


def test_the_child_opens_its_own_kms_connections(
    make_provider: Callable[..., Any], kms_keys: Any
) -> None:
    provider = make_provider()
    key = kms_keys.primary_arn
    ctx = EncryptionContext("acme", "pii")
    provider.generate_data_key(key, ctx, KeyLimits())
    client = next(iter(provider._clients.values()))
    # The parent keeps a connection alive for reuse.
    assert pooled_connections(client) >= 1

    def child() -> list[int]:
        before = pooled_connections(client)
        provider.generate_data_key(key, ctx, KeyLimits())
        return [before, pooled_connections(client)]

    before, after = fork(child)()
    # None inherited; the child's own request opened (and pooled) a new one.
    assert before == 0 and after >= 1
    # The parent's connection still works.
    provider.generate_data_key(key, ctx, KeyLimits())
