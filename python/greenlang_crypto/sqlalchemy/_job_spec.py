"""What a column job works on and what it reports: the column spec, the reports, row records."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column

from greenlang_crypto.exceptions import GreenlangCryptoError, InvalidArgumentError
from greenlang_crypto.sqlalchemy.blind_index import BlindIndex, Normalizer

#: ``progress(processed, remaining)``, called after every batch of a job.
Progress = Callable[[int, int], None]


class PlaintextFoundError(GreenlangCryptoError):
    """Phase 2 found values that are not envelopes."""


@dataclass(frozen=True)
class ColumnSpec:
    """Where a column lives and how its values are encrypted (must match its column type).

    Attributes:
        table: Table name, optionally schema-qualified (``security.login_attempts``); the
            same text as the model's ``Table.fullname`` (it is part of the associated data).
        column: The bytea column (plaintext UTF-8 or envelope).
        pk: The primary-key column (a single column; keyset order).
        data_class: ``data_class`` of the context.
        tenant_id: A fixed tenant; or ``tenant_column`` gives it per row.
        tenant_column: Column holding each row's tenant.
        bind_row: The column type binds values to the primary key (``bind_row=True``).
        kind: ``"str"`` (plaintext must be UTF-8) or ``"bytes"``.
        version_column: Optional integer column that mirrors each envelope's key version;
            written in the same UPDATE as the ciphertext.
        index_column: Optional blind-index column.
        index_purpose: Its purpose (default ``"<table>.<column>"``, as :class:`BlindIndex`).
        index_normalizer: Its normalizers (as declared on the model).
        index_length: Its MAC length.
        index_per_tenant: Whether it uses per-tenant keys.
        model: The model column it was built from (see :meth:`from_model`), if any.

    Prefer :meth:`from_model`: a spec written by hand must repeat the model's settings
    exactly, and a job on a spec that differs writes values the application cannot read.
    """

    table: str
    column: str
    pk: str = "id"
    data_class: str = "pii"
    tenant_id: str | None = None
    tenant_column: str | None = None
    bind_row: bool = False
    kind: str = "str"
    version_column: str | None = None
    index_column: str | None = None
    index_purpose: str | None = None
    index_normalizer: tuple[Normalizer, ...] = ()
    index_length: int = 16
    index_per_tenant: bool = False

    #: The model column this spec was built from (:meth:`from_model`), or given by hand so
    #: that a job checks the spec against it; ``None``: nothing to check against. Not part of
    #: the spec's identity (equality, repr).
    model: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if (self.tenant_id is None) == (self.tenant_column is None):
            raise InvalidArgumentError("give exactly one of tenant_id and tenant_column")
        if self.kind not in ("str", "bytes"):
            raise InvalidArgumentError("kind must be 'str' or 'bytes'")

    @classmethod
    def from_model(
        cls, column: Any, *, version_column: str | None = None, **overrides: Any
    ) -> ColumnSpec:
        """Builds the spec of an encrypted model column: the one source of the job's settings.

        Everything that decides how a value is encrypted and indexed (table and column as
        the type binds them, primary key, data class, tenant, row binding, kind, blind-index
        column, purpose, normalizers, length, per-tenant keys) is read from the column type
        and the :class:`~greenlang_crypto.sqlalchemy.BlindIndex` declared over it, so the job
        writes exactly what the application's reads expect. The spec remembers the column
        (:attr:`model`), and a :class:`~greenlang_crypto.sqlalchemy.migrate.ColumnJob` run
        on it first round-trips a sample value (see
        :func:`greenlang_crypto.sqlalchemy._job_check.check_job`).

        Example::

            from greenlang_crypto.sqlalchemy import ColumnSpec
            from greenlang_crypto.sqlalchemy.migrate import ColumnJob

            spec = ColumnSpec.from_model(User.email, version_column="email_key_version")
            ColumnJob(engine, service, spec, mode="encrypt").run()

        The CLI does the same with ``--model myapp.models:User.email``.

        Args:
            column: A mapped attribute (``User.email``) or a ``Column`` of a ``Table``.
            version_column: Optional integer column mirroring each value's key version (the
                model does not say which column that is).
            overrides: Other :class:`ColumnSpec` fields. A setting the model decides may be
                repeated only with the model's value.

        Raises:
            InvalidArgumentError: The column is not encrypted, its table has no single-column
                primary key, its tenant is a callable, or its ``FromRow`` attribute names no
                column.
            JobSpecMismatchError: An override contradicts the model (the message names the
                settings).
        """
        from greenlang_crypto.sqlalchemy._common import FromRow
        from greenlang_crypto.sqlalchemy.blind_index import index_for_source
        from greenlang_crypto.sqlalchemy.types import EncryptedBytes, EncryptedType

        prop = getattr(column, "property", None)
        col: Column[Any] = prop.columns[0] if prop is not None else column
        typ = getattr(col, "type", None)
        if not isinstance(typ, EncryptedType):
            raise InvalidArgumentError("not an encrypted column")
        table, name = typ.table_column
        # The spec's table and column are both where the job writes and what it binds each
        # value to. A type bound elsewhere (location=, kept after a rename) would have the job
        # write into the location's table, or bind to the wrong place: refused.
        where = getattr(col, "table", None)
        physical = (getattr(where, "fullname", None), getattr(col, "name", None))
        if physical != (table, name):
            raise InvalidArgumentError(
                f"the column {physical[0]}.{physical[1]} binds its values to the location "
                f"{table}.{name} (location=), and a column job writes and binds one table and "
                "column: it cannot take this column from the model (a purge can: pass a "
                "PurgeTarget naming the table and column)"
            )
        pk_cols = list(col.table.primary_key.columns)
        if len(pk_cols) != 1:
            raise InvalidArgumentError("the job needs a single-column primary key")
        spec: dict[str, Any] = {
            "table": table,
            "column": name,
            "pk": pk_cols[0].name,
            "data_class": typ.data_class,
            "bind_row": typ.bind_row,
            "kind": "bytes" if isinstance(typ, EncryptedBytes) else "str",
            "version_column": version_column,
            "model": column,
        }
        tenant = typ.tenant_id
        if isinstance(tenant, FromRow):
            spec["tenant_column"] = _row_tenant_column(prop, col, tenant.attribute)
        elif isinstance(tenant, str):
            spec["tenant_id"] = tenant
        else:
            raise InvalidArgumentError("a callable tenant cannot be migrated; pass tenant_id")
        index_col = index_for_source(col)
        if index_col is not None:
            index: BlindIndex = index_col.type
            spec.update(
                index_column=index_col.name,
                index_purpose=index.purpose or f"{table}.{name}",
                index_normalizer=index.normalizer,
                index_length=index.length,
                index_per_tenant=index.per_tenant,
            )
        built = cls(**spec)
        if not overrides:
            return built
        given = dict(overrides)
        given.pop("model", None)
        differing = built.differences(given)
        if differing:
            raise JobSpecMismatchError(
                f"the settings given contradict the model {table}.{name}: " + "; ".join(differing)
            )
        return cls(**{**spec, **given})

    def effective_index_purpose(self) -> str | None:
        """The blind-index purpose the job uses (``None`` without an index column)."""
        if self.index_column is None:
            return None
        return self.index_purpose or f"{self.table}.{self.column}"

    def differences(self, given: dict[str, Any]) -> list[str]:
        """The settings in ``given`` (field name -> value) that differ from this spec's.

        Each entry names the setting, its CLI flag, and both values (settings only, never a
        row value). ``None`` means not given. Fields that the model does not decide
        (``version_column``) never differ.

        Raises:
            InvalidArgumentError: ``given`` names a field :class:`ColumnSpec` does not have.
        """
        out: list[str] = []
        for name, value in given.items():
            if value is None:
                continue  # not given
            label = MODEL_SETTINGS.get(name)
            if label is None:
                if name not in _FREE_SETTINGS:
                    raise InvalidArgumentError(f"ColumnSpec has no field {name!r}")
                continue
            if name == "index_purpose":
                mine: Any = self.effective_index_purpose()
            else:
                mine = getattr(self, name)
            theirs = _as_steps(value) if name == "index_normalizer" else value
            if theirs != mine:
                out.append(f"{label}: given {_show(theirs)}, model {_show(mine)}")
        return out


#: The settings a model decides, with the words (and CLI flag) an error message uses for them.
MODEL_SETTINGS: dict[str, str] = {
    "table": "table (--table)",
    "column": "column (--column)",
    "pk": "primary key (--pk)",
    "data_class": "data class (--data-class)",
    "tenant_id": "fixed tenant (--tenant)",
    "tenant_column": "tenant column (--tenant-column)",
    "bind_row": "row binding (--bind-row)",
    "kind": "value kind (--kind)",
    "index_column": "index column (--index-column)",
    "index_purpose": "index purpose (--index-purpose)",
    "index_normalizer": "index normalizer (--index-normalizer)",
    "index_length": "index length (--index-length)",
    "index_per_tenant": "index per tenant (--index-per-tenant)",
}
_FREE_SETTINGS = frozenset({"version_column"})


class JobSpecMismatchError(InvalidArgumentError):
    """A column job's settings contradict the model column the application reads with.

    Raised before any row is written; the message names each differing setting.
    """


def _as_steps(value: Any) -> Any:
    if value is None:
        return ()
    if callable(value):
        return (value,)
    return tuple(value)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(getattr(v, "__name__", type(v).__name__) for v in value) + ")"
    return repr(value)


def _row_tenant_column(prop: Any, col: Column[Any], attribute: str) -> str:
    """The column behind a ``FromRow`` attribute (through the mapper when there is one)."""
    mapper = getattr(prop, "parent", None)
    if mapper is not None:
        attr = mapper.attrs.get(attribute)
        columns = getattr(attr, "columns", None)
        if columns:
            return str(columns[0].name)
    try:
        return str(col.table.c[attribute].name)
    except KeyError:
        raise InvalidArgumentError(
            f"FromRow({attribute!r}) names no column of {col.table.name!r}"
        ) from None


@dataclass
class DryRunReport:
    """Rows per state of one column.

    Attributes:
        table: The table.
        column: The column.
        null: NULL values.
        plaintext: Non-envelope values.
        by_key_version: Envelopes per key version (from the public header).
        undecryptable: Envelopes that failed to decrypt, by reason (error type).
        by_index_version: Blind-index values per index key version (``0``: missing).
    """

    table: str
    column: str
    null: int = 0
    plaintext: int = 0
    by_key_version: Counter[int] = field(default_factory=Counter)
    undecryptable: Counter[str] = field(default_factory=Counter)
    by_index_version: Counter[int] = field(default_factory=Counter)

    def rows_below(self, version: int) -> int:
        """Envelopes under key versions below ``version`` (plus any plaintext)."""
        return self.plaintext + sum(n for v, n in self.by_key_version.items() if v < version)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return {
            "table": self.table,
            "column": self.column,
            "null": self.null,
            "plaintext": self.plaintext,
            "by_key_version": dict(sorted(self.by_key_version.items())),
            "undecryptable": dict(self.undecryptable),
            "by_index_version": dict(sorted(self.by_index_version.items())),
        }


@dataclass
class JobReport:
    """Outcome of one :meth:`ColumnJob.run` (this worker's share).

    Attributes:
        job: The job name.
        scanned: Rows read.
        written: Rows rewritten (ciphertext and/or index).
        skipped: Rows already in the target state (or NULL).
        quarantined: Rows recorded in the quarantine table, as ``(pk, reason, key_version)``.
        contended: CAS misses that were re-read and processed again.
        retries: Statements retried after a lost connection or failed commit.
        seconds: Wall time.
        remaining: Rows of the whole column that still need the job's work, counted with one
            SQL query once every range of the run is done (or when the run gives up waiting
            for another worker's ranges): plaintext; in re-encryption also envelopes below
            the target key version; with a blind index also envelopes whose index is missing
            or, in re-encryption, under another index key version. -1 only before counting.
    """

    job: str
    scanned: int = 0
    written: int = 0
    skipped: int = 0
    quarantined: list[tuple[str, str, int | None]] = field(default_factory=list)
    contended: int = 0
    retries: int = 0
    seconds: float = 0.0
    remaining: int = -1

    @property
    def rows_per_second(self) -> float:
        """Rows read per second."""
        return self.scanned / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        """False when rows were quarantined or are left to process (or were not counted)."""
        return not self.quarantined and self.remaining == 0

    def summary(self) -> dict[str, Any]:
        """The figures an operator and the audit record need (no row values)."""
        return {
            "job": self.job,
            "scanned": self.scanned,
            "written": self.written,
            "skipped": self.skipped,
            "quarantined": len(self.quarantined),
            "remaining": self.remaining,
            "contended": self.contended,
            "retries": self.retries,
        }


@dataclass
class _Row:
    pk: Any
    pk_text: str
    value: bytes | None
    tenant: str
    index: bytes | None
    xmin: str = ""


@dataclass
class _Write:
    row: _Row
    plaintext: bytes
    new_value: bytes | None  # None: only the index changes
    key_version: int | None
    index: bytes | None
