from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto._core import parse_envelope
from greenlang_crypto.audit import AuditLog, AuditQuery, SqliteAuditSink
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.engine.admin import tenant_digest
from greenlang_crypto.exceptions import (
    DataErasedError,
    DecryptionError,
    InvalidContextError,
    InvalidEnvelopeError,
    TenantErasingError,
)
from greenlang_crypto.service import EncryptionService

from .conftest import CTX, make_service, store_state


def test_key_reads_leave_the_key_store_unchanged(svc: EncryptionService) -> None:
    svc.encrypt(b"x", CTX, key_reference="stored")
    before = store_state(svc)
    assert svc.index_key_versions() == []
    assert [v.version for v in svc.versions()] == [1]
    assert svc.retirement_blockers(1) == []
    assert svc.stored_dek_count() == 1
    svc.instances()
    svc.branch_key_stats()
    assert store_state(svc) == before
    assert svc.index_key_versions() == []


@pytest.mark.parametrize("path", ["active_index_versions", "blind_index_key"])
def test_the_paths_that_need_an_index_key_create_the_first(
    svc: EncryptionService, path: str
) -> None:
    if path == "active_index_versions":
        assert svc.active_index_versions() == [1]
    else:
        svc.blind_index_key("users.email").compute(b"a@example.com")
    assert svc.index_key_versions() == [(1, "primary")]
    assert svc.rotate_index_key() == 2
    assert svc.active_index_versions() == [2, 1]


def test_system_keys_round_trip_through_the_handle(svc: EncryptionService) -> None:
    handle = svc.system_keys
    assert handle.provider_name == svc.provider_name == "local"
    generated = handle.generate(CTX)
    key = handle.unwrap(handle.provider_name, generated.key_id, generated.wrapped, CTX)
    assert key.fingerprint == generated.key.fingerprint


# -- tenant erasure ----------------------------------------------------------------------

ACME = EncryptionContext(tenant_id="acme", data_class="pii")
GLOBEX = EncryptionContext(tenant_id="globex", data_class="pii")
ERASABLE = ["stored", "branch"]


class _Recorder:
    """Collects the events the service emits (a real observer, nothing faked)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def on_event(self, event: str, fields: Mapping[str, object]) -> None:
        self.events.append((event, dict(fields)))


def _forge(envelope: bytes, reference: str) -> bytes:
    """The envelope with its key id replaced by one no key has (found by value, big-endian)."""
    header = parse_envelope(envelope)
    if reference == "stored":
        assert header.dek_id is not None
        old, new = header.dek_id.to_bytes(8, "big"), (header.dek_id ^ 0x5A5A5A5A).to_bytes(8, "big")
    else:
        assert header.branch_id is not None
        old, new = (
            header.branch_id.to_bytes(4, "big"),
            (header.branch_id ^ 0x5A5A).to_bytes(4, "big"),
        )
    assert envelope.count(old) == 1
    return envelope.replace(old, new)


@pytest.mark.parametrize("reference", ERASABLE)
def test_erasing_a_tenant_makes_its_data_unreadable_and_leaves_others_alone(
    svc: EncryptionService, reference: str
) -> None:
    mine = svc.encrypt(b"acme secret", ACME, key_reference=reference)
    other = svc.encrypt(b"globex secret", GLOBEX, key_reference=reference)
    inline = svc.encrypt(b"inline", ACME, key_reference="inline")
    assert svc.decrypt(mine, ACME) == b"acme secret"  # the DEK is cached for decryption too
    assert not svc.is_erased(mine) and not svc.is_erased(other)

    report = svc.erase_tenant("acme")
    assert report.completed and report.began and report.tenant_id == "acme"
    expected = (1, 0) if reference == "stored" else (0, 1)
    assert (report.stored_deks_destroyed, report.branch_keys_destroyed) == expected
    assert report.keys_destroyed == 1 and report.instances_acknowledged == 0

    with pytest.raises(DataErasedError) as caught:
        svc.decrypt(mine, ACME)
    message = str(caught.value)
    assert "acme" not in message and str(parse_envelope(mine).dek_id) not in message
    assert svc.is_erased(mine)
    assert svc.decrypt(other, GLOBEX) == b"globex secret" and not svc.is_erased(other)
    # Inline envelopes carry their own wrapped key: not erasable, not reported as erased.
    assert not svc.is_erased(inline) and svc.decrypt(inline, ACME) == b"inline"


@pytest.mark.parametrize("reference", ERASABLE)
def test_after_an_erasure_the_tenant_encrypts_again_under_fresh_keys(
    svc: EncryptionService, reference: str
) -> None:
    before = svc.encrypt(b"old", ACME, key_reference=reference)
    svc.erase_tenant("acme")
    after = svc.encrypt(b"new", ACME, key_reference=reference)
    old_header, new_header = parse_envelope(before), parse_envelope(after)
    assert (old_header.dek_id, old_header.branch_id) != (new_header.dek_id, new_header.branch_id)
    assert svc.decrypt(after, ACME) == b"new" and not svc.is_erased(after)
    with pytest.raises(DataErasedError):
        svc.decrypt(before, ACME)
    # Erasing again destroys what was written since.
    again = svc.erase_tenant("acme")
    assert again.keys_destroyed == 1 and svc.is_erased(after)


def test_the_cached_fast_path_seals_no_more_under_an_erased_key(
    svc: EncryptionService,
) -> None:
    seal = svc.value_encryptor(ACME)
    first = seal(b"one")
    assert seal(b"two") is not None  # served by the Rust sealer from the cache slot
    svc.erase_tenant("acme")
    after = seal(b"three")
    assert parse_envelope(after).dek_id != parse_envelope(first).dek_id
    assert not svc.is_erased(after) and svc.decrypt(after, ACME) == b"three"


@pytest.mark.parametrize("reference", ERASABLE)
def test_a_tenant_being_erased_cannot_encrypt_and_a_rerun_completes_the_erasure(
    svc: EncryptionService, reference: str
) -> None:
    seal = svc.value_encryptor(ACME)
    written = svc.encrypt(b"old", ACME, key_reference=reference)
    seal(b"cached")
    # An erasure that crashed after its first phase: the tenant stays "erasing".
    _record, began = svc.store.erasures.begin("acme")
    assert began
    svc.refresh_keyring()
    with pytest.raises(TenantErasingError) as caught:
        svc.encrypt(b"late", ACME, key_reference=reference)
    assert "acme" not in str(caught.value)
    with pytest.raises(TenantErasingError):
        seal(b"late, through the cached sealer")
    with pytest.raises(TenantErasingError):
        svc.encrypt_batch([b"a", b"b"], ACME, key_reference=reference)
    assert svc.decrypt(svc.encrypt(b"fine", GLOBEX), GLOBEX) == b"fine"
    # Nothing is deleted yet: the data written before reads until phase 2.
    assert svc.decrypt(written, ACME) == b"old"

    report = svc.erase_tenant("acme")
    assert not report.began and report.completed and report.keys_destroyed >= 1
    with pytest.raises(DataErasedError):
        svc.decrypt(written, ACME)
    assert svc.decrypt(seal(b"again"), ACME) == b"again"


def test_erasing_a_tenant_without_keys_records_it_and_twice_is_harmless(
    svc: EncryptionService,
) -> None:
    first = svc.erase_tenant("nobody")
    assert first.completed and first.keys_destroyed == 0
    record = svc.store.erasures.get("nobody")
    assert record is not None and record.state == "erased"
    second = svc.erase_tenant("nobody")
    assert second.completed and second.keys_destroyed == 0


@pytest.mark.parametrize("tenant", ["", "\ud800", 7])
def test_an_invalid_tenant_id_is_refused_and_changes_nothing(
    svc: EncryptionService, tenant: object
) -> None:
    before = store_state(svc)
    with pytest.raises(InvalidContextError):
        svc.erase_tenant(tenant)  # type: ignore[arg-type]
    assert store_state(svc) == before


@pytest.mark.parametrize("reference", ERASABLE)
def test_a_forged_or_unknown_reference_is_an_opaque_decryption_error(
    svc: EncryptionService, reference: str
) -> None:
    envelope = svc.encrypt(b"x", GLOBEX, key_reference=reference)
    forged = _forge(envelope, reference)
    with pytest.raises(DecryptionError) as caught:
        svc.decrypt(forged, GLOBEX)
    assert not isinstance(caught.value, DataErasedError)
    header = parse_envelope(forged)
    for ref in (header.dek_id, header.branch_id):
        if ref is not None:
            assert str(ref) not in str(caught.value) and hex(ref)[2:] not in str(caught.value)
    assert not svc.is_erased(forged)


def test_is_erased_refuses_what_is_not_an_envelope(svc: EncryptionService) -> None:
    with pytest.raises(InvalidEnvelopeError):
        svc.is_erased(b"not an envelope")
    with pytest.raises(TypeError):
        svc.is_erased("text")  # type: ignore[arg-type]


def test_per_tenant_blind_index_keys_change_with_an_erasure(svc: EncryptionService) -> None:
    purpose = "users.email|tenant=acme"
    value = b"a@example.com"
    old = svc.blind_index_key(purpose).compute(value)
    other = svc.blind_index_key("users.email|tenant=globex").compute(value)
    shared = svc.blind_index_key("users.email").compute(value)
    svc.store.erasures.begin("acme")
    svc.refresh_keyring()
    with pytest.raises(DataErasedError):
        svc.blind_index_key(purpose)
    svc.erase_tenant("acme")
    after = svc.blind_index_key(purpose).compute(value)
    assert after != old  # a lookup of the erased tenant's old index values matches nothing
    assert svc.blind_index_key(purpose).compute(value) == after  # stable from then on
    assert svc.blind_index_key("users.email|tenant=globex").compute(value) == other
    assert svc.blind_index_key("users.email").compute(value) == shared
    svc.erase_tenant("acme")
    assert svc.blind_index_key(purpose).compute(value) not in (old, after)


def test_an_erasure_is_audited_in_two_phases_without_the_tenant_id(tmp_path: Path) -> None:
    recorder = _Recorder()
    service = make_service(tmp_path)
    try:
        service.add_observer(recorder)
        service.encrypt(b"x", ACME)
        service.erase_tenant("acme")
    finally:
        service.close()
    erased = [f for e, f in recorder.events if e == "tenant_erased"]
    assert [f["phase"] for f in erased] == ["erasing", "erased"]
    assert erased[1]["stored_deks"] == 1 and erased[1]["count"] == 1
    assert {f["tenant_digest"] for f in erased} == {tenant_digest("acme")}
    assert all("acme" not in repr(f) for f in erased)


def test_the_audit_log_records_both_phases_of_an_erasure(tmp_path: Path) -> None:
    audit = AuditLog(SqliteAuditSink(tmp_path / "audit.db"), start_thread=False)
    EncryptionService.init_local(tmp_path).close()
    service = EncryptionService(
        EncryptionServiceConfig(data_dir=tmp_path, keyring_refresh_seconds=0), observers=[audit]
    )
    try:
        audit.attach(service)
        service.encrypt(b"x", ACME, key_reference="branch")
        service.erase_tenant("acme")
        audit.flush()
        change = audit.query(AuditQuery(action="tenant_erase"))
        phases = audit.query(AuditQuery(action="tenant_erased"))
        assert [r.entry.outcome for r in change][-1] == "success"
        details = [r.entry.details for r in phases]
        assert [d["phase"] for d in details] == ["erasing", "erased"]
        assert details[1]["branch_keys"] == 1 and details[1]["stored_deks"] == 0
        assert all(d["tenant_digest"] == tenant_digest("acme") for d in details)
        assert "acme" not in repr([r.entry for r in change + phases])
        assert audit.verify().ok
    finally:
        audit.close()
        service.close()


def test_deleting_a_tenants_branch_keys_still_works_and_keeps_its_stored_deks(
    svc: EncryptionService,
) -> None:
    branch = svc.encrypt(b"b", ACME, key_reference="branch")
    stored = svc.encrypt(b"s", ACME, key_reference="stored")
    assert svc.delete_branch_keys("tenant:acme") == 1
    with pytest.raises(DataErasedError):
        svc.decrypt(branch, ACME)
    assert svc.decrypt(stored, ACME) == b"s" and not svc.is_erased(stored)
    assert svc.delete_branch_keys("tenant:acme") == 0


@pytest.mark.integration
@pytest.mark.skipif(
    not os.environ.get("GLC_REDIS_URL"), reason="GLC_REDIS_URL not set; run scripts/services.sh"
)
def test_an_erasure_removes_the_tenants_keys_from_the_shared_redis_cache(
    tmp_path: Path,
) -> None:
    import redis

    from greenlang_crypto.redis_cache import RedisKeyCache

    client = redis.Redis.from_url(os.environ["GLC_REDIS_URL"])
    prefix = f"glc-test-erase-{uuid.uuid4().hex[:8]}:"
    writer = make_service(tmp_path)
    reader = EncryptionService(writer.config, key_cache=RedisKeyCache(client, prefix=prefix))
    try:
        stored = writer.encrypt(b"s", ACME, key_reference="stored")
        branch = writer.encrypt(b"b", ACME, key_reference="branch")
        assert reader.decrypt(stored, ACME) == b"s" and reader.decrypt(branch, ACME) == b"b"
        dek_id = parse_envelope(stored).dek_id
        branch_id = parse_envelope(branch).branch_id
        names = [prefix + f"dek:{dek_id}", prefix + f"branch:id:{branch_id}"]
        assert client.exists(*names) == 2  # shared by the reader when it read the store
        reader.erase_tenant("acme")
        assert client.exists(*names) == 0
        writer.refresh_keyring()
        for envelope in (stored, branch):
            with pytest.raises(DataErasedError):
                writer.decrypt(envelope, ACME)
            with pytest.raises(DataErasedError):
                reader.decrypt(envelope, ACME)
    finally:
        reader.close()
        writer.close()
        keys = list(client.scan_iter(prefix + "*"))
        if keys:
            client.delete(*keys)


def test_a_retirement_cut_off_before_deleting_its_keys_is_finished_by_a_rerun(
    svc: EncryptionService,
) -> None:
    svc.encrypt(b"old", CTX, key_reference="stored")
    svc.rotate()
    svc.encrypt(b"new", CTX, key_reference="stored")
    # The first half of a retirement (the minimum raised), then a crash before the deletion.
    svc._runtime.store.retire_below(2)
    svc.refresh_keyring()
    assert svc.min_decryption_version == 2 and svc.retired_keys_left() == 1
    # Without deletion asked for, a rerun changes nothing (the keys stay, as before).
    svc.retire_versions_below(2)
    assert svc.retired_keys_left() == 1
    svc.retire_versions_below(2, delete_stored_deks=True)
    assert svc.retired_keys_left() == 0
    assert svc._runtime.store.count_deks_by_version() == {2: 1}
    svc.retire_versions_below(2, delete_stored_deks=True)  # and again: nothing left to do


def test_instances_making_their_first_index_key_at_once_share_one(tmp_path: Path) -> None:
    first = make_service(tmp_path)
    # Started before any index key existed, and not refreshed since.
    second = make_service(tmp_path)
    try:
        assert first.index_key_versions() == second.index_key_versions() == []
        key = first.blind_index_key("users.email")
        again = second.blind_index_key("users.email")
        assert bytes(key.compute(b"x")) == bytes(again.compute(b"x"))
        assert first.index_key_versions() == second.index_key_versions() == [(1, "primary")]
        # An explicit rotation still adds a version.
        assert second.rotate_index_key() == 2
    finally:
        first.close()
        second.close()
