"""What the encrypted Redis clients do to values, with no Redis at all: the codec and its checks."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from greenlang_crypto import _redis_values
from greenlang_crypto._redis_values import KeyPattern, RedisValueCodec, check_client
from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import (
    ConfigurationError,
    DecryptionError,
    InvalidArgumentError,
)
from greenlang_crypto.service import EncryptionService

SESSION = KeyPattern("session:*", data_class="session", tenant_id="acme")
PROFILE = KeyPattern("profile:*", data_class="pii", tenant_id=lambda key: key.split(":")[1])
CATCH_ALL = KeyPattern("*", data_class="other", tenant_id="fallback")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EncryptionService]:
    svc = EncryptionService.init_local(tmp_path_factory.mktemp("redis-values"))
    yield svc
    svc.close()


@pytest.fixture
def codec(service: EncryptionService) -> RedisValueCodec:
    return RedisValueCodec(service, [SESSION, PROFILE])


def string_aad(key: bytes) -> bytes:
    return b"glc-redis/v1s" + struct.pack(">I", len(key)) + key


def hash_aad(key: bytes, field: bytes) -> bytes:
    return (
        b"glc-redis/v1h" + struct.pack(">I", len(key)) + key + struct.pack(">I", len(field)) + field
    )


def test_a_key_pattern_is_a_frozen_value() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SESSION.pattern = "*"  # type: ignore[misc]
    assert KeyPattern("session:*", "session", "acme") == SESSION


def test_a_codec_needs_at_least_one_pattern(service: EncryptionService) -> None:
    with pytest.raises(ConfigurationError, match="at least one KeyPattern"):
        RedisValueCodec(service, [])


def test_a_bad_glob_is_refused_when_the_codec_is_built(service: EncryptionService) -> None:
    with pytest.raises(ConfigurationError, match="unterminated"):
        RedisValueCodec(service, [KeyPattern("session:[", "s", "t")])


def test_the_first_matching_pattern_wins(service: EncryptionService) -> None:
    codec = RedisValueCodec(service, [SESSION, CATCH_ALL])
    text, rule = codec.rule_for(b"session:1")
    assert text == "session:1"
    assert rule is not None and rule.pattern is SESSION
    assert codec.rule_for("cache:1")[1].pattern is CATCH_ALL  # type: ignore[union-attr]


def test_unmatched_keys_pass_through_untouched(codec: RedisValueCodec) -> None:
    value = object()
    assert codec.encrypted("plain:1") is False
    assert codec.encode("plain:1", value) is value
    assert codec.decode("plain:1", b"stored as is") == b"stored as is"
    assert codec.decode_hash("plain:1", {b"f": b"v"}) == {b"f": b"v"}


def test_a_string_value_is_an_envelope_bound_to_its_key_name(
    codec: RedisValueCodec, service: EncryptionService
) -> None:
    sealed = codec.encode("session:4f1c", b"token")
    assert isinstance(sealed, bytes) and b"token" not in sealed
    ctx = EncryptionContext(tenant_id="acme", data_class="session")
    # The stored format: anything that wrote it must still be able to read it back.
    assert service.decrypt(sealed, ctx, associated_data=string_aad(b"session:4f1c")) == b"token"
    assert codec.decode("session:4f1c", sealed) == b"token"
    assert codec.decode(b"session:4f1c", sealed) == b"token"  # str and bytes names agree
    with pytest.raises(DecryptionError):
        codec.decode("session:other", sealed)


def test_a_hash_value_is_bound_to_its_key_and_field(
    codec: RedisValueCodec, service: EncryptionService
) -> None:
    sealed = codec.encode("session:1", "v", field="name")
    ctx = EncryptionContext(tenant_id="acme", data_class="session")
    assert service.decrypt(sealed, ctx, associated_data=hash_aad(b"session:1", b"name")) == b"v"
    assert codec.decode("session:1", sealed, b"name") == b"v"
    for key, field in [("session:1", "other"), ("session:2", "name"), ("session:1", None)]:
        with pytest.raises(DecryptionError):
            codec.decode(key, sealed, field)


def test_key_and_field_boundaries_cannot_be_shifted(service: EncryptionService) -> None:
    codec = RedisValueCodec(service, [CATCH_ALL])
    sealed = codec.encode("a:b", b"x", field="c")
    with pytest.raises(DecryptionError):
        codec.decode("a", sealed, "b:c")
    with pytest.raises(DecryptionError):
        codec.decode("a:bc", sealed)


def test_a_tenant_callable_derives_the_context_from_the_key_name(
    codec: RedisValueCodec, service: EncryptionService
) -> None:
    sealed = codec.encode(b"profile:globex:7", b"G")
    mine = EncryptionContext(tenant_id="globex", data_class="pii")
    aad = string_aad(b"profile:globex:7")
    assert service.decrypt(sealed, mine, associated_data=aad) == b"G"
    other = EncryptionContext(tenant_id="initech", data_class="pii")
    with pytest.raises(DecryptionError):
        service.decrypt(sealed, other, associated_data=aad)


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        (b"raw", b"raw"),
        ("text é", "text é".encode()),
        (bytearray(b"ba"), b"ba"),
        (memoryview(b"mv"), b"mv"),
        (42, b"42"),
        (-7, b"-7"),
        (1.5, b"1.5"),
    ],
)
def test_values_are_encrypted_as_the_bytes_redis_py_would_send(
    codec: RedisValueCodec, value: object, sent: bytes
) -> None:
    assert codec.decode("session:v", codec.encode("session:v", value)) == sent


@pytest.mark.parametrize("value", [True, False, None, [1], {"a": 1}, object()])
def test_values_redis_py_would_refuse_are_refused(codec: RedisValueCodec, value: object) -> None:
    with pytest.raises(TypeError):
        codec.encode("session:v", value)


def test_decode_responses_gives_str_values_and_field_names(service: EncryptionService) -> None:
    codec = RedisValueCodec(service, [SESSION], decode_responses=True)
    sealed = codec.encode("session:1", "héllo")
    assert codec.decode("session:1", sealed) == "héllo"
    raw = {b"a": codec.encode("session:h", b"1", b"a"), b"b": codec.encode("session:h", b"2", b"b")}
    assert codec.decode_hash("session:h", raw) == {"a": "1", "b": "2"}


def test_a_whole_hash_is_decrypted_field_by_field(codec: RedisValueCodec) -> None:
    sealed = codec.encode_mapping("session:h", {b"a": b"1", "b": 2})
    assert sealed is not None and set(sealed) == {b"a", "b"}
    raw = {b"a": sealed[b"a"], b"b": sealed["b"]}
    assert codec.decode_hash("session:h", raw) == {b"a": b"1", b"b": b"2"}
    # Values swapped between fields fail.
    with pytest.raises(DecryptionError):
        codec.decode_hash("session:h", {b"a": sealed["b"], b"b": sealed[b"a"]})
    assert codec.encode_mapping("session:h", None) is None


def test_nothing_missing_decodes_to_none(codec: RedisValueCodec) -> None:
    assert codec.decode("session:gone", None) is None


def test_plaintext_under_an_encrypted_pattern_is_never_returned(codec: RedisValueCodec) -> None:
    with pytest.raises(DecryptionError):
        codec.decode("session:1", b"plaintext someone wrote directly")


def test_str_answers_under_an_encrypted_pattern_mean_a_misconfigured_client(
    codec: RedisValueCodec,
) -> None:
    with pytest.raises(ConfigurationError, match="decode_responses=False"):
        codec.decode("session:1", "already decoded")


@pytest.mark.parametrize("key", [3, None, 1.0, ("session:1",)])
def test_key_names_must_be_str_or_bytes(codec: RedisValueCodec, key: object) -> None:
    with pytest.raises(InvalidArgumentError, match="must be str or bytes"):
        codec.encode(key, b"v")  # type: ignore[arg-type]


def test_key_names_that_are_not_utf8_keep_their_bytes(service: EncryptionService) -> None:
    codec = RedisValueCodec(service, [CATCH_ALL])
    sealed = codec.encode(b"k\xff", b"v")
    assert codec.decode(b"k\xff", sealed) == b"v"
    with pytest.raises(DecryptionError):
        codec.decode("k\u00ff", sealed)  # the UTF-8 encoding of U+00FF is another key


def test_the_pattern_memo_stays_bounded(
    codec: RedisValueCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_redis_values, "_MEMO_LIMIT", 5)
    for i in range(23):
        assert codec.encrypted(f"session:{i}")
        assert len(codec._memo) <= 5
    assert codec.encrypted("plain:x") is False


@pytest.mark.parametrize(
    "client",
    [
        object(),
        SimpleNamespace(connection_pool=None),
        SimpleNamespace(connection_pool=SimpleNamespace(connection_kwargs=None)),
        SimpleNamespace(connection_pool=SimpleNamespace(connection_kwargs={})),
        SimpleNamespace(
            connection_pool=SimpleNamespace(connection_kwargs={"decode_responses": False})
        ),
    ],
)
def test_clients_that_return_bytes_are_accepted(client: object) -> None:
    check_client(client)  # no ConfigurationError


def test_a_client_that_decodes_answers_itself_is_refused() -> None:
    client = SimpleNamespace(
        connection_pool=SimpleNamespace(connection_kwargs={"decode_responses": True})
    )
    with pytest.raises(ConfigurationError, match="decode_responses=False"):
        check_client(client)


def test_a_real_redis_py_client_is_checked_without_connecting() -> None:
    redis = pytest.importorskip("redis")
    check_client(redis.Redis(host="127.0.0.1", port=1))
    with pytest.raises(ConfigurationError):
        check_client(redis.Redis(host="127.0.0.1", port=1, decode_responses=True))
