"""Blind indexes: an HMAC column beside an encrypted one, for equality lookups.

A blind index value is ``bytes([index_key_version]) + HMAC-SHA256(key, normalize(value))``,
truncated to ``length`` bytes of MAC. The key comes from
``service.blind_index_key(purpose, version)``: HKDF from a versioned index root key, with a
purpose naming the table and column (and the tenant when ``per_tenant``), so the index key is
never a DEK or wrapping key and equal plaintexts in two columns get unrelated indexes.

*Versions.* The first byte is the index key version. New values use the primary version;
during an index-key rotation a lookup matches every active version
(``col IN (v2||mac2, v1||mac1)``), so rows not yet re-indexed are still found. The re-encryption
job (:mod:`.migrate`) recomputes old-version indexes; afterwards the old version is retired.
Versions are limited to 1..255 (one byte). Active versions are re-read from the key store at
most every ``refresh_seconds`` (default 5 s); retire a version only after the backfill, which
takes longer than that.

*Normalization* is per column and applied before the MAC, so the same logical value always
gives the same index (a normalizer is part of the index definition: changing it requires a
re-index). Built-ins: :func:`strip`, :func:`collapse_whitespace`, :func:`nfc`, :func:`nfkc`,
:func:`casefold`, :func:`digits`, and the compositions :data:`EMAIL` (strip, NFC, casefold) and
:data:`PHONE` (keep ``+`` and digits). The stored ciphertext keeps the original bytes.

*Truncation.* With a short ``length`` (for example 2 bytes, for k-anonymity) a lookup returns a
superset; :func:`lookup` decrypts the candidates and keeps only true matches. ``NULL`` is not
indexed (the index is NULL); ``""`` has a defined index (the MAC of the empty string).
"""

from __future__ import annotations

import hmac
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Boolean, Column, LargeBinary, Table, bindparam, select
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BinaryExpression, ClauseElement, ColumnElement
from sqlalchemy.types import TypeDecorator

from greenlang_crypto import _forks
from greenlang_crypto.exceptions import InvalidArgumentError

# Imported for its effect: the ORM hooks (row binding, blind-index filling) are loaded before
# any mapper using blind indexes is configured, also when this module is imported directly
# rather than through the package's lazy exports.
from greenlang_crypto.sqlalchemy import _orm_loader  # noqa: F401
from greenlang_crypto.sqlalchemy._common import (
    FromRow,
    ServiceRef,
    off_the_loop,
    resolve_service,
)

# index_for_source is re-exported: it has always been importable from here.
from greenlang_crypto.sqlalchemy._index_lookup import IndexType, index_for_source
from greenlang_crypto.sqlalchemy.types import EncryptedType

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    from greenlang_crypto._core import BlindIndexKey

__all__ = [
    "EMAIL",
    "PHONE",
    "BlindIndex",
    "IndexValue",
    "alookup",
    "casefold",
    "collapse_whitespace",
    "digits",
    "index_for_source",
    "lookup",
    "nfc",
    "nfkc",
    "strip",
]

Normalizer = Callable[[str], str]


class _IndexParam(TypeDecorator[bytes]):
    """The type of a lookup's index-value parameters: ``bytes`` bound as they are.

    psycopg, sqlite3 and asyncpg bind ``bytes`` as bytea / BLOB themselves, so the DBAPI
    ``Binary()`` wrapper of ``LargeBinary`` is skipped for them, as the column types do.
    """

    impl = LargeBinary
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Any:
        """None for psycopg, pysqlite and asyncpg; the impl's wrapper for other drivers."""
        if dialect.driver in ("psycopg", "pysqlite", "asyncpg"):
            return None
        return self.impl_instance.bind_processor(dialect)


# Shared by every lookup's parameters and predicates (types hold no per-statement state).
_BYTES = _IndexParam()
_BOOL = Boolean()


def strip(value: str) -> str:
    """Removes leading and trailing whitespace."""
    return value.strip()


def collapse_whitespace(value: str) -> str:
    """Strips and collapses every run of whitespace to one space."""
    return " ".join(value.split())


def nfc(value: str) -> str:
    """Unicode NFC (canonical composition): NFD and NFC spellings index alike."""
    return unicodedata.normalize("NFC", value)


def nfkc(value: str) -> str:
    """Unicode NFKC (compatibility composition): also folds full-width forms, ligatures."""
    return unicodedata.normalize("NFKC", value)


def casefold(value: str) -> str:
    """Unicode case folding (``"Straße"`` and ``"STRASSE"`` index alike)."""
    return value.casefold()


def digits(value: str) -> str:
    """Keeps a leading ``+`` and the ASCII digits (phone numbers)."""
    head = "+" if value.strip().startswith("+") else ""
    return head + "".join(c for c in value if "0" <= c <= "9")


#: E-mail addresses: strip, NFC, casefold.
EMAIL: tuple[Normalizer, ...] = (strip, nfc, casefold)
#: Phone numbers: ``+`` and digits only.
PHONE: tuple[Normalizer, ...] = (digits,)

# What each built-in normalizer does to an ASCII string, as a C-level callable: NFC and NFKC
# leave ASCII unchanged, and ASCII case folding is lowercasing (Unicode CaseFolding.txt maps
# only A-Z within ASCII). ``None`` drops the step. A flush maps these over a whole column of
# ASCII values (the common case for e-mail addresses and phone numbers) with no Python frame
# per value; anything else takes the declared normalizers.
_ASCII_EQUIVALENT: dict[Normalizer, Normalizer | None] = {
    strip: str.strip,
    collapse_whitespace: collapse_whitespace,
    nfc: None,
    nfkc: None,
    casefold: str.lower,
    digits: digits,
}


def _ascii_plan(steps: tuple[Normalizer, ...]) -> tuple[Normalizer, ...] | None:
    """The C-level steps equivalent to ``steps`` on ASCII input, or None if there are none."""
    plan: list[Normalizer] = []
    for step in steps:
        if step not in _ASCII_EQUIVALENT:
            return None
        equivalent = _ASCII_EQUIVALENT[step]
        if equivalent is not None:
            plan.append(equivalent)
    return tuple(plan)


class IndexValue(bytes):
    """A computed blind-index value; the index column type stores it unchanged."""

    __slots__ = ()


def _keys_marker(svc: object) -> tuple[object, object]:
    """What the cached keys of a column depend on: which service, at which keyring epoch."""
    return getattr(svc, "instance_id", None) or id(svc), getattr(svc, "keyring_epoch", None)


class _KeyCache:
    """Index keys and active versions of one blind-index column."""

    __slots__ = ("__weakref__", "epoch", "keys", "lock", "versions")

    def __init__(self) -> None:
        self.keys: dict[tuple[int, str], BlindIndexKey] = {}
        self.versions: tuple[list[int], float] = ([], 0.0)
        #: The service (its instance id) and keyring epoch the cached keys were derived
        #: under: another service behind the same column (a test's, one rebuilt after a
        #: configuration change) has other keys even at the same epoch number.
        self.epoch: tuple[object, object] | None = None
        self.lock = threading.Lock()
        _forks.fresh_locks_after_fork(self, "lock")


class BlindIndex(IndexType):
    """The column type of a blind index over an encrypted column of the same table.

    Declared beside the encrypted column; the ORM hooks fill it from the source attribute on
    every insert and update. With Core, bind the plaintext to the index column too (it is
    normalized and MACed on the way), or pass :meth:`compute`'s result.

    ``index_col == value`` (and ``encrypted_col == value`` on the source) becomes
    ``index_col IN (<one value per active index version>)``, which uses a B-tree index on the
    column.

    Args:
        source: Name of the encrypted column in the same table.
        purpose: Key purpose (default ``"<schema.table>.<source>"``); part of the HKDF label.
        normalizer: A normalizer or a sequence applied in order (default: none; byte-exact).
        length: MAC bytes kept, 1..32 (default 16). Short values give false positives, which
            :func:`lookup` filters by decrypting.
        per_tenant: Derive a separate key per tenant (the purpose gets ``|tenant=<id>``).
        service: The service (default: the source column's).
        refresh_seconds: How long the list of active index versions is cached.
        orm_deferred: Leave the index column out of ORM entity loads (default). Lookups
            compare it in SQL and flushes only write it, so loading it into every object would
            cost a column per row for nothing. The column is deferred with raiseload: reading
            the unloaded attribute raises SQLAlchemy's ``InvalidRequestError`` rather than
            running a query behind the attribute (which an ``AsyncSession`` cannot do: it
            would fail with ``MissingGreenlet``); ``options(undefer(User.email_bidx))`` or
            ``session.refresh(user, ["email_bidx"])`` loads it.

    With a per-tenant index over a row tenant (``FromRow``), ``==`` has no tenant to pick
    the key with; compare with ``User.email.matches(value, tenant_id=...)`` (see
    :meth:`.types.EncryptedType.comparator_factory.matches`), or pass ``tenant_id`` to
    :func:`lookup` / :func:`alookup`.
    """

    impl = LargeBinary
    cache_ok = True

    def __init__(
        self,
        source: str,
        *,
        purpose: str | None = None,
        normalizer: Normalizer | Sequence[Normalizer] | None = None,
        length: int = 16,
        per_tenant: bool = False,
        service: ServiceRef | None = None,
        refresh_seconds: float = 5.0,
        orm_deferred: bool = True,
    ) -> None:
        super().__init__()
        if not 1 <= length <= 32:
            raise InvalidArgumentError("length must be in 1..32")
        self.source = source
        self.purpose = purpose
        if normalizer is None:
            steps: tuple[Normalizer, ...] = ()
        elif callable(normalizer):
            steps = (normalizer,)
        else:
            steps = tuple(normalizer)
        self.normalizer = steps
        self._ascii_plan = _ascii_plan(steps)
        self.orm_deferred = orm_deferred
        self.length = length
        self.per_tenant = per_tenant
        self.service = service
        self.refresh_seconds = refresh_seconds
        self._table: Table | None = None
        # Shared by the copies SQLAlchemy makes of this type (one per dialect), so refresh()
        # on the model's column reaches the copy that actually processes parameters.
        self._cache = _KeyCache()

    def _attach(self, table: Table, column: Column[Any]) -> None:
        self._table = table

    # -- definition ----------------------------------------------------------------------

    @property
    def source_type(self) -> EncryptedType:
        """The encrypted type of the source column."""
        if self._table is None:
            raise InvalidArgumentError("BlindIndex is not attached to a table")
        try:
            typ = self._table.c[self.source].type
        except KeyError:
            raise InvalidArgumentError(
                f"no column {self.source!r} beside the blind index"
            ) from None
        if not isinstance(typ, EncryptedType):
            raise InvalidArgumentError(f"column {self.source!r} is not an encrypted column")
        return typ

    def _service(self) -> Any:
        return resolve_service(
            self.service if self.service is not None else self.source_type.service
        )

    def purpose_for(self, tenant_id: str | None = None) -> str:
        """The key purpose (table and column, plus the tenant for per-tenant indexes)."""
        if self._table is None and self.purpose is None:
            raise InvalidArgumentError("BlindIndex is not attached to a table")
        base = self.purpose or f"{self._table.fullname}.{self.source}"  # type: ignore[union-attr]
        if not self.per_tenant:
            return base
        if tenant_id is None:
            tenant_id = self._current_tenant()
        return f"{base}|tenant={tenant_id}"

    def _current_tenant(self) -> str:
        spec = self.source_type.tenant_id
        if isinstance(spec, str):
            return spec
        if isinstance(spec, FromRow):
            raise InvalidArgumentError(
                f"the blind index over {self.source!r} is per tenant and the tenant comes from "
                f"the row: compare with {self.source}.matches(value, tenant_id=...) instead of "
                "==, or pass tenant_id to lookup()"
            )
        return spec()

    def normalize(self, value: str | bytes) -> bytes:
        """The bytes that get MACed: the normalized value (str as UTF-8)."""
        if isinstance(value, str):
            for step in self.normalizer:
                value = step(value)
            try:
                return value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidArgumentError("value is not valid Unicode (lone surrogate)") from None
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        raise TypeError(f"blind index takes str or bytes, not {type(value).__name__}")

    # -- keys ----------------------------------------------------------------------------

    def active_versions(self) -> list[int]:
        """Active index key versions, primary first (cached for ``refresh_seconds``).

        Any key change the service has loaded (a tenant erasure gives an erased tenant a new
        index key; a retirement drops a version) empties the cached keys at once: a
        long-running process never indexes or looks up with a key the key store replaced.
        """
        svc = self._service()
        epoch = _keys_marker(svc)
        if epoch != self._cache.epoch:
            with self._cache.lock:
                self._cache.keys = {}
                self._cache.versions = ([], 0.0)
                self._cache.epoch = epoch
        versions, at = self._cache.versions
        now = time.monotonic()
        if not versions or now - at > self.refresh_seconds:
            versions = list(off_the_loop(svc.active_index_versions))
            if any(not 1 <= v <= 255 for v in versions):
                raise InvalidArgumentError("blind-index key versions must be in 1..255")
            self._cache.versions = (versions, now)
            # The read may have created the first index key, itself a key change: take the
            # epoch that includes it, or the keys derived next would be dropped at once.
            self._cache.epoch = _keys_marker(svc)
        return versions

    def keys_cached(self, tenant_id: str | None = None) -> bool:
        """Whether a lookup of ``tenant_id`` needs no key-store or KMS call (keys cached).

        Raises:
            InvalidArgumentError: A per-tenant index over a row tenant without ``tenant_id``.
        """
        versions, at = self._cache.versions
        if not versions or time.monotonic() - at > self.refresh_seconds:
            return False
        if _keys_marker(self._service()) != self._cache.epoch:
            return False
        purpose = self.purpose_for(tenant_id)
        return all((v, purpose) in self._cache.keys for v in versions)

    def refresh(self) -> None:
        """Forgets the cached versions and keys (after a rotation or retirement)."""
        with self._cache.lock:
            self._cache.versions = ([], 0.0)
            self._cache.keys = {}

    def _key(self, version: int, purpose: str) -> BlindIndexKey:
        key = self._cache.keys.get((version, purpose))
        if key is None:
            key = off_the_loop(self._service().blind_index_key, purpose, version)
            with self._cache.lock:
                self._cache.keys[(version, purpose)] = key
        return key

    def compute(
        self, value: str | bytes, *, tenant_id: str | None = None, version: int | None = None
    ) -> IndexValue:
        """The index value of ``value`` under the primary (or the given) version."""
        if version is None:
            version = self.active_versions()[0]
        mac = self._mac(self._key(version, self.purpose_for(tenant_id)), self.normalize(value))
        return IndexValue(bytes((version,)) + mac)

    def compute_many(
        self, values: Sequence[str | bytes], tenant_ids: Sequence[str | None] | None = None
    ) -> list[IndexValue]:
        """Index values of many plaintexts under the primary version (one flush's worth).

        Values are normalized one by one (normalizers are Python callables); the MACs are
        computed in one Rust call per key purpose (per tenant for per-tenant indexes).
        """
        if not values:
            return []
        version = self.active_versions()[0]
        data = self.normalize_many(values)
        if tenant_ids is None or not self.per_tenant:
            key = self._key(
                version, self.purpose_for(None if tenant_ids is None else tenant_ids[0])
            )
            return list(map(IndexValue, key.compute_batch(data, self.length, version)))
        groups: dict[str | None, list[int]] = {}
        for i, tenant in enumerate(tenant_ids):
            groups.setdefault(tenant, []).append(i)
        out: list[IndexValue] = [IndexValue()] * len(values)
        for tenant, rows in groups.items():
            key = self._key(version, self.purpose_for(tenant))
            macs = key.compute_batch([data[i] for i in rows], self.length, version)
            for i, mac in zip(rows, macs, strict=True):
                out[i] = IndexValue(mac)
        return out

    def normalize_many(self, values: Sequence[str | bytes]) -> list[bytes]:
        """:meth:`normalize` of many values, with the same result for each.

        When every value is an ASCII ``str`` and the normalizers are built-ins, the steps are
        mapped over the whole list by C-level string methods; otherwise each value goes through
        :meth:`normalize`.
        """
        plan = self._ascii_plan
        data: list[Any] = list(values)
        if plan is not None and set(map(type, data)) == {str} and all(map(str.isascii, data)):
            for step in plan:
                data = list(map(step, data))
            # Every value is still ASCII (the steps only remove characters or lowercase them).
            return list(map(str.encode, data))
        return list(map(self.normalize, values))

    def _mac(self, key: BlindIndexKey, data: bytes) -> bytes:
        # The core computes 4..32 bytes; shorter indexes are a prefix of the 4-byte MAC
        # (truncating HMAC output is sound, RFC 2104 section 5).
        return key.compute(data, max(4, self.length))[: self.length]

    def candidates(self, value: str | bytes, *, tenant_id: str | None = None) -> list[bytes]:
        """The index values a lookup of ``value`` must match: one per active version."""
        purpose = self.purpose_for(tenant_id)
        data = self.normalize(value)
        return [
            bytes((v,)) + self._mac(self._key(v, purpose), data) for v in self.active_versions()
        ]

    def matches(self, stored: bytes, value: str | bytes, *, tenant_id: str | None = None) -> bool:
        """Whether a stored index value is the index of ``value`` (constant-time compare)."""
        if not stored:
            return False
        version = stored[0]
        if version not in self.active_versions():
            return False
        mac = self._mac(self._key(version, self.purpose_for(tenant_id)), self.normalize(value))
        return hmac.compare_digest(stored[1:], mac)

    def values_equal(self, a: Any, b: Any) -> bool:
        """Whether two plaintexts are the same logical value under this index's normalizer."""
        if a is None or b is None:
            return False
        return hmac.compare_digest(self.normalize(a), self.normalize(b))

    def where(
        self, column: ColumnElement[Any], value: Any, *, tenant_id: str | None = None
    ) -> ColumnElement[bool]:
        """The predicate ``column IN (...)`` matching ``value`` under every active version."""
        if value is None:
            return column.is_(None)
        params = [
            bindparam(None, c, type_=_BYTES, unique=True)
            for c in self.candidates(value, tenant_id=tenant_id)
        ]
        if len(params) == 1:
            # What ``column == param`` builds, built directly: going through the comparators
            # (the index type's, then SQLAlchemy's) costs more than the MAC of a point lookup.
            clause = getattr(column, "__clause_element__", None)
            expr = clause() if clause is not None else column
            return BinaryExpression(expr, params[0], operators.eq, type_=_BOOL, negate=operators.ne)
        return column.in_(params)

    # -- SQLAlchemy ----------------------------------------------------------------------

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        """Stores an :class:`IndexValue` as is; MACs a plaintext under the primary version."""
        if value is None:
            return None
        if isinstance(value, IndexValue):
            return bytes(value)
        return bytes(self.compute(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        """The stored index bytes."""
        return None if value is None else bytes(value)

    def bind_processor(self, dialect: Dialect) -> Any:
        """Passes an :class:`IndexValue` through and MACs anything else (see process_bind_param).

        Overridden, as the column types do, to keep the per-row cost of a flush low: a flush
        binds one precomputed IndexValue per row, which psycopg and sqlite3 take as ``bytes``
        (it is a bytes subclass), so the DBAPI ``Binary()`` wrapper is skipped for them.
        """
        impl = self.impl_instance.bind_processor(dialect)
        if dialect.driver in ("psycopg", "pysqlite", "asyncpg"):
            impl = None
        compute = self.compute

        def process(value: Any) -> Any:
            if not isinstance(value, IndexValue):
                if value is None:
                    return None
                value = compute(value)
            return value if impl is None else impl(value)

        return process

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        """None where the driver already returns ``bytes`` (no Python call per row)."""
        if dialect.driver in ("psycopg", "pysqlite", "asyncpg"):
            return None
        return super().result_processor(dialect, coltype)

    class comparator_factory(TypeDecorator.Comparator[Any]):  # noqa: N801 - SQLAlchemy's name
        """``index_col == plaintext`` matches every active index version."""

        def __hash__(self) -> int:
            return hash(self.expr)

        def __eq__(self, other: Any) -> ColumnElement[bool]:  # type: ignore[override]
            typ = self.type
            assert isinstance(typ, BlindIndex)
            if isinstance(other, IndexValue):
                return self.expr.op("=")(bindparam(None, bytes(other), type_=LargeBinary()))
            if isinstance(other, ClauseElement):
                # Comparing with another SQL expression (a column, a bound parameter) is an
                # ordinary comparison of stored index bytes.
                return super().__eq__(other)  # type: ignore[return-value]
            return typ.where(self.expr, other)


def lookup(
    session: Session,
    attribute: Any,
    value: Any,
    *,
    tenant_id: str | None = None,
    statement: Any = None,
) -> list[Any]:
    """ORM lookup by an encrypted attribute: index query, then false positives dropped.

    Args:
        session: The session.
        attribute: The encrypted mapped attribute (``User.email``).
        value: The plaintext to find.
        tenant_id: The tenant, for per-tenant indexes over row-tenant columns.
        statement: A ``select(User)`` to add the predicate to (default: the whole entity).

    Returns:
        The matching objects, after decrypting each candidate and comparing the normalized
        plaintexts in constant time (a truncated index returns a superset).

    Raises:
        InvalidArgumentError: The attribute has no blind index, or ``session`` is an
            ``AsyncSession`` (use :func:`alookup`).
    """
    if hasattr(session, "sync_session"):
        raise InvalidArgumentError(
            "lookup() takes a Session; with an AsyncSession use await alookup(session, ...)"
        )
    index, stmt = _lookup_statement(attribute, value, tenant_id, statement)
    rows = session.scalars(stmt).all()
    key = attribute.key
    return [row for row in rows if index.values_equal(getattr(row, key), value)]


async def alookup(
    session: AsyncSession,
    attribute: Any,
    value: Any,
    *,
    tenant_id: str | None = None,
    statement: Any = None,
) -> list[Any]:
    """:func:`lookup` for an ``AsyncSession``: the same arguments, awaited.

    The index value is computed on a worker thread when its key is not cached yet (the key
    read may call the key store and the KMS), so the event loop never waits on it.

    Example::

        async with AsyncSession(engine) as session:
            users = await alookup(session, User.email, "a@x.org", tenant_id="t1")

    Returns:
        The matching objects (true matches only, as :func:`lookup`).

    Raises:
        InvalidArgumentError: The attribute has no blind index, or the index is per tenant
            over a row tenant and ``tenant_id`` is missing.
    """
    import asyncio

    index = _index_of(attribute)
    if index.keys_cached(tenant_id):
        index, stmt = _lookup_statement(attribute, value, tenant_id, statement)
    else:
        index, stmt = await asyncio.to_thread(
            _lookup_statement, attribute, value, tenant_id, statement
        )
    rows = (await session.scalars(stmt)).all()
    key = attribute.key
    return [row for row in rows if index.values_equal(getattr(row, key), value)]


def _lookup_statement(
    attribute: Any, value: Any, tenant_id: str | None, statement: Any
) -> tuple[BlindIndex, Any]:
    """The blind index of ``attribute`` and the select of the candidate rows."""
    index_col = _index_column_of(attribute)
    index: BlindIndex = index_col.type
    entity = attribute.class_
    # Built through a variable typed Any: mypy 2.4 crashes expanding select()'s overloads
    # with an Any entity.
    make_select: Any = select
    stmt = statement if statement is not None else make_select(entity)
    index_attr = getattr(entity, _attr_key(entity, index_col))
    return index, stmt.where(index.where(index_attr, value, tenant_id=tenant_id))


def _index_column_of(attribute: Any) -> Any:
    index_col = index_for_source(attribute.property.columns[0])
    if index_col is None:
        raise InvalidArgumentError("the attribute has no blind index")
    return index_col


def _index_of(attribute: Any) -> BlindIndex:
    index: BlindIndex = _index_column_of(attribute).type
    return index


def _attr_key(entity: Any, column: Column[Any]) -> str:
    from sqlalchemy import inspect

    mapper = inspect(entity)
    return str(mapper.get_property_by_column(column).key)
