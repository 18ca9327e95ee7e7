# ruff: noqa: S608
# SQL text here is assembled only from identifiers quoted by the dialect's identifier preparer
# (table and column names from the job spec); no value is ever part of it.
"""Before a column job writes a row: its settings agree with the model, proved on a sample.

A job and the application must build byte-identical contexts, associated data and index
values, or the job writes values that every later read refuses. When the job's spec knows
the model column (:meth:`ColumnSpec.from_model`, the CLI's ``--model``, or ``model=`` given
by hand), :func:`check_job` runs first:

1. **Settings.** The spec is compared, setting by setting, with the one the model gives.
2. **Sample round trip.** A probe value (never a row's value) is encrypted exactly as the job
   encrypts (its context cache, its associated data for the first row of the table), then
   decrypted with the context and associated data the column type builds for that row, as
   the ORM does on load (the primary key as the model's pk column reads it, the row's
   tenant), and decoded by the type. With a blind index, the job's index value of the probe
   is compared with the one the model's index declares (purpose, per-tenant key,
   normalizers, length). An empty table has nothing to write and no row to bind a sample
   to: only the settings are compared then.

Any difference raises :class:`JobSpecMismatchError` naming the differing settings; nothing
has been written then. A spec without a model cannot be checked: the CLI warns and
recommends ``--model``.
"""

from __future__ import annotations

import hmac
import weakref
from typing import Any

from sqlalchemy import Text, cast, select

from greenlang_crypto.exceptions import GreenlangCryptoError, UnavailableError
from greenlang_crypto.sqlalchemy._common import FromRow
from greenlang_crypto.sqlalchemy._index_lookup import index_for_source
from greenlang_crypto.sqlalchemy._job_batches import _JobBatches as ColumnJob
from greenlang_crypto.sqlalchemy._job_spec import (
    MODEL_SETTINGS,
    ColumnSpec,
    JobSpecMismatchError,
    _Row,
)
from greenlang_crypto.sqlalchemy._job_sql import _value_rows
from greenlang_crypto.sqlalchemy.types import EncryptedBytes, EncryptedString, EncryptedType

__all__ = ["JobSpecMismatchError", "check_job"]

#: The probe: every built-in normalizer changes it (spaces, case, composed accents, digits
#: among letters), so two indexes that normalize differently give different values.
_PROBE_TEXT = "  Probe.Check+1 (555) 0100 Cafe\u0301 @Example.ORG  "
_PROBE_BYTES = b"\x00glc-probe\xff\x01"

# Jobs already checked on their current spec: the CLI checks before it audits, and the run
# that follows need not do it again.
_checked: weakref.WeakKeyDictionary[Any, ColumnSpec] = weakref.WeakKeyDictionary()


def check_job(job: ColumnJob) -> None:
    """Proves on a sample that ``job`` writes what its model column reads back.

    Does nothing when the spec has no model. Reads the first row's primary key and tenant
    (never a stored value) and encrypts a probe value; writes nothing.

    Raises:
        JobSpecMismatchError: A setting differs, or the probe does not read back through the
            model's column type (the message names the differing settings).
        InvalidArgumentError: The model column cannot be migrated (see
            :meth:`ColumnSpec.from_model`).
        UnavailableError: The sample row was deleted between its two reads, again and again
            (nothing was checked or written; run again).
    """
    spec = job.spec
    if spec.model is None or _checked.get(job) is spec:
        return
    model_spec = ColumnSpec.from_model(spec.model, version_column=spec.version_column)
    where = f"{model_spec.table}.{model_spec.column}"
    differing = model_spec.differences({name: getattr(spec, name) for name in MODEL_SETTINGS})
    if differing:
        raise JobSpecMismatchError(
            f"the job's settings contradict the model {where}: " + "; ".join(differing)
        )
    differing = _round_trip(job, model_spec)
    if differing:
        raise JobSpecMismatchError(
            f"a sample value written as the job would does not read back through the model "
            f"{where}: " + "; ".join(differing)
        )
    _checked[job] = spec


def _model_type(model: Any) -> tuple[Any, EncryptedType]:
    prop = getattr(model, "property", None)
    col = prop.columns[0] if prop is not None else model
    return col, col.type


def _probe(typ: EncryptedType) -> tuple[Any, bytes]:
    """A Python value of the column's kind and the plaintext bytes the job would encrypt."""
    if isinstance(typ, EncryptedBytes):
        value: Any = _PROBE_BYTES
    elif isinstance(typ, EncryptedString):
        value = _PROBE_TEXT
    else:
        value = {"probe": _PROBE_TEXT, "n": [1, 2.5, None, True]}
    return value, typ.to_bytes(value)


def _sample_row(job: ColumnJob, col: Any, spec: ColumnSpec) -> tuple[Any, Any, str] | None:
    """The first row's pk as the job reads it, as the model reads it, and its tenant.

    ``None`` when the table has no row (with a tenant): the job has nothing to write, and a
    probe under an invented tenant would only leave a key behind in the key store.
    """

    def read() -> tuple[Any, Any, str] | None:
        with job._connect() as conn:  # the caller's connection when the job was given one
            n = job._names(conn)
            where = f"WHERE t.{n['tenant']} IS NOT NULL " if spec.tenant_column else ""
            tenant_sql = f"t.{n['tenant']}::text" if spec.tenant_column else "NULL"
            pk_col = next(iter(col.table.primary_key.columns))
            # The application may delete the row between the two reads: read again then.
            for _attempt in range(5):
                rows = _value_rows(
                    conn,
                    f"SELECT t.{n['pk']}, t.{n['pk']}::text, {tenant_sql} FROM {n['t']} AS t "
                    f"{where}ORDER BY t.{n['pk']} LIMIT 1",
                    {},
                )
                if not rows:
                    return None
                job_pk, pk_text, tenant = rows[0]
                # The same row through the model's own column types: the primary key as the
                # ORM puts it into the identity that row binding renders. Picked by its key,
                # not as "the first row" again: a row inserted in between may sort first.
                query = select(pk_col).where(cast(pk_col, Text) == pk_text)
                orm_pk = conn.execute(query).scalar()
                if orm_pk is not None:
                    tenant_id = spec.tenant_id if spec.tenant_id is not None else str(tenant)
                    return job_pk, orm_pk, tenant_id
        raise UnavailableError(
            "the sample row of the pre-write check kept disappearing (rows deleted "
            "meanwhile); run the job again"
        )

    return job._retrying(None, read)


def _round_trip(job: ColumnJob, model_spec: ColumnSpec) -> list[str]:
    col, typ = _model_type(model_spec.model)
    value, plaintext = _probe(typ)
    sample = _sample_row(job, col, model_spec)
    if sample is None:
        return []
    job_pk, orm_pk, tenant = sample
    row = _Row(job_pk, str(job_pk), None, tenant, None)
    svc = job.service
    # As the job encrypts (its contexts, its associated data).
    job_ctx = job._contexts.get(tenant)
    job_aad = job._aad(row)
    envelope = svc.encrypt(plaintext, job_ctx, associated_data=job_aad)
    # As the column type decrypts on an ORM load of that row (the type's own context and
    # associated data; the job's service holds the same keys as the application's).
    row_tenant = tenant if isinstance(typ.tenant_id, FromRow) else None
    orm_ctx = typ.context_for(row_tenant)
    orm_aad = typ.associated_data_for(orm_pk, orm_ctx.tenant_id)
    out: list[str] = []
    try:
        back = typ.from_bytes(svc.decrypt(envelope, orm_ctx, associated_data=orm_aad))
        readable = back == value
    except GreenlangCryptoError:
        readable = False
    if not readable:
        out.extend(_why_unreadable(job, typ, job_ctx, orm_ctx, job_aad, orm_aad, job_pk, orm_pk))
    out.extend(_index_differences(job, col, row, value, plaintext, tenant))
    return out


def _why_unreadable(
    job: ColumnJob,
    typ: EncryptedType,
    job_ctx: Any,
    orm_ctx: Any,
    job_aad: bytes,
    orm_aad: bytes,
    job_pk: Any,
    orm_pk: Any,
) -> list[str]:
    out: list[str] = []
    if job_ctx.tenant_id != orm_ctx.tenant_id:
        out.append("tenant: the job's context has another tenant than the model's")
    if job_ctx.data_class != orm_ctx.data_class:
        out.append(
            f"data class: job {job_ctx.data_class!r}, model {orm_ctx.data_class!r} (--data-class)"
        )
    if not hmac.compare_digest(job_aad, orm_aad):
        if job.spec.bind_row != typ.bind_row:
            out.append(
                f"associated data: row binding (--bind-row) job {job.spec.bind_row}, "
                f"model {typ.bind_row}"
            )
        elif str(job_pk) != str(orm_pk):
            out.append(
                "associated data: the primary key reads as "
                f"{type(job_pk).__name__} in the job and {type(orm_pk).__name__} in the model, "
                "and renders differently"
            )
        else:
            out.append(
                "associated data: table or column binding differs "
                f"(job {job.spec.table}.{job.spec.column}, model "
                f"{'.'.join(typ.table_column)}; a location= override on the type?)"
            )
    if not out:
        out.append(
            f"value kind: the model's {type(typ).__name__} does not read what a "
            f"{job.spec.kind!r} job writes (--kind)"
        )
    return out


def _index_differences(
    job: ColumnJob, col: Any, row: _Row, value: Any, plaintext: bytes, tenant: str
) -> list[str]:
    index_col = index_for_source(col)
    job_index = job._index
    if index_col is None or job_index is None:
        if (index_col is None) != (job_index is None):
            return ["index column (--index-column): the job and the model disagree"]
        return []
    model_index = index_col.type
    out: list[str] = []
    if job_index.purpose_for(tenant) != model_index.purpose_for(tenant):
        if job_index.per_tenant != model_index.per_tenant:
            out.append(
                f"index per tenant (--index-per-tenant): job {job_index.per_tenant}, "
                f"model {model_index.per_tenant}"
            )
        else:
            out.append("index purpose (--index-purpose): the job and the model differ")
    index_input: Any = value if isinstance(value, str | bytes) else plaintext.decode()
    if not hmac.compare_digest(
        job_index.normalize(index_input), model_index.normalize(index_input)
    ):
        out.append("index normalizer (--index-normalizer): the job and the model differ")
    if job_index.length != model_index.length:
        out.append(
            f"index length (--index-length): job {job_index.length}, model {model_index.length}"
        )
    if out:
        return out
    # The settings agree; the values must too (computed with the job's keys).
    version = job._target_index_version
    expected = bytes((version or 0,)) + model_index._mac(
        job.service.blind_index_key(model_index.purpose_for(tenant), version),
        model_index.normalize(index_input),
    )
    written = job._index_of(plaintext, row)
    if written is None or not hmac.compare_digest(written, expected):
        out.append("index value: the job's blind index of the sample differs from the model's")
    return out
