"""Encrypted column types: AES-256-GCM envelopes from the EncryptionService in a bytea column.

Each value is encrypted under an :class:`~greenlang_crypto.context.EncryptionContext`
(``tenant_id`` + ``data_class``) and bound to where it is stored through associated data:

* **table binding** (default): ``b"<schema.table>|<column>"``. A ciphertext copied into another
  table or column, or under another tenant, fails to decrypt. Works with Core and the ORM, on
  SQLite and PostgreSQL.
* **row binding** (``bind_row=True``, ORM only): also the primary key and tenant, so a
  ciphertext copied into another row of the same column fails too. The value
  is encrypted in the mapper's ``before_insert``/``before_update`` events, when the row's primary
  key is known, and decrypted in the ``load``/``refresh`` events. An autoincrement key is
  assigned by the database *during* the INSERT, too late for the ciphertext in that INSERT, so
  row binding requires a client-side primary key: set explicitly, or a Python-side
  ``default=`` (``uuid.uuid4``, a sequence-free generator), which the hook evaluates early.

  Selecting a row-bound column as a column (``select(User.id, User.tenant_id, User.email)``)
  through a Session decrypts it when the row also holds its binding columns (the primary key
  and the ``FromRow`` tenant of the same table); without them, or through a Core connection
  (which has no place to decrypt a value with the rest of its row), the execution raises
  :class:`SealedColumnError` naming what to add. ``type_coerce(User.email, LargeBinary)``
  selects the stored envelope itself, on purpose.

*Erased tenants.* A value whose key was erased (crypto-shredded) raises
:class:`~greenlang_crypto.exceptions.DataErasedError`; with ``skip_erased=True`` the column
reads as ``None`` instead, so one shredded row does not fail a query over many tenants.

*asyncio.* Under SQLAlchemy's asyncio extension (``AsyncSession``, ``AsyncConnection``) the
slow paths (a DEK cache miss, which calls the KMS; an index key read) run on a worker thread
while the event loop goes on, and cache hits run in place (see
:func:`~._common.off_the_loop`). That covers flushes, statement parameters, and every row an
``AsyncSession`` loads. One exception: the rows of ``await async_conn.execute(...)`` (Core)
are converted when the application reads them, after the await, outside SQLAlchemy's
greenlet; a miss there blocks the loop for one KMS round trip. ``await async_conn.stream(...)``
or an ``AsyncSession`` avoids it.

``None`` is SQL NULL in both directions and is never encrypted; ``""`` round-trips as an
envelope of zero bytes, distinct from NULL. Comparing an encrypted column with ``==`` is
only possible through a blind index declared on it (see :mod:`.blind_index`): randomized
ciphertexts never compare equal, so a plain comparison would silently match nothing.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Column, LargeBinary, Table, event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.sql.elements import ColumnElement, Label
from sqlalchemy.types import TypeDecorator

from greenlang_crypto.context import EncryptionContext
from greenlang_crypto.exceptions import DataErasedError, DecryptionError, InvalidArgumentError

# Imported for its effect: the ORM hooks (row binding, blind-index filling) are loaded before
# any mapper using these types is configured, also when this module is imported directly
# rather than through the package's lazy exports.
from greenlang_crypto.sqlalchemy import _orm_loader
from greenlang_crypto.sqlalchemy._common import (
    ContextCache,
    FromRow,
    ServiceRef,
    TenantSpec,
    in_async_greenlet,
    is_envelope,
    location_aad,
    off_the_loop,
    resolve_service,
    row_aad,
)
from greenlang_crypto.sqlalchemy._index_lookup import index_for_source

__all__ = [
    "EncryptedBytes",
    "EncryptedJSON",
    "EncryptedString",
    "EncryptedText",
    "EncryptedType",
    "SealedColumnError",
    "SealedValue",
    "row_bound_slots",
]


class SealedValue(bytes):
    """A ciphertext that the column type passes through unchanged.

    The ORM hooks of row-bound columns put one into the attribute just before the INSERT or
    UPDATE (and restore the plaintext right after), and read one from the database before
    decrypting it with the row's primary key and tenant. Application code never receives one
    from a query (see :class:`SealedColumnError`); binding one writes a stored envelope as is.
    """

    __slots__ = ()


class SealedColumnError(InvalidArgumentError):
    """A row-bound column was selected where its value cannot be decrypted.

    Raised when the statement executes, before it reaches the database, instead of returning
    ciphertext: a row-bound value can only be decrypted with its row's primary key and tenant,
    so a column select must include them, and run through a Session. ``columns`` names the
    binding columns to add (empty when the select has them but runs on a Core connection, or
    selects an expression over the column rather than the column).

    Example::

        session.execute(select(User.id, User.email))
        # SealedColumnError: ... add users.tenant_id to the select
        session.execute(select(User.id, User.tenant_id, User.email))  # plaintext e-mails
    """

    def __init__(self, message: str, columns: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.columns = tuple(columns)


class EncryptedType(TypeDecorator[Any]):
    """Base of the encrypted column types (bytea / BLOB holding an envelope).

    Args:
        service: An EncryptionService or a zero-argument callable returning one.
        data_class: ``data_class`` of the encryption context (for example ``"pii"``).
        tenant_id: A fixed tenant, a zero-argument callable returning the current tenant
            (for example from a ``ContextVar``), or :class:`FromRow` (ORM only).
        bind_row: Also bind each value to its primary key and tenant (ORM only; see module).
        location: Override the ``"table|column"`` binding (default: taken from the column).
        allow_plaintext: Read a stored non-envelope value as plaintext instead of failing.
            Only for phase 1 of a plaintext-to-ciphertext migration (see :mod:`.migrate`).
        skip_erased: Read a value whose key was erased (its tenant crypto-shredded) as
            ``None`` instead of raising :class:`~greenlang_crypto.exceptions.DataErasedError`,
            so that a query over many tenants still returns the others' rows. Any other
            decryption failure still raises.

    Raises:
        InvalidArgumentError: A row-bound or row-tenant column is written outside an ORM flush,
            or a str holds a lone surrogate (before any KMS call).
        SealedColumnError: A row-bound column is selected without its binding columns, or
            through a Core connection.
        DataErasedError: The value's key was erased (unless ``skip_erased``).

    Example::

        class User(Base):
            __tablename__ = "users"
            id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
            tenant_id: Mapped[str]
            email: Mapped[str] = mapped_column(
                EncryptedString(svc, data_class="pii", tenant_id=FromRow("tenant_id"),
                                skip_erased=True)
            )
    """

    impl = LargeBinary
    cache_ok = True

    def __init__(
        self,
        service: ServiceRef,
        *,
        data_class: str,
        tenant_id: TenantSpec,
        bind_row: bool = False,
        location: str | None = None,
        allow_plaintext: bool = False,
        skip_erased: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(data_class, str) or not data_class:
            raise InvalidArgumentError("data_class must be a non-empty str")
        if not isinstance(tenant_id, str | FromRow) and not callable(tenant_id):
            raise InvalidArgumentError("tenant_id must be a str, a callable or FromRow")
        self.service = service
        self.data_class = data_class
        self.tenant_id = tenant_id
        # A tenant taken from the row is only known to the ORM hooks, like the primary key.
        self.bind_row = bind_row or isinstance(tenant_id, FromRow)
        self.location = location
        self.allow_plaintext = allow_plaintext
        self.skip_erased = skip_erased
        # tenant -> until when its DEK is taken as cached (asyncio row-bound reads).
        self._warm: dict[str, float] = {}
        #: Name of the table column holding the row tenant (set by the ORM hooks from the
        #: mapping; the FromRow attribute name until then).
        self.tenant_column: str | None = (
            tenant_id.attribute if isinstance(tenant_id, FromRow) else None
        )
        if self.bind_row:
            _watch_row_bound_selects()
        self._contexts = ContextCache(data_class)
        self._aad: bytes | None = location_aad(*location.split("|", 1)) if location else None
        self._table_column: tuple[str, str] | None = (
            tuple(location.split("|", 1)) if location else None  # type: ignore[assignment]
        )

    # -- binding to a column -------------------------------------------------------------

    def _attach(self, table: Table, column: Column[Any]) -> None:
        # Called when the column joins its table. Copies of this type (made by SQLAlchemy for
        # each dialect, or for a mixin's column) keep the binding until attached elsewhere;
        # so use one type instance per column, as with any SQLAlchemy type.
        if self.location is None:
            self._table_column = (table.fullname, column.name)
            self._aad = location_aad(table.fullname, column.name)

    @property
    def table_column(self) -> tuple[str, str]:
        """``(table fullname, column name)`` this type is bound to."""
        if self._table_column is None:
            raise InvalidArgumentError(
                "encrypted type is not attached to a table column; pass location='table|column'"
            )
        return self._table_column

    def context_for(self, tenant_id: str | None = None) -> EncryptionContext:
        """The encryption context of a value (``tenant_id`` is required for row tenants)."""
        spec = self.tenant_id
        if tenant_id is None:
            if isinstance(spec, str):
                tenant_id = spec
            elif isinstance(spec, FromRow):
                raise InvalidArgumentError("this column takes its tenant from the ORM row")
            else:
                tenant_id = spec()
        return self._contexts.get(tenant_id)

    def associated_data_for(self, pk: object = None, tenant_id: str | None = None) -> bytes:
        """The associated data of a value in this column (``pk`` for row-bound columns)."""
        table, column = self.table_column
        if self.bind_row:
            return row_aad(table, column, pk, tenant_id)
        assert self._aad is not None
        return self._aad

    # -- value conversion (per subclass) -------------------------------------------------

    def to_bytes(self, value: Any) -> bytes:
        """Serializes a Python value to the plaintext bytes that get encrypted."""
        raise NotImplementedError

    def from_bytes(self, data: bytes) -> Any:
        """Deserializes decrypted plaintext bytes."""
        raise NotImplementedError

    # -- encryption ----------------------------------------------------------------------
    #
    # One encrypt path and one decrypt path: _encrypt_one / _decrypt_one below. Everything
    # else (the ORM hooks, process_bind_param, the per-dialect processors, the jobs) goes
    # through them; the processors only put a Rust fast path in front (a cached DEK, one call
    # per value, see EncryptionService.value_encryptor / value_decryptor), which hands every
    # value it does not take to the same two functions.

    def _encrypt_one(self, value: Any, ctx: EncryptionContext, aad: bytes | None) -> bytes | None:
        if value is None:
            return None
        if type(value) is SealedValue:
            return bytes(value)
        svc = resolve_service(self.service)
        if not in_async_greenlet():
            return svc.encrypt(self.to_bytes(value), ctx, associated_data=aad)
        encrypt = functools.partial(svc.encrypt, associated_data=aad)
        return off_the_loop(encrypt, self.to_bytes(value), ctx)

    def _decrypt_raw(self, stored: Any, ctx: EncryptionContext, aad: bytes | None) -> bytes:
        """Plaintext bytes of a stored value (a phase-1 plaintext is returned as stored)."""
        if type(stored) is not bytes:
            stored = bytes(stored)
        if self.allow_plaintext and not is_envelope(stored):
            return stored  # type: ignore[no-any-return]
        svc = resolve_service(self.service)
        if not in_async_greenlet():
            return svc.decrypt(stored, ctx, associated_data=aad)
        decrypt = functools.partial(svc.decrypt, associated_data=aad)
        return off_the_loop(decrypt, stored, ctx)

    def _decrypt_one(self, stored: Any, ctx: EncryptionContext, aad: bytes | None) -> Any:
        if stored is None:
            return None
        try:
            return self.from_bytes(self._decrypt_raw(stored, ctx, aad))
        except DataErasedError:
            if self.skip_erased:
                return None
            raise

    def encrypt_value(
        self, value: Any, pk: object = None, tenant_id: str | None = None
    ) -> bytes | None:
        """Encrypts one Python value for this column (``None`` stays ``None``)."""
        ctx = self.context_for(tenant_id)
        return self._encrypt_one(value, ctx, self.associated_data_for(pk, ctx.tenant_id))

    def encrypt_many(
        self, values: Sequence[Any], pks: Sequence[object], tenant_id: str | None = None
    ) -> list[bytes]:
        """Encrypts the values of many rows under one context in one service call.

        One Rust call for the whole batch; ``pks`` gives each row's primary key for row-bound
        columns.
        """
        if not values:
            return []
        ctx = self.context_for(tenant_id)
        if self.bind_row:
            aads: list[bytes | None] = [self.associated_data_for(pk, ctx.tenant_id) for pk in pks]
        else:
            aads = [self.associated_data_for()] * len(values)
        to_bytes = self.to_bytes
        data = [to_bytes(v) for v in values]
        svc = resolve_service(self.service)
        batch = functools.partial(svc.encrypt_batch, associated_data=aads)
        if not in_async_greenlet():
            return batch(data, ctx)
        # Under asyncio: seal the first value through the cache alone. A hit means the batch
        # will hit too, and runs here; a miss sends the whole batch to a worker thread.
        probe = svc.value_encryptor(ctx, associated_data=aads[0], fallback=_raise_miss)
        try:
            first = probe(data[0])
        except _CacheMissError:
            return off_the_loop(batch, data, ctx)
        rest = svc.encrypt_batch(data[1:], ctx, associated_data=aads[1:]) if data[1:] else []
        return [first, *rest]

    def decrypt_value(self, stored: bytes, pk: object = None, tenant_id: str | None = None) -> Any:
        """Decrypts one stored value of this column (plaintext passes in phase 1 only).

        Raises:
            DecryptionError: The value does not authenticate under this binding.
            DataErasedError: Its key was erased (``None`` is returned with ``skip_erased``).
        """
        ctx = self.context_for(tenant_id)
        aad = self.associated_data_for(pk, ctx.tenant_id)
        if stored is None or self.allow_plaintext or not in_async_greenlet():
            return self._decrypt_one(stored, ctx, aad)
        # Under asyncio: a cache-only probe opens the value when its DEK is cached, and a
        # miss takes _decrypt_one, which moves the KMS call off the event loop. The probe
        # costs a few microseconds, so once it has hit, the context's next values are opened
        # directly for a second (the DEK is cached for minutes): a load of many rows probes
        # once per tenant.
        now = time.monotonic()
        warm = self._warm
        if warm.get(ctx.tenant_id, 0.0) > now:
            return self._decrypt_one(stored, ctx, aad)
        opener = resolve_service(self.service).value_decryptor(
            ctx, associated_data=aad, fallback=_raise_miss
        )
        try:
            data = opener(stored)
        except _CacheMissError:
            return self._decrypt_one(stored, ctx, aad)
        if len(warm) > 10_000:
            warm.clear()
        warm[ctx.tenant_id] = now + 1.0
        return self.from_bytes(data)

    def _check_writable(self) -> None:
        if self.bind_row:
            raise InvalidArgumentError(
                "a row-bound encrypted column can only be written through an ORM flush"
            )
        if self._aad is None:
            self.table_column  # noqa: B018 - raises the explanatory error

    def _tenant_now(self) -> str:
        tenant = self.tenant_id
        return tenant if isinstance(tenant, str) else tenant()  # type: ignore[operator]

    def _encryptor(self, tenant_id: str) -> Callable[[Any], Any]:
        """The per-value encrypt callable of a table-bound column for one tenant."""
        ctx = self._contexts.get(tenant_id)
        aad = self._aad
        svc = resolve_service(self.service)
        is_str = isinstance(self, EncryptedString)
        encrypt_one = self._encrypt_one

        def fallback(value: Any) -> Any:
            return encrypt_one(value, ctx, aad)

        if not (is_str or type(self) is EncryptedBytes):
            # Other types serialize in Python first; only the sealing is fast.
            to_bytes = self.to_bytes
            # Its fallback is the service's own encrypt (the value is serialized already),
            # off the event loop under asyncio.
            seal = functools.partial(svc.encrypt, associated_data=aad)

            def sealed_fallback(data: Any) -> Any:
                return off_the_loop(seal, data, ctx)

            fast = svc.value_encryptor(ctx, associated_data=aad, fallback=sealed_fallback)

            def process(value: Any) -> Any:
                if value is None or type(value) is SealedValue:
                    return fallback(value)
                return fast(to_bytes(value))

            return process
        return svc.value_encryptor(ctx, associated_data=aad, text=is_str, fallback=fallback)

    def _decryptor(self, tenant_id: str) -> Callable[[Any], Any]:
        """The per-value decrypt callable of a table-bound column for one tenant."""
        ctx = self._contexts.get(tenant_id)
        aad = self._aad
        svc = resolve_service(self.service)
        is_str = isinstance(self, EncryptedString)
        decrypt_one, decrypt_raw = self._decrypt_one, self._decrypt_raw
        if self.allow_plaintext:
            # Phase 1 of a migration: a stored plaintext must not reach the opener.
            def phase1(value: Any) -> Any:
                return decrypt_one(value, ctx, aad)

            return phase1
        if is_str or type(self) is EncryptedBytes:

            def fallback(value: Any) -> Any:
                return decrypt_one(value, ctx, aad)

            return svc.value_decryptor(ctx, associated_data=aad, text=is_str, fallback=fallback)

        skip_erased = self.skip_erased

        def raw(value: Any) -> Any:
            try:
                return decrypt_raw(value, ctx, aad)
            except DataErasedError:
                if skip_erased:
                    return _ERASED
                raise

        opener = svc.value_decryptor(ctx, associated_data=aad, fallback=raw)
        from_bytes = self.from_bytes

        def process(value: Any) -> Any:
            if value is None:
                return None
            data = opener(value)
            return None if data is _ERASED else from_bytes(data)

        return process

    def _per_tenant(self, make: Callable[[str], Callable[[Any], Any]]) -> Callable[[Any], Any]:
        """A callable for the current tenant: fixed, or chosen per value (callable tenant)."""
        if isinstance(self.tenant_id, str) and hasattr(self.service, "encrypt"):
            return make(self.tenant_id)
        cache: dict[tuple[int, str], Callable[[Any], Any]] = {}
        tenant_now = self._tenant_now
        service = self.service

        def process(value: Any) -> Any:
            if value is None:
                return None
            # Keyed by the service too: a service callable may return another service.
            key = (id(resolve_service(service)), tenant_now())
            fn = cache.get(key)
            if fn is None:
                if len(cache) > 10_000:
                    cache.clear()
                fn = cache[key] = make(key[1])
            return fn(value)

        return process

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        """Encrypts a value on its way to the database (``None`` stays NULL)."""
        if value is None:
            return None
        if type(value) is SealedValue:
            return bytes(value)
        self._check_writable()
        return self._encrypt_one(value, self._contexts.get(self._tenant_now()), self._aad)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        """Decrypts a stored value (``None`` stays ``None``)."""
        if value is None:
            return None
        if self.bind_row:
            # Decrypted by the ORM load hook, which knows the primary key and tenant.
            return SealedValue(value)
        return self._decrypt_one(value, self._contexts.get(self._tenant_now()), self._aad)

    # SQLAlchemy recommends overriding only process_bind_param/process_result_value; these
    # two overrides return the Rust per-value callables directly, because at ~1 us per
    # encryption each extra Python call is a visible share of a 10,000-row insert or select
    # (benches/gate_sqlalchemy.py).
    def bind_processor(self, dialect: Dialect) -> Any:
        """Encrypt, then the impl's DBAPI binary wrapping (none for psycopg, pysqlite, asyncpg)."""
        if self.bind_row or self._aad is None:
            return super().bind_processor(dialect)
        impl = self.impl_instance.bind_processor(dialect)
        encrypt = self._per_tenant(self._encryptor)
        if impl is None or dialect.driver in ("psycopg", "pysqlite", "asyncpg"):
            # These drivers bind plain bytes natively as bytea / BLOB (asyncpg's Binary() is
            # the identity); skipping the per-value wrapper saves a Python call per row.
            return encrypt

        def process(value: Any) -> Any:
            out = encrypt(value)
            return None if out is None else impl(out)

        return process

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        """The impl's conversion (if any), then decrypt."""
        if self.bind_row or self._aad is None:
            return super().result_processor(dialect, coltype)
        impl = self.impl_instance.result_processor(dialect, coltype)
        decrypt = self._per_tenant(self._decryptor)
        if impl is None:
            return decrypt

        def process(value: Any) -> Any:
            return None if value is None else decrypt(impl(value))

        return process

    class comparator_factory(TypeDecorator.Comparator[Any]):  # noqa: N801 - SQLAlchemy's name
        """Redirects ``==`` to the column's blind index; other comparisons are refused.

        :meth:`matches` is the same comparison with an explicit tenant, for per-tenant
        indexes whose tenant comes from the row.
        """

        def __hash__(self) -> int:
            return hash(self.expr)

        def _index_column(self) -> Any:
            index_col = index_for_source(self.expr)
            if index_col is None:
                raise InvalidArgumentError(
                    "an encrypted column can only be compared through a blind index; "
                    "declare BlindIndex(...) on it"
                )
            return index_col

        def __eq__(self, other: Any) -> ColumnElement[bool]:  # type: ignore[override]
            if other is None:
                return self.expr.is_(None)
            index_col = self._index_column()
            return index_col.type.where(index_col, other)  # type: ignore[no-any-return]

        def matches(self, value: Any, *, tenant_id: str | None = None) -> ColumnElement[bool]:
            """A SQL predicate: this column's plaintext equals ``value`` (by its blind index).

            The predicate compares the blind-index column (``index_col IN (...)``, one value
            per active index key version), so a B-tree index on that column serves it; it
            can be used anywhere a boolean SQL expression goes: ``where()``, a join's ``ON``,
            a subquery, an aliased entity. ``tenant_id`` picks the tenant's key of a
            per-tenant index (required when the column takes its tenant from the row); it is
            a Python value, as the index value is computed here, not in SQL. With a truncated
            index the predicate can match false positives (see :func:`.blind_index.lookup`).

            Example::

                stmt = select(User.id).where(User.email.matches("a@x.org", tenant_id="t1"))
                stmt = select(Order).join(
                    User, (Order.user_id == User.id)
                    & User.email.matches("a@x.org", tenant_id="t1")
                )

            Raises:
                InvalidArgumentError: The column has no blind index, or the index is per-tenant
                    over a row tenant and ``tenant_id`` is missing.
            """
            if value is None:
                return self.expr.is_(None)
            index_col = self._index_column()
            return index_col.type.where(  # type: ignore[no-any-return]
                index_col, value, tenant_id=tenant_id
            )

        def __ne__(self, other: Any) -> ColumnElement[bool]:  # type: ignore[override]
            if other is None:
                return self.expr.is_not(None)
            raise InvalidArgumentError("encrypted columns support only == through a blind index")


class EncryptedString(EncryptedType):
    """A ``str`` stored encrypted (UTF-8, byte-exact: no normalization, NUL bytes kept)."""

    cache_ok = True

    def to_bytes(self, value: Any) -> bytes:
        """UTF-8 bytes of ``value``.

        Raises:
            TypeError: ``value`` is not a str (no ``repr()`` coercion, unlike some peers).
            InvalidArgumentError: ``value`` holds a lone surrogate.
        """
        if not isinstance(value, str):
            raise TypeError(f"{type(self).__name__} takes str, not {type(value).__name__}")
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgumentError("value is not valid Unicode (lone surrogate)") from None

    def from_bytes(self, data: bytes) -> str:
        """Decodes UTF-8; a non-UTF-8 plaintext is reported as a decryption failure."""
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptionError("plaintext is not UTF-8") from None

    @property
    def python_type(self) -> type[Any]:
        """``str``."""
        return str


class EncryptedText(EncryptedString):
    """Long text stored encrypted; the same as :class:`EncryptedString` (no length limit)."""

    cache_ok = True


class EncryptedBytes(EncryptedType):
    """``bytes`` stored encrypted (bytearray and memoryview are accepted and copied)."""

    cache_ok = True

    def to_bytes(self, value: Any) -> bytes:
        """The bytes themselves.

        Raises:
            TypeError: ``value`` is not bytes-like.
        """
        if isinstance(value, bytes):
            return bytes(value)
        if isinstance(value, bytearray | memoryview):
            return bytes(value)
        raise TypeError(f"EncryptedBytes takes bytes, not {type(value).__name__}")

    def from_bytes(self, data: bytes) -> bytes:
        """The decrypted bytes."""
        return data

    @property
    def python_type(self) -> type[Any]:
        """``bytes``."""
        return bytes


class EncryptedJSON(EncryptedType):
    """A JSON document stored encrypted (compact UTF-8 JSON).

    Python ``None`` is SQL NULL (a JSON ``null`` document cannot be stored). Mutations inside
    a dict or list are not tracked; assign a new value (or use ``MutableDict.as_mutable``).
    """

    cache_ok = True

    def to_bytes(self, value: Any) -> bytes:
        """Compact JSON; non-JSON values raise instead of being coerced with ``repr()``.

        Raises:
            TypeError: ``value`` is not JSON-serializable.
            InvalidArgumentError: A str inside holds a lone surrogate.
        """
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgumentError("value is not valid Unicode (lone surrogate)") from None

    def from_bytes(self, data: bytes) -> Any:
        """The decoded JSON document."""
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DecryptionError("plaintext is not a JSON document") from None

    @property
    def python_type(self) -> type[Any]:
        """``object`` (any JSON value)."""
        return object


#: What the raw fallback of a non-text column returns for an erased value (skip_erased).
_ERASED: Any = object()


class _CacheMissError(Exception):
    """The cache-only probe missed: the caller takes its slow path (off the event loop)."""


def _raise_miss(value: Any) -> Any:
    raise _CacheMissError


# -- row-bound columns in column selects --------------------------------------------------

#: Execution option the ORM hooks set on every Session execution they have inspected, so
#: the Core check below leaves those to them.
ORM_CHECKED = "_glc_row_bound_checked"


def _row_bound_type(expr: Any) -> EncryptedType | None:
    typ = getattr(expr, "type", None)
    return typ if isinstance(typ, EncryptedType) and typ.bind_row else None


def _plain_column(expr: Any) -> Any:
    """The column under labels (``User.email.label("e")``), or None for other expressions."""
    while isinstance(expr, Label):
        expr = expr.element
    clause = getattr(expr, "__clause_element__", None)
    if clause is not None:
        expr = clause()
        while isinstance(expr, Label):
            expr = expr.element
    if getattr(expr, "table", None) is None or len(getattr(expr, "base_columns", ())) != 1:
        return None
    return expr


def row_bound_slots(
    columns: Sequence[Any],
) -> list[tuple[int, EncryptedType, list[int], int | None]]:
    """Where the row-bound columns of a result row are, and where their bindings are.

    Args:
        columns: The row's column expressions in order (``None`` for an entity, which
            occupies a position but is never a binding column).

    Returns:
        ``(position, type, primary-key positions, tenant position or None)`` per row-bound
        column; empty when the row has none.

    Raises:
        SealedColumnError: A row-bound column's primary key or tenant is not in the row, or
            the row holds an expression over a row-bound column rather than the column.
    """
    slots: list[tuple[int, EncryptedType, list[int], int | None]] = []
    plain = [None if c is None else _plain_column(c) for c in columns]
    for pos, expr in enumerate(columns):
        typ = None if expr is None else _row_bound_type(expr)
        if typ is None:
            continue
        col = plain[pos]
        if col is None:
            raise SealedColumnError(
                "an expression over a row-bound encrypted column cannot be decrypted; select "
                "the column itself (with its primary key and tenant) or "
                "type_coerce(column, LargeBinary) for the stored envelope"
            )
        (base,) = col.base_columns
        table = base.table
        wanted = list(table.primary_key.columns)
        if isinstance(typ.tenant_id, FromRow):
            tenant_col = table.c.get(typ.tenant_column or typ.tenant_id.attribute)
            if tenant_col is None:
                raise SealedColumnError(
                    f"no column for the row tenant {typ.tenant_id.attribute!r} in {table.name}"
                )
            wanted.append(tenant_col)
        found: dict[Any, int] = {}
        for j, other in enumerate(plain):
            if other is None or other.table is not col.table:
                continue
            (other_base,) = other.base_columns
            for w in wanted:
                if other_base is w and w not in found:
                    found[w] = j
        missing = [f"{table.name}.{w.name}" for w in wanted if w not in found]
        if missing:
            raise SealedColumnError(
                f"row-bound column {table.name}.{base.name} is decrypted with its row's "
                f"primary key and tenant: add {', '.join(missing)} to the select (or select "
                "type_coerce(column, LargeBinary) for the stored envelope)",
                missing,
            )
        pk_positions = [found[w] for w in table.primary_key.columns]
        tenant_pos = found[wanted[-1]] if isinstance(typ.tenant_id, FromRow) else None
        slots.append((pos, typ, pk_positions, tenant_pos))
    return slots


def _watch_row_bound_selects() -> None:
    """Installs the Core check and the Session hook, once, at the first row-bound type.

    The Session hook is installed here, not when the model's mapper is configured:
    SQLAlchemy configures mappers lazily, inside the first query that needs them, and that
    query would already be past the hooks, so the Core check would refuse it.
    """
    if not event.contains(Engine, "before_execute", _check_core_execute):
        event.listen(Engine, "before_execute", _check_core_execute)
    _orm_loader.watch_sessions()


def _check_core_execute(
    conn: Any, clauseelement: Any, multiparams: Any, params: Any, execution_options: Any
) -> None:
    # A Core connection returns rows as the driver gives them, with no step that sees a whole
    # row: a row-bound value would come back as ciphertext. Refuse it before the database
    # does any work (the ORM's own executions were checked by its hook already).
    if execution_options.get(ORM_CHECKED):
        return
    columns = getattr(clauseelement, "exported_columns", None)
    if not columns or not any(_row_bound_type(c) is not None for c in columns):
        return
    row_bound_slots(list(columns))  # raises with the columns to add when some are missing
    raise SealedColumnError(
        "row-bound encrypted columns are decrypted by a Session: run this select with "
        "session.execute() (or select type_coerce(column, LargeBinary) for the envelope)"
    )


@event.listens_for(Column, "after_parent_attach")
def _on_column_attach(column: Column[Any], table: Any) -> None:
    # Types learn their table and column here, so the location binding needs no repetition in
    # the model; Column objects only ever attach to a Table.
    if isinstance(table, Table):
        attach = getattr(column.type, "_attach", None)
        if attach is not None and isinstance(column.type, TypeDecorator):
            attach(table, column)
