"""Helpers for tests against a served API: `greenlang-crypto serve` in its own process, tokens
minted by the CLI, the server's peak memory from /proc, and raw HTTP/1.1 uploads that keep
sending a body while watching for an early answer."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from greenlang_crypto.providers.local import LocalKeyProvider

API = "/api/v1/encryption"
MiB = 1024 * 1024


@dataclass
class Served:
    """A running server: its base URL, data directory, process and log file."""

    base: str
    port: int
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def token(self, permissions: str, *, tenant: str | None = None, subject: str = "t") -> str:
        args = ["token", "--permissions", permissions, "--subject", subject]
        if tenant is not None:
            args += ["--tenant", tenant]
        done = cli(self.data_dir, *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def stop(self) -> None:
        """SIGINT (uvicorn's graceful shutdown: lifespan shutdown, then the stack closes)."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "greenlang_crypto", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextlib.contextmanager
def serve(tmp_path: Path, *extra: str) -> Iterator[Served]:
    """Runs the server (the Python process itself, no shell) until the block ends."""
    data_dir = tmp_path / "data"
    LocalKeyProvider(data_dir).create_master_key()
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "greenlang_crypto", "--data-dir", str(data_dir),
                "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                "--audit-flush-interval", "0.2", *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )  # fmt: skip
    served = Served(f"http://127.0.0.1:{port}", port, data_dir, proc, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(log.read_text())
            try:
                if httpx.get(f"{served.base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready: " + log.read_text())
            time.sleep(0.1)
        yield served
    finally:
        served.stop()


def reset_peak(pid: int) -> int:
    """Resets the process's peak RSS to its current RSS; returns that, in bytes."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return peak_rss(pid)


def peak_rss(pid: int) -> int:
    """VmHWM of the process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@dataclass
class Upload:
    """What a raw upload saw: the status (None if the server closed without answering) and
    how many body bytes the client managed to send."""

    status: int | None
    sent: int
    body: bytes


def json_body_chunks(total: int, tenant: str, chunk: int = MiB) -> Iterator[bytes]:
    """A JSON encrypt request of exactly ``total`` bytes: a huge base64 ``plaintext``."""
    head = b'{"plaintext": "'
    tail = b'", "context": {"tenant_id": "' + tenant.encode() + b'", "data_class": "pii"}}'
    filler = total - len(head) - len(tail)
    assert filler > 0 and filler % 4 == 0, "pick a total that keeps the base64 valid"
    yield head
    block = b"QUFB" * (chunk // 4)
    while filler > 0:
        n = min(filler, len(block))
        yield block[:n]
        filler -= n
    yield tail


def raw_post(
    port: int,
    path: str,
    token: str,
    chunks: Iterator[bytes],
    *,
    length: int | None,
    timeout: float = 60.0,
) -> Upload:
    """POSTs a body while a reader thread waits for the answer.

    The server may answer (and close) long before the body is sent; the sender then stops on
    the broken connection. ``length`` None sends the body chunked.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    )
    answer = bytearray()
    answered = threading.Event()

    def read() -> None:
        with contextlib.suppress(OSError):
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                answer.extend(data)
                if _complete(answer):
                    break
        answered.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sent = 0
    try:
        sock.sendall(head.encode())
        for chunk in chunks:
            if answered.is_set():
                break
            data = chunk if length is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk)
            sock.sendall(data)
            sent += len(chunk)
        else:
            if length is None:
                sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # the server answered and closed: what it said is what matters
    answered.wait(timeout)
    with contextlib.suppress(OSError):
        sock.close()
    reader.join(timeout=5)
    status = None
    if answer.startswith(b"HTTP/1.1 "):
        status = int(answer[9:12])
    body = bytes(answer[answer.index(b"\r\n\r\n") + 4 :]) if b"\r\n\r\n" in answer else b""
    return Upload(status, sent, body)


class HeldUpload:
    """A POST whose body is sent in two parts, so the request can be held open mid-body."""

    def __init__(self, port: int, path: str, token: str, body: bytes, first: int) -> None:
        self.body = body
        self.first = first
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.answer = bytearray()
        self.answered = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + body[:first])

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                self.answer.extend(data)
                if _complete(self.answer):
                    break
        self.answered.set()

    def finish(self) -> None:
        """Sends the rest of the body (unless the server has answered already)."""
        if not self.answered.is_set():
            with contextlib.suppress(OSError):
                self.sock.sendall(self.body[self.first :])

    def status(self, timeout: float) -> int | None:
        """The answer's status, waiting up to ``timeout``; None when there is none yet."""
        self.answered.wait(timeout)
        if self.answer.startswith(b"HTTP/1.1 "):
            return int(self.answer[9:12])
        return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _complete(answer: bytes | bytearray) -> bool:
    """Whether ``answer`` holds a whole response (headers and a Content-Length body)."""
    if b"\r\n\r\n" not in answer:
        return False
    head_end = answer.index(b"\r\n\r\n") + 4
    declared = [
        int(line.split(b":", 1)[1])
        for line in answer[:head_end].split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    ]
    return bool(declared) and len(answer) >= head_end + declared[0]
