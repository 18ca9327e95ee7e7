"""Audit sinks: SQLite, PostgreSQL and JSON lines, opened from a URL."""

from __future__ import annotations

import os
from pathlib import Path

from greenlang_crypto.audit.sinks.base import AuditQuery, AuditSink
from greenlang_crypto.audit.sinks.jsonl import JsonLinesAuditSink
from greenlang_crypto.audit.sinks.sql import PostgresAuditSink, SqliteAuditSink
from greenlang_crypto.exceptions import ConfigurationError

__all__ = [
    "AuditQuery",
    "AuditSink",
    "JsonLinesAuditSink",
    "PostgresAuditSink",
    "SqliteAuditSink",
    "open_audit_sink",
]


def open_audit_sink(
    url: str | None, data_dir: str | os.PathLike[str], *, timeout: float = 2.0
) -> AuditSink:
    """Opens a sink from a URL: ``sqlite:///path``, ``postgresql://...`` or ``jsonl:///path``.

    Args:
        url: The sink URL; ``None`` means SQLite at ``<data_dir>/audit.db``.
        data_dir: The service's data directory.
        timeout: Write and lock timeout in seconds.

    Raises:
        ConfigurationError: Unknown scheme.
    """
    if url is None:
        return SqliteAuditSink(Path(data_dir) / "audit.db", timeout=timeout)
    if url.startswith("sqlite:///"):
        return SqliteAuditSink(url.removeprefix("sqlite:///"), timeout=timeout)
    if url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        return PostgresAuditSink(url, timeout=timeout)
    if url.startswith("jsonl://"):
        return JsonLinesAuditSink(url.removeprefix("jsonl://"), timeout=timeout)
    raise ConfigurationError("audit URL must start with sqlite:///, postgresql:// or jsonl://")
