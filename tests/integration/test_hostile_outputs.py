"""Hostile outputs of the CLI: what ``-o`` names is never replaced unless it is a file.

A device or FIFO behind ``-o`` (also behind a symbolic link) is written in place, and
``/dev/stdout`` writes to the descriptor, whether it is a pipe or a file the shell opened. A
plaintext file is 0600 unless ``--mode`` says otherwise, also when it replaces a wider file.
``init`` leaves a complete data directory or none, a full disk included. Tracebacks need
``--debug``. Real device nodes, FIFOs, pipes and a full tmpfs; no mocks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from greenlang_crypto import cli

CTX = ["--tenant", "acme", "--data-class", "pii"]
PLAINTEXT = b"hostile-output-4c1d marker\n" * 40_000  # about 1 MiB: more than a pipe holds

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="mknod and mounting a tmpfs need root (CI runs as root)"
)


def _glc(*args: str) -> list[str]:
    return [sys.executable, "-m", "greenlang_crypto", *args]


@pytest.fixture
def data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    d = tmp_path / "data"
    assert cli.main(["--data-dir", str(d), "init"]) == 0
    capsys.readouterr()
    return d


@pytest.fixture
def sealed(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """PLAINTEXT encrypted as a stream, in its own directory."""
    src_dir = tmp_path / "inputs"
    src_dir.mkdir()
    src = src_dir / "plain.txt"
    src.write_bytes(PLAINTEXT)
    out = src_dir / "plain.glc"
    base = ["--data-dir", str(data)]
    assert cli.main([*base, "encrypt", *CTX, "-i", str(src), "-o", str(out)]) == 0
    src.unlink()
    capsys.readouterr()
    return out


def _decrypt(data: Path, sealed: Path, output: str, *extra: str) -> list[str]:
    return ["--data-dir", str(data), "decrypt", *CTX, "-i", str(sealed), "-o", output, *extra]


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@needs_root
def test_a_device_behind_a_symlink_is_written_in_place(
    data: Path, sealed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dev = out / "nulldev"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (out / "to-device").symlink_to("nulldev")
    (out / "via-two-links").symlink_to("to-device")
    for name in ("nulldev", "to-device", "via-two-links"):
        assert cli.main(_decrypt(data, sealed, str(out / name))) == 0, capsys.readouterr().err
        assert stat.S_ISCHR(dev.lstat().st_mode)
        assert (out / "to-device").is_symlink() and (out / "via-two-links").is_symlink()
    # A link to a regular file is a name like any other: a rename replaces the link, and
    # the file it pointed to (perhaps someone else's) is left alone.
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"not yours")
    (out / "to-victim").symlink_to(victim)
    assert cli.main(_decrypt(data, sealed, str(out / "to-victim"))) == 0
    assert victim.read_bytes() == b"not yours"
    assert not (out / "to-victim").is_symlink()
    assert (out / "to-victim").read_bytes() == PLAINTEXT
    assert sorted(p.name for p in out.iterdir()) == [
        "nulldev",
        "to-device",
        "to-victim",
        "via-two-links",
    ]


def test_a_fifo_is_written_in_place_as_a_stream(
    data: Path, sealed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo, 0o600)
    (tmp_path / "fifo-link").symlink_to(fifo)

    def drain(into: bytearray) -> None:
        with open(fifo, "rb") as r:  # blocks until a writer opens the FIFO
            while chunk := r.read(65536):
                into.extend(chunk)

    for target in (fifo, tmp_path / "fifo-link"):
        received = bytearray()
        reader = threading.Thread(target=drain, args=(received,), daemon=True)
        reader.start()
        code = cli.main(_decrypt(data, sealed, str(target)))
        err = capsys.readouterr().err
        if reader.is_alive():
            # Nothing ever opened the FIFO for writing: release the reader, then fail.
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=30)
        assert code == 0, err
        assert bytes(received) == PLAINTEXT
        assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "fifo-link", "inputs", "out.fifo"]


def _private_dev(command: list[str]) -> list[str]:
    """``command`` in a mount namespace of its own, with a copy of /dev bound over /dev.

    Whatever the command does to /dev/stdout stays in its namespace: a regression that
    renamed a file over it would otherwise break /dev/stdout for the whole machine. The
    wrapper then checks that /dev/stdout is still a link (exit 99 when it is not). Without
    root or unshare the command runs as it is (an ordinary user cannot write /dev).
    """
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return command
    script = (
        'dev=$(mktemp -d) && cp -a /dev/null /dev/zero /dev/urandom "$dev"/ && '
        'ln -s /proc/self/fd "$dev/fd" && ln -s /proc/self/fd/0 "$dev/stdin" && '
        'ln -s /proc/self/fd/1 "$dev/stdout" && ln -s /proc/self/fd/2 "$dev/stderr" && '
        'mount --bind "$dev" /dev || exit 98; "$@"; rc=$?; '
        '[ -L /dev/stdout ] || { echo "/dev/stdout was replaced" >&2; exit 99; }; exit $rc'
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *command]


def _read_all(sock: socket.socket, into: bytearray) -> None:
    while chunk := sock.recv(65536):
        into.extend(chunk)


@pytest.mark.parametrize("name", ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"])
def test_dev_stdout_through_a_pipe_or_a_socket(
    data: Path, sealed: Path, tmp_path: Path, name: str
) -> None:
    command = _private_dev(_glc(*_decrypt(data, sealed, name)))
    res = subprocess.run(command, capture_output=True, timeout=120, check=False, cwd=tmp_path)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == PLAINTEXT
    # A socket as standard output (socket activation, a supervisor's log socket): it cannot
    # be opened by name, only written through the descriptor the process has.
    ours, theirs = socket.socketpair()
    received = bytearray()
    reader = threading.Thread(target=_read_all, args=(ours, received), daemon=True)
    reader.start()
    with theirs:
        proc = subprocess.run(
            command, stdout=theirs, stderr=subprocess.PIPE, timeout=120, check=False, cwd=tmp_path
        )
    reader.join(timeout=60)
    ours.close()
    assert proc.returncode == 0, proc.stderr.decode()
    assert bytes(received) == PLAINTEXT
    assert os.path.islink("/dev/stdout")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "inputs"]


@pytest.mark.parametrize("name", ["/dev/stdout", "link-to-fd-1"])
def test_dev_stdout_redirected_to_a_file_writes_that_descriptor(
    data: Path, sealed: Path, tmp_path: Path, name: str
) -> None:
    # As `greenlang-crypto decrypt -o /dev/stdout >> log`: the shell opened the file
    # (appending); the plaintext goes there, after what it held, and nothing is renamed.
    (tmp_path / "link-to-fd-1").symlink_to("/proc/self/fd/1")
    log = tmp_path / "log.txt"
    log.write_bytes(b"earlier line\n")
    target = name if name.startswith("/") else str(tmp_path / name)
    with log.open("ab") as out:
        res = subprocess.run(
            _private_dev(_glc(*_decrypt(data, sealed, target))),
            stdout=out,
            stderr=subprocess.PIPE,
            timeout=120,
            check=False,
            cwd=tmp_path,
        )
    assert res.returncode == 0, res.stderr.decode()
    assert log.read_bytes() == b"earlier line\n" + PLAINTEXT
    assert (tmp_path / "link-to-fd-1").is_symlink()
    assert os.path.islink("/dev/stdout")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "data",
        "inputs",
        "link-to-fd-1",
        "log.txt",
    ]


def test_plaintext_is_0600_unless_mode_says_otherwise(
    data: Path, sealed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--data-dir", str(data)]
    envelope = tmp_path / "inputs" / "small.env"
    small = tmp_path / "inputs" / "small.txt"
    small.write_bytes(b"alice@example.com")
    encrypt = [*base, "encrypt", *CTX, "--envelope", "-i", str(small), "-o", str(envelope)]
    assert cli.main(encrypt) == 0
    out = tmp_path / "out"
    out.mkdir()
    old_umask = os.umask(0)
    try:
        for source in (sealed, envelope):
            target = out / f"{source.name}.txt"
            target.write_bytes(b"old, world-readable")
            target.chmod(0o644)
            # Replacing a world-readable file must not hand the plaintext to the world.
            assert cli.main(_decrypt(data, source, str(target))) == 0
            assert stat.S_IMODE(target.stat().st_mode) == 0o600
            target.chmod(0o666)
            assert cli.main(_decrypt(data, source, str(target), "--mode", "0640")) == 0
            assert stat.S_IMODE(target.stat().st_mode) == 0o640
            fresh = out / f"{source.name}.new"
            assert cli.main(_decrypt(data, source, str(fresh), "--mode", "644")) == 0
            assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
    finally:
        os.umask(old_umask)
    capsys.readouterr()
    for bad in ("4755", "1777", "rw-r--r--", "888"):
        with pytest.raises(SystemExit) as exc:
            cli.main(_decrypt(data, sealed, str(out / "x"), "--mode", bad))
        assert exc.value.code == 2
        assert "--mode" in capsys.readouterr().err
    assert not (out / "x").exists()


def test_tracebacks_only_with_debug(data: Path, sealed: Path, tmp_path: Path) -> None:
    # A key store that is not a database: it used to end in a traceback (which can quote a
    # driver's message and the values it was given); it is one typed line now.
    (data / "keystore.db").write_bytes(os.urandom(8192))
    out = tmp_path / "out.txt"
    plain = subprocess.run(
        _glc(*_decrypt(data, sealed, str(out))), capture_output=True, timeout=60, check=False
    )
    assert plain.returncode == 2
    line = _one_error_line(plain.stderr.decode())
    assert "ConfigurationError" in line and "not a database" in line
    debug = subprocess.run(
        _glc("--debug", *_decrypt(data, sealed, str(out))),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert debug.returncode == 2
    err = debug.stderr.decode()
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("error: ")
    assert not out.exists()


def test_an_error_no_layer_types_is_one_line_naming_only_its_type(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A bug's message may quote anything it was handed: without --debug only the type is
    # named, with a hint; with --debug the traceback follows.
    secret = "alice@example.com"

    def broken(_args: object) -> int:
        raise RuntimeError(f"boom near {secret}")

    # The parser binds the command function when main() builds it.
    monkeypatch.setattr(cli, "cmd_status", broken)
    assert cli.main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: unexpected RuntimeError; rerun with --debug for the traceback"
    assert cli.main(["--debug", "status"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.splitlines()[-1].startswith("error:")


def _fill(directory: Path) -> None:
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


@pytest.mark.parametrize("room", [0, 48 * 1024], ids=["full", "room-for-the-key-only"])
def test_init_on_a_full_disk_leaves_nothing(tiny_fs: Path, room: int) -> None:
    _fill(tiny_fs)
    if room:
        # Free a little: enough for the master key, not for the key store.
        filler = tiny_fs / "filler"
        os.truncate(filler, filler.stat().st_size - room)
    data = tiny_fs / "data"
    res = subprocess.run(
        _glc("--data-dir", str(data), "init"), capture_output=True, timeout=60, check=False
    )
    assert res.returncode == 2, res.stderr.decode()
    line = _one_error_line(res.stderr.decode())
    assert line.startswith(f"error: OutputError: cannot write {data}"), line
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["filler"]
    # Once there is room, the same command makes the whole directory.
    (tiny_fs / "filler").unlink()
    ok = subprocess.run(
        _glc("--data-dir", str(data), "init"), capture_output=True, timeout=60, check=False
    )
    assert ok.returncode == 0, ok.stderr.decode()
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["data"]
    assert [p.name for p in (data / "master-keys").iterdir()] == ["master-v1.key"]


def test_init_is_all_or_nothing_beside_what_is_there(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    parent.chmod(0o755)
    # A directory a killed init left an hour ago is ours to remove; a fresh one is not
    # (another init may be building it), nor one owned by someone else.
    stale = parent / ".data.glc-init-12345-0123456789abcdef"
    fresh = parent / ".data.glc-init-12346-0123456789abcdef"
    for d in (stale, fresh):
        d.mkdir()
        (d / "keystore.db").write_bytes(b"half made")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    # A directory that holds something but no master key is not taken over.
    cluttered = parent / "cluttered"
    cluttered.mkdir()
    (cluttered / "notes.txt").write_bytes(b"mine")
    res = subprocess.run(
        _glc("--data-dir", str(cluttered), "init"), capture_output=True, timeout=60, check=False
    )
    assert res.returncode == 2
    assert "holds no master key" in _one_error_line(res.stderr.decode())
    assert sorted(p.name for p in cluttered.iterdir()) == ["notes.txt"]
    # An empty directory is replaced whole; two inits at once make one key between them.
    data = parent / "data"
    data.mkdir()
    runs = [
        subprocess.Popen(
            _glc("--data-dir", str(data), "init"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60) for p in runs]
    assert [p.returncode for p in runs] == [0, 0, 0], outputs
    said = b"".join(out for out, _ in outputs).decode()
    assert said.count("created the master key") == 1
    assert said.count("already initialized") == 2
    assert [p.name for p in (data / "master-keys").iterdir()] == ["master-v1.key"]
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE(parent.stat().st_mode) == 0o755  # the parent is not tightened
    assert not stale.exists() and fresh.exists()
    assert sorted(p.name for p in parent.iterdir()) == [fresh.name, "cluttered", "data"]
