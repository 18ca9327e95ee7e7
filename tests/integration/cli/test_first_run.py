"""What a new user meets first, in a subprocess: missing files, commands before ``init``, modes.

The in-process parts (a missing extra, an unknown argument) are in ``tests/unit/cli``.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

CTX = ("--tenant", "acme", "--data-class", "pii")


def run(
    data: Path, *args: str, stdin: bytes = b"", **env: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "greenlang_crypto", *args],
        input=stdin,
        capture_output=True,
        env=dict(os.environ, GLC_DATA_DIR=str(data), **env),
        timeout=60,
        check=False,
    )


def one_line_error(res: subprocess.CompletedProcess[bytes]) -> str:
    assert res.returncode == 2, res
    err = res.stderr.decode()
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize(
    "args",
    [
        ["encrypt", *CTX],
        ["decrypt", *CTX],
        ["keys", "list"],
        ["keys", "rotate"],
        ["status"],
        ["token", "--tenant", "acme", "--permissions", "encryption:encrypt"],
        ["serve", "--port", "1"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_commands_before_init_fail_and_create_nothing(tmp_path: Path, args: list[str]) -> None:
    data = tmp_path / "not-yet"
    res = run(data, *args, stdin=b"x")
    assert "run `greenlang-crypto init` first" in one_line_error(res)
    assert not data.exists()


def test_missing_input_and_output_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    err = one_line_error(run(data, "encrypt", *CTX, "-i", str(tmp_path / "absent.txt")))
    assert "absent.txt" in err and "No such file" in err
    src = tmp_path / "in.txt"
    src.write_bytes(b"alice@example.com")
    err = one_line_error(
        run(data, "encrypt", *CTX, "-i", str(src), "-o", str(tmp_path / "no" / "out"))
    )
    assert "cannot write" in err
    assert not (tmp_path / "no").exists()


def test_outputs_are_0600_unless_a_mode_is_asked_for(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    src = tmp_path / "in.txt"
    src.write_bytes(b"alice@example.com")
    enc = tmp_path / "in.enc"
    old_umask = os.umask(0)
    try:
        assert run(data, "encrypt", *CTX, "-i", str(src), "-o", str(enc)).returncode == 0
        assert stat.S_IMODE(enc.stat().st_mode) == 0o600
        out = tmp_path / "out.txt"
        assert run(data, "decrypt", *CTX, "-i", str(enc), "-o", str(out)).returncode == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        out.chmod(0o600)
        assert run(data, "decrypt", *CTX, "-i", str(enc), "-o", str(out)).returncode == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        # A wider file being replaced does not widen the plaintext written over it.
        out.chmod(0o640)
        assert run(data, "decrypt", *CTX, "-i", str(enc), "-o", str(out)).returncode == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        decrypt = ["decrypt", *CTX, "-i", str(enc), "-o", str(out), "--mode", "640"]
        assert run(data, *decrypt).returncode == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o640
        assert out.read_bytes() == b"alice@example.com"
    finally:
        os.umask(old_umask)
    # No temporary file is left beside the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "in.enc", "in.txt", "out.txt"]


def test_oversized_input_is_refused_before_it_is_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    huge = tmp_path / "huge.bin"
    with huge.open("wb") as f:
        f.truncate(1 << 40)  # sparse: reading it all would take far longer than the timeout
    # encrypt writes a stream, bounded by stream_max_bytes; --envelope by max_plaintext_bytes.
    for flag, var in (([], "GLC_STREAM_MAX_BYTES"), (["--envelope"], "GLC_MAX_PLAINTEXT_BYTES")):
        res = run(data, "encrypt", *CTX, *flag, "-i", str(huge), **{var: "1000"})
        assert "PayloadTooLargeError" in one_line_error(res)
        piped = run(data, "encrypt", *CTX, *flag, stdin=b"x" * 1001, **{var: "1000"})
        assert "PayloadTooLargeError" in one_line_error(piped)
        exact = run(data, "encrypt", *CTX, *flag, stdin=b"x" * 1000, **{var: "1000"})
        assert exact.returncode == 0


def test_init_local_is_idempotent_across_processes(tmp_path: Path) -> None:
    data = tmp_path / "shared"
    code = (
        "from greenlang_crypto.service import EncryptionService;"
        "from greenlang_crypto import EncryptionContext as C;"
        "s = EncryptionService.init_local();"
        "import sys; sys.stdout.buffer.write(s.encrypt(b'v', C('t', 'd'), key_reference='inline'))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            env=dict(os.environ, GLC_DATA_DIR=str(data)),
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(list((data / "master-keys").glob("master-v*.key"))) == 1
    # Every process encrypted under the one master key that exists now.
    for envelope in outputs:
        dec = run(data, "decrypt", "--tenant", "t", "--data-class", "d", stdin=envelope)
        assert dec.returncode == 0 and dec.stdout == b"v"
