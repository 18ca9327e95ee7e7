"""Tamper-evident audit log: an observer of the service plus a recorder of admin actions.

What is recorded (never plaintext, DEKs or raw context values; contexts appear only as their
SHA-256 digest and their ``data_class``):

* key events (``key_generated``, ``key_accessed``, ``key_rotated``, ``key_cache_miss``, ...),
  failures (``encryption_failed``, ``decryption_failed``) and admin actions: one record each;
* encryptions and decryptions: by default aggregated per flush interval, with counts by
  operation, data class, outcome and actor read from the service's Rust counters
  (:meth:`EncryptionService.operation_counts`), so the data path pays nothing; with a service
  built with ``per_operation_events=True``, one record per operation instead.

Tamper evidence: every record carries a sequence number and
``hmac = HMAC-SHA256(chain_key, prev_hmac || canonical_record_bytes)``. The chain key is derived
(HKDF label ``audit-chain/v1``) from an audit root key that the service's key provider wraps;
only the wrapped root key is stored, in the sink itself. :meth:`AuditLog.verify` names every
edited, deleted, inserted or reordered record.

Availability policy when the audit sink is unavailable: a security-relevant admin action
writes its intent record synchronously first, and :meth:`AuditLog.record` raises
:class:`AuditSinkUnavailableError` when the sink cannot take it, so the action fails closed
before anything happens. Data-path events
go to a bounded in-memory buffer that a background thread flushes; while the sink is down the
buffer keeps (and, when full, counts dropped) events and :attr:`AuditLog.sink_up` is false
(exported as ``gl_encryption_audit_sink_up``). Every sink write has a timeout.
"""

from __future__ import annotations

from greenlang_crypto.audit.anchors import (
    AuditAnchor,
    FileAnchor,
    S3Anchor,
    StreamAnchor,
    open_anchor,
)
from greenlang_crypto.audit.chain import _ROOT_META, AUDIT_CONTEXT, ChainKey, _unwrap_root
from greenlang_crypto.audit.log import AuditLog, acting_as, current_actor
from greenlang_crypto.audit.records import AuditEntry, AuditRecord, Checkpoint, canonical_bytes
from greenlang_crypto.audit.sinks import (
    AuditQuery,
    AuditSink,
    JsonLinesAuditSink,
    PostgresAuditSink,
    SqliteAuditSink,
    open_audit_sink,
)
from greenlang_crypto.audit.sinks.base import AuditRecordRejectedError
from greenlang_crypto.audit.verifier import VerifyProblem, VerifyResult

__all__ = [
    "AUDIT_CONTEXT",
    "AuditAnchor",
    "AuditEntry",
    "AuditLog",
    "AuditQuery",
    "AuditRecord",
    "AuditRecordRejectedError",
    "AuditSink",
    "ChainKey",
    "Checkpoint",
    "FileAnchor",
    "JsonLinesAuditSink",
    "PostgresAuditSink",
    "S3Anchor",
    "SqliteAuditSink",
    "StreamAnchor",
    "VerifyProblem",
    "VerifyResult",
    "acting_as",
    "canonical_bytes",
    "current_actor",
    "open_anchor",
    "open_audit_sink",
]


# Kept importable for tests and tools that read the stored root key.
_PRIVATE = (_ROOT_META, _unwrap_root)
