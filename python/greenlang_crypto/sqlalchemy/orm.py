"""ORM hooks: row binding of encrypted columns and filling of blind indexes.

Installed automatically (through ``mapper_configured``) on every mapped class that has a
row-bound encrypted column or a blind index; nothing to call. See :mod:`.types` for why row
binding needs a client-side primary key.

Per flushed object:

* ``before_insert`` / ``before_update``: compute blind indexes from the plaintext attributes,
  then replace each row-bound plaintext by a :class:`~.types.SealedValue` encrypted with the
  row's primary key and tenant. On update only changed values are re-encrypted, or all of
  them when the primary key or the tenant changed (their binding changed).
* ``after_insert`` / ``after_update``: put the plaintext back as the committed value, so the
  object never exposes ciphertext and is not marked dirty again.
* ``load`` / ``refresh``: decrypt row-bound values with the loaded primary key and tenant.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.orm import Mapper, attributes

from greenlang_crypto.exceptions import InvalidArgumentError
from greenlang_crypto.sqlalchemy._common import FromRow
from greenlang_crypto.sqlalchemy.blind_index import BlindIndex
from greenlang_crypto.sqlalchemy.types import EncryptedType, SealedValue

__all__ = ["install"]

_STASH = "_glc_plaintexts"
_installed: weakref.WeakSet[Mapper[Any]] = weakref.WeakSet()


@dataclass
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

    def before_write(self, target: Any, *, insert: bool) -> None:
        state = inspect(target)
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


@event.listens_for(Mapper, "mapper_configured")
def _on_mapper_configured(mapper: Mapper[Any], class_: type) -> None:
    install(mapper)
