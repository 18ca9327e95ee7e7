"""Key patterns agree with a real redis-server's KEYS on every key, or are refused."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenlang_crypto._redis_glob import compile_redis_glob
from greenlang_crypto.exceptions import ConfigurationError

redis = pytest.importorskip("redis")
URL = os.environ.get("GLC_REDIS_URL")
pytestmark = pytest.mark.skipif(not URL, reason="GLC_REDIS_URL not set; run scripts/services.sh")

# Bytes that carry meaning in a Redis glob, plus ordinary ones and a two-byte UTF-8 letter, so
# that "?" against a multi-byte character is exercised too.
KEYS = [
    b"",
    b"a",
    b"b",
    b"x",
    b"ab",
    b"abc",
    b"secret:abc",
    b"secret:x",
    b"secret:",
    b"a-c",
    b"[",
    b"]",
    b"^",
    b"-",
    b"\\",
    b"*",
    b"?",
    b"a]",
    b"\xc3\xa9",
    b"a\xc3\xa9",
    b"zz",
    b"a\\b",
]
PATTERN_ALPHABET = ["a", "b", "x", "^", "-", "[", "]", "*", "?", "\\", "é", ":", "c"]


@pytest.fixture(scope="module")
def raw() -> Iterator[Any]:
    # Database 5 belongs to this module.
    client = redis.Redis.from_url(URL, db=5)
    client.flushdb()
    client.mset({key: b"1" for key in KEYS if key})
    yield client
    client.flushdb()
    client.close()


def _redis_matches(raw: Any, pattern: str) -> set[bytes]:
    # Redis cannot store a key with an empty name, so KEYS is compared on the others.
    return set(raw.keys(pattern))


def _ours(pattern: str) -> set[bytes] | None:
    try:
        matches = compile_redis_glob(pattern)
    except ConfigurationError:
        return None
    return {key for key in KEYS if key and matches(key)}


def test_a_negated_class_matches_what_redis_matches(raw: Any) -> None:
    # fnmatch reads "[^x]" as "one of ^ or x"; Redis as "anything but x".
    assert compile_redis_glob("secret:[^x]*")(b"secret:abc")
    assert _ours("secret:[^x]*") == _redis_matches(raw, "secret:[^x]*") == {b"secret:abc"}


@pytest.mark.parametrize(
    "pattern",
    [
        "*",
        "?",
        "??",
        "a*",
        "[a-c]*",
        "[c-a]",
        "[^a]",
        "[]",
        "[^]",
        "\\*",
        "a\\",
        "[\\]]",
        "[a-]]",
        "*]",
        "a\\b",
        "a?",
        "\\[",
        "secret:*",
        "[*]",
        "[?]",
        "[-a]",
        "[a-\\]]",
    ],
)
def test_listed_patterns_agree_with_redis(raw: Any, pattern: str) -> None:
    ours = _ours(pattern)
    if ours is None:
        pytest.fail(f"{pattern!r} was refused although Redis reads it without ambiguity")
    assert ours == _redis_matches(raw, pattern), pattern


@pytest.mark.parametrize("pattern", ["[", "a[b", "[^", "[a-", "[a-]", "[\\", "", "x[a\\]"])
def test_patterns_redis_reads_past_their_end_are_refused(pattern: str) -> None:
    with pytest.raises(ConfigurationError):
        compile_redis_glob(pattern)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(PATTERN_ALPHABET), min_size=1, max_size=7).map("".join))
def test_random_patterns_agree_with_redis_or_are_refused(raw: Any, pattern: str) -> None:
    ours = _ours(pattern)
    if ours is None:
        assert "[" in pattern  # only an unterminated class may be refused
        return
    assert ours == _redis_matches(raw, pattern), pattern


def test_the_wrapper_encrypts_every_key_redis_matches(raw: Any, tmp_path: Any) -> None:
    from greenlang_crypto.redis import EncryptedRedis, KeyPattern
    from greenlang_crypto.service import EncryptionService

    with EncryptionService.init_local(tmp_path) as service:
        wrapped = EncryptedRedis(raw, service, [KeyPattern("secret:[^x]*", "pii", "acme")])
        wrapped.set("secret:abc", b"alice@example.com")
        assert raw.get("secret:abc") != b"alice@example.com"
        assert b"alice" not in raw.get("secret:abc")
        assert wrapped.get("secret:abc") == b"alice@example.com"
        with pytest.raises(ConfigurationError):
            EncryptedRedis(raw, service, [KeyPattern("secret:[abc", "pii", "acme")])
