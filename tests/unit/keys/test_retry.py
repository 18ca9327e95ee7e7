"""Bounded retries of idempotent key-store work."""

from __future__ import annotations

import pytest

from greenlang_crypto.exceptions import KeyStateError, KeyStoreUnavailableError
from greenlang_crypto.keys._retry import retrying


def test_an_outage_is_retried_until_the_work_succeeds() -> None:
    calls = []

    def work() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise KeyStoreUnavailableError("down")
        return "done"

    assert retrying(work, budget_seconds=5, first_delay=0.001) == "done"
    assert len(calls) == 3


def test_the_last_outage_is_raised_once_the_budget_is_spent() -> None:
    calls = []

    def work() -> None:
        calls.append(1)
        raise KeyStoreUnavailableError(f"down {len(calls)}")

    with pytest.raises(KeyStoreUnavailableError, match="down"):
        retrying(work, budget_seconds=0.05, first_delay=0.01, max_delay=0.01)
    assert 2 <= len(calls) <= 10


def test_other_errors_are_not_retried() -> None:
    calls = []

    def work() -> None:
        calls.append(1)
        raise KeyStateError("not an outage")

    with pytest.raises(KeyStateError):
        retrying(work, budget_seconds=5)
    assert calls == [1]
