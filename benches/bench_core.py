"""pytest-benchmark suites: ours and the peers side by side, per size.

`make bench` runs them with timing; the normal test run passes `--benchmark-disable`, which runs
each once as a smoke test. Gating on ratios is done by benches/gate.py.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from greenlang_crypto import DataKey, EncryptionContext
from greenlang_crypto.config import EncryptionServiceConfig
from greenlang_crypto.providers.local import LocalKeyProvider
from greenlang_crypto.service import EncryptionService

SIZES = {"64B": 64, "1KiB": 1024, "64KiB": 64 * 1024, "1MiB": 1 << 20}


@pytest.fixture(scope="module")
def service() -> EncryptionService:
    d = tempfile.mkdtemp(prefix="glc-bench-")
    LocalKeyProvider(d).create_master_key()
    return EncryptionService(EncryptionServiceConfig(data_dir=d))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("impl", ["greenlang", "cryptography"])
def bench_seal(benchmark: Any, size: str, impl: str) -> None:
    benchmark.group = f"seal {size}"
    pt = os.urandom(SIZES[size])
    if impl == "greenlang":
        k = DataKey.generate()
        out = benchmark(k.seal, pt)
        assert k.open(out) == pt
    else:
        a = AESGCM(os.urandom(32))
        benchmark(lambda: a.encrypt(os.urandom(12), pt, None))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("impl", ["greenlang", "cryptography"])
def bench_open(benchmark: Any, size: str, impl: str) -> None:
    benchmark.group = f"open {size}"
    pt = os.urandom(SIZES[size])
    if impl == "greenlang":
        k = DataKey.generate()
        sealed = k.seal(pt)
        assert benchmark(k.open, sealed) == pt
    else:
        a, n = AESGCM(os.urandom(32)), os.urandom(12)
        ct = a.encrypt(n, pt, None)
        assert benchmark(a.decrypt, n, ct, None) == pt


@pytest.mark.parametrize("op", ["encrypt", "decrypt"])
def bench_service_64b(benchmark: Any, service: EncryptionService, op: str) -> None:
    benchmark.group = "service 64B"
    ctx = EncryptionContext("t1", "pii")
    pt = os.urandom(64)
    if op == "encrypt":
        env = benchmark(service.encrypt, pt, ctx)
    else:
        env = service.encrypt(pt, ctx)
        assert benchmark(service.decrypt, env, ctx) == pt
    # Format v2: 8 header + 8 DEK id + 32 key commitment + 12 nonce + 16 tag.
    assert len(env) <= 64 + 76
