"""Admin actions: synchronous records, the intent/outcome pattern, and the key-change guard.

:class:`AdminRecorder` holds the recording side of the audit log; the log supplies where
records go (``_write`` for a synchronous write that raises when the sink does not take it,
``_enqueue`` for the buffered path).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from greenlang_crypto.audit.records import AuditEntry, AuditRecord, Scalar, _scalar
from greenlang_crypto.exceptions import AuditSinkUnavailableError

__all__ = ["AdminRecorder", "acting_as", "current_actor"]

#: The actor a front door is acting for (token subject, ``cli:<user>``); the key-change guard
#: records it, since the service itself does not know who called it.
_ACTOR: contextvars.ContextVar[str | None] = contextvars.ContextVar("glc_audit_actor", default=None)


@contextlib.contextmanager
def acting_as(actor: str) -> Iterator[None]:
    """Names the actor for the audit records written inside the block (per thread/task).

    Front doors wrap service calls in it, so the records the service's key-change guard writes
    carry the caller, not ``service``.
    """
    token = _ACTOR.set(actor)
    try:
        yield
    finally:
        _ACTOR.reset(token)


#: Depth of :meth:`AdminRecorder.audited` blocks open in this thread/task. A key-change guard
#: inside one writes nothing: the enclosing block's intent is already stored (fail-closed
#: holds) and its outcome covers the change, so a front door that audits its command and a
#: service that audits its method never produce two records for one action.
_OPEN: contextvars.ContextVar[int] = contextvars.ContextVar("glc_audit_open", default=0)


def current_actor(default: str) -> str:
    """The actor set by :func:`acting_as`, else ``default``."""
    return _ACTOR.get() or default


class AdminRecorder:
    """Records admin actions; a base of :class:`~greenlang_crypto.audit.AuditLog`.

    Attributes:
        actor: The actor recorded when none is given or set by :func:`acting_as`.
    """

    actor: str
    _wake: threading.Event

    def _write(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Seals and stores ``entries`` now.

        Raises:
            AuditSinkUnavailableError: The sink did not take them.
        """
        raise NotImplementedError

    def _enqueue(self, entry: AuditEntry) -> None:
        """Buffers ``entry`` for the next flush (never blocks, never raises)."""
        raise NotImplementedError

    def record(
        self,
        action: str,
        *,
        actor: str,
        outcome: str = "success",
        key_id: str | None = None,
        key_version: int | None = None,
        context_digest: str | None = None,
        data_class: str | None = None,
        request_id: str | None = None,
        reason: str | None = None,
        details: Mapping[str, Scalar] | None = None,
        required: bool = True,
    ) -> AuditRecord | None:
        """Writes one record now (admin actions, API decrypts, denials).

        Args:
            action: The action name (for example ``key_rotate``).
            actor: Who acts.
            outcome: ``intent`` before acting, then ``success`` or ``failure``; ``denied``.
            key_id: Wrapping key id.
            key_version: Key version.
            context_digest: Hex context digest (never the context itself).
            data_class: Data class.
            request_id: Request id.
            reason: The stated reason.
            details: Further non-secret scalars.
            required: When true (security-relevant actions) a sink failure raises; when false
                the record is buffered instead.

        Returns:
            The sealed record, or None when it was buffered.

        Raises:
            AuditSinkUnavailableError: ``required`` and the sink did not take the record; the
                caller must not perform the action.
        """
        entry = AuditEntry(
            action=action,
            actor=actor,
            outcome=outcome,
            key_id=key_id,
            key_version=key_version,
            context_digest=context_digest,
            data_class=data_class,
            request_id=request_id,
            reason=reason,
            details=dict(details or {}),
        )
        if not required:
            self._enqueue(entry)
            self._wake.set()
            return None
        records = self._write([entry])
        return records[-1]

    @contextlib.contextmanager
    def audited(
        self,
        action: str,
        actor: str | None = None,
        *,
        key_id: str | None = None,
        key_version: int | None = None,
        request_id: str | None = None,
        reason: str | None = None,
        details: Mapping[str, object] | None = None,
    ) -> Iterator[dict[str, Scalar]]:
        """The one audited path for a security-relevant change: intent, act, outcome.

        Entering writes the ``intent`` record synchronously; if the sink does not store it,
        :class:`AuditSinkUnavailableError` is raised and the block never runs, so nothing
        changes. Leaving writes ``success`` (with whatever the block put in the yielded dict,
        for example a job summary; its ``key_version`` and ``key_id`` entries replace those
        fields) or, on an exception, ``failure`` with the error type, then
        re-raises. The outcome record is written at once when the sink takes it, else buffered
        (the change has happened; it must not be reported as failed because of the audit).

        Args:
            action: The action name (for example ``key_retire``).
            actor: Who acts; default the :func:`acting_as` actor, else this log's actor.
            key_id: Wrapping key id.
            key_version: Key version concerned.
            request_id: Request id.
            reason: The stated reason.
            details: Non-secret scalars for the intent record (kept in the outcome too).

        Yields:
            A dict of further details for the outcome record.
        """
        who = actor or current_actor(self.actor)
        base = {str(k): _scalar(v) for k, v in (details or {}).items()}
        common: dict[str, Any] = {
            "actor": who,
            "key_id": key_id,
            "key_version": key_version,
            "request_id": request_id,
            "reason": reason,
        }
        self.record(action, outcome="intent", details=base, **common)
        extra: dict[str, Scalar] = {}
        token = _OPEN.set(_OPEN.get() + 1)
        try:
            yield extra
        except BaseException as exc:
            _OPEN.reset(token)
            failed = {**base, **extra, "error_type": type(exc).__name__}
            self._record_outcome(action, "failure", failed, common)
            raise
        _OPEN.reset(token)
        # The block may name the key the change produced (for example the new version).
        done = dict(common)
        for name in ("key_version", "key_id"):
            if name in extra:
                done[name] = extra.pop(name)
        self._record_outcome(action, "success", {**base, **extra}, done)

    def _record_outcome(
        self, action: str, outcome: str, details: Mapping[str, Scalar], common: Mapping[str, Any]
    ) -> None:
        try:
            self.record(action, outcome=outcome, details=details, **common)
        except AuditSinkUnavailableError:
            self.record(action, outcome=outcome, details=details, required=False, **common)

    def key_change(
        self, action: str, details: Mapping[str, object]
    ) -> contextlib.AbstractContextManager[None]:
        """:class:`~greenlang_crypto.events.KeyChangeGuard`: :meth:`audited` for the service.

        The actor is the one a front door set with :func:`acting_as`, else this log's actor.
        Inside an open :meth:`audited` block (a front door auditing the whole command) it
        writes nothing: that block's records already cover the change.
        """
        if _OPEN.get() > 0:
            return contextlib.nullcontext()
        return _discard_yield(self.audited(action, details=details))


@contextlib.contextmanager
def _discard_yield(cm: contextlib.AbstractContextManager[Any]) -> Iterator[None]:
    with cm:
        yield
