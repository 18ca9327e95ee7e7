"""ORM hooks: row binding of encrypted columns and filling of blind indexes.

Installed automatically (through ``mapper_configured``) on every mapped class that has a
row-bound encrypted column or a blind index; nothing to call. See :mod:`.types` for why row
binding needs a client-side primary key.

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
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.orm import Mapper, Session, attributes
from sqlalchemy.orm.base import instance_state

from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.sqlalchemy._common import FromRow
from greenlang_crypto.sqlalchemy.blind_index import BlindIndex
from greenlang_crypto.sqlalchemy.types import EncryptedType, SealedValue

__all__ = ["install"]

_STASH = "_glc_plaintexts"
#: Set on an object's state by the session hook; the per-object hooks then skip it.
_PREPARED = "_glc_prepared"
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
            rows: list[Any] = []
            values: list[Any] = []
            tenants: list[str | None] = []
            for t, st, ins, rebind in zip(targets, states, inserts, rebinds, strict=True):
                if not (ins or rebind or st.attrs[source_key].history.has_changes()):
                    continue
                plaintext = getattr(t, source_key)
                if plaintext is None:
                    setattr(t, index_key, None)  # NULL is not indexed
                    continue
                rows.append(t)
                values.append(plaintext)
                tenants.append(self._tenant(t, source_type) if index.per_tenant else None)
            if rows:
                computed = index.compute_many(values, tenants if index.per_tenant else None)
                for t, value in zip(rows, computed, strict=True):
                    setattr(t, index_key, value)
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
        for st in states:
            st.info[_PREPARED] = True
        return states

    def before_write(self, target: Any, *, insert: bool) -> None:
        state = inspect(target)
        if state.info.pop(_PREPARED, False):
            return
        rebind = not insert and self._identity_changed(target)
        for index_key, index, source_key, source_type in self.indexes:
            changed = insert or rebind or state.attrs[source_key].history.has_changes()
            if not changed:
                continue
            plaintext = getattr(target, source_key)
            if plaintext is None:
                setattr(target, index_key, None)  # NULL is not indexed (I5)
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
            setattr(target, key, SealedValue(typ.encrypt_value(plaintext, pk, tenant)))
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


def _build(mapper: Mapper[Any]) -> _Binder | None:
    binder = _Binder(mapper)
    for prop in mapper.column_attrs:
        if len(prop.columns) != 1:
            continue
        typ = prop.columns[0].type
        if isinstance(typ, EncryptedType) and typ.bind_row:
            binder.sealed.append((prop.key, typ))
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
    event.listen(mapper, "before_insert", lambda m, c, t: binder.before_write(t, insert=True))
    event.listen(mapper, "before_update", lambda m, c, t: binder.before_write(t, insert=False))
    if binder.sealed:
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


def _keep_old(target: Any, value: Any, oldvalue: Any, initiator: Any) -> None:
    """No-op "set" listener whose only job is to request active history."""


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, flush_context: Any, instances: Iterable[Any] | None) -> None:
    if not _binders:
        return
    only = None if instances is None else {id(o) for o in instances}
    groups: dict[_Binder, list[Any]] = {}
    for objs in (session.new, session.dirty):
        for obj in objs:
            if only is not None and id(obj) not in only:
                continue
            binder = _binders.get(instance_state(obj).mapper)
            if binder is not None:
                groups.setdefault(binder, []).append(obj)
    prepared = session.info.setdefault(_PREPARED, [])
    for binder, targets in groups.items():
        prepared.extend(binder.prepare(targets))


@event.listens_for(Session, "after_flush_postexec")
def _after_flush(session: Session, flush_context: Any) -> None:
    # An object prepared but not written (no net change) must not skip its hooks next time.
    for state in session.info.pop(_PREPARED, ()):
        state.info.pop(_PREPARED, None)


@event.listens_for(Mapper, "mapper_configured")
def _on_mapper_configured(mapper: Mapper[Any], class_: type) -> None:
    install(mapper)
