"""The rotation autopilot as a background thread of a long-running service.

For a deployment with no scheduler at hand (no CronJob, no systemd timer): every instance may
start the thread, since the step's fleet lock lets exactly one of them act at a time and the
others return at once. Each step is :func:`~greenlang_crypto.sqlalchemy.autopilot.
run_autopilot_once` with the thread's budget and rate cap; a step that raises (the database
or the key store is down, the audit sink refuses) is logged and the next one runs after the
interval, as the next scheduler run would. The thread never raises into the application.

::

    pilot = AutopilotThread(engine, service, ColumnRegistry.from_metadata(Base))
    pilot.start()
    ...
    pilot.stop()   # waits for the step in progress to reach its next batch boundary
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from greenlang_crypto.exceptions import GreenlangCryptoError, InvalidArgumentError
from greenlang_crypto.sqlalchemy.autopilot import AutopilotReport, run_autopilot_once

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from greenlang_crypto.audit import AuditLog
    from greenlang_crypto.service import EncryptionService
    from greenlang_crypto.sqlalchemy._registry import ColumnRegistry

__all__ = ["AutopilotThread"]

_log = logging.getLogger("greenlang_crypto.autopilot")


class AutopilotThread:
    """Runs one autopilot step every ``interval_seconds`` in a daemon thread.

    Args:
        engine: The application's PostgreSQL engine.
        service: The EncryptionService (its configuration holds the policy).
        registry: The columns to re-encrypt.
        interval_seconds: Time from the end of one step to the start of the next.
        budget_seconds: Each step's re-encryption budget (default: half the interval, so
            the thread leaves most of the time to the application).
        max_rows_per_second: Cap on re-encryption reads per second (``None``: none).
        audit: The audit log every action is recorded in.
        clock: The policy's clock (tests inject one).
        on_step: Called with each step's report (or ``None`` when it raised), from the
            thread; an exception it raises is logged and ignored.
        **step_options: Further keyword arguments of ``run_autopilot_once``.

    Raises:
        InvalidArgumentError: A non-positive interval or budget.
    """

    def __init__(
        self,
        engine: Engine,
        service: EncryptionService,
        registry: ColumnRegistry,
        *,
        interval_seconds: float = 60.0,
        budget_seconds: float | None = None,
        max_rows_per_second: float | None = None,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.time,
        on_step: Callable[[AutopilotReport | None], None] | None = None,
        **step_options: Any,
    ) -> None:
        if not interval_seconds > 0:
            raise InvalidArgumentError("interval_seconds must be positive")
        budget = interval_seconds / 2 if budget_seconds is None else budget_seconds
        if not budget > 0:
            raise InvalidArgumentError("budget_seconds must be positive")
        self.interval_seconds = float(interval_seconds)
        self._step: Callable[[], AutopilotReport] = lambda: run_autopilot_once(
            engine,
            service,
            registry,
            budget_seconds=budget,
            max_rows_per_second=max_rows_per_second,
            audit=audit,
            clock=clock,
            cancel=self._stop,
            **step_options,
        )
        self._on_step = on_step
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: The last step's report (``None`` before the first, or when the last one raised).
        self.last_report: AutopilotReport | None = None
        #: Steps run so far, and how many of them raised.
        self.steps = 0
        self.failures = 0

    def start(self) -> None:
        """Starts the thread (a first step runs at once).

        Raises:
            InvalidArgumentError: It was started already.
        """
        if self._thread is not None:
            raise InvalidArgumentError("the autopilot thread was started already")
        self._thread = threading.Thread(
            target=self._run, name="greenlang-crypto-autopilot", daemon=True
        )
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        """Asks the thread to stop and waits for it (at most ``timeout`` seconds).

        A step in progress stops after its current batch (every batch is a committed
        checkpoint, so the next start resumes there).
        """
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            report: AutopilotReport | None = None
            try:
                report = self._step()
            except Exception as exc:  # a background thread must not die of one step
                self.failures += 1
                # The library's own errors never carry key bytes or values; anything else
                # (a driver error quoting a statement and its parameters) by its type only.
                detail = str(exc) if isinstance(exc, GreenlangCryptoError) else ""
                _log.warning("autopilot step failed: %s %s", type(exc).__name__, detail)
            else:
                if report.status == "blocked":
                    _log.warning("autopilot blocked: %s", "; ".join(report.reasons))
                elif report.actions:
                    _log.info(
                        "autopilot %s: %s",
                        report.status,
                        ", ".join(str(a["action"]) for a in report.actions),
                    )
            self.steps += 1
            self.last_report = report
            if self._on_step is not None:
                try:
                    self._on_step(report)
                except Exception as exc:  # an observer must not stop the pilot
                    _log.warning("autopilot on_step callback failed: %s", type(exc).__name__)
            self._stop.wait(self.interval_seconds)
