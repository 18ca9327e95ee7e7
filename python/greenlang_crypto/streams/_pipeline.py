"""The writer thread of streams: run N is written while run N+1 is sealed or opened."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator

from greenlang_crypto.streams._io import _Writable, _write_all


class _Writer:
    """Writes views to a destination on its own thread, in order, while the caller makes more.

    The caller seals (or opens) run N+1 while this thread writes run N: file reads and writes
    and the Rust calls all release the GIL, so the seal overlaps the I/O on a second core. The
    caller owns the buffers and reuses one only after :meth:`wait` says the views in it were
    written. An error of the destination is raised to the caller at its next
    :meth:`submit`, :meth:`wait` or :meth:`finish`; :meth:`abort` stops the thread after the
    write in progress. ``progress`` runs on the caller's thread, once a write completed.
    """

    def __init__(self, dst: _Writable, progress: Callable[[int], object] | None) -> None:
        self._dst = dst
        self._progress = progress
        self._cond = threading.Condition()
        self._queue: deque[tuple[memoryview, int]] = deque()
        self._written: list[int] = []
        self._error: BaseException | None = None
        self._closing = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="glc-stream-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing and not self._stop:
                        self._cond.wait()
                    if self._stop or not self._queue:
                        return
                    view, count = self._queue[0]
                _write_all(self._dst, view)
                with self._cond:
                    self._queue.popleft()
                    self._written.append(count)
                    self._cond.notify_all()
        except BaseException as exc:  # raised to the caller, which stops feeding this thread
            with self._cond:
                self._error = exc
                self._queue.clear()
                self._cond.notify_all()

    def _settle(self) -> None:
        # Called with the lock held: raise the writer's error, else report finished writes.
        if self._error is not None:
            raise self._error
        done, self._written = self._written, []
        if self._progress is not None:
            for count in done:
                self._progress(count)

    def submit(self, view: memoryview, count: int) -> None:
        """Queues ``view`` (``count`` bytes of progress); raises the writer's error, if any."""
        with self._cond:
            self._settle()
            self._queue.append((view, count))
            self._cond.notify_all()

    def wait(self, pending: int) -> None:
        """Waits until at most ``pending`` views remain to be written."""
        with self._cond:
            while len(self._queue) > pending and self._error is None:
                self._cond.wait()
            self._settle()

    def finish(self) -> None:
        """Writes what is queued, stops the thread and raises its error, if any."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        with self._cond:
            self._settle()

    def abort(self) -> None:
        """Stops the thread after the write in progress, dropping what is queued."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()


def _write_runs(
    views: Iterator[tuple[memoryview, int]],
    dst: _Writable,
    progress: Callable[[int], object] | None,
) -> None:
    """Writes ``views`` (rotating over two buffers) to ``dst``, overlapped when it pays.

    With a single view everything stays on the caller's thread. From the second on, a
    :class:`_Writer` writes view N while the caller makes view N+1; before asking for the
    next view (which reuses the buffer of view N-1) the caller waits until at most one view,
    the latest, is left to write, so memory stays two buffers and writes stay in order.
    """
    first = next(views, None)
    if first is None:
        return
    second = next(views, None)
    if second is None:
        _write_all(dst, first[0])
        if progress is not None:
            progress(first[1])
        return
    writer = _Writer(dst, progress)
    try:
        writer.submit(*first)
        writer.submit(*second)
        while True:
            writer.wait(1)
            item = next(views, None)
            if item is None:
                break
            writer.submit(*item)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
