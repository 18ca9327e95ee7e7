"""Parsing of AWS KMS key identifiers: key and alias ARNs, bare ids, aliases, Multi-Region ids."""

from __future__ import annotations

import pytest

from greenlang_crypto.exceptions import ConfigurationError
from greenlang_crypto.providers._key_ids import (
    AliasTargets,
    KeyRef,
    is_region,
    parse_key,
    parse_key_list,
    returned_matches,
    same_key,
)

ACCOUNT = "123456789012"
KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
OTHER_ID = "0987dcba-09fe-87dc-65ba-ab0987654321"
MRK_ID = "mrk-1234abcd12ab34cd56ef1234567890ab"
EAST, WEST = "us-east-1", "us-west-2"


def arn(resource: str, region: str = EAST, account: str = ACCOUNT, partition: str = "aws") -> str:
    return f"arn:{partition}:kms:{region}:{account}:{resource}"


# -- single identifiers -----------------------------------------------------------------------


def test_a_key_arn_gives_region_account_partition_and_key_id() -> None:
    ref = parse_key(arn(f"key/{KEY_ID}", WEST), None)
    assert ref == KeyRef(
        raw=arn(f"key/{KEY_ID}", WEST),
        region=WEST,
        resource=KEY_ID,
        is_alias=False,
        account=ACCOUNT,
        partition="aws",
    )
    assert ref.mrk_id is None


def test_an_alias_arn_keeps_the_alias_prefix() -> None:
    ref = parse_key(arn("alias/app-data"), None)
    assert ref is not None and ref.is_alias and ref.resource == "alias/app-data"
    assert ref.mrk_id is None


@pytest.mark.parametrize("key_id", [MRK_ID, f"mrk-{KEY_ID}"])
def test_multi_region_ids_are_recognised(key_id: str) -> None:
    ref = parse_key(arn(f"key/{key_id}", "eu-central-1"), None)
    assert ref is not None and ref.mrk_id == key_id and ref.region == "eu-central-1"


def test_other_partitions_parse() -> None:
    ref = parse_key(arn(f"key/{KEY_ID}", "cn-north-1", partition="aws-cn"), None)
    assert ref is not None and ref.partition == "aws-cn" and ref.region == "cn-north-1"


def test_bare_ids_and_alias_names_need_a_default_region() -> None:
    assert parse_key(KEY_ID, None) is None
    assert parse_key("alias/app", None) is None
    bare = parse_key(KEY_ID.upper(), WEST)
    alias = parse_key("alias/app", WEST)
    assert bare is not None and (bare.region, bare.is_alias, bare.account) == (WEST, False, None)
    assert alias is not None and (alias.region, alias.is_alias) == (WEST, True)


@pytest.mark.parametrize(
    "value",
    [
        "",
        " " + arn(f"key/{KEY_ID}"),
        arn(f"key/{KEY_ID}", account="12345678901"),  # 11 digits
        arn(f"key/{KEY_ID}", region="useast1"),
        arn("key/not-a-key-id"),
        arn(f"key/{KEY_ID[:-1]}g"),
        arn("alias/has space"),
        arn("alias/"),
        f"arn:aws:s3:{EAST}:{ACCOUNT}:key/{KEY_ID}",  # another service
        f"arn:aws:kms:{EAST}:{ACCOUNT}:grant/{KEY_ID}",
        "mrk-123",
        "alias/" + "a" * 251,
        "alias/app!",
        "key/" + KEY_ID,
    ],
)
def test_anything_else_is_not_a_key(value: str) -> None:
    assert parse_key(value, EAST) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("us-east-1", True),
        ("ap-southeast-2", True),
        ("us-gov-west-1", True),
        ("US-EAST-1", False),
        ("us-east", False),
        ("", False),
        (None, False),
        (1, False),
    ],
)
def test_is_region(value: object, expected: bool) -> None:
    assert is_region(value) is expected


# -- comparing identifiers --------------------------------------------------------------------


def ref(value: str, region: str | None = EAST) -> KeyRef:
    parsed = parse_key(value, region)
    assert parsed is not None
    return parsed


def test_key_ids_compare_case_insensitively_and_a_bare_id_matches_its_arn() -> None:
    assert same_key(ref(arn(f"key/{KEY_ID}")), ref(KEY_ID.upper()))
    assert not same_key(ref(arn(f"key/{KEY_ID}")), ref(arn(f"key/{OTHER_ID}")))


def test_same_key_needs_the_same_region_account_partition_and_kind() -> None:
    base = ref(arn(f"key/{KEY_ID}"))
    assert not same_key(base, ref(arn(f"key/{KEY_ID}", WEST)))
    assert not same_key(base, ref(arn(f"key/{KEY_ID}", account="210987654321")))
    assert not same_key(base, ref(arn(f"key/{KEY_ID}", partition="aws-us-gov")))
    assert not same_key(ref("alias/x"), ref(arn("key/" + KEY_ID)))


def test_alias_names_are_case_sensitive() -> None:
    assert same_key(ref("alias/App"), ref(arn("alias/App")))
    assert not same_key(ref("alias/App"), ref("alias/app"))


def test_an_answer_must_name_the_pinned_key() -> None:
    pinned = ref(arn(f"key/{KEY_ID}"))
    assert returned_matches(pinned, arn(f"key/{KEY_ID.upper()}"))
    assert not returned_matches(pinned, arn(f"key/{OTHER_ID}"))
    assert not returned_matches(pinned, arn(f"key/{KEY_ID}", WEST))
    assert not returned_matches(pinned, arn(f"key/{KEY_ID}", account="210987654321"))
    assert not returned_matches(pinned, KEY_ID)  # KMS answers with an ARN
    assert not returned_matches(pinned, None)


def test_an_alias_vouches_for_any_key_in_its_region_and_account() -> None:
    alias = ref(arn("alias/app"))
    assert returned_matches(alias, arn(f"key/{OTHER_ID}"))
    assert not returned_matches(alias, arn(f"key/{OTHER_ID}", WEST))
    assert not returned_matches(alias, arn(f"key/{OTHER_ID}", account="210987654321"))
    assert not returned_matches(alias, arn("alias/app"))  # an answer names a key, not an alias


# -- configured key lists ---------------------------------------------------------------------


def test_a_primary_its_replica_and_an_extra_key_parse_in_order() -> None:
    keys = [arn(f"key/{MRK_ID}"), arn(f"key/{MRK_ID}", WEST), KEY_ID]
    parsed = parse_key_list(keys, EAST)
    assert [k.raw for k in parsed] == keys
    assert [k.mrk_id for k in parsed] == [MRK_ID, MRK_ID, None]


@pytest.mark.parametrize(
    ("keys", "region", "message"),
    [
        ([], None, "non-empty sequence"),
        (arn(f"key/{KEY_ID}"), None, "non-empty sequence"),  # a str, not a list of them
        (b"key", None, "non-empty sequence"),
        ({arn(f"key/{KEY_ID}")}, None, "non-empty sequence"),  # a set has no order
        ([arn(f"key/{KEY_ID}"), ""], None, r"keys\[1\] must be a non-empty str"),
        ([arn(f"key/{KEY_ID}"), 7], None, r"keys\[1\] must be a non-empty str"),
        (["nonsense"], EAST, r"keys\[0\] is not a KMS key ARN, key id or alias$"),
        ([KEY_ID], None, r"need region="),
        ([arn(f"key/{KEY_ID}"), KEY_ID.upper()], EAST, r"keys\[1\] duplicates"),
        ([arn(f"key/{MRK_ID}"), MRK_ID], EAST, r"keys\[1\] duplicates"),
        (
            [arn(f"key/{MRK_ID}"), arn(f"key/{MRK_ID}", account="210987654321")],
            None,
            r"keys\[1\] is in the primary's region, not a replica",
        ),
    ],
)
def test_bad_key_lists_raise_configuration_errors(
    keys: object, region: str | None, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_key_list(keys, region)  # type: ignore[arg-type]


# -- what aliases resolved to -----------------------------------------------------------------


def test_alias_targets_remember_per_alias_and_region() -> None:
    targets = AliasTargets(1.0, clock=lambda: 0.0)
    east, west = ref("alias/app"), ref("alias/app", WEST)
    targets.remember(east, arn(f"key/{KEY_ID}"))
    targets.remember(east, arn(f"key/{OTHER_ID}"))
    assert targets.seen(east) == {arn(f"key/{KEY_ID}"), arn(f"key/{OTHER_ID}")}
    assert targets.seen(west) == set()
    targets.seen(east).clear()  # a copy: the memory is not handed out
    assert len(targets.seen(east)) == 2


def test_an_alias_may_be_asked_again_only_after_the_recheck_interval() -> None:
    now = [100.0]
    targets = AliasTargets(1.0, clock=lambda: now[0])
    alias = ref("alias/app")
    assert targets.may_ask(alias) is True
    now[0] += 0.5
    assert targets.may_ask(alias) is False
    assert targets.may_ask(ref("alias/other")) is True  # each alias has its own interval
    now[0] += 0.5
    assert targets.may_ask(alias) is True
    assert targets.may_ask(alias) is False
