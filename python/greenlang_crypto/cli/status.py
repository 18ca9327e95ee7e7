"""``greenlang-crypto status``: provider health, key versions, usage and cache counters."""

from __future__ import annotations

import argparse
import json

from greenlang_crypto.cli._common import one_shot

__all__ = ["cmd_status"]


def cmd_status(args: argparse.Namespace) -> int:
    """Prints provider health, key versions and cache counters (exit 1: provider down)."""
    st = one_shot(args).service.status()
    doc = {
        "provider": st.provider,
        "provider_ok": st.provider_ok,
        "provider_detail": st.provider_detail,
        "primary_version": st.primary_version,
        "min_decryption_version": st.min_decryption_version,
        "versions": [{"version": v.version, "state": v.state} for v in st.versions],
        "stored_deks_by_version": st.deks_by_version,
        "usage_by_version": {
            v: {"deks": n, "messages": m, "bytes": b}
            for v, (n, m, b) in st.usage_by_version.items()
        },
        "cache": st.cache,
        "keyring_epoch": st.keyring_epoch,
        "instances": [
            {"host": i.host, "pid": i.pid, "epoch": i.epoch, "primary_version": i.primary_version}
            for i in st.instances
        ],
    }
    print(json.dumps(doc, indent=2))
    return 0 if st.provider_ok else 1
