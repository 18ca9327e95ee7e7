"""The typed encryption context.

An encryption context is a set of non-secret string pairs that is bound to every ciphertext:
it goes into the AEAD associated data and into the KMS ``EncryptionContext``, so a ciphertext
decrypts only with exactly the same context (byte-exact, case-sensitive, no Unicode
normalization, as KMS compares it). Its canonical encoding sorts keys and length-prefixes
every string, so reordering keys does not matter and no two different contexts share bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from greenlang_crypto._core import canonical_context, context_digest
from greenlang_crypto.exceptions import InvalidContextError

__all__ = ["RESERVED_KEYS", "EncryptionContext"]

#: Keys the library sets itself; extra pairs may not use them.
RESERVED_KEYS = frozenset({"tenant_id", "data_class"})


@dataclass(frozen=True, slots=True)
class EncryptionContext:
    """Who the data belongs to and what kind of data it is.

    Attributes:
        tenant_id: The owning tenant. Required, non-empty.
        data_class: The data classification (for example ``pii``, ``secret``). Required.
        extra: Further non-secret string pairs (for example ``purpose``).
    """

    tenant_id: str
    data_class: str
    extra: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    _canonical: bytes = field(init=False, repr=False, compare=False)
    _digest: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, value in (("tenant_id", self.tenant_id), ("data_class", self.data_class)):
            if not isinstance(value, str) or not value:
                raise InvalidContextError(f"{name} must be a non-empty str")
        if not isinstance(self.extra, Mapping):
            raise InvalidContextError("extra must be a mapping of str to str")
        clash = RESERVED_KEYS.intersection(self.extra)
        if clash:
            raise InvalidContextError(f"extra may not set reserved keys: {sorted(clash)}")
        frozen = MappingProxyType(dict(self.extra))
        object.__setattr__(self, "extra", frozen)
        # Encoding validates every string (types, lone surrogates, size) once, here, so a bad
        # context fails before any KMS call or cache lookup.
        object.__setattr__(self, "_canonical", canonical_context(self.as_dict()))
        object.__setattr__(self, "_digest", context_digest(self._canonical))

    def __hash__(self) -> int:
        return hash(self._canonical)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EncryptionContext):
            return NotImplemented
        return self._canonical == other._canonical

    def as_dict(self) -> dict[str, str]:
        """The context as the plain dict sent to KMS as ``EncryptionContext``."""
        d = dict(self.extra)
        d["tenant_id"] = self.tenant_id
        d["data_class"] = self.data_class
        return d

    @property
    def canonical(self) -> bytes:
        """The canonical encoding (sorted, length-prefixed UTF-8)."""
        return self._canonical

    @property
    def digest(self) -> bytes:
        """SHA-256 of the canonical encoding: what audit records and key-store rows keep."""
        return self._digest

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str]) -> EncryptionContext:
        """Builds a context from a flat mapping that contains ``tenant_id`` and ``data_class``."""
        if not isinstance(mapping, Mapping):
            raise InvalidContextError("context must be a mapping")
        try:
            tenant_id = mapping["tenant_id"]
            data_class = mapping["data_class"]
        except KeyError:
            raise InvalidContextError("context needs tenant_id and data_class") from None
        extra = {k: v for k, v in mapping.items() if k not in RESERVED_KEYS}
        return cls(tenant_id=tenant_id, data_class=data_class, extra=extra)
