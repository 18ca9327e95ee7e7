"""EncryptionServiceConfig: defaults, bounds, parsing from a mapping, the environment and TOML."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from greenlang_crypto.config import EncryptionServiceConfig, default_data_dir
from greenlang_crypto.exceptions import ConfigurationError


def cfg(tmp_path: Path, **values: Any) -> EncryptionServiceConfig:
    return EncryptionServiceConfig(data_dir=tmp_path, **values)


def test_defaults(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    assert c.provider == "local" and c.key_reference == "stored"
    assert c.cache_ttl_seconds == 300.0 and c.keyring_refresh_seconds == 5.0
    assert c.resolved_key_store_url == f"sqlite:///{tmp_path / 'keystore.db'}"
    assert cfg(tmp_path, key_store_url="sqlite:////x/y.db").resolved_key_store_url == (
        "sqlite:////x/y.db"
    )


def test_frozen_and_normalized(tmp_path: Path) -> None:
    c = EncryptionServiceConfig(
        data_dir=str(tmp_path),  # type: ignore[arg-type]
        provider="aws-kms",
        kms_key_ids=["arn:a", "arn:b"],  # type: ignore[arg-type]
    )
    assert c.data_dir == tmp_path and isinstance(c.data_dir, Path)
    assert c.kms_key_ids == ("arn:a", "arn:b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.provider = "local"  # type: ignore[misc]


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GLC_DATA_DIR", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "d"
    assert EncryptionServiceConfig().data_dir == tmp_path / "d"
    monkeypatch.setenv("GLC_DATA_DIR", "")
    assert default_data_dir() == Path.home() / ".greenlang-crypto"
    monkeypatch.delenv("GLC_DATA_DIR")
    assert default_data_dir() == Path.home() / ".greenlang-crypto"


@pytest.mark.parametrize(
    "values",
    [
        {"provider": "vault"},
        {"provider": "aws-kms"},
        {"key_reference": "x"},
        {"branch_key_scope": "global"},
        {"key_cache_url": "http://cache"},
        {"cache_ttl_seconds": 0},
        {"cache_ttl_seconds": -1},
        {"cache_ttl_seconds": 300.5},
        {"cache_max_entries": 0},
        {"cache_max_entries": 1_000_001},
        {"max_messages_per_dek": 0},
        {"max_messages_per_dek": 2**32 + 1},
        {"max_plaintext_bytes": 0},
        {"max_plaintext_bytes": 2**36 - 31},
        {"stream_max_bytes": -1},
        {"stream_max_bytes": 2**48 + 1},
        {"refresh_ahead_fraction": 0.09},
        {"refresh_ahead_fraction": 1.01},
        {"keyring_refresh_seconds": -0.1},
        {"keyring_refresh_seconds": 301},
        {"key_store_pool_size": 0},
        {"key_store_pool_size": 101},
        {"key_store_url": "mysql://h/db"},
        {"key_store_url": "sqlite://relative.db"},
    ],
)
def test_out_of_bounds_values_are_refused(tmp_path: Path, values: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        cfg(tmp_path, **values)


@pytest.mark.parametrize(
    "values",
    [
        {"cache_ttl_seconds": 300},
        {"cache_ttl_seconds": 0.001},
        {"cache_max_entries": 1},
        {"cache_max_entries": 1_000_000},
        {"max_messages_per_dek": 2**32},
        {"max_plaintext_bytes": 2**36 - 32},
        {"stream_max_bytes": 0},
        {"stream_max_bytes": 2**48},
        {"refresh_ahead_fraction": 0.1},
        {"refresh_ahead_fraction": 1.0},
        {"keyring_refresh_seconds": 0},
        {"key_store_pool_size": 100},
        {"key_reference": "inline"},
        {"key_reference": "branch", "branch_key_scope": "service"},
        {"key_cache_url": "rediss://cache:6380/0"},
        {"key_cache_url": "unix:///run/redis.sock"},
        {"key_store_url": "postgresql://h/db"},
        {"key_store_url": "postgres://h/db"},
        {"key_store_url": "postgresql+psycopg://h/db"},
        {"provider": "aws-kms", "kms_key_ids": ("arn:aws:kms:eu-west-1:1:key/k",)},
    ],
)
def test_values_on_the_bounds_are_accepted(tmp_path: Path, values: dict[str, Any]) -> None:
    c = cfg(tmp_path, **values)
    for name, value in values.items():
        assert getattr(c, name) == value


def test_keyring_refresh_never_exceeds_the_cache_ttl(tmp_path: Path) -> None:
    c = cfg(tmp_path, cache_ttl_seconds=2.0, keyring_refresh_seconds=10.0)
    assert c.keyring_refresh_seconds == 2.0
    assert (
        cfg(tmp_path, cache_ttl_seconds=2.0, keyring_refresh_seconds=1.0).keyring_refresh_seconds
        == 1.0
    )
    assert (
        cfg(tmp_path, cache_ttl_seconds=2.0, keyring_refresh_seconds=0).keyring_refresh_seconds == 0
    )


def test_repr_hides_passwords_in_urls(tmp_path: Path) -> None:
    c = cfg(
        tmp_path,
        key_store_url="postgresql://app:pg-s3cret@db:5432/keys?sslpassword=ssl-s3cret",
        key_cache_url="redis://:redis-s3cret@cache:6379/0",
    )
    text = repr(c)
    for secret in ("pg-s3cret", "ssl-s3cret", "redis-s3cret"):
        assert secret not in text
    assert "db:5432" in text and "cache:6379" in text
    # The values themselves are untouched: only their display is redacted.
    assert c.key_store_url is not None and "pg-s3cret" in c.key_store_url


def test_from_mapping_converts_strings(tmp_path: Path) -> None:
    c = EncryptionServiceConfig.from_mapping(
        {
            "data_dir": str(tmp_path),
            "provider": "aws-kms",
            "kms_key_ids": " arn:a , arn:b ,, ",
            "cache_ttl_seconds": "60",
            "refresh_ahead_fraction": "0.5",
            "keyring_refresh_seconds": "2.5",
            "cache_max_entries": "10",
            "max_messages_per_dek": "1000",
            "max_plaintext_bytes": "4096",
            "stream_max_bytes": "0",
            "key_store_pool_size": "8",
            "key_store_transaction_pooler": "yes",
        }
    )
    assert c.data_dir == tmp_path
    assert c.kms_key_ids == ("arn:a", "arn:b")
    assert (c.cache_ttl_seconds, c.refresh_ahead_fraction, c.keyring_refresh_seconds) == (
        60.0,
        0.5,
        2.5,
    )
    assert (c.cache_max_entries, c.max_messages_per_dek, c.max_plaintext_bytes) == (10, 1000, 4096)
    assert (c.stream_max_bytes, c.key_store_pool_size) == (0, 8)
    assert c.key_store_transaction_pooler is True
    # A list (TOML array) of key ids is taken as it is.
    listed = EncryptionServiceConfig.from_mapping(
        {"data_dir": tmp_path, "provider": "aws-kms", "kms_key_ids": ["arn:x"]}
    )
    assert listed.kms_key_ids == ("arn:x",)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (True, True),
        (False, False),
        ("1", True),
        ("TRUE", True),
        (" on ", True),
        ("yes", True),
        ("0", False),
        ("off", False),
        ("No", False),
        ("", False),
    ],
)
def test_boolean_spellings(tmp_path: Path, raw: object, expected: bool) -> None:
    c = EncryptionServiceConfig.from_mapping(
        {"data_dir": tmp_path, "key_store_transaction_pooler": raw}
    )
    assert c.key_store_transaction_pooler is expected


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("key_store_transaction_pooler", "maybe"),
        ("cache_ttl_seconds", "sixty"),
        ("cache_max_entries", "1.5"),
        ("max_messages_per_dek", None),
        ("refresh_ahead_fraction", [0.5]),
        ("kms_key_ids", 3),
    ],
)
def test_unparsable_values_name_the_field(tmp_path: Path, name: str, raw: object) -> None:
    with pytest.raises(ConfigurationError, match=name):
        EncryptionServiceConfig.from_mapping({"data_dir": tmp_path, name: raw})


def test_unknown_keys_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cache_ttl") as info:
        EncryptionServiceConfig.from_mapping({"data_dir": tmp_path, "cache_ttl": 60})
    assert "unknown" in str(info.value)


def test_from_env_reads_only_glc_variables(tmp_path: Path) -> None:
    env = {
        "GLC_DATA_DIR": str(tmp_path),
        "GLC_PROVIDER": "aws-kms",
        "GLC_KMS_KEY_IDS": "arn:a,arn:b",
        "GLC_KMS_REGION": "eu-west-1",
        "GLC_CACHE_TTL_SECONDS": "30",
        "GLC_KEY_STORE_TRANSACTION_POOLER": "1",
        # Not fields of the config: ignored, never an error.
        "GLC_PG_URL": "postgresql://elsewhere/db",
        "CACHE_TTL_SECONDS": "1",
        "glc_cache_max_entries": "5",
    }
    c = EncryptionServiceConfig.from_env(env)
    assert c.data_dir == tmp_path and c.provider == "aws-kms"
    assert c.kms_key_ids == ("arn:a", "arn:b") and c.kms_region == "eu-west-1"
    assert c.cache_ttl_seconds == 30.0 and c.cache_max_entries == 1000
    assert c.key_store_transaction_pooler is True


def test_from_env_defaults_to_the_process_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GLC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GLC_CACHE_MAX_ENTRIES", "7")
    c = EncryptionServiceConfig.from_env()
    assert c.cache_max_entries == 7 and c.data_dir == tmp_path
    monkeypatch.setenv("GLC_CACHE_MAX_ENTRIES", "0")
    with pytest.raises(ConfigurationError):
        EncryptionServiceConfig.from_env()


def test_from_toml_table_or_top_level(tmp_path: Path) -> None:
    table = tmp_path / "table.toml"
    table.write_text(
        f'other = 1\n[greenlang_crypto]\ndata_dir = "{tmp_path}"\ncache_max_entries = 10\n'
        "key_store_transaction_pooler = true\n"
    )
    c = EncryptionServiceConfig.from_toml(table)
    assert c.cache_max_entries == 10 and c.key_store_transaction_pooler is True
    top = tmp_path / "top.toml"
    top.write_text(f'data_dir = "{tmp_path}"\nkms_key_ids = ["arn:a"]\nprovider = "aws-kms"\n')
    assert EncryptionServiceConfig.from_toml(str(top)).kms_key_ids == ("arn:a",)


def test_from_toml_errors_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        EncryptionServiceConfig.from_toml(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[greenlang_crypto\nprovider = local\n")
    with pytest.raises(ConfigurationError, match="cannot read"):
        EncryptionServiceConfig.from_toml(broken)
    # Keys outside the schema are refused, not dropped.
    extra = tmp_path / "extra.toml"
    extra.write_text("[greenlang_crypto]\nproviderr = 'local'\n")
    with pytest.raises(ConfigurationError, match="providerr"):
        EncryptionServiceConfig.from_toml(extra)


_POLICY = (
    "rotation_period_seconds",
    "reencrypt_within_seconds",
    "retire_after_seconds",
    "index_rotation_period_seconds",
)


def test_the_rotation_policy_is_off_by_default(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    assert [getattr(c, name) for name in _POLICY] == [None] * 4


@pytest.mark.parametrize("name", _POLICY)
@pytest.mark.parametrize("raw", [-1, -0.001, float("nan"), float("inf"), "60", True])
def test_bad_policy_durations_are_refused_by_name(tmp_path: Path, name: str, raw: object) -> None:
    with pytest.raises(ConfigurationError, match=name):
        cfg(tmp_path, **{name: raw})


@pytest.mark.parametrize("name", _POLICY)
def test_policy_durations_are_floats_and_zero_is_off(tmp_path: Path, name: str) -> None:
    assert getattr(cfg(tmp_path, **{name: 60}), name) == 60.0
    assert isinstance(getattr(cfg(tmp_path, **{name: 60}), name), float)
    assert getattr(cfg(tmp_path, **{name: 0}), name) is None


def test_policy_durations_from_the_environment(tmp_path: Path) -> None:
    c = EncryptionServiceConfig.from_env(
        {
            "GLC_DATA_DIR": str(tmp_path),
            "GLC_ROTATION_PERIOD_SECONDS": "31536000",
            "GLC_REENCRYPT_WITHIN_SECONDS": "2592000.5",
            "GLC_RETIRE_AFTER_SECONDS": "0",
            "GLC_INDEX_ROTATION_PERIOD_SECONDS": "",
        }
    )
    assert c.rotation_period_seconds == 31536000.0
    assert c.reencrypt_within_seconds == 2592000.5
    assert c.retire_after_seconds is None
    assert c.index_rotation_period_seconds is None
    with pytest.raises(ConfigurationError, match="retire_after_seconds"):
        EncryptionServiceConfig.from_mapping({"data_dir": tmp_path, "retire_after_seconds": "x"})
    with pytest.raises(ConfigurationError, match="rotation_period_seconds"):
        EncryptionServiceConfig.from_mapping({"data_dir": tmp_path, "rotation_period_seconds": -5})
