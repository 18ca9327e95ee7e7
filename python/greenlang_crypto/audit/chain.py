"""The HMAC chain key: seals records and checks them."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

from greenlang_crypto._core import BlindIndexKey, DataKey
from greenlang_crypto.audit.records import AuditEntry, AuditRecord, canonical_bytes
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import AuditSinkUnavailableError
from greenlang_crypto.providers.base import KeyLimits, KeyProvider

#: The fixed encryption context that binds the wrapped audit root key.
AUDIT_CONTEXT = EncryptionContext(tenant_id="_system", data_class="audit")
_CHAIN_LABEL = b"audit-chain/v1"
_GENESIS = bytes(32)
_ROOT_META = "chain_root_v1"
_HEAD_META = "head"
_ROOT_LIMITS = KeyLimits()


class ChainKey:
    """Seals and checks records with the chain key (an HMAC key held in Rust)."""

    def __init__(self, key: BlindIndexKey) -> None:
        self._key = key

    def seal(
        self, entries: Sequence[AuditEntry], last_seq: int, last_hmac: str | None
    ) -> list[AuditRecord]:
        """Chains ``entries`` after the record ``(last_seq, last_hmac)``."""
        prev = bytes.fromhex(last_hmac) if last_hmac else _GENESIS
        out: list[AuditRecord] = []
        seq = last_seq
        for entry in entries:
            seq += 1
            mac = self._key.compute(prev + canonical_bytes(seq, entry))
            out.append(AuditRecord(seq, entry, mac.hex()))
            prev = mac
        return out

    def check(self, record: AuditRecord, prev_hmac: str | None) -> bool:
        """Whether ``record.hmac`` is right for its content after ``prev_hmac`` (constant time)."""
        prev = bytes.fromhex(prev_hmac) if prev_hmac else _GENESIS
        try:
            mac = bytes.fromhex(record.hmac)
        except ValueError:
            return False
        return self._key.verify(prev + record.canonical_bytes(), mac)


def _unwrap_root(provider: KeyProvider, stored: str) -> DataKey:
    try:
        doc = json.loads(stored)
        wrapped = base64.b64decode(doc["wrapped"], validate=True)
        key_id = str(doc["key_id"])
    except (ValueError, KeyError, TypeError):
        raise AuditSinkUnavailableError("the stored audit root key is malformed") from None
    return provider.decrypt_data_key(key_id, wrapped, AUDIT_CONTEXT, _ROOT_LIMITS)
