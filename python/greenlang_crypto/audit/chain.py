"""The HMAC chain key: seals records and checks them."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence

from greenlang_crypto._core import BlindIndexKey, DataKey
from greenlang_crypto.audit.records import (
    AuditEntry,
    AuditRecord,
    Checkpoint,
    canonical_bytes,
    checkpoint_bytes,
)
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import AuditSinkUnavailableError

#: The fixed encryption context that binds the wrapped audit root key.
AUDIT_CONTEXT = EncryptionContext(tenant_id="_system", data_class="audit")
_CHAIN_LABEL = b"audit-chain/v1"
#: Label of the checkpoint key, derived from the same root as the chain key: a checkpoint MAC
#: can never be replayed as a record MAC or the other way round.
_ANCHOR_LABEL = b"audit-anchor/v1"
_GENESIS = bytes(32)
_ROOT_META = "chain_root_v1"
_HEAD_META = "head"


class ChainKey:
    """Seals and checks records with the chain key (an HMAC key held in Rust).

    Args:
        key: The chain HMAC key.
        anchor_key: The checkpoint HMAC key (derived from the same root); without it the
            chain can seal and check records but not sign or check checkpoints.
    """

    def __init__(self, key: BlindIndexKey, anchor_key: BlindIndexKey | None = None) -> None:
        self._key = key
        self._anchor_key = anchor_key

    @classmethod
    def from_root(cls, root: DataKey) -> ChainKey:
        """Derives the chain key and the checkpoint key from the audit root key."""
        return cls(root.derive_index_key(_CHAIN_LABEL), root.derive_index_key(_ANCHOR_LABEL))

    def sign_checkpoint(self, seq: int, hmac: str, time: str) -> Checkpoint:
        """A checkpoint of the chain head ``(seq, hmac)`` taken at ``time``, MAC'd.

        Raises:
            AuditSinkUnavailableError: This chain key has no checkpoint key.
        """
        if self._anchor_key is None:
            raise AuditSinkUnavailableError("no checkpoint key")
        mac = self._anchor_key.compute(checkpoint_bytes(seq, hmac, time))
        return Checkpoint(seq, hmac, time, mac.hex())

    def check_checkpoint(self, cp: Checkpoint) -> bool:
        """Whether ``cp`` was signed with this chain's checkpoint key (constant time)."""
        if self._anchor_key is None:
            return False
        try:
            mac = bytes.fromhex(cp.mac)
        except ValueError:
            return False
        return self._anchor_key.verify(checkpoint_bytes(cp.seq, cp.hmac, cp.time), mac)

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


#: Unwraps a system key: ``(provider name, key id, wrapped, context) -> DataKey`` (the
#: service's :meth:`~greenlang_crypto.service.EncryptionService.unwrap_system_key`).
Unwrap = Callable[[str, str, bytes, EncryptionContext], DataKey]


def _unwrap_root(unwrap: Unwrap, stored: str) -> DataKey:
    try:
        doc = json.loads(stored)
        wrapped = base64.b64decode(doc["wrapped"], validate=True)
        key_id = str(doc["key_id"])
        provider = str(doc["provider"])
    except (ValueError, KeyError, TypeError):
        raise AuditSinkUnavailableError("the stored audit root key is malformed") from None
    return unwrap(provider, key_id, wrapped, AUDIT_CONTEXT)
