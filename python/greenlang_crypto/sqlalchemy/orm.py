"""ORM hooks: row binding of encrypted columns and filling of blind indexes.

Installed automatically (through ``mapper_configured``) on every mapped class that has a
row-bound encrypted column or a blind index; nothing to call. See :mod:`.types` for why row
binding needs a client-side primary key. This module sits on top of the column types and blind
indexes, which never import it: :mod:`._orm_loader` loads it before mappers are configured.

Per flush:

* ``before_flush`` (the session): over ``session.new`` and ``session.dirty``, compute every
  pending blind index of a column in one Rust call (per key purpose), and encrypt every pending
  row-bound value of a column in one Rust call per context, then replace each row-bound
  plaintext by a :class:`~.types.SealedValue` bound to the row's primary key and tenant. On
  update only changed values are re-encrypted, or all of them when the primary key or the
  tenant changed (their binding changed).
* ``before_insert`` / ``before_update``: the same, one object at a time, for an object the
  session hook did not see (for example one added by another ``before_flush`` listener).
* ``after_insert`` / ``after_update``: put the plaintext back as the committed value, so the
  object never exposes ciphertext and is not marked dirty again.
* ``load`` / ``refresh``: decrypt row-bound values with the loaded primary key and tenant.

Per Session execution (``do_orm_execute``), once a model with a row-bound column exists: a
select of row-bound columns as columns (``select(User.id, User.tenant_id, User.email)``) is
decrypted row by row with the row's binding columns, or refused with
:class:`~.types.SealedColumnError` naming the columns it lacks. Entity loads are left to the
``load`` hook.

Before a mapper is configured, its blind-index columns are made deferred with raiseload
(unless declared with ``BlindIndex(..., orm_deferred=False)``): entity loads leave them out,
since nothing in Python needs them (lookups compare them in SQL, flushes only write them), and
reading the attribute of a loaded object raises SQLAlchemy's ``InvalidRequestError`` instead of
running a query behind the attribute, which under asyncio would fail with ``MissingGreenlet``.
``options(undefer(User.email_bidx))`` or ``session.refresh(user, ["email_bidx"])`` loads it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.orm import (
    ColumnProperty,
    InstanceState,
    Mapper,
    ORMExecuteState,
    Session,
    attributes,
)
from sqlalchemy.orm.base import instance_state

from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.sqlalchemy._common import FromRow
from greenlang_crypto.sqlalchemy.blind_index import BlindIndex
from greenlang_crypto.sqlalchemy.types import (
    ORM_CHECKED,
    EncryptedType,
    SealedColumnError,
    SealedValue,
    row_bound_slots,
)

__all__ = ["install"]

_STASH = "_glc_plaintexts"
#: Session info key: the states the session hook prepared in the current flush.
_PREPARED = "_glc_prepared"
#: States prepared by a session hook whose flush has not ended; the per-object hooks skip
#: them. A set shared by every session (states belong to one session each); membership and
#: removal are single operations under the GIL.
_prepared: set[InstanceState[Any]] = set()
_installed: weakref.WeakSet[Mapper[Any]] = weakref.WeakSet()
_binders: weakref.WeakKeyDictionary[Mapper[Any], _Binder] = weakref.WeakKeyDictionary()


@dataclass(eq=False)
class _Binder:
    mapper: Mapper[Any]
    sealed: list[tuple[str, EncryptedType]] = field(default_factory=list)
    #: (index attribute, index type, source attribute, source type)
    indexes: list[tuple[str, BlindIndex, str, EncryptedType]] = field(default_factory=list)
    pk_keys: list[str] = field(default_factory=list)

    # -- row identity --------------------------------------------------------------------

    def _pk(self, target: Any, *, fill_defaults: bool) -> object:
        values = []
        for key, col in zip(self.pk_keys, self.mapper.primary_key, strict=True):
            value = getattr(target, key)
            if value is None and fill_defaults and col.default is not None:
                default = col.default
                if getattr(default, "is_scalar", False):
                    value = default.arg
                elif getattr(default, "is_callable", False):
                    # SQLAlchemy wraps zero-argument defaults to take an execution context.
                    value = default.arg(None)
                if value is not None:
                    setattr(target, key, value)
            if value is None:
                raise InvalidArgumentError(
                    f"{self.mapper.class_.__name__}: row-bound encryption needs a client-side "
                    "primary key (set it, or give the column a Python-side default)"
                )
            values.append(value)
        return values[0] if len(values) == 1 else tuple(values)

    @staticmethod
    def _tenant(target: Any, typ: EncryptedType, *, committed: bool = False) -> str | None:
        spec = typ.tenant_id
        if not isinstance(spec, FromRow):
            return None
        if committed:
            hist = inspect(target).attrs[spec.attribute].history
            if hist.deleted:
                return str(hist.deleted[0])
        value = getattr(target, spec.attribute)
        if value is None:
            raise InvalidArgumentError(f"tenant attribute {spec.attribute!r} is None")
        return str(value)

    def _identity_changed(self, target: Any) -> bool:
        state = inspect(target)
        keys = set(self.pk_keys)
        for _, typ in self.sealed:
            if isinstance(typ.tenant_id, FromRow):
                keys.add(typ.tenant_id.attribute)
        return any(state.attrs[k].history.has_changes() for k in keys)

    # -- flush ---------------------------------------------------------------------------

    def prepare(self, targets: list[Any]) -> list[Any]:
        """The flush's work for many objects of this mapper, batched per column and context."""
        states = [instance_state(t) for t in targets]
        inserts = [st.key is None for st in states]
        rebinds = [
            not ins and self._identity_changed(t) for t, ins in zip(targets, inserts, strict=True)
        ]
        for index_key, index, source_key, source_type in self.indexes:
            rows: list[int] = []
            values: list[Any] = []
            tenants: list[str | None] = []
            for i, (t, st, ins) in enumerate(zip(targets, states, inserts, strict=True)):
                if ins:
                    # A pending object's attributes are all in its dict (unset ones are absent).
                    plaintext = st.dict.get(source_key)
                elif rebinds[i] or st.attrs[source_key].history.has_changes():
                    plaintext = getattr(t, source_key)
                else:
                    continue
                if plaintext is None:
                    _assign(t, st, ins, index_key, None)  # NULL is not indexed
                    continue
                rows.append(i)
                values.append(plaintext)
                tenants.append(self._tenant(t, source_type) if index.per_tenant else None)
            if rows:
                computed = index.compute_many(values, tenants if index.per_tenant else None)
                for i, value in zip(rows, computed, strict=True):
                    _assign(targets[i], states[i], inserts[i], index_key, value)
        if self.sealed:
            pks = [self._pk(t, fill_defaults=ins) for t, ins in zip(targets, inserts, strict=True)]
            stashes: list[dict[str, Any]] = [{} for _ in targets]
            for key, typ in self.sealed:
                # (tenant) -> positions; one batch per column and context.
                groups: dict[str | None, list[int]] = {}
                for i, (t, st) in enumerate(zip(targets, states, strict=True)):
                    if not (inserts[i] or rebinds[i] or st.attrs[key].history.has_changes()):
                        continue
                    plaintext = getattr(t, key)
                    if plaintext is None or isinstance(plaintext, SealedValue):
                        continue
                    groups.setdefault(self._tenant(t, typ), []).append(i)
                for tenant, positions in groups.items():
                    plaintexts = [getattr(targets[i], key) for i in positions]
                    sealed = typ.encrypt_many(plaintexts, [pks[i] for i in positions], tenant)
                    for i, plaintext, ct in zip(positions, plaintexts, sealed, strict=True):
                        stashes[i][key] = plaintext
                        setattr(targets[i], key, SealedValue(ct))
            for st, stash in zip(states, stashes, strict=True):
                if stash:
                    st.info[_STASH] = stash
        _prepared.update(states)
        return states

    def before_insert(self, mapper: Mapper[Any], conn: Any, state: InstanceState[Any]) -> None:
        """Mapper hook (raw): the flush work of an object the session hook did not prepare."""
        if state in _prepared:
            _prepared.discard(state)
        else:
            self.before_write(state.obj(), insert=True)

    def before_update(self, mapper: Mapper[Any], conn: Any, state: InstanceState[Any]) -> None:
        """Mapper hook (raw): as :meth:`before_insert`, for an update."""
        if state in _prepared:
            _prepared.discard(state)
        else:
            self.before_write(state.obj(), insert=False)

    def before_write(self, target: Any, *, insert: bool) -> None:
        state = inspect(target)
        rebind = not insert and self._identity_changed(target)
        for index_key, index, source_key, source_type in self.indexes:
            changed = insert or rebind or state.attrs[source_key].history.has_changes()
            if not changed:
                continue
            plaintext = getattr(target, source_key)
            if plaintext is None:
                setattr(target, index_key, None)  # NULL is not indexed
                continue
            tenant = self._tenant(target, source_type) if index.per_tenant else None
            setattr(target, index_key, index.compute(plaintext, tenant_id=tenant))
        if not self.sealed:
            return
        pk = self._pk(target, fill_defaults=insert)
        stash: dict[str, Any] = {}
        for key, typ in self.sealed:
            if not (insert or rebind or state.attrs[key].history.has_changes()):
                continue
            plaintext = getattr(target, key)
            if plaintext is None or isinstance(plaintext, SealedValue):
                continue
            tenant = self._tenant(target, typ)
            stash[key] = plaintext
            sealed = typ.encrypt_value(plaintext, pk, tenant)
            assert sealed is not None  # only None encrypts to None
            setattr(target, key, SealedValue(sealed))
        if stash:
            state.info[_STASH] = stash

    def after_write(self, target: Any) -> None:
        stash = inspect(target).info.pop(_STASH, None)
        if stash:
            for key, plaintext in stash.items():
                attributes.set_committed_value(target, key, plaintext)

    def decrypt_loaded(self, target: Any, keys: Any = None) -> None:
        state = inspect(target)
        loaded = state.dict
        pk: object = None
        for key, typ in self.sealed:
            if keys is not None and key not in keys:
                continue
            value = loaded.get(key)
            if type(value) is not SealedValue:
                continue
            if pk is None:
                identity = state.identity
                if identity is None:
                    pk = self._pk(target, fill_defaults=False)
                else:
                    pk = identity[0] if len(identity) == 1 else tuple(identity)
            tenant = self._tenant(target, typ, committed=True)
            attributes.set_committed_value(target, key, typ.decrypt_value(value, pk, tenant))


def _assign(target: Any, state: InstanceState[Any], insert: bool, key: str, value: Any) -> None:
    """Sets an attribute during a flush.

    A pending object is inserted from its dict as it is, so its value is written there
    directly, which skips the attribute events and history bookkeeping of a set; a persistent
    object needs them for the UPDATE to include the change.
    """
    if insert:
        state.dict[key] = value
    else:
        setattr(target, key, value)


def _build(mapper: Mapper[Any]) -> _Binder | None:
    binder = _Binder(mapper)
    for prop in mapper.column_attrs:
        if len(prop.columns) != 1:
            continue
        typ = prop.columns[0].type
        if isinstance(typ, EncryptedType) and typ.bind_row:
            binder.sealed.append((prop.key, typ))
            if isinstance(typ.tenant_id, FromRow):
                # Column selects find the row tenant by its column (see row_bound_slots).
                tenant_prop = mapper.get_property(typ.tenant_id.attribute)
                if isinstance(tenant_prop, ColumnProperty) and len(tenant_prop.columns) == 1:
                    typ.tenant_column = tenant_prop.columns[0].name
        elif isinstance(typ, BlindIndex):
            table = prop.columns[0].table
            assert table is not None
            source_col = table.c[typ.source]
            source_prop = mapper.get_property_by_column(source_col)
            binder.indexes.append((prop.key, typ, source_prop.key, typ.source_type))
    if not binder.sealed and not binder.indexes:
        return None
    binder.pk_keys = [mapper.get_property_by_column(c).key for c in mapper.primary_key]
    return binder


def install(mapper: Mapper[Any]) -> None:
    """Installs the hooks on one mapper (done automatically for every configured mapper)."""
    binder = _build(mapper)
    if binder is None or mapper in _installed:
        return
    _installed.add(mapper)
    _binders[mapper] = binder
    # raw=True: SQLAlchemy passes the state itself and skips its per-object wrapper; these run
    # once per row of every flush.
    event.listen(mapper, "before_insert", binder.before_insert, raw=True)
    event.listen(mapper, "before_update", binder.before_update, raw=True)
    if binder.sealed:
        watch_sessions()
        event.listen(mapper, "after_insert", lambda m, c, t: binder.after_write(t))
        event.listen(mapper, "after_update", lambda m, c, t: binder.after_write(t))
        cls = mapper.class_
        # A changed tenant or primary key must still decrypt the values bound to the old one:
        # active history makes SQLAlchemy load the old value before it is replaced.
        bound_attrs = set(binder.pk_keys)
        bound_attrs.update(
            typ.tenant_id.attribute
            for _, typ in binder.sealed
            if isinstance(typ.tenant_id, FromRow)
        )
        for attr in bound_attrs:
            event.listen(getattr(cls, attr), "set", _keep_old, active_history=True)
        event.listen(cls, "load", lambda t, ctx: binder.decrypt_loaded(t), raw=False)
        event.listen(cls, "refresh", lambda t, ctx, keys: binder.decrypt_loaded(t, keys))


def watch_sessions() -> None:
    """Installs the ``do_orm_execute`` hook that decrypts row-bound column selects, once."""
    if not event.contains(Session, "do_orm_execute", _decrypt_column_selects):
        event.listen(Session, "do_orm_execute", _decrypt_column_selects)


def _keep_old(target: Any, value: Any, oldvalue: Any, initiator: Any) -> None:
    """No-op "set" listener whose only job is to request active history."""


def _decrypt_column_selects(state: ORMExecuteState) -> Any:
    """``do_orm_execute``: decrypt the row-bound columns of a column select, or refuse it."""
    stmt: Any = state.statement
    if not state.is_select:
        returning = getattr(stmt, "returning_column_descriptions", None)
        if returning and _slots(returning):
            # RETURNING rows are not decrypted column by column; returning the entity
            # (insert(User).returning(User)) goes through the load hook.
            raise SealedColumnError(
                "RETURNING a row-bound encrypted column is not decrypted: return the entity"
            )
        state.update_execution_options(**{ORM_CHECKED: True})
        return None
    raw = getattr(stmt, "_raw_columns", None)
    if raw is None:
        # A textual select: the Core check sees its result columns.
        return None
    state.update_execution_options(**{ORM_CHECKED: True})
    if state.is_column_load or state.is_relationship_load:
        return None
    # The common case, entity loads and selects of other columns, costs one pass here.
    if not any(_may_be_row_bound(c) for c in raw):
        return None
    slots = _slots(stmt.column_descriptions)
    if not slots:
        return None
    frozen = state.invoke_statement().freeze()
    rows = []
    for row in frozen.data:
        values = list(row)
        for pos, typ, pk_positions, tenant_pos in slots:
            sealed = values[pos]
            if sealed is None:
                continue
            pks = [values[i] for i in pk_positions]
            pk: object = pks[0] if len(pks) == 1 else tuple(pks)
            tenant = None if tenant_pos is None else str(values[tenant_pos])
            values[pos] = typ.decrypt_value(sealed, pk, tenant)
        rows.append(tuple(values))
    return frozen.with_new_rows(rows)()  # type: ignore[arg-type]


def _slots(descriptions: Any) -> list[tuple[int, EncryptedType, list[int], int | None]]:
    """row_bound_slots of a statement's column descriptions (entities take one position)."""
    return row_bound_slots(
        [None if isinstance(d.get("type"), type) else d.get("expr") for d in descriptions]
    )


def _may_be_row_bound(raw_column: Any) -> bool:
    typ = getattr(raw_column, "type", None)
    if isinstance(typ, EncryptedType):
        return typ.bind_row
    # A subquery or other FROM selected whole: look at its columns.
    columns = getattr(raw_column, "exported_columns", None)
    if columns is None or getattr(raw_column, "_annotations", {}).get("parententity"):
        return False
    return any(isinstance(c.type, EncryptedType) and c.type.bind_row for c in columns)


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, flush_context: Any, instances: Iterable[Any] | None) -> None:
    if not _binders:
        return
    only = None if instances is None else {id(o) for o in instances}
    groups: dict[_Binder, list[Any]] = {}
    for objs in (session.new, session.dirty):
        # Classes first (one C-level pass): a flush of models without encrypted columns or
        # blind indexes then costs no Python work per object.
        by_class = {cls: _binder_of(cls) for cls in set(map(type, objs))}
        if not any(by_class.values()):
            continue
        for obj in objs:
            binder = by_class[type(obj)]
            if binder is None or (only is not None and id(obj) not in only):
                continue
            groups.setdefault(binder, []).append(obj)
    prepared = session.info.setdefault(_PREPARED, [])
    for binder, targets in groups.items():
        prepared.extend(binder.prepare(targets))


def _binder_of(cls: type) -> _Binder | None:
    """The binder of a mapped class (None for classes without encrypted or index columns)."""
    mapper: Any = inspect(cls, raiseerr=False)
    return _binders.get(mapper) if isinstance(mapper, Mapper) else None


@event.listens_for(Session, "after_flush_postexec")
def _after_flush(session: Session, flush_context: Any) -> None:
    # An object prepared but not written (no net change) must not skip its hooks next time.
    prepared = session.info.pop(_PREPARED, None)
    if prepared:
        _prepared.difference_update(prepared)


@event.listens_for(Session, "after_soft_rollback")
def _after_rollback(session: Session, previous_transaction: Any) -> None:
    # A flush that failed never reaches after_flush_postexec; its objects are prepared again
    # (from their current values) by the next flush.
    _after_flush(session, None)


@event.listens_for(Mapper, "before_mapper_configured")
def _defer_blind_indexes(mapper: Mapper[Any], class_: type) -> None:
    # Runs before the mapper's properties choose their loader strategies, so setting
    # ``deferred`` here has the effect of ``mapped_column(..., deferred=True)``.
    for prop in list(mapper._props.values()):
        if not isinstance(prop, ColumnProperty) or len(prop.columns) != 1:
            continue
        column = prop.columns[0]
        typ = getattr(column, "type", None)
        if (
            isinstance(typ, BlindIndex)
            and typ.orm_deferred
            and not prop.deferred
            and not getattr(column, "primary_key", False)
            and not prop._configure_started
        ):
            prop.deferred = True
            # The key ColumnProperty builds from its arguments (see its constructor).
            key: tuple[tuple[str, bool], ...] = (
                ("deferred", True),
                ("instrument", prop.instrument),
            )
            # raiseload: an unloaded index attribute never runs a query when read (under
            # asyncio that query would fail with MissingGreenlet).
            prop.raiseload = True
            key += (("raiseload", True),)
            prop.strategy_key = key


@event.listens_for(Mapper, "mapper_configured")
def _on_mapper_configured(mapper: Mapper[Any], class_: type) -> None:
    install(mapper)
