"""AWS KMS key identifiers: key ARNs, alias ARNs, bare key ids and alias names.

Parsing is strict on purpose. Key ids reach a provider from configuration and from envelopes
read back from storage; anything that is not plainly one of the four forms is refused, so an
odd string can neither match an allowed key by accident nor be sent to KMS.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from greenlang_crypto import _forks
from greenlang_crypto.exceptions import ConfigurationError

__all__ = [
    "AliasTargets",
    "KeyRef",
    "is_region",
    "parse_key",
    "parse_key_list",
    "returned_matches",
    "same_key",
]

_KEY_ARN_RE: Final = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):kms:(?P<region>[a-z]{2}(?:-[a-z0-9]+)+-\d+):"
    r"(?P<account>\d{12}):(?P<kind>key|alias)/(?P<resource>[A-Za-z0-9/_+=,.@:-]+)$"
)
_KEY_ID_RE: Final = re.compile(
    r"^(?:mrk-[0-9a-f]{32}|(?:mrk-)?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$",
    re.IGNORECASE,
)
_ALIAS_RE: Final = re.compile(r"^alias/[A-Za-z0-9/_-]{1,250}$")
_REGION_RE: Final = re.compile(r"^[a-z]{2}(?:-[a-z0-9]+)+-\d+$")


def is_region(value: object) -> bool:
    """Whether ``value`` is shaped like an AWS region name (``us-east-1``, ``eu-central-2``)."""
    return isinstance(value, str) and _REGION_RE.match(value) is not None


@dataclass(frozen=True, slots=True)
class KeyRef:
    """A parsed key identifier: key ARN, alias ARN, bare key id or alias name.

    Attributes:
        raw: The identifier as given (what is sent to KMS).
        region: The ARN's region, or the default region for a bare id or alias name.
        resource: Key id (``1234abcd-...`` / ``mrk-...``) or alias name (``alias/...``).
        is_alias: Whether this names an alias rather than a key.
        account: The ARN's account; None for a bare id or alias name (the caller's).
        partition: The ARN's partition (``aws``, ``aws-cn``...); None when not an ARN.
    """

    raw: str
    region: str
    resource: str
    is_alias: bool
    account: str | None = None
    partition: str | None = None

    @property
    def mrk_id(self) -> str | None:
        """The ``mrk-`` id shared by a Multi-Region key's replicas, or None."""
        if not self.is_alias and self.resource.startswith("mrk-"):
            return self.resource
        return None


def parse_key(value: str, default_region: str | None) -> KeyRef | None:
    """Parses one identifier; None when it is not one of the accepted forms.

    Args:
        value: A key ARN, alias ARN, bare key id or alias name.
        default_region: Region of a bare key id or alias name; None accepts ARNs only.
    """
    m = _KEY_ARN_RE.match(value)
    if m:
        is_alias = m["kind"] == "alias"
        resource = f"alias/{m['resource']}" if is_alias else m["resource"]
        if is_alias and not _ALIAS_RE.match(resource):
            return None
        if not is_alias and not _KEY_ID_RE.match(resource):
            return None
        return KeyRef(
            raw=value,
            region=m["region"],
            resource=resource,
            is_alias=is_alias,
            account=m["account"],
            partition=m["partition"],
        )
    if default_region is None:
        return None
    if _ALIAS_RE.match(value):
        return KeyRef(raw=value, region=default_region, resource=value, is_alias=True)
    if _KEY_ID_RE.match(value):
        return KeyRef(raw=value, region=default_region, resource=value, is_alias=False)
    return None


def same_key(a: KeyRef, b: KeyRef) -> bool:
    """Whether two references name the same key (or alias) in the same region."""
    if a.is_alias != b.is_alias or a.region != b.region:
        return False
    # Key ids are hex UUIDs (case-insensitive); alias names are case-sensitive.
    same = a.resource == b.resource if a.is_alias else a.resource.lower() == b.resource.lower()
    if not same:
        return False
    # A bare id or alias name has no account/partition: it means "the caller's".
    if a.account and b.account and a.account != b.account:
        return False
    return not (a.partition and b.partition and a.partition != b.partition)


def returned_matches(target: KeyRef, returned: object) -> bool:
    """Whether the ``KeyId`` KMS returned is the key that ``target`` pinned.

    KMS answers with a key ARN. It must be in ``target``'s region (and account and partition,
    where ``target`` names them) and, unless ``target`` is an alias, be that very key.
    """
    if not isinstance(returned, str):
        return False
    got = parse_key(returned, None)
    if got is None or got.is_alias or got.region != target.region:
        return False
    if target.account and got.account != target.account:
        return False
    if target.partition and got.partition != target.partition:
        return False
    # An alias resolves to some key in its region and account; KMS is the authority.
    return target.is_alias or got.resource.lower() == target.resource.lower()


def parse_key_list(keys: Sequence[str], region: str | None) -> list[KeyRef]:
    """Parses a provider's configured keys: primary first, then replicas and extra keys.

    Args:
        keys: Key ARNs, alias ARNs, bare key ids or alias names.
        region: Region of the bare key ids and alias names among ``keys``.

    Returns:
        The parsed references, in the order given.

    Raises:
        ConfigurationError: ``keys`` is empty or not a sequence of str, an entry is not a key
            identifier, an entry repeats an earlier one, or a replica of the primary
            Multi-Region key is in the primary's own region.
    """
    if isinstance(keys, str | bytes) or not isinstance(keys, Sequence) or not keys:
        raise ConfigurationError("keys must be a non-empty sequence of key ARNs")
    parsed: list[KeyRef] = []
    for i, value in enumerate(keys):
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"keys[{i}] must be a non-empty str")
        ref = parse_key(value, region)
        if ref is None:
            hint = "" if region else " (bare key ids and aliases need region=)"
            raise ConfigurationError(f"keys[{i}] is not a KMS key ARN, key id or alias{hint}")
        if any(same_key(ref, other) for other in parsed):
            raise ConfigurationError(f"keys[{i}] duplicates an earlier entry")
        parsed.append(ref)
    primary = parsed[0]
    for i, ref in enumerate(parsed[1:], start=1):
        if ref.mrk_id and ref.mrk_id == primary.mrk_id and ref.region == primary.region:
            raise ConfigurationError(f"keys[{i}] is in the primary's region, not a replica")
    return parsed


class AliasTargets:
    """The key ARNs each configured alias has been seen to resolve to, and when it was asked.

    An alias may be re-pointed at any time, so what it resolved to is remembered (data wrapped
    under an earlier target must still open) rather than looked up on every call.

    Args:
        recheck_seconds: How long after asking KMS where an alias points it may be asked again.
        clock: Monotonic clock, seconds.
    """

    def __init__(self, recheck_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._recheck_seconds = recheck_seconds
        self._clock = clock
        self._targets: dict[tuple[str, str], set[str]] = {}
        # When each alias was last asked about a key it did not vouch for.
        self._asked: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        _forks.fresh_locks_after_fork(self, "_lock")

    def seen(self, alias: KeyRef) -> set[str]:
        """The key ARNs ``alias`` has been seen to resolve to."""
        with self._lock:
            return set(self._targets.get((alias.region, alias.resource), ()))

    def remember(self, alias: KeyRef, arn: str) -> None:
        """Records that ``alias`` resolved to ``arn``."""
        with self._lock:
            self._targets.setdefault((alias.region, alias.resource), set()).add(arn)

    def may_ask(self, alias: KeyRef) -> bool:
        """Whether KMS may be asked where ``alias`` points now (and if so, notes the time)."""
        now = self._clock()
        with self._lock:
            last = self._asked.get((alias.region, alias.resource))
            if last is not None and now - last < self._recheck_seconds:
                return False
            self._asked[(alias.region, alias.resource)] = now
            return True
