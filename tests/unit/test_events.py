"""Service events: one frozen type per emitted name, built by name, and the observer protocols.

How a running service emits them to observers is covered with the audit log and metrics in
``tests/unit/test_audit_events.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import pytest

from greenlang_crypto import events
from greenlang_crypto.events import (
    EVENTS,
    BranchKeyCreated,
    BranchKeyUnwrapped,
    DecryptionFailed,
    DecryptionPerformed,
    EncryptionFailed,
    EncryptionPerformed,
    KeyAccessed,
    KeyCacheHit,
    KeyCacheLookup,
    KeyCacheMiss,
    KeyChangeGuard,
    KeyGenerated,
    KeyRetired,
    KeyRewrapped,
    KeyRotated,
    OperationFailed,
    OtherEvent,
    ServiceEvent,
    ServiceObserver,
    TenantErased,
    TypedServiceObserver,
    make_event,
)

TYPED = [
    EncryptionPerformed,
    DecryptionPerformed,
    EncryptionFailed,
    DecryptionFailed,
    KeyCacheHit,
    KeyCacheMiss,
    KeyGenerated,
    KeyAccessed,
    KeyRotated,
    KeyRewrapped,
    KeyRetired,
    BranchKeyCreated,
    BranchKeyUnwrapped,
    TenantErased,
]


def test_every_emitted_name_has_exactly_one_type() -> None:
    assert sorted(cls.name for cls in TYPED) == sorted(EVENTS)
    assert len(EVENTS) == len(TYPED)


@pytest.mark.parametrize("cls", TYPED, ids=lambda c: c.name)
def test_make_event_builds_the_type_of_each_name(cls: type[ServiceEvent]) -> None:
    event = make_event(cls.name, {})
    assert type(event) is cls
    assert event.event_name == cls.name
    assert event.fields() == {}


def test_declared_fields_become_attributes_and_the_rest_goes_to_extra() -> None:
    event = make_event(
        "decryption_failed",
        {"error_type": "DecryptionError", "reason": "authentication", "key_version": 2, "x": 1},
    )
    assert isinstance(event, DecryptionFailed)
    assert (event.error_type, event.reason, event.key_version) == (
        "DecryptionError",
        "authentication",
        2,
    )
    assert event.data_class is None
    assert event.extra == {"x": 1}
    assert event.fields() == {
        "error_type": "DecryptionError",
        "reason": "authentication",
        "key_version": 2,
        "x": 1,
    }


def test_a_field_named_extra_is_kept_as_an_undeclared_field() -> None:
    event = make_event("key_rewrapped", {"extra": "value", "count": 3})
    assert isinstance(event, KeyRewrapped)
    assert event.extra == {"extra": "value"}
    assert event.fields() == {"count": 3, "extra": "value"}


def test_fields_leave_out_unset_values_but_keep_falsy_ones() -> None:
    event = KeyRotated(old_version=0, new_version=1, kms_on_demand=False)
    assert event.fields() == {"old_version": 0, "new_version": 1, "kms_on_demand": False}


def test_an_unknown_name_becomes_an_other_event_with_every_field_in_extra() -> None:
    event = make_event("something_new", {"a": 1, "name": "x"})
    assert isinstance(event, OtherEvent)
    assert event.event_name == "something_new"
    assert event.name == ""
    assert event.fields() == {"a": 1, "name": "x"}


def test_events_are_frozen_and_keyword_only() -> None:
    event = KeyGenerated(key_version=1, data_class="pii")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.key_version = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        KeyGenerated(1)  # type: ignore[arg-type]


def test_extra_defaults_to_a_new_mapping_per_event() -> None:
    first, second = KeyAccessed(), KeyAccessed()
    assert first.extra == {} and first.extra is not second.extra


def test_the_families_share_their_bases() -> None:
    assert issubclass(EncryptionFailed, OperationFailed)
    assert issubclass(DecryptionFailed, OperationFailed)
    assert issubclass(KeyCacheHit, KeyCacheLookup) and issubclass(KeyCacheMiss, KeyCacheLookup)
    assert all(issubclass(cls, ServiceEvent) for cls in TYPED)
    assert set(events.__all__) >= {cls.__name__ for cls in TYPED}


class NamedObserver:
    def on_event(self, event: str, fields: Mapping[str, object]) -> None:
        del event, fields


class TypedObserver:
    def on_service_event(self, event: ServiceEvent) -> None:
        del event


class Guard:
    @contextmanager
    def key_change(self, action: str, details: Mapping[str, object]) -> Iterator[None]:
        del action, details
        yield


def test_the_observer_protocols_are_told_apart_at_run_time() -> None:
    assert isinstance(NamedObserver(), ServiceObserver)
    assert not isinstance(NamedObserver(), TypedServiceObserver)
    assert isinstance(TypedObserver(), TypedServiceObserver)
    assert not isinstance(TypedObserver(), ServiceObserver)
    assert isinstance(Guard(), KeyChangeGuard)
    assert not isinstance(TypedObserver(), KeyChangeGuard)
