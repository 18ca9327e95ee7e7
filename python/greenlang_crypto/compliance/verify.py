"""`greenlang-crypto verify`: a compliance report whose every control is checked for real.

Controls map to SOC 2 (CC6.1, CC6.6, CC6.7, CC7.2), ISO/IEC 27001:2022 A.8.24 (with the 2013
numbering A.10.1.1 and A.10.1.2) and GDPR Art. 32(1)(a). Each check reads the live system: the
service configuration and keyring, KMS key rotation status as reported by KMS, the values in
the database columns declared encrypted, the Terraform module, and the audit chain.

A control that cannot be evaluated (no database given, no Terraform module) is skipped, and
a skipped control fails the run unless the caller allowed it by name: a report that checked
less than it lists must not read as a pass.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from greenlang_crypto._core import FORMAT_VERSION, parse_envelope
from greenlang_crypto.exceptions import GreenlangCryptoError

__all__ = [
    "ColumnSpec",
    "ControlResult",
    "Report",
    "check_rotation_policy",
    "run_verification",
]

#: Framework references per control id.
FRAMEWORKS: dict[str, list[str]] = {
    "crypto.algorithm": [
        "SOC2 CC6.1",
        "SOC2 CC6.7",
        "ISO27001:2022 A.8.24",
        "ISO27001:2013 A.10.1.1",
        "GDPR Art.32(1)(a)",
    ],
    "keys.cache_ttl": ["SOC2 CC6.1", "ISO27001:2022 A.8.24", "ISO27001:2013 A.10.1.2"],
    "keys.usage_limit": ["SOC2 CC6.1", "ISO27001:2022 A.8.24", "ISO27001:2013 A.10.1.2"],
    "keys.rotation": ["SOC2 CC6.1", "ISO27001:2022 A.8.24", "ISO27001:2013 A.10.1.2"],
    "keys.rotation_policy": [
        "SOC2 CC6.1",
        "SOC2 CC6.6",
        "ISO27001:2022 A.8.24",
        "ISO27001:2013 A.10.1.2",
    ],
    "keys.provider_health": ["SOC2 CC6.1", "SOC2 CC7.2"],
    "data.columns_encrypted": [
        "SOC2 CC6.1",
        "SOC2 CC6.7",
        "ISO27001:2022 A.8.24",
        "GDPR Art.32(1)(a)",
    ],
    "infra.kms_rotation": ["SOC2 CC6.1", "ISO27001:2022 A.8.24", "ISO27001:2013 A.10.1.2"],
    "infra.deletion_window": ["SOC2 CC6.1", "ISO27001:2013 A.10.1.2"],
    "infra.multi_region": ["SOC2 CC6.1", "SOC2 CC7.2"],
    "infra.alarms": ["SOC2 CC7.2", "SOC2 CC6.6"],
    "audit.chain": ["SOC2 CC7.2", "ISO27001:2022 A.8.24", "GDPR Art.32(1)(d)"],
}


@dataclass(frozen=True, slots=True)
class ControlResult:
    """The outcome of one control.

    Attributes:
        control: Control id (see :data:`FRAMEWORKS`).
        status: ``pass``, ``fail`` or ``skipped`` (not evaluated, with the reason).
        detail: What was checked and found (never secrets or plaintext values).
        frameworks: The framework references the control supports.
        evidence: Machine-readable findings (for example the ids of plaintext rows).
    """

    control: str
    status: str
    detail: str
    frameworks: list[str]
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Report:
    """A whole verification run.

    Attributes:
        generated_at: When it ran (seconds since the epoch).
        results: One result per control.
        allowed_skips: Controls that may be skipped without failing the run.
    """

    generated_at: float
    results: list[ControlResult]
    allowed_skips: frozenset[str] = frozenset()

    @property
    def failed(self) -> list[ControlResult]:
        """Controls that failed."""
        return [r for r in self.results if r.status == "fail"]

    @property
    def unallowed_skips(self) -> list[ControlResult]:
        """Controls skipped without being allowed to be: the run is incomplete."""
        return [
            r for r in self.results if r.status == "skipped" and r.control not in self.allowed_skips
        ]

    @property
    def ok(self) -> bool:
        """Whether every control passed or was skipped with permission."""
        return not self.failed and not self.unallowed_skips

    def to_json(self) -> str:
        """The report as JSON (stable key order)."""
        summary: dict[str, Any] = {
            s: sum(1 for r in self.results if r.status == s) for s in ("pass", "fail", "skipped")
        }
        summary["skipped_not_allowed"] = [r.control for r in self.unallowed_skips]
        summary["ok"] = self.ok
        doc = {
            "generated_at": self.generated_at,
            "summary": summary,
            "controls": [asdict(r) for r in self.results],
        }
        return json.dumps(doc, indent=2, sort_keys=True)

    def to_text(self) -> str:
        """A human-readable report."""
        lines = ["greenlang-crypto compliance verification", ""]
        for r in self.results:
            lines.append(f"[{r.status.upper():7}] {r.control:<24} {r.detail}")
            lines.append(f"          {', '.join(r.frameworks)}")
        counts = {
            s: sum(1 for r in self.results if r.status == s) for s in ("pass", "fail", "skipped")
        }
        lines += [
            "",
            f"{counts['pass']} passed, {counts['fail']} failed, {counts['skipped']} skipped",
        ]
        unallowed = [r.control for r in self.unallowed_skips]
        if unallowed:
            lines.append(
                f"incomplete: {', '.join(unallowed)} skipped without --allow-skip (each one "
                "allowed by name, or given what it needs, makes the run complete)"
            )
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """A database column declared encrypted: ``schema.table.column`` with its primary key."""

    table: str
    column: str
    pk: str = "id"

    @classmethod
    def parse(cls, spec: str) -> ColumnSpec:
        """Parses ``table.column`` or ``schema.table.column``, optionally ``:pk``."""
        name, _, pk = spec.partition(":")
        table, dot, column = name.rpartition(".")
        if not dot or not table or not column:
            raise GreenlangCryptoError(
                f"column spec must be [schema.]table.column[:pk], got {spec!r}"
            )
        return cls(table=table, column=column, pk=pk or "id")


def _result(control: str, ok: bool | None, detail: str, **evidence: Any) -> ControlResult:
    status = "skipped" if ok is None else ("pass" if ok else "fail")
    return ControlResult(control, status, detail, FRAMEWORKS[control], evidence)


def check_service(service: Any) -> list[ControlResult]:
    """Configuration, keyring and KMS rotation status."""
    cfg = service.config
    out = [
        _result(
            "crypto.algorithm",
            FORMAT_VERSION == 2 and service.envelope_format == 2,
            f"envelopes are written in format v{service.envelope_format}: AES-256-GCM with "
            "96-bit random nonces and 128-bit tags"
            + (
                ", every envelope committed to its key, the AES key derived from the DEK"
                if service.envelope_format == 2
                else "; v1 is kept by commitment_policy=forbid_encrypt_allow_decrypt, "
                "without key commitment on stored and branch references"
            )
            + f" (commitment policy {cfg.commitment_policy}); no other algorithm is accepted",
            commitment_policy=cfg.commitment_policy,
        ),
        _result(
            "keys.cache_ttl",
            cfg.cache_ttl_seconds <= 300,
            f"DEK cache TTL is {cfg.cache_ttl_seconds:g} s (policy: at most 300 s)",
            ttl_seconds=cfg.cache_ttl_seconds,
        ),
        _result(
            "keys.usage_limit",
            cfg.max_messages_per_dek <= 2**32,
            f"at most {cfg.max_messages_per_dek} messages per DEK (SP 800-38D cap 2^32)",
        ),
    ]
    health = service.provider_health()
    out.append(
        _result(
            "keys.provider_health", bool(health.ok), f"{service.provider_name}: {health.detail}"
        )
    )
    keys = {v.wrapping_key_id for v in service.versions() if v.state in ("primary", "active")}
    findings: dict[str, Any] = {}
    reported = True
    ok = True
    for key_id in sorted(keys):
        try:
            status = service.rotation_status(key_id)
        except GreenlangCryptoError as exc:
            findings[key_id] = f"error: {type(exc).__name__}"
            ok = False
            continue
        if status is None:  # the provider keeps no rotation record (the local provider)
            reported = False
            break
        enabled = bool(status.get("rotation_enabled"))
        findings[key_id] = {"enabled": enabled, "period_days": status.get("rotation_period_days")}
        ok = ok and enabled
    if reported:
        out.append(
            _result(
                "keys.rotation",
                ok,
                "automatic rotation enabled on every active KMS key (as reported by KMS)"
                if ok
                else "automatic rotation is off (or unreadable) on an active KMS key",
                keys=findings,
            )
        )
    else:
        versions = service.versions()
        primary = next(v for v in versions if v.state == "primary")
        age_days = (time.time() - primary.created_at) / 86400
        out.append(
            _result(
                "keys.rotation",
                age_days <= 365,
                f"local primary key version {primary.version} is {age_days:.0f} days old "
                "(policy: rotate at least yearly)",
                primary_version=primary.version,
            )
        )
    out.append(check_rotation_policy(service))
    return out


_POLICY_FIELDS = (
    "rotation_period_seconds",
    "reencrypt_within_seconds",
    "retire_after_seconds",
    "index_rotation_period_seconds",
    "branch_rotation_period_seconds",
)


def check_rotation_policy(service: Any, now: float | None = None) -> ControlResult:
    """The rotation policy of the configuration, and whether the primary key is overdue.

    Passes with the policy's settings when the primary key version is younger than
    ``rotation_period_seconds``; fails when it is older (the autopilot should have rotated).
    With no policy (``rotation_period_seconds`` unset or 0) it passes and says so: rotation is
    then by hand, and ``keys.rotation`` holds the yearly check.

    Args:
        service: The EncryptionService (its ``config`` and ``versions()``).
        now: The time to measure ages at (UNIX seconds; default: now).
    """
    cfg = service.config
    policy = {name: getattr(cfg, name, None) for name in _POLICY_FIELDS}
    period = policy["rotation_period_seconds"]
    at = time.time() if now is None else now
    # Blind-index and branch keys have periods of their own; the service's schedule says
    # whether either is overdue (a stand-in without one has neither).
    schedule = getattr(service, "rotation_schedule", None)
    others = (
        [o for o in schedule(now=at).overdue if not o.startswith("rotation of key version")]
        if schedule is not None
        else []
    )
    if not period:
        return _result(
            "keys.rotation_policy",
            not others,
            "no rotation policy for data keys (rotation_period_seconds unset): they are "
            "rotated by hand, see keys.rotation" + "".join(f"; {o}" for o in others),
            policy=policy,
            overdue=others,
        )
    versions = list(service.versions())
    primary = next(v for v in versions if v.state == "primary")
    age = max(0.0, at - primary.created_at)
    due = primary.created_at + period
    waiting = sorted(
        v.version
        for v in versions
        if v.state in ("active", "decrypt_only") and v.version < primary.version
    )
    late = age > period
    overdue = late or bool(others)
    detail = (
        f"rotation policy: rotate every {period:g} s"
        + (
            f", re-encrypt within {policy['reencrypt_within_seconds']:g} s"
            if policy["reencrypt_within_seconds"]
            else ""
        )
        + (
            f", retire after {policy['retire_after_seconds']:g} s"
            if policy["retire_after_seconds"]
            else ", no automatic retirement"
        )
        + f"; primary key version {primary.version} is {age:.0f} s old"
        + (f", overdue by {age - period:.0f} s" if late else f", next rotation in {due - at:.0f} s")
        + "".join(f"; {o}" for o in others)
    )
    return _result(
        "keys.rotation_policy",
        not overdue,
        detail,
        policy=policy,
        primary_version=primary.version,
        primary_age_seconds=round(age, 3),
        next_rotation_at=due,
        older_versions_decrypting=waiting,
        overdue=others,
    )


def check_columns(db_url: str, columns: Sequence[ColumnSpec], limit: int = 100) -> ControlResult:
    """Checks that declared columns hold only NULL or valid envelopes.

    Every value is read and checked, so the plaintext count is exact; ``limit`` bounds only
    the row ids listed as evidence (the first ones in primary-key order, per column). The
    values travel on a DBAPI cursor of their own, never through SQLAlchemy's result
    objects, whose DEBUG logging prints every row read (plaintext, here, by definition).
    On PostgreSQL the counts and the scan share one snapshot (REPEATABLE READ, read only),
    so a row counted is a row checked.
    """
    if not columns:
        return _result("data.columns_encrypted", None, "no columns declared (use --column)")
    from sqlalchemy import create_engine

    engine = create_engine(
        db_url.replace("postgresql://", "postgresql+psycopg://", 1), hide_parameters=True
    )
    counts: dict[str, int] = {}
    samples: dict[str, list[str]] = {}
    scanned = 0
    mismatched: list[str] = []
    try:
        # Connecting through SQLAlchemy types a refused connection as it always did; the
        # statements then run on its DBAPI connection, their driver errors typed alike.
        with engine.connect() as conn, _typed_driver_errors(engine):
            raw = conn.connection
            postgres = engine.dialect.name == "postgresql"
            # Named cursors (streamed from the server) are what the psycopg drivers offer.
            server_side = engine.dialect.driver in ("psycopg", "psycopg2")
            if postgres:
                with contextlib.closing(raw.cursor()) as cur:
                    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            for number, spec in enumerate(columns):
                name = f"{spec.table}.{spec.column}"
                total, values, bad, ids = _scan_column(raw, spec, number, server_side, limit)
                scanned += total
                if values != _count_values(raw, spec):
                    mismatched.append(name)
                if bad:
                    counts[name] = bad
                    samples[name] = ids
            # Closing the connection rolls the read-only transaction back.
    finally:
        engine.dispose()
    n_bad = sum(counts.values())
    detail = f"scanned {scanned} values in {len(columns)} column(s): " + (
        "all NULL or valid envelopes"
        if n_bad == 0
        else f"{n_bad} plaintext value(s) found (the ids of up to {limit} per column listed)"
    )
    if mismatched:
        detail += f"; {', '.join(mismatched)} changed during the scan (run it again)"
    return _result(
        "data.columns_encrypted",
        n_bad == 0 and not mismatched,
        detail,
        plaintext_rows=samples,
        plaintext_counts=counts,
    )


@contextlib.contextmanager
def _typed_driver_errors(engine: Any) -> Iterator[None]:
    """Raises a driver's own error as SQLAlchemy's matching ``DBAPIError`` (no parameters).

    The CLI maps SQLAlchemy's errors (an outage, a refused statement); a statement run on
    the DBAPI cursor would otherwise surface the driver's class instead.
    """
    from sqlalchemy.exc import DBAPIError

    base = engine.dialect.loaded_dbapi.Error
    try:
        yield
    except base as exc:
        raise DBAPIError.instance(
            None, None, exc, base, hide_parameters=True, dialect=engine.dialect
        ) from exc


def _scan_column(
    raw: Any, spec: ColumnSpec, number: int, server_side: bool, limit: int
) -> tuple[int, int, int, list[str]]:
    """Reads one column: rows, non-NULL values, plaintext values, and sampled plaintext ids.

    With ``server_side`` a named cursor streams the rows in batches, so memory stays one
    batch whatever the table's size.
    """
    table, pk, column = _ident(spec.table), _ident(spec.pk), _ident(spec.column)
    sql = f"SELECT {pk}, {column} FROM {table} ORDER BY {pk}"  # noqa: S608
    cursor = raw.cursor(f"glc_verify_{number}") if server_side else raw.cursor()
    rows = values = bad = 0
    ids: list[str] = []
    with contextlib.closing(cursor) as cur:
        cur.execute(sql)
        while True:
            batch = cur.fetchmany(_SCAN_BATCH)
            if not batch:
                break
            for row_id, value in batch:
                rows += 1
                if value is None:
                    continue
                values += 1
                if not _is_envelope(value):
                    bad += 1
                    if len(ids) < limit:
                        ids.append(str(row_id))
    return rows, values, bad, ids


def _count_values(raw: Any, spec: ColumnSpec) -> int:
    """``count(column)``: the non-NULL values the database holds (in the scan's snapshot)."""
    sql = f"SELECT count({_ident(spec.column)}) FROM {_ident(spec.table)}"  # noqa: S608
    with contextlib.closing(raw.cursor()) as cur:
        cur.execute(sql)
        row = cur.fetchone()
    return int(row[0]) if row else 0


#: Rows fetched per round trip when scanning a column.
_SCAN_BATCH = 2000


def _ident(name: str) -> str:
    parts = name.split(".")
    for p in parts:
        if not p.replace("_", "").isalnum():
            raise GreenlangCryptoError(f"invalid SQL identifier {name!r}")
    return ".".join(f'"{p}"' for p in parts)


def _is_envelope(value: Any) -> bool:
    data = bytes(value) if isinstance(value, bytes | bytearray | memoryview) else None
    if data is None:
        return False
    try:
        parse_envelope(data)
    except GreenlangCryptoError:
        return False
    return True


def check_terraform(module_dir: Path) -> list[ControlResult]:
    """Rotation, deletion window, multi-region and alarms in the KMS Terraform module."""
    try:
        import hcl2
    except ImportError:
        reason = "python-hcl2 is not installed (pip install python-hcl2)"
        return [
            _result(c, None, reason)
            for c in (
                "infra.kms_rotation",
                "infra.deletion_window",
                "infra.multi_region",
                "infra.alarms",
            )
        ]
    if not module_dir.is_dir():
        reason = f"no Terraform module at {module_dir}"
        return [
            _result(c, None, reason)
            for c in (
                "infra.kms_rotation",
                "infra.deletion_window",
                "infra.multi_region",
                "infra.alarms",
            )
        ]
    resources: list[tuple[str, str, dict[str, Any]]] = []
    variables: dict[str, dict[str, Any]] = {}
    for tf in sorted(module_dir.glob("*.tf")):
        doc = _load_hcl(hcl2, tf)
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                for name, body in named.items():
                    resources.append((rtype, name, body))
        for block in doc.get("variable", []):
            for name, body in block.items():
                variables[name] = body
    keys = [(n, b) for t, n, b in resources if t == "aws_kms_key"]
    rotation_off = [n for n, b in keys if str(b.get("enable_key_rotation")).lower() != "true"]
    window = variables.get("deletion_window_in_days", {})
    default = window.get("default")
    validations = json.dumps(window.get("validation", []))
    window_ok = default == 30 and "7" in validations and "30" in validations
    multi = [n for n, b in keys if "multi_region" in b]
    replicas = [n for t, n, _ in resources if t == "aws_kms_replica_key"]
    alarms = [n for t, n, _ in resources if t == "aws_cloudwatch_metric_alarm"]
    return [
        _result(
            "infra.kms_rotation",
            bool(keys) and not rotation_off,
            f"{len(keys)} KMS key resource(s); rotation off on: {rotation_off or 'none'}",
            keys=[n for n, _ in keys],
        ),
        _result(
            "infra.deletion_window",
            window_ok,
            f"deletion_window_in_days default {default}, validated to 7-30: {window_ok}",
        ),
        _result(
            "infra.multi_region",
            bool(multi) and bool(replicas),
            f"multi_region set on {len(multi)} key(s); {len(replicas)} replica resource(s)",
        ),
        _result(
            "infra.alarms",
            len(alarms) >= 3,
            f"{len(alarms)} CloudWatch alarm(s) for KMS anomalies",
            alarms=alarms,
        ),
    ]


def _load_hcl(hcl2: Any, path: Path) -> dict[str, Any]:
    text = path.read_text()
    try:
        from hcl2 import SerializationOptions  # python-hcl2 >= 8

        opts = SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
        return dict(hcl2.loads(text, serialization_options=opts))
    except ImportError:
        return dict(hcl2.loads(text))


def check_audit(verify: Callable[[], Any] | None) -> ControlResult:
    """Runs the audit chain verification, if an audit log is configured."""
    if verify is None:
        return _result("audit.chain", None, "no audit log configured")
    try:
        outcome = verify()
    except GreenlangCryptoError as exc:
        return _result("audit.chain", False, f"audit verification failed: {type(exc).__name__}")
    ok = bool(getattr(outcome, "ok", outcome))
    detail = str(getattr(outcome, "detail", "chain verified" if ok else "chain broken"))
    return _result("audit.chain", ok, detail)


def run_verification(
    service: Any,
    *,
    db_url: str | None = None,
    columns: Sequence[ColumnSpec] = (),
    terraform_dir: Path | None = None,
    audit_verify: Callable[[], Any] | None = None,
    allow_skip: Iterable[str] = (),
) -> Report:
    """Runs every control and returns the report (the CLI exits non-zero unless ``ok``).

    Args:
        service: The service whose configuration and keys are checked.
        db_url: The database holding ``columns``.
        columns: The columns declared encrypted.
        terraform_dir: The KMS Terraform module (default ``terraform/modules/kms``).
        audit_verify: Verifies the audit log (see ``check_audit``).
        allow_skip: Controls that may be skipped without making the report incomplete.

    Raises:
        GreenlangCryptoError: ``allow_skip`` names an unknown control.
    """
    allowed = frozenset(allow_skip)
    unknown = sorted(allowed - set(FRAMEWORKS))
    if unknown:
        raise GreenlangCryptoError(f"unknown control(s) {', '.join(unknown)}")
    results = check_service(service)
    if db_url:
        results.append(check_columns(db_url, columns))
    else:
        results.append(_result("data.columns_encrypted", None, "no database given (use --db)"))
    results += check_terraform(terraform_dir or Path("terraform/modules/kms"))
    results.append(check_audit(audit_verify))
    return Report(generated_at=time.time(), results=results, allowed_skips=allowed)
