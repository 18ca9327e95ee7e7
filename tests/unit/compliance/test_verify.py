"""The compliance controls without PostgreSQL or KMS: a local service, SQLite columns, the
repository's Terraform module and the report's own rules.

The same run against PostgreSQL, the moto KMS server and the CLI is in
``tests/integration/compliance/test_verify.py``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from greenlang_crypto import EncryptionContext
from greenlang_crypto.compliance import verify
from greenlang_crypto.compliance.verify import (
    FRAMEWORKS,
    ColumnSpec,
    ControlResult,
    Report,
    check_audit,
    check_columns,
    check_rotation_policy,
    check_service,
    check_terraform,
    run_verification,
)
from greenlang_crypto.exceptions import AuditSinkUnavailableError, GreenlangCryptoError
from greenlang_crypto.service import EncryptionService

ROOT = Path(__file__).resolve().parents[3]
KMS_MODULE = ROOT / "terraform" / "modules" / "kms"
CTX = EncryptionContext(tenant_id="acme", data_class="pii")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncryptionService]:
    svc = EncryptionService.init_local(tmp_path_factory.mktemp("verify-keys"))
    yield svc
    svc.close()


def by_control(results: list[ControlResult]) -> dict[str, ControlResult]:
    return {r.control: r for r in results}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("users.email", ColumnSpec("users", "email", "id")),
        ("app.users.email", ColumnSpec("app.users", "email", "id")),
        ("users.email:user_id", ColumnSpec("users", "email", "user_id")),
        ("users.email:", ColumnSpec("users", "email", "id")),
    ],
)
def test_a_column_spec_is_parsed(spec: str, expected: ColumnSpec) -> None:
    assert ColumnSpec.parse(spec) == expected


@pytest.mark.parametrize("spec", ["email", ".email", "users.", "", ":id"])
def test_a_column_spec_without_table_and_column_is_refused(spec: str) -> None:
    with pytest.raises(GreenlangCryptoError, match=r"\[schema.\]table.column\[:pk\]"):
        ColumnSpec.parse(spec)


def test_identifiers_are_quoted_and_anything_else_refused() -> None:
    assert verify._ident("app.user_accounts") == '"app"."user_accounts"'
    for bad in ('users"; DROP TABLE x; --', "a b", "a-b", "users.", ""):
        with pytest.raises(GreenlangCryptoError, match="invalid SQL identifier"):
            verify._ident(bad)


def test_only_well_formed_envelopes_count_as_encrypted(service: EncryptionService) -> None:
    sealed = service.encrypt(b"alice@example.com", CTX)
    assert verify._is_envelope(sealed) is True
    assert verify._is_envelope(memoryview(sealed)) is True
    assert verify._is_envelope(b"alice@example.com") is False
    assert verify._is_envelope(sealed[:10]) is False
    assert verify._is_envelope(sealed.hex()) is False  # text, even if it holds an envelope


def _result(control: str, status: str) -> ControlResult:
    return ControlResult(control, status, f"{control} detail", FRAMEWORKS[control])


def test_a_report_passes_only_without_failures_or_unallowed_skips() -> None:
    passing = Report(1.0, [_result("crypto.algorithm", "pass")])
    assert passing.ok and passing.failed == [] and passing.unallowed_skips == []
    failing = Report(1.0, [_result("crypto.algorithm", "fail")])
    assert not failing.ok and [r.control for r in failing.failed] == ["crypto.algorithm"]
    skipped = [_result("crypto.algorithm", "pass"), _result("audit.chain", "skipped")]
    assert not Report(1.0, skipped).ok
    assert Report(1.0, skipped, allowed_skips=frozenset({"audit.chain"})).ok


def test_the_json_report_summarizes_and_lists_every_control() -> None:
    report = Report(
        42.0,
        [
            _result("crypto.algorithm", "pass"),
            _result("keys.rotation", "fail"),
            _result("audit.chain", "skipped"),
            _result("infra.alarms", "skipped"),
        ],
        allowed_skips=frozenset({"infra.alarms"}),
    )
    doc = json.loads(report.to_json())
    assert doc["generated_at"] == 42.0
    assert doc["summary"] == {
        "pass": 1,
        "fail": 1,
        "skipped": 2,
        "skipped_not_allowed": ["audit.chain"],
        "ok": False,
    }
    assert [c["control"] for c in doc["controls"]] == [
        "crypto.algorithm",
        "keys.rotation",
        "audit.chain",
        "infra.alarms",
    ]
    assert doc["controls"][0]["frameworks"] == FRAMEWORKS["crypto.algorithm"]


def test_the_text_report_names_each_status_and_what_made_it_incomplete() -> None:
    text = Report(
        0.0, [_result("crypto.algorithm", "pass"), _result("audit.chain", "skipped")]
    ).to_text()
    assert "[PASS   ] crypto.algorithm" in text
    assert "[SKIPPED] audit.chain" in text
    assert "1 passed, 0 failed, 1 skipped" in text
    assert "incomplete: audit.chain skipped without --allow-skip" in text
    complete = Report(0.0, [_result("crypto.algorithm", "pass")]).to_text()
    assert "incomplete" not in complete


def test_the_service_controls_of_a_fresh_local_service_pass(service: EncryptionService) -> None:
    results = by_control(check_service(service))
    assert set(results) == {
        "crypto.algorithm",
        "keys.cache_ttl",
        "keys.usage_limit",
        "keys.provider_health",
        "keys.rotation",
        "keys.rotation_policy",
    }
    assert {r.status for r in results.values()} == {"pass"}
    assert results["keys.rotation"].detail.startswith("local primary key version 1 is 0 days old")
    assert results["keys.cache_ttl"].evidence == {"ttl_seconds": service.config.cache_ttl_seconds}


def _fake_service(**overrides: Any) -> Any:
    versions = [SimpleNamespace(version=1, state="primary", wrapping_key_id="arn:k1", created_at=0)]
    fields: dict[str, Any] = {
        "config": SimpleNamespace(
            cache_ttl_seconds=300,
            max_messages_per_dek=2**32,
            commitment_policy="require_encrypt_allow_decrypt",
            rotation_period_seconds=None,
            reencrypt_within_seconds=None,
            retire_after_seconds=None,
            index_rotation_period_seconds=None,
        ),
        "envelope_format": 2,
        "provider_name": "aws-kms",
        "provider_health": lambda: SimpleNamespace(ok=True, detail="kms ok"),
        "versions": lambda: versions,
        "rotation_status": lambda key_id: {"rotation_enabled": True, "rotation_period_days": 90},
    }
    fields.update(overrides)
    return SimpleNamespace(**fields)


def test_kms_rotation_is_read_from_the_provider_for_every_active_key() -> None:
    results = by_control(check_service(_fake_service()))
    assert results["keys.rotation"].status == "pass"
    assert results["keys.rotation"].evidence == {
        "keys": {"arn:k1": {"enabled": True, "period_days": 90}}
    }
    off = by_control(
        check_service(_fake_service(rotation_status=lambda key_id: {"rotation_enabled": False}))
    )
    assert off["keys.rotation"].status == "fail"

    def unreadable(key_id: str) -> Any:
        raise AuditSinkUnavailableError("x")

    broken = by_control(check_service(_fake_service(rotation_status=unreadable)))
    assert broken["keys.rotation"].status == "fail"
    assert broken["keys.rotation"].evidence["keys"] == {
        "arn:k1": "error: AuditSinkUnavailableError"
    }


def test_a_long_cache_ttl_too_many_messages_or_a_down_provider_fail() -> None:
    results = by_control(
        check_service(
            _fake_service(
                config=SimpleNamespace(
                    cache_ttl_seconds=301,
                    max_messages_per_dek=2**32 + 1,
                    commitment_policy="forbid_encrypt_allow_decrypt",
                    rotation_period_seconds=None,
                    reencrypt_within_seconds=None,
                    retire_after_seconds=None,
                    index_rotation_period_seconds=None,
                ),
                envelope_format=1,
                provider_health=lambda: SimpleNamespace(ok=False, detail="kms unavailable"),
            )
        )
    )
    assert results["keys.cache_ttl"].status == "fail"
    assert results["keys.usage_limit"].status == "fail"
    assert results["keys.provider_health"].status == "fail"
    # Writing envelope format v1 (no key commitment on stored references) fails too.
    assert results["crypto.algorithm"].status == "fail"
    assert results["crypto.algorithm"].evidence == {
        "commitment_policy": "forbid_encrypt_allow_decrypt"
    }
    assert results["keys.provider_health"].detail == "aws-kms: kms unavailable"


@pytest.fixture
def users_db(tmp_path: Path, service: EncryptionService) -> str:
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email BLOB, note BLOB)")
    for i in range(1, 21):
        value = service.encrypt(f"user{i}@example.com".encode(), CTX)
        conn.execute("INSERT INTO users VALUES (?, ?, ?)", (i, value, None))
    conn.commit()
    conn.close()
    return f"sqlite:///{db}"


def test_columns_holding_only_envelopes_or_null_pass(users_db: str) -> None:
    result = check_columns(users_db, [ColumnSpec("users", "email"), ColumnSpec("users", "note")])
    assert result.status == "pass"
    assert result.detail == "scanned 40 values in 2 column(s): all NULL or valid envelopes"
    assert result.evidence == {"plaintext_rows": {}, "plaintext_counts": {}}


def test_every_plaintext_value_is_counted_and_the_first_ids_listed(users_db: str) -> None:
    conn = sqlite3.connect(users_db.removeprefix("sqlite:///"))
    conn.executemany(
        "UPDATE users SET email = ? WHERE id = ?", [(b"bob@example.org", i) for i in (3, 7, 11, 19)]
    )
    conn.commit()
    conn.close()
    result = check_columns(users_db, [ColumnSpec("users", "email")], limit=2)
    assert result.status == "fail"
    assert result.evidence == {
        "plaintext_rows": {"users.email": ["3", "7"]},
        "plaintext_counts": {"users.email": 4},
    }
    assert "4 plaintext value(s) found" in result.detail
    assert "bob@example.org" not in json.dumps(result.evidence) + result.detail


def test_no_declared_columns_is_a_skip(users_db: str) -> None:
    assert check_columns(users_db, []).status == "skipped"


@pytest.fixture
def terraform_parser() -> None:
    """The Terraform checks need python-hcl2 and the repository's module beside the tests.

    The test command installs python-hcl2 (scripts/install_infra_tools.sh); it is not a
    dependency of the package. The wheel install check copies the tests without the package
    or the Terraform module, and without that tool.
    """
    pytest.importorskip("hcl2")
    if not KMS_MODULE.is_dir():
        pytest.skip("the repository's Terraform module is not beside these tests")


@pytest.mark.usefixtures("terraform_parser")
def test_the_repository_terraform_module_passes_every_infra_control() -> None:
    results = by_control(check_terraform(KMS_MODULE))
    assert {c: r.status for c, r in results.items()} == {
        "infra.kms_rotation": "pass",
        "infra.deletion_window": "pass",
        "infra.multi_region": "pass",
        "infra.alarms": "pass",
    }


@pytest.mark.usefixtures("terraform_parser")
def test_a_missing_module_skips_and_a_weak_one_fails(tmp_path: Path) -> None:
    assert {r.status for r in check_terraform(tmp_path / "none")} == {"skipped"}
    (tmp_path / "main.tf").write_text(
        'resource "aws_kms_key" "main" {\n'
        "  enable_key_rotation = false\n"
        "}\n"
        'variable "deletion_window_in_days" {\n'
        "  default = 7\n"
        "}\n"
    )
    results = by_control(check_terraform(tmp_path))
    assert {c: r.status for c, r in results.items()} == {
        "infra.kms_rotation": "fail",
        "infra.deletion_window": "fail",
        "infra.multi_region": "fail",
        "infra.alarms": "fail",
    }
    assert "rotation off on: ['main']" in results["infra.kms_rotation"].detail


def test_the_audit_control_reports_what_verification_found() -> None:
    assert check_audit(None).status == "skipped"
    assert check_audit(lambda: SimpleNamespace(ok=True, detail="120 records")).detail == (
        "120 records"
    )
    broken = check_audit(lambda: SimpleNamespace(ok=False, detail="gap after seq 9"))
    assert (broken.status, broken.detail) == ("fail", "gap after seq 9")
    assert check_audit(lambda: True).detail == "chain verified"
    assert check_audit(lambda: False).status == "fail"

    def unavailable() -> Any:
        raise AuditSinkUnavailableError("disk full at /var/secret")

    failed = check_audit(unavailable)
    assert failed.status == "fail"
    assert failed.detail == "audit verification failed: AuditSinkUnavailableError"


@pytest.mark.usefixtures("terraform_parser")
def test_a_run_is_incomplete_until_each_skip_is_allowed_by_name(
    service: EncryptionService, users_db: str, tmp_path: Path
) -> None:
    report = run_verification(service, terraform_dir=tmp_path / "none")
    skipped = sorted(r.control for r in report.unallowed_skips)
    assert skipped == [
        "audit.chain",
        "data.columns_encrypted",
        "infra.alarms",
        "infra.deletion_window",
        "infra.kms_rotation",
        "infra.multi_region",
    ]
    assert not report.ok
    complete = run_verification(
        service,
        db_url=users_db,
        columns=[ColumnSpec("users", "email")],
        terraform_dir=KMS_MODULE,
        audit_verify=lambda: True,
    )
    assert complete.ok, complete.to_text()
    assert run_verification(service, terraform_dir=tmp_path / "none", allow_skip=skipped).ok


def test_allowing_an_unknown_control_is_an_error(service: EncryptionService) -> None:
    with pytest.raises(GreenlangCryptoError, match="unknown control"):
        run_verification(service, allow_skip=["keys.rotaton"])


def _policy(period: float | None, **more: Any) -> Any:
    return SimpleNamespace(
        cache_ttl_seconds=300,
        max_messages_per_dek=2**32,
        commitment_policy="require_encrypt_allow_decrypt",
        rotation_period_seconds=period,
        reencrypt_within_seconds=more.get("within"),
        retire_after_seconds=more.get("retire"),
        index_rotation_period_seconds=None,
    )


def _versions(*spec: tuple[int, str, float]) -> Any:
    made = [
        SimpleNamespace(version=v, state=state, wrapping_key_id="arn:k1", created_at=at)
        for v, state, at in spec
    ]
    return lambda: made


@pytest.mark.parametrize("period", [None, 0])
def test_no_rotation_policy_passes_and_says_rotation_is_by_hand(period: float | None) -> None:
    result = check_rotation_policy(_fake_service(config=_policy(period)), now=10**9)
    assert result.status == "pass"
    assert "no rotation policy for data keys" in result.detail
    assert result.evidence["policy"]["rotation_period_seconds"] == period
    assert set(FRAMEWORKS["keys.rotation_policy"]) >= {"SOC2 CC6.6", "ISO27001:2022 A.8.24"}


def test_a_primary_younger_than_the_period_passes_with_the_policy_and_next_due_date() -> None:
    svc = _fake_service(
        config=_policy(86400, within=3600, retire=7200),
        versions=_versions((1, "decrypt_only", 0), (2, "primary", 1000)),
    )
    result = check_rotation_policy(svc, now=1000 + 86000)
    assert result.status == "pass"
    assert result.detail == (
        "rotation policy: rotate every 86400 s, re-encrypt within 3600 s, retire after 7200 s; "
        "primary key version 2 is 86000 s old, next rotation in 400 s"
    )
    assert result.evidence["next_rotation_at"] == 1000 + 86400
    assert result.evidence["older_versions_decrypting"] == [1]
    assert result.evidence["policy"]["retire_after_seconds"] == 7200


def test_a_primary_older_than_the_period_fails_as_overdue() -> None:
    svc = _fake_service(
        config=_policy(86400), versions=_versions((1, "retired", 0), (2, "primary", 1000))
    )
    result = check_rotation_policy(svc, now=1000 + 86400 + 30)
    assert result.status == "fail"
    assert "overdue by 30 s" in result.detail and "no automatic retirement" in result.detail
    assert result.evidence["older_versions_decrypting"] == []
    # And through check_service, as `verify` runs it (ages measured on the real clock).
    by = by_control(check_service(svc))
    assert by["keys.rotation_policy"].status == "fail"


def test_a_real_service_with_a_policy_reports_it(tmp_path: Path) -> None:
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.providers.local import LocalKeyProvider

    LocalKeyProvider(tmp_path).create_master_key()
    svc = EncryptionService(
        EncryptionServiceConfig(data_dir=tmp_path, rotation_period_seconds=3600)
    )
    try:
        fresh = check_rotation_policy(svc)
        assert fresh.status == "pass" and fresh.evidence["primary_version"] == 1
        late = check_rotation_policy(svc, now=svc.primary_key_created_at + 3601)
        assert late.status == "fail"
        svc.rotate()
        assert check_rotation_policy(svc, now=svc.primary_key_created_at + 10).status == "pass"
    finally:
        svc.close()


def test_an_overdue_blind_index_key_fails_the_policy_even_without_a_data_key_period(
    tmp_path: Path,
) -> None:
    from greenlang_crypto.config import EncryptionServiceConfig
    from greenlang_crypto.providers.local import LocalKeyProvider

    LocalKeyProvider(tmp_path).create_master_key()
    svc = EncryptionService(
        EncryptionServiceConfig(data_dir=tmp_path, index_rotation_period_seconds=600)
    )
    try:
        svc.blind_index_key("users.email")  # makes index key version 1
        fresh = check_rotation_policy(svc)
        assert fresh.status == "pass" and fresh.evidence["overdue"] == []
        late = check_rotation_policy(svc, now=time.time() + 601)
        assert late.status == "fail"
        assert "rotation of the blind-index key was due" in late.detail
        svc.rotate_index_key()
        assert check_rotation_policy(svc, now=time.time() + 10).status == "pass"
    finally:
        svc.close()
