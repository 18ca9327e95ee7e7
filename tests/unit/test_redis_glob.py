"""Redis key globs, decided without a server: each case states what Redis ``KEYS`` answers.

The integration suite (``tests/integration/test_redis_glob.py``) compares the same predicate
with a real redis-server; these are the rules written out, so a change of meaning fails here
first and names the rule it broke.
"""

from __future__ import annotations

import pytest

from greenlang_crypto._redis_glob import compile_redis_glob
from greenlang_crypto.exceptions import ConfigurationError


def matching(pattern: str, keys: list[bytes]) -> list[bytes]:
    matches = compile_redis_glob(pattern)
    return [key for key in keys if matches(key)]


def test_a_star_matches_any_run_of_bytes_including_none_and_newlines() -> None:
    keys = [b"session:", b"session:1", b"session:a\nb", b"sessions:1", b"xsession:1"]
    assert matching("session:*", keys) == [b"session:", b"session:1", b"session:a\nb"]


def test_the_whole_key_must_match() -> None:
    assert matching("ab", [b"ab", b"abc", b"xab"]) == [b"ab"]
    assert matching("a*", [b"a", b"ab", b"ba"]) == [b"a", b"ab"]


def test_a_question_mark_is_one_byte_not_one_character() -> None:
    e_acute = "é".encode()  # two bytes in UTF-8
    assert matching("?", [b"a", e_acute, b"\n", b""]) == [b"a", b"\n"]
    assert matching("??", [e_acute, b"ab", b"a"]) == [e_acute, b"ab"]


def test_a_class_lists_bytes_and_ranges() -> None:
    assert matching("k[abx-z]", [b"ka", b"kb", b"kc", b"kx", b"ky", b"kz", b"k"]) == [
        b"ka",
        b"kb",
        b"kx",
        b"ky",
        b"kz",
    ]


def test_a_reversed_range_is_the_same_range() -> None:
    assert matching("[z-x]", [b"w", b"x", b"y", b"z"]) == [b"x", b"y", b"z"]


def test_a_caret_negates_a_class_and_an_exclamation_mark_does_not() -> None:
    keys = [b"a", b"b", b"!", b"\xff"]
    assert matching("[^a]", keys) == [b"b", b"!", b"\xff"]
    # fnmatch would read "[!a]" as "not a"; Redis reads a class of "!" and "a".
    assert matching("[!a]", keys) == [b"a", b"!"]


def test_a_range_may_end_at_a_closing_bracket() -> None:
    # "a-]" is the range ']'..'a' (0x5d..0x61); the next ']' closes the class.
    keys = [b"]", b"^", b"_", b"`", b"a", b"b", b"\\"]
    assert matching("[a-]]", keys) == [b"]", b"^", b"_", b"`", b"a"]


def test_backslash_escapes_make_the_next_byte_literal() -> None:
    keys = [b"*", b"a", b"?", b"[", b"\\"]
    assert matching("\\*", keys) == [b"*"]
    assert matching("\\?", keys) == [b"?"]
    assert matching("\\[", keys) == [b"["]
    assert matching("[\\]x]", [b"]", b"x", b"\\"]) == [b"]", b"x"]


def test_a_final_backslash_is_a_literal_backslash() -> None:
    assert matching("a\\", [b"a\\", b"a", b"a\\\\"]) == [b"a\\"]


def test_characters_special_to_python_regexes_are_literal() -> None:
    assert matching("a.b+c(d)|e$", [b"a.b+c(d)|e$", b"axb+c(d)|e$", b"aab+c(d)|e"]) == [
        b"a.b+c(d)|e$"
    ]


def test_an_empty_class_matches_nothing_and_its_negation_any_byte() -> None:
    keys = [b"x", b"\x00", b"\n", b"\xff", b""]
    assert matching("[]", keys) == []
    assert matching("[^]", keys) == [b"x", b"\x00", b"\n", b"\xff"]


def test_keys_that_are_not_utf8_match_byte_for_byte() -> None:
    # redis-py sends a str key as UTF-8; a pattern holding a lone surrogate escape stands
    # for the raw byte it was decoded from.
    assert matching("k\udcff", [b"k\xff", b"k\xc3\xbf", b"k"]) == [b"k\xff"]
    assert matching("k?", [b"k\xff", b"k\xc3\xbf"]) == [b"k\xff"]


@pytest.mark.parametrize("pattern", ["[", "a[b", "[^", "[a-", "[a-]", "[\\", "x[a\\]"])
def test_a_class_redis_would_read_past_the_end_is_refused(pattern: str) -> None:
    with pytest.raises(ConfigurationError, match="unterminated"):
        compile_redis_glob(pattern)


@pytest.mark.parametrize("pattern", ["", b"session:*", None, 3])
def test_a_pattern_must_be_a_non_empty_str(pattern: object) -> None:
    with pytest.raises(ConfigurationError, match="non-empty str"):
        compile_redis_glob(pattern)  # type: ignore[arg-type]
