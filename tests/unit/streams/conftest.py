"""Fixtures of the streams tests: stream keys and reproducible data."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from tests.unit.streams._keys import StreamKeys, new_keys


@pytest.fixture
def keys() -> StreamKeys:
    return new_keys()


@pytest.fixture
def data() -> Callable[[int], bytes]:
    def make(n: int, seed: int = 0) -> bytes:
        return random.Random(seed).randbytes(n)

    return make
