"""Observability gate (issue 5): metrics and the aggregated audit log must cost the data path
at most 10% (ARCHITECTURE rule 5). Imported by benches/gate.py.

Both services run on the same machine in the same process, interleaved round by round: one with
the Prometheus collector registered (and scraped during warm-up) plus the audit log in its
default aggregated mode, the other with no observers at all.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

# At module level, so benches/gate.py skips this gate when prometheus_client is absent.
from prometheus_client import CollectorRegistry, generate_latest

from benches._measure import Ratio, time_ratio


def checks() -> list[Callable[[], Ratio]]:
    from greenlang_crypto import EncryptionContext
    from greenlang_crypto.audit import AuditLog, SqliteAuditSink
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.metrics import EncryptionMetrics, register_metrics
    from greenlang_crypto.providers.local import LocalKeyProvider
    from greenlang_crypto.service import EncryptionService

    def service(observed: bool) -> EncryptionService:
        data_dir = tempfile.mkdtemp(prefix="glc-gate-obs-")
        LocalKeyProvider(data_dir).create_master_key()
        config = EncryptionServiceConfig(data_dir=data_dir)
        if not observed:
            return EncryptionService(config)
        metrics = EncryptionMetrics()
        audit = AuditLog(SqliteAuditSink(f"{data_dir}/audit.db"), flush_interval=1.0)
        svc = EncryptionService(config, observers=[audit, metrics])
        audit.attach(svc)
        registry = CollectorRegistry(auto_describe=False)
        register_metrics(svc, registry=registry, audit=audit, metrics=metrics)
        svc.encrypt(b"warm", EncryptionContext(tenant_id="t1", data_class="pii"))
        generate_latest(registry)  # a scrape works against this service
        return svc

    on, off = service(True), service(False)
    ctx = EncryptionContext(tenant_id="t1", data_class="pii")
    pt = os.urandom(64)
    on.encrypt(pt, ctx)
    off.encrypt(pt, ctx)

    def run() -> Ratio:
        r, ta, tb = time_ratio(lambda: on.encrypt(pt, ctx), lambda: off.encrypt(pt, ctx))
        return Ratio(
            "encrypt 64 B with metrics + aggregated audit vs without", r, 1.1, False, ta, tb
        )

    return [run]
