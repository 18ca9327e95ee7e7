"""Loading the audit chain key through a system-key handle: created once, stored wrapped,
shared by every writer, refused when another provider wrapped it."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import pytest

from greenlang_crypto._core import DataKey
from greenlang_crypto.audit import AUDIT_CONTEXT, AuditEntry, SqliteAuditSink
from greenlang_crypto.audit._chain_key import load_chain_key
from greenlang_crypto.audit.chain import _ROOT_META
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import AuditSinkUnavailableError, DecryptionError
from greenlang_crypto.providers.base import GeneratedDataKey
from tests.observed import local_system_keys

ENTRY = AuditEntry(action="key_rotate", actor="ops", outcome="success", time="t")


def test_without_create_an_empty_sink_has_no_key_and_stays_empty(tmp_path: Path) -> None:
    sink = SqliteAuditSink(tmp_path / "audit.db")
    keys = local_system_keys(tmp_path)
    assert load_chain_key(sink, keys, create=False) is None
    assert sink.get_meta(_ROOT_META) is None


def test_created_once_stored_wrapped_and_reloaded_by_another_writer(tmp_path: Path) -> None:
    sink = SqliteAuditSink(tmp_path / "audit.db")
    keys = local_system_keys(tmp_path)
    generated: list[EncryptionContext] = []

    def counting(ctx: EncryptionContext) -> GeneratedDataKey:
        generated.append(ctx)
        return keys.generate(ctx)

    first = load_chain_key(sink, dataclasses.replace(keys, generate=counting))
    stored = json.loads(sink.get_meta(_ROOT_META) or "{}")
    assert generated == [AUDIT_CONTEXT]
    assert stored["provider"] == "local" and stored["key_id"] == "local:master-v1"
    assert len(base64.b64decode(stored["wrapped"])) > 32  # wrapped, never the raw key
    # A second writer (and a later start) finds the stored key and generates none.
    second = load_chain_key(sink, dataclasses.replace(keys, generate=counting), create=False)
    assert second is not None and first is not None and len(generated) == 1
    sealed = first.seal([ENTRY], 0, None)
    assert sealed == second.seal([ENTRY], 0, None)
    assert second.check(sealed[0], None)


def test_a_writer_that_loses_the_race_uses_the_stored_root(tmp_path: Path) -> None:
    sink = SqliteAuditSink(tmp_path / "audit.db")
    keys = local_system_keys(tmp_path)
    winner = load_chain_key(sink, keys)
    assert winner is not None
    # The loser's own fresh key is never stored: put_meta_if_absent returns the winner's.
    original_get = sink.get_meta
    sink.get_meta = lambda name: None  # type: ignore[method-assign]
    try:
        loser = load_chain_key(sink, keys)
    finally:
        sink.get_meta = original_get  # type: ignore[method-assign]
    assert loser is not None
    assert loser.seal([ENTRY], 0, None) == winner.seal([ENTRY], 0, None)


def test_a_root_of_another_provider_is_refused(tmp_path: Path) -> None:
    sink = SqliteAuditSink(tmp_path / "audit.db")
    keys = local_system_keys(tmp_path)
    assert load_chain_key(sink, keys) is not None
    doc = json.loads(sink.get_meta(_ROOT_META) or "{}")
    other = SqliteAuditSink(tmp_path / "other.db")
    other.put_meta_if_absent(_ROOT_META, json.dumps({**doc, "provider": "aws-kms"}))
    with pytest.raises(DecryptionError):
        load_chain_key(other, keys)


def test_a_malformed_stored_root_makes_the_log_unavailable(tmp_path: Path) -> None:
    sink = SqliteAuditSink(tmp_path / "audit.db")
    sink.put_meta_if_absent(_ROOT_META, '{"provider": "local", "wrapped": "%%%"}')
    with pytest.raises(AuditSinkUnavailableError, match="malformed"):
        load_chain_key(sink, local_system_keys(tmp_path))


def test_the_stored_root_names_the_handles_provider(tmp_path: Path) -> None:
    sink = SqliteAuditSink(tmp_path / "audit.db")
    local = local_system_keys(tmp_path)
    seen: list[str] = []

    def unwrap(name: str, kid: str, wrapped: bytes, ctx: EncryptionContext) -> DataKey:
        seen.append(name)
        return local.unwrap("local", kid, wrapped, ctx)

    renamed = dataclasses.replace(local, provider_name="aws-kms", unwrap=unwrap)
    assert load_chain_key(sink, renamed) is not None
    assert json.loads(sink.get_meta(_ROOT_META) or "{}")["provider"] == "aws-kms"
    assert seen == ["aws-kms"]
