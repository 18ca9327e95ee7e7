"""Running a function in a forked child, for tests of state that must be per process."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from typing import Any


def fork(child: Callable[[], Any]) -> Callable[[], Any]:
    """Runs ``child`` in a forked child; returns a function that waits for its JSON result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        os.close(r)
        code = 0
        try:
            signal.alarm(30)  # a hang fails the test instead of blocking it
            out: Any = child()
        except BaseException as exc:
            out, code = {"error": repr(exc)}, 1
        os.write(w, json.dumps(out).encode())
        os._exit(code)
    os.close(w)

    def result() -> Any:
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        out = json.loads(b"".join(chunks) or b"null")
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out
        return out

    return result
