"""Static checks of terraform/modules/kms and terraform/examples/platform.

Terraform cannot download providers here, so the module is checked by parsing
every ``.tf`` file with python-hcl2 and asserting the security properties the
module promises. Each property is a ``check_*`` function that takes the parsed
model and returns a list of problems; the tests run every check on the real
files (no problems expected) and on deliberately broken copies (problems
expected), so a check that could never fail would be caught.
"""

from __future__ import annotations

import copy
import fnmatch
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    import hcl2
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise
    pytest.skip(
        "python-hcl2 is not installed; run scripts/install_infra_tools.sh",
        allow_module_level=True,
    )

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO_ROOT / "terraform" / "modules" / "kms"
EXAMPLE_DIR = REPO_ROOT / "terraform" / "examples" / "platform"

KEY_PURPOSES = ("master", "database", "storage", "cache", "secrets", "eks", "app")
SERVICE_OF_PURPOSE = {
    "database": "rds",
    "storage": "s3",
    "cache": "elasticache",
    "secrets": "secretsmanager",
    "eks": "eks",
}
# Every action that yields or uses key material. Administrators must hold none.
CRYPTO_ACTIONS = (
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:GenerateDataKeyPair",
    "kms:GenerateDataKeyPairWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
)
APP_CONTEXT_KEYS = ("tenant_id", "data_class")

Model = dict[str, Any]
Check = Callable[..., list[str]]


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def _parse_file(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        options_cls = getattr(hcl2, "SerializationOptions", None)
        if options_cls is None:  # python-hcl2 < 8 already produces this shape
            return hcl2.load(handle)
        options = options_cls(strip_string_quotes=True, explicit_blocks=False)
        return hcl2.load(handle, serialization_options=options)


def load_module(directory: Path) -> Model:
    """Merge every ``.tf`` file of a directory into one model.

    ``resource`` and ``data`` become ``{type: {name: body}}``; ``variable``,
    ``output``, ``module`` and ``locals`` become ``{name: body}``.
    """
    model: Model = {
        "resource": {},
        "data": {},
        "variable": {},
        "output": {},
        "module": {},
        "locals": {},
        "terraform": [],
        "provider": [],
    }
    files = sorted(directory.glob("*.tf"))
    assert files, f"no .tf files in {directory}"
    for path in files:
        parsed = _parse_file(path)
        for block in ("resource", "data"):
            for entry in parsed.get(block, []):
                for rtype, instances in entry.items():
                    for name, body in instances.items():
                        target = model[block].setdefault(rtype, {})
                        assert name not in target, f"duplicate {block} {rtype}.{name}"
                        target[name] = body
        for block in ("variable", "output", "module"):
            for entry in parsed.get(block, []):
                for name, body in entry.items():
                    assert name not in model[block], f"duplicate {block} {name}"
                    model[block][name] = body
        for entry in parsed.get("locals", []):
            for name, value in entry.items():
                if not name.startswith("__"):
                    model["locals"][name] = value
        model["terraform"].extend(parsed.get("terraform", []))
        model["provider"].extend(parsed.get("provider", []))
    return model


@pytest.fixture(scope="module")
def kms() -> Model:
    return load_module(MODULE_DIR)


@pytest.fixture(scope="module")
def example() -> Model:
    return load_module(EXAMPLE_DIR)


@pytest.fixture(scope="module")
def readme() -> str:
    return (MODULE_DIR / "README.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------
# Helpers over the parsed model
# ---------------------------------------------------------------------------


def _expr(value: Any) -> str:
    """The text of an HCL expression (``"${x}"`` -> ``"x"``); other values as str."""
    if isinstance(value, str):
        match = re.fullmatch(r"\$\{(.*)\}", value, flags=re.S)
        return match.group(1).strip() if match else value
    return str(value)


def _refs(value: Any, prefix: str) -> bool:
    """Whether an expression (or any element of a list of them) contains ``prefix``."""
    if isinstance(value, list):
        return any(_refs(item, prefix) for item in value)
    return isinstance(value, str) and prefix in value


def resolve(model: Model, value: Any) -> Any:
    """Resolve a bare ``${local.x}`` or ``${var.x}`` reference to its value (default)."""
    for _ in range(10):
        if not isinstance(value, str):
            return value
        text = _expr(value)
        match = re.fullmatch(r"(local|var)\.([A-Za-z0-9_]+)", text)
        if not match:
            return value
        kind, name = match.groups()
        if kind == "local":
            value = model["locals"].get(name)
        else:
            value = model["variable"].get(name, {}).get("default")
    return value


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Static and dynamic ``statement`` blocks of an aws_iam_policy_document."""
    found = list(_as_list(document.get("statement")))
    for dynamic in _as_list(document.get("dynamic")):
        block = dynamic.get("statement")
        if block:
            found.extend(_as_list(block.get("content")))
    return found


def statement_actions(model: Model, statement: dict[str, Any]) -> list[str]:
    return [str(a) for a in _as_list(resolve(model, statement.get("actions")))]


def statement_conditions(statement: dict[str, Any]) -> list[dict[str, Any]]:
    return list(_as_list(statement.get("condition")))


def statement_principals(statement: dict[str, Any]) -> list[dict[str, Any]]:
    return list(_as_list(statement.get("principals")))


def grants_any(model: Model, statement: dict[str, Any], actions: tuple[str, ...]) -> list[str]:
    """Which of ``actions`` the statement's (possibly wildcard) actions cover."""
    patterns = statement_actions(model, statement)
    return [a for a in actions if any(fnmatch.fnmatchcase(a, p) for p in patterns)]


def policy_document(model: Model, name: str) -> dict[str, Any]:
    return model["data"].get("aws_iam_policy_document", {}).get(name, {})


def key_policy_documents(model: Model) -> dict[str, str]:
    """Map of policy document name -> purposes that use it, from local.key_policies."""
    text = _expr(model["locals"].get("key_policies", ""))
    return {
        name: text for name in re.findall(r"data\.aws_iam_policy_document\.([A-Za-z0-9_]+)", text)
    }


def _validation_bounds(variable: dict[str, Any], name: str) -> tuple[float | None, float | None]:
    low = high = None
    for validation in _as_list(variable.get("validation")):
        condition = _expr(validation.get("condition", ""))
        for match in re.finditer(rf"var\.{name}\s*>=\s*([0-9.]+)", condition):
            low = float(match.group(1))
        for match in re.finditer(rf"var\.{name}\s*<=\s*([0-9.]+)", condition):
            high = float(match.group(1))
    return low, high


def _kms_key(model: Model) -> dict[str, Any]:
    keys = model["resource"].get("aws_kms_key", {})
    return keys.get("this", {})


# ---------------------------------------------------------------------------
# Checks: each returns a list of problems (empty = pass)
# ---------------------------------------------------------------------------


def check_key_hierarchy(model: Model) -> list[str]:
    problems = []
    purposes = model["locals"].get("key_purposes")
    if not isinstance(purposes, dict):
        return ["local.key_purposes (the key hierarchy) is missing"]
    missing = [p for p in KEY_PURPOSES if p not in purposes]
    if missing:
        problems.append(f"key purposes missing: {missing}")
    key = _kms_key(model)
    if not key:
        return [*problems, "resource aws_kms_key.this is missing"]
    if _expr(key.get("for_each")) != "local.key_purposes":
        problems.append("aws_kms_key.this must be created for_each local.key_purposes")
    if key.get("key_usage") != "ENCRYPT_DECRYPT":
        problems.append("keys must be ENCRYPT_DECRYPT")
    if key.get("customer_master_key_spec") != "SYMMETRIC_DEFAULT":
        problems.append("keys must be SYMMETRIC_DEFAULT (AES-256-GCM inside KMS)")
    alias = model["resource"].get("aws_kms_alias", {}).get("this", {})
    if _expr(alias.get("for_each")) != "local.key_purposes":
        problems.append("aws_kms_alias.this must be created for_each local.key_purposes")
    if alias.get("name") != "alias/${var.name_prefix}-${each.key}":
        problems.append(f"alias name must be alias/<prefix>-<purpose>, got {alias.get('name')!r}")
    if model["variable"].get("name_prefix", {}).get("default") != "greenlang":
        problems.append('variable name_prefix must default to "greenlang"')
    return problems


def check_rotation(model: Model) -> list[str]:
    problems = []
    key = _kms_key(model)
    if key.get("enable_key_rotation") is not True:
        problems.append("enable_key_rotation must be true")
    if _expr(key.get("rotation_period_in_days")) != "var.rotation_period_in_days":
        problems.append("rotation_period_in_days must come from var.rotation_period_in_days")
    variable = model["variable"].get("rotation_period_in_days", {})
    if variable.get("default") != 365:
        problems.append("rotation_period_in_days must default to 365")
    if _validation_bounds(variable, "rotation_period_in_days") != (90, 2560):
        problems.append("rotation_period_in_days must be validated to 90-2560")
    return problems


def check_deletion_window(model: Model) -> list[str]:
    problems = []
    variable = model["variable"].get("deletion_window_in_days", {})
    if variable.get("default") != 30:
        problems.append("deletion_window_in_days must default to 30")
    if _validation_bounds(variable, "deletion_window_in_days") != (7, 30):
        problems.append("deletion_window_in_days must be validated to 7-30")
    replicas = model["resource"].get("aws_kms_replica_key", {})
    for address, body in [("aws_kms_key.this", _kms_key(model))] + [
        (f"aws_kms_replica_key.{name}", body) for name, body in replicas.items()
    ]:
        if _expr(body.get("deletion_window_in_days")) != "var.deletion_window_in_days":
            problems.append(f"{address} must use var.deletion_window_in_days")
    return problems


def check_multi_region_replicas(model: Model) -> list[str]:
    problems = []
    if _kms_key(model).get("multi_region") is not True:
        problems.append("keys must be multi_region = true")
    replica = model["resource"].get("aws_kms_replica_key", {}).get("dr")
    if not replica:
        return [*problems, "aws_kms_replica_key.dr is missing"]
    if _expr(replica.get("provider")) != "aws.dr":
        problems.append("replicas must use provider aws.dr")
    for_each = _expr(replica.get("for_each"))
    if "var.enable_dr_replicas" not in for_each or "local.key_purposes" not in for_each:
        problems.append("replicas must cover every key and be toggled by var.enable_dr_replicas")
    if not _refs(replica.get("primary_key_arn"), "aws_kms_key.this[each.key].arn"):
        problems.append("replica primary_key_arn must be aws_kms_key.this[each.key].arn")
    if not _refs(replica.get("policy"), "local.key_policies[each.key]"):
        problems.append("replicas must carry the same key policy as their primary")
    alias = model["resource"].get("aws_kms_alias", {}).get("dr", {})
    if _expr(alias.get("provider")) != "aws.dr":
        problems.append("replica aliases (aws_kms_alias.dr) must use provider aws.dr")
    toggle = model["variable"].get("enable_dr_replicas", {})
    if _expr(toggle.get("type")) != "bool":
        problems.append("variable enable_dr_replicas (bool) is missing")
    aliases = []
    for block in model["terraform"]:
        for providers in _as_list(block.get("required_providers")):
            aws = providers.get("aws", {})
            aliases.extend(_expr(a) for a in _as_list(aws.get("configuration_aliases")))
    if "aws.dr" not in aliases:
        problems.append("versions.tf must declare configuration_aliases = [aws.dr]")
    return problems


def check_key_policies_wired(model: Model) -> list[str]:
    """Every key policy is built on key_base, and every key uses local.key_policies."""
    problems = []
    if not _refs(_kms_key(model).get("policy"), "local.key_policies[each.key]"):
        problems.append("aws_kms_key.this policy must be local.key_policies[each.key]")
    documents = key_policy_documents(model)
    if set(documents) != {"service_key", "app_key"}:
        problems.append(
            f"local.key_policies must use service_key and app_key, got {sorted(documents)}"
        )
    for name in documents:
        sources = _as_list(policy_document(model, name).get("source_policy_documents"))
        if "${data.aws_iam_policy_document.key_base.json}" not in sources:
            problems.append(f"policy document {name} must include key_base")
    service = policy_document(model, "service_key")
    if _expr(service.get("for_each")) != "local.service_key_purposes":
        problems.append("service_key must be created for_each local.service_key_purposes")
    purposes = model["locals"].get("key_purposes", {})
    for purpose, svc in SERVICE_OF_PURPOSE.items():
        if purposes.get(purpose, {}).get("service") != svc:
            problems.append(f"the {purpose} key must be usable through {svc}")
    if "app" in purposes and purposes["app"].get("service") is not None:
        problems.append("the app key must not be a service key")
    return problems


def _is_admin_statement(statement: dict[str, Any]) -> bool:
    return any(
        _refs(p.get("identifiers"), "var.key_administrator_arns")
        for p in statement_principals(statement)
    )


def check_admin_separation(model: Model) -> list[str]:
    problems = []
    base = policy_document(model, "key_base")
    admin_allows = [
        s for s in statements(base) if _is_admin_statement(s) and s.get("effect") == "Allow"
    ]
    if not admin_allows:
        problems.append("key_base has no Allow statement for var.key_administrator_arns")
    for statement in admin_allows:
        granted = grants_any(model, statement, CRYPTO_ACTIONS)
        if granted:
            problems.append(f"administrators are granted cryptographic actions: {granted}")
        for action in statement_actions(model, statement):
            if action in ("*", "kms:*"):
                problems.append(f"administrators are granted {action}")
    admin_denies = [
        s for s in statements(base) if _is_admin_statement(s) and s.get("effect") == "Deny"
    ]
    denied = {a for s in admin_denies for a in grants_any(model, s, CRYPTO_ACTIONS)}
    for action in ("kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"):
        if action not in denied:
            problems.append(f"{action} is not explicitly denied to administrators")
    return problems


def _has_condition(statement: dict[str, Any], test: str, variable: str) -> dict[str, Any] | None:
    for condition in statement_conditions(statement):
        if condition.get("test") == test and condition.get("variable") == variable:
            return condition
    return None


def check_service_keys_via_service(model: Model) -> list[str]:
    """Service keys: every AWS principal that uses key material goes through kms:ViaService."""
    problems = []
    document = policy_document(model, "service_key")
    users = [
        s
        for s in statements(document)
        if s.get("effect") == "Allow" and grants_any(model, s, CRYPTO_ACTIONS)
    ]
    if not users:
        problems.append("service_key has no usage statement")
    for statement in users:
        kinds = {p.get("type") for p in statement_principals(statement)}
        if kinds == {"Service"}:
            identifiers = {
                i for p in statement_principals(statement) for i in _as_list(p.get("identifiers"))
            }
            if identifiers != {"cloudwatch.amazonaws.com"} or not _has_condition(
                statement, "StringEquals", "aws:SourceAccount"
            ):
                problems.append(f"service principal statement {statement.get('sid')} is too broad")
            continue
        via = _has_condition(statement, "StringEquals", "kms:ViaService")
        if via is None or "each.value.service" not in str(via.get("values")):
            problems.append(f"statement {statement.get('sid')} lacks a kms:ViaService condition")
    return problems


def check_app_key_context(model: Model) -> list[str]:
    """The app key: use only with tenant_id and data_class in the encryption context."""
    problems = []
    document = policy_document(model, "app_key")
    users = [
        s
        for s in statements(document)
        if s.get("effect") == "Allow" and grants_any(model, s, CRYPTO_ACTIONS)
    ]
    covered: set[str] = set()
    for statement in users:
        covered.update(grants_any(model, statement, CRYPTO_ACTIONS))
        for key in APP_CONTEXT_KEYS:
            variable = f"kms:EncryptionContext:{key}"
            null = _has_condition(statement, "Null", variable)
            if null is None or _as_list(null.get("values")) != ["false"]:
                problems.append(f"{statement.get('sid')}: needs Null {variable} = false")
            if _has_condition(statement, "StringLike", variable) is None:
                problems.append(f"{statement.get('sid')}: needs StringLike on {variable}")
    for action in ("kms:GenerateDataKey", "kms:Decrypt", "kms:Encrypt"):
        if action not in covered:
            problems.append(f"the app key policy does not allow {action} under context conditions")
    return problems


def check_break_glass(model: Model) -> list[str]:
    problems = []
    variable = model["variable"].get("break_glass_role_arn")
    if variable is None:
        return ["variable break_glass_role_arn is missing"]
    if "default" in variable:
        problems.append("break_glass_role_arn must be required (no default)")
    base = policy_document(model, "key_base")
    destructive = ("kms:DisableKey", "kms:ScheduleKeyDeletion")
    deny_ok = False
    for statement in statements(base):
        if statement.get("effect") != "Deny":
            continue
        if set(grants_any(model, statement, destructive)) != set(destructive):
            continue
        everyone = any(
            p.get("type") == "AWS" and _as_list(p.get("identifiers")) == ["*"]
            for p in statement_principals(statement)
        )
        exception = any(
            c.get("test") in ("ArnNotEquals", "ArnNotLike", "StringNotEquals")
            and c.get("variable") == "aws:PrincipalArn"
            and _as_list(c.get("values")) == ["${var.break_glass_role_arn}"]
            for c in statement_conditions(statement)
        )
        deny_ok = deny_ok or (everyone and exception)
    if not deny_ok:
        problems.append(
            "key_base must deny kms:DisableKey and kms:ScheduleKeyDeletion to every principal "
            "except var.break_glass_role_arn"
        )
    allowed = any(
        statement.get("effect") == "Allow"
        and any(
            _refs(p.get("identifiers"), "var.break_glass_role_arn")
            for p in statement_principals(statement)
        )
        and set(grants_any(model, statement, destructive)) == set(destructive)
        for statement in statements(base)
    )
    if not allowed:
        problems.append("the break-glass role is not allowed to disable or schedule deletion")
    return problems


ANOMALIES = {
    "decrypt failures": ('"Decrypt"', "errorCode"),
    "DisableKey": ('"DisableKey"',),
    "ScheduleKeyDeletion": ('"ScheduleKeyDeletion"',),
    "KMS call volume": ('$.eventSource = "kms.amazonaws.com" }',),
}


def check_alarms(model: Model) -> list[str]:
    problems = []
    filters = model["resource"].get("aws_cloudwatch_log_metric_filter", {})
    alarms = model["resource"].get("aws_cloudwatch_metric_alarm", {})
    topics = model["resource"].get("aws_sns_topic", {})
    for anomaly, needles in ANOMALIES.items():
        matches = [
            name
            for name, body in filters.items()
            if "kms.amazonaws.com" in body.get("pattern", "")
            and all(n in body.get("pattern", "") for n in needles)
        ]
        if not matches:
            problems.append(f"no metric filter for {anomaly}")
            continue
        name = matches[0]
        if _expr(filters[name].get("log_group_name")) != "var.cloudtrail_log_group_name":
            problems.append(f"metric filter {name} must read var.cloudtrail_log_group_name")
        reference = f"aws_cloudwatch_log_metric_filter.{name}."
        alarm = next((a for a in alarms.values() if reference in repr(a)), None)
        if alarm is None:
            problems.append(f"no alarm on metric filter {name} ({anomaly})")
            continue
        actions = [_expr(a) for a in _as_list(alarm.get("alarm_actions"))]
        if not any(a.startswith("aws_sns_topic.") and a.split(".")[1] in topics for a in actions):
            problems.append(f"the {anomaly} alarm does not notify an SNS topic of the module")
        if alarm.get("actions_enabled") is False:
            problems.append(f"the {anomaly} alarm has its actions disabled")
    if "cloudtrail_log_group_name" not in model["variable"]:
        problems.append("variable cloudtrail_log_group_name is missing")
    return problems


def check_sns_encrypted(model: Model) -> list[str]:
    topics = model["resource"].get("aws_sns_topic", {})
    if not topics:
        return ["no SNS topic for the alarms"]
    return [
        f"aws_sns_topic.{name} is not encrypted with a module key"
        for name, body in topics.items()
        if not _refs(body.get("kms_master_key_id"), "aws_kms_key.")
    ]


def _readme_table_names(readme_text: str) -> set[str]:
    names = set()
    for line in readme_text.splitlines():
        if line.lstrip().startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            match = re.fullmatch(r"`([A-Za-z0-9_]+)`", cells[0]) if cells else None
            if match:
                names.add(match.group(1))
    return names


def check_documentation(model: Model, readme_text: str) -> list[str]:
    problems = []
    documented = _readme_table_names(readme_text)
    for kind in ("variable", "output"):
        for name, body in model[kind].items():
            if not str(body.get("description", "")).strip():
                problems.append(f"{kind} {name} has no description")
            if name not in documented:
                problems.append(f"{kind} {name} is not in a README table")
    if "```hcl" not in readme_text or 'source = "' not in readme_text:
        problems.append("README has no usage example")
    return problems


def check_outputs(model: Model) -> list[str]:
    problems = []
    for name in ("key_arns", "key_ids", "alias_names", "replica_key_arns", "sns_topic_arn"):
        if name not in model["output"]:
            problems.append(f"output {name} is missing")
    config = model["output"].get("greenlang_crypto_config", {}).get("value")
    if not isinstance(config, dict):
        return [*problems, "output greenlang_crypto_config must be an object"]
    for key in ("kms_key_id", "kms_replica_key_ids", "region"):
        if key not in config:
            problems.append(f"greenlang_crypto_config lacks {key}")
    if not _refs(config.get("kms_key_id"), 'aws_kms_key.this["app"].arn'):
        problems.append("greenlang_crypto_config.kms_key_id must be the app key ARN")
    if not _refs(config.get("kms_replica_key_ids"), "aws_kms_replica_key.dr"):
        problems.append(
            "greenlang_crypto_config.kms_replica_key_ids must list the app key replicas"
        )
    return problems


def check_example(model: Model) -> list[str]:
    problems = []
    module = model["module"].get("kms", {})
    if module.get("source") != "../../modules/kms":
        problems.append("the example must use ../../modules/kms")
    providers = module.get("providers", {})
    if not any(
        "aws.dr" in str(k) for k in (providers.keys() if isinstance(providers, dict) else [])
    ):
        problems.append("the example must pass the aws.dr provider to the module")
    resources = model["resource"]

    def key_of(value: Any) -> str | None:
        match = re.search(r'module\.kms\.key_arns\["([a-z]+)"\]', str(value))
        return match.group(1) if match else None

    clusters = list(resources.get("aws_rds_cluster", {}).values())
    if not any(
        c.get("storage_encrypted") is True and key_of(c.get("kms_key_id")) == "database"
        for c in clusters
    ):
        problems.append("Aurora must be storage_encrypted with the database key")
    if not any(c.get("engine") == "aurora-postgresql" for c in clusters):
        problems.append("the example database must be Aurora PostgreSQL")
    caches = resources.get("aws_elasticache_replication_group", {}).values()
    if not any(
        c.get("at_rest_encryption_enabled") is True and key_of(c.get("kms_key_id")) == "cache"
        for c in caches
    ):
        problems.append("ElastiCache must be encrypted at rest with the cache key")
    sse_ok = False
    for body in resources.get("aws_s3_bucket_server_side_encryption_configuration", {}).values():
        for rule in _as_list(body.get("rule")):
            for default in _as_list(rule.get("apply_server_side_encryption_by_default")):
                if (
                    default.get("sse_algorithm") == "aws:kms"
                    and key_of(default.get("kms_master_key_id")) == "storage"
                    and rule.get("bucket_key_enabled") is True
                ):
                    sse_ok = True
    if not sse_ok:
        problems.append("an S3 bucket must use SSE-KMS with the storage key and bucket keys")
    eks_ok = False
    for cluster in resources.get("aws_eks_cluster", {}).values():
        for config in _as_list(cluster.get("encryption_config")):
            keys = [key_of(p.get("key_arn")) for p in _as_list(config.get("provider"))]
            if _as_list(config.get("resources")) == ["secrets"] and keys == ["eks"]:
                eks_ok = True
    if not eks_ok:
        problems.append("the EKS cluster must encrypt secrets with the eks key")
    return problems


MODULE_CHECKS: dict[str, Check] = {
    "key_hierarchy": check_key_hierarchy,
    "rotation": check_rotation,
    "deletion_window": check_deletion_window,
    "multi_region_replicas": check_multi_region_replicas,
    "key_policies_wired": check_key_policies_wired,
    "admin_separation": check_admin_separation,
    "service_keys_via_service": check_service_keys_via_service,
    "app_key_context": check_app_key_context,
    "break_glass": check_break_glass,
    "alarms": check_alarms,
    "sns_encrypted": check_sns_encrypted,
    "outputs": check_outputs,
}


# ---------------------------------------------------------------------------
# Tests on the real files
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODULE_CHECKS))
def test_module_check_passes(kms: Model, name: str) -> None:
    assert MODULE_CHECKS[name](kms) == []


def test_module_documentation(kms: Model, readme: str) -> None:
    assert check_documentation(kms, readme) == []


def test_example_uses_the_keys(example: Model) -> None:
    assert check_example(example) == []


def test_example_variables_and_outputs_are_described(example: Model) -> None:
    for kind in ("variable", "output"):
        for name, body in example[kind].items():
            assert str(body.get("description", "")).strip(), f"{kind} {name} has no description"


def test_module_has_the_expected_files() -> None:
    for name in (
        "main.tf",
        "variables.tf",
        "outputs.tf",
        "policies.tf",
        "versions.tf",
        "README.md",
    ):
        assert (MODULE_DIR / name).is_file(), name


def test_alias_names_from_defaults(kms: Model) -> None:
    prefix = kms["variable"]["name_prefix"]["default"]
    template = kms["resource"]["aws_kms_alias"]["this"]["name"]
    aliases = {
        template.replace("${var.name_prefix}", prefix).replace("${each.key}", purpose)
        for purpose in kms["locals"]["key_purposes"]
    }
    assert aliases == {f"alias/greenlang-{p}" for p in KEY_PURPOSES}


def test_every_tf_file_parses(repo_root: Path) -> None:
    files = sorted((repo_root / "terraform").rglob("*.tf"))
    assert len(files) >= 10
    for path in files:
        assert isinstance(_parse_file(path), dict), path


# ---------------------------------------------------------------------------
# The checks reject broken variants
# ---------------------------------------------------------------------------


def _statement(model: Model, document: str, sid: str) -> dict[str, Any]:
    for statement in statements(policy_document(model, document)):
        if statement.get("sid") == sid:
            return statement
    raise KeyError(sid)


def _drop_condition(statement: dict[str, Any], variable: str, test: str | None = None) -> None:
    statement["condition"] = [
        c
        for c in statement_conditions(statement)
        if not (c.get("variable") == variable and (test is None or c.get("test") == test))
    ]


def _mutations() -> Iterator[tuple[str, str, Callable[[Model], None]]]:
    def m(check: str, fn: Callable[[Model], None]) -> tuple[str, Callable[[Model], None]]:
        return check, fn

    def no_cache_key(model: Model) -> None:
        del model["locals"]["key_purposes"]["cache"]

    def rotation_off(model: Model) -> None:
        model["resource"]["aws_kms_key"]["this"]["enable_key_rotation"] = False

    def rotation_range(model: Model) -> None:
        for v in model["variable"]["rotation_period_in_days"]["validation"]:
            v["condition"] = v["condition"].replace("2560", "3650")

    def deletion_default(model: Model) -> None:
        model["variable"]["deletion_window_in_days"]["default"] = 7

    def deletion_range(model: Model) -> None:
        for v in model["variable"]["deletion_window_in_days"]["validation"]:
            v["condition"] = v["condition"].replace("<= 30", "<= 31")

    def replica_window(model: Model) -> None:
        model["resource"]["aws_kms_replica_key"]["dr"]["deletion_window_in_days"] = 7

    def single_region(model: Model) -> None:
        model["resource"]["aws_kms_key"]["this"]["multi_region"] = False

    def no_replicas(model: Model) -> None:
        del model["resource"]["aws_kms_replica_key"]

    def replica_default_provider(model: Model) -> None:
        del model["resource"]["aws_kms_replica_key"]["dr"]["provider"]

    def no_configuration_alias(model: Model) -> None:
        for block in model["terraform"]:
            for providers in block.get("required_providers", []):
                providers["aws"].pop("configuration_aliases", None)

    def app_without_base(model: Model) -> None:
        policy_document(model, "app_key")["source_policy_documents"] = []

    def admin_decrypt(model: Model) -> None:
        model["locals"]["key_admin_actions"] = model["locals"]["key_admin_actions"] + [
            "kms:Decrypt"
        ]

    def admin_wildcard(model: Model) -> None:
        model["locals"]["key_admin_actions"] = ["kms:*"]

    def admin_generate_wildcard(model: Model) -> None:
        model["locals"]["key_admin_actions"] = model["locals"]["key_admin_actions"] + ["kms:Gen*"]

    def no_admin_deny(model: Model) -> None:
        base = policy_document(model, "key_base")
        base["statement"] = [
            s for s in base["statement"] if not (_is_admin_statement(s) and s["effect"] == "Deny")
        ]

    def no_via_service(model: Model) -> None:
        _drop_condition(_statement(model, "service_key", "UseThroughService"), "kms:ViaService")

    def wrong_service(model: Model) -> None:
        model["locals"]["key_purposes"]["database"]["service"] = "s3"

    def no_tenant_null(model: Model) -> None:
        statement = _statement(model, "app_key", "UseWithTenantAndDataClassContext")
        _drop_condition(statement, "kms:EncryptionContext:tenant_id", "Null")

    def no_data_class_like(model: Model) -> None:
        statement = _statement(model, "app_key", "UseWithTenantAndDataClassContext")
        _drop_condition(statement, "kms:EncryptionContext:data_class", "StringLike")

    def extra_unconditioned_use(model: Model) -> None:
        policy_document(model, "app_key")["statement"].append(
            {
                "sid": "Sneaky",
                "effect": "Allow",
                "actions": ["kms:Decrypt"],
                "resources": ["*"],
                "principals": [{"type": "AWS", "identifiers": '${local.key_users["app"]}'}],
            }
        )

    def no_break_glass_exception(model: Model) -> None:
        _drop_condition(
            _statement(model, "key_base", "DenyDisableAndDeleteExceptBreakGlass"),
            "aws:PrincipalArn",
        )

    def deny_only_disable(model: Model) -> None:
        _statement(model, "key_base", "DenyDisableAndDeleteExceptBreakGlass")["actions"] = [
            "kms:DisableKey"
        ]

    def no_schedule_deletion_alarm(model: Model) -> None:
        del model["resource"]["aws_cloudwatch_metric_alarm"]["kms_key_deletion_scheduled"]

    def no_decrypt_failure_filter(model: Model) -> None:
        del model["resource"]["aws_cloudwatch_log_metric_filter"]["kms_decrypt_failures"]

    def alarm_without_topic(model: Model) -> None:
        model["resource"]["aws_cloudwatch_metric_alarm"]["kms_key_disabled"]["alarm_actions"] = []

    def plaintext_topic(model: Model) -> None:
        del model["resource"]["aws_sns_topic"]["kms_alarms"]["kms_master_key_id"]

    def config_without_region(model: Model) -> None:
        del model["output"]["greenlang_crypto_config"]["value"]["region"]

    yield "missing cache key", *m("key_hierarchy", no_cache_key)
    yield "rotation off", *m("rotation", rotation_off)
    yield "rotation range too wide", *m("rotation", rotation_range)
    yield "deletion window default 7", *m("deletion_window", deletion_default)
    yield "deletion window allows 31", *m("deletion_window", deletion_range)
    yield "replica with fixed window", *m("deletion_window", replica_window)
    yield "single-region keys", *m("multi_region_replicas", single_region)
    yield "no replicas", *m("multi_region_replicas", no_replicas)
    yield "replica in the primary region", *m("multi_region_replicas", replica_default_provider)
    yield "no aws.dr alias", *m("multi_region_replicas", no_configuration_alias)
    yield "app policy without the base", *m("key_policies_wired", app_without_base)
    yield "database key through s3", *m("key_policies_wired", wrong_service)
    yield "admin can decrypt", *m("admin_separation", admin_decrypt)
    yield "admin kms:*", *m("admin_separation", admin_wildcard)
    yield "admin kms:Gen*", *m("admin_separation", admin_generate_wildcard)
    yield "no deny for admins", *m("admin_separation", no_admin_deny)
    yield "service key without ViaService", *m("service_keys_via_service", no_via_service)
    yield "app key without tenant Null", *m("app_key_context", no_tenant_null)
    yield "app key without data_class StringLike", *m("app_key_context", no_data_class_like)
    yield "app key unconditioned decrypt", *m("app_key_context", extra_unconditioned_use)
    yield "deny without break-glass exception", *m("break_glass", no_break_glass_exception)
    yield "deny misses ScheduleKeyDeletion", *m("break_glass", deny_only_disable)
    yield "no ScheduleKeyDeletion alarm", *m("alarms", no_schedule_deletion_alarm)
    yield "no decrypt failure filter", *m("alarms", no_decrypt_failure_filter)
    yield "alarm notifies nobody", *m("alarms", alarm_without_topic)
    yield "plaintext SNS topic", *m("sns_encrypted", plaintext_topic)
    yield "config without region", *m("outputs", config_without_region)


MUTATIONS = list(_mutations())


@pytest.mark.parametrize(
    ("check", "mutate"), [(c, f) for _, c, f in MUTATIONS], ids=[n for n, _, _ in MUTATIONS]
)
def test_check_rejects_broken_module(
    kms: Model, check: str, mutate: Callable[[Model], None]
) -> None:
    broken = copy.deepcopy(kms)
    mutate(broken)
    assert MODULE_CHECKS[check](broken) != []
    # The mutation must not leak into the shared fixture.
    assert MODULE_CHECKS[check](kms) == []


def test_documentation_check_rejects_gaps(kms: Model, readme: str) -> None:
    undescribed = copy.deepcopy(kms)
    undescribed["variable"]["deletion_window_in_days"]["description"] = ""
    assert any("no description" in p for p in check_documentation(undescribed, readme))

    without_variable = readme.replace("| `alarm_namespace` |", "| alarm namespace |")
    assert any("variable alarm_namespace" in p for p in check_documentation(kms, without_variable))

    without_output = readme.replace("| `sns_topic_arn` |", "| sns topic |")
    assert any("output sns_topic_arn" in p for p in check_documentation(kms, without_output))


def test_example_check_rejects_unencrypted_stores(example: Model) -> None:
    broken = copy.deepcopy(example)
    broken["resource"]["aws_rds_cluster"]["aurora"]["storage_encrypted"] = False
    assert check_example(broken) != []

    broken = copy.deepcopy(example)
    broken["resource"]["aws_elasticache_replication_group"]["redis"]["kms_key_id"] = (
        '${module.kms.key_arns["app"]}'
    )
    assert check_example(broken) != []

    broken = copy.deepcopy(example)
    for body in broken["resource"]["aws_s3_bucket_server_side_encryption_configuration"].values():
        for rule in body["rule"]:
            rule["bucket_key_enabled"] = False
    assert check_example(broken) != []

    broken = copy.deepcopy(example)
    del broken["resource"]["aws_eks_cluster"]["main"]["encryption_config"]
    assert check_example(broken) != []


# ---------------------------------------------------------------------------
# Optional: terraform fmt / validate where a terraform binary exists.
# Terraform is not packaged in Debian 12 and cannot be installed from the
# registries CI may use, so these run only on machines that already have it.
# ---------------------------------------------------------------------------


def _terraform() -> str:
    binary = os.environ.get("TERRAFORM_BIN") or shutil.which("terraform")
    if not binary:
        pytest.skip("terraform is not installed (optional: not installable from PyPI or Debian 12)")
    return binary


def test_terraform_fmt(repo_root: Path, tmp_path: Path) -> None:
    binary = _terraform()
    env = {
        **os.environ,
        "TF_CLI_CONFIG_FILE": str(tmp_path / "terraformrc"),
        "CHECKPOINT_DISABLE": "1",
    }
    (tmp_path / "terraformrc").write_text("", encoding="utf-8")
    result = subprocess.run(
        [binary, "fmt", "-check", "-recursive", "-diff", str(repo_root / "terraform")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_terraform_validate_example(repo_root: Path, tmp_path: Path) -> None:
    """``terraform validate`` of the example against a local provider mirror.

    Set TF_PLUGIN_MIRROR to a filesystem mirror holding hashicorp/aws (default
    /opt/tf-plugins); nothing is downloaded.
    """
    binary = _terraform()
    mirror = Path(os.environ.get("TF_PLUGIN_MIRROR", "/opt/tf-plugins"))
    if not (mirror / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
        pytest.skip(f"no hashicorp/aws provider in a filesystem mirror at {mirror} (optional)")
    rc = tmp_path / "terraformrc"
    rc.write_text(
        "provider_installation {\n  filesystem_mirror {\n"
        f'    path    = "{mirror}"\n    include = ["registry.terraform.io/*/*"]\n  }}\n'
        '  direct {\n    exclude = ["registry.terraform.io/*/*"]\n  }\n}\n',
        encoding="utf-8",
    )
    work = tmp_path / "terraform"
    shutil.copytree(repo_root / "terraform", work, ignore=shutil.ignore_patterns(".terraform*"))
    env = {
        **os.environ,
        "TF_CLI_CONFIG_FILE": str(rc),
        "CHECKPOINT_DISABLE": "1",
        "TF_IN_AUTOMATION": "1",
    }
    cwd = work / "examples" / "platform"
    for args in (
        ["init", "-backend=false", "-input=false", "-no-color"],
        ["validate", "-no-color"],
    ):
        result = subprocess.run(
            [binary, *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"terraform {args[0]}:\n{result.stdout}\n{result.stderr}"
