"""Connection strings lose their passwords before anything shows them."""

from __future__ import annotations

import pytest

from greenlang_crypto._urls import redact_url
from greenlang_crypto.config import EncryptionServiceConfig

SECRET = "hunter2-secret"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql://app:{SECRET}@db.internal:5432/keys",
            "postgresql://app:***@db.internal:5432/keys",
        ),
        (f"redis://:{SECRET}@cache:6379/0", "redis://:***@cache:6379/0"),
        (f"rediss://default:{SECRET}@cache/1", "rediss://default:***@cache/1"),
        (
            f"postgresql://db/keys?password={SECRET}&sslmode=require",
            "postgresql://db/keys?password=***&sslmode=require",
        ),
        (
            f"host=db user=app password={SECRET} dbname=keys",
            "host=db user=app password=*** dbname=keys",
        ),
        (f"host=db password='{SECRET} with space'", "host=db password=***"),
        ("postgresql://app@db/keys", "postgresql://app@db/keys"),
        ("sqlite:////var/lib/keys.db", "sqlite:////var/lib/keys.db"),
    ],
)
def test_redact_url_masks_the_password_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_an_unparsable_url_is_masked_whole() -> None:
    assert redact_url(f"postgresql://app:{SECRET}@[::1/keys") == "postgresql://***"


def test_config_repr_shows_no_password() -> None:
    config = EncryptionServiceConfig(
        key_store_url=f"postgresql://app:{SECRET}@db/keys",
        key_cache_url=f"redis://:{SECRET}@cache:6379/0",
    )
    text = repr(config)
    assert SECRET not in text
    assert "postgresql://app:***@db/keys" in text
    assert "redis://:***@cache:6379/0" in text
    # The value itself is untouched: only what is shown is redacted.
    assert config.key_store_url == f"postgresql://app:{SECRET}@db/keys"
