"""pytest-benchmark suites for streams: ours and the peers side by side.

File to file on 32 MiB (in tmpfs when there is one): a plain 1 MiB-buffer copy (the I/O
floor), our stream, Tink's AES256_GCM_HKDF_1MB streaming AEAD and pyrage (age). In memory:
runs of 1 MiB segments into caller buffers against cryptography's ``encrypt_into``. The
normal test run passes ``--benchmark-disable``, which runs each once as a smoke test; the
ratios are gated by benches/gate_streams.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from greenlang_crypto import EncryptionContext
from greenlang_crypto import _core as core
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService

MIB = 1 << 20
SIZE = 32 * MIB
CTX = EncryptionContext(tenant_id="bench", data_class="exports")


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    d = Path(tempfile.mkdtemp(prefix="glc-bench-streams-", dir=base))
    block = os.urandom(MIB)
    with (d / "plain.bin").open("wb") as f:
        for _ in range(SIZE // MIB):
            f.write(block)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def service(work: Path) -> Iterator[EncryptionService]:
    LocalKeyProvider(work / "data").create_master_key()
    svc = EncryptionService(EncryptionServiceConfig(data_dir=work / "data"))
    yield svc
    svc.close()


def _copy(src: Path, dst: Path) -> None:
    buf = bytearray(MIB)
    view = memoryview(buf)
    with src.open("rb", buffering=0) as a, dst.open("wb", buffering=0) as b:
        while n := a.readinto(buf):
            b.write(view[:n])


def _pair(impl: str, work: Path, service: EncryptionService) -> tuple[Callable[[], object], ...]:
    """(encrypt, decrypt) file to file for one implementation."""
    src, enc, out = work / "plain.bin", work / f"{impl}.enc", work / f"{impl}.out"
    if impl == "copy":
        return (lambda: _copy(src, enc), lambda: _copy(enc, out))
    if impl == "greenlang":
        return (
            lambda: service.encrypt_file(src, enc, CTX),
            lambda: service.decrypt_file(enc, out, CTX),
        )
    if impl == "tink":
        tink = pytest.importorskip("tink")
        from tink import streaming_aead

        streaming_aead.register()
        template = streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB
        prim = tink.new_keyset_handle(template).primitive(streaming_aead.StreamingAead)

        def t_enc() -> None:
            with src.open("rb") as a, enc.open("wb") as f, prim.new_encrypting_stream(f, b"") as e:
                while chunk := a.read(MIB):
                    e.write(chunk)

        def t_dec() -> None:
            with enc.open("rb") as f, out.open("wb") as b, prim.new_decrypting_stream(f, b"") as d:
                while chunk := d.read(MIB):
                    b.write(chunk)

        return (t_enc, t_dec)
    pyrage = pytest.importorskip("pyrage")
    identity = pyrage.x25519.Identity.generate()
    return (
        lambda: pyrage.encrypt_file(str(src), str(enc), [identity.to_public()]),
        lambda: pyrage.decrypt_file(str(enc), str(out), [identity]),
    )


@pytest.mark.parametrize("op", ["encrypt", "decrypt"])
@pytest.mark.parametrize("impl", ["copy", "greenlang", "tink", "pyrage"])
def bench_file_to_file(
    benchmark: Any, work: Path, service: EncryptionService, impl: str, op: str
) -> None:
    benchmark.group = f"{op} 32 MiB file to file"
    encrypt, decrypt = _pair(impl, work, service)
    encrypt()
    benchmark(encrypt if op == "encrypt" else decrypt)
    if op == "decrypt":
        assert (work / f"{impl}.out").read_bytes() == (work / "plain.bin").read_bytes()


@pytest.mark.parametrize("impl", ["greenlang", "cryptography"])
def bench_seal_into_segments(benchmark: Any, impl: str) -> None:
    benchmark.group = "seal 16 x 1 MiB segments into a caller buffer"
    plain = os.urandom(16 * MIB)
    if impl == "greenlang":
        ctx = CTX.canonical
        key = core.DataKey.generate()
        ref = core.EnvelopeSealer(key, key_version=1, context=ctx, dek_id=1).header
        enc = core.StreamEncryptor(key, ref, ctx, b"", segment_size=MIB)
        out = bytearray(enc.sealed_len(len(plain), False))
        benchmark(enc.seal_into, plain, out, False)
        return
    aead, nonce = AESGCM(os.urandom(32)), os.urandom(12)
    view, sealed = memoryview(plain), bytearray(16 * (MIB + 16))
    sealed_view = memoryview(sealed)

    def peer() -> None:
        for i in range(16):
            aead.encrypt_into(
                nonce,
                view[i * MIB : (i + 1) * MIB],
                None,
                sealed_view[i * (MIB + 16) : (i + 1) * (MIB + 16)],
            )

    benchmark(peer)
