"""The application's tables, as they are after the last migration (revision 0003).

``users.email`` is encrypted under each row's tenant (``FromRow("tenant_id")``) and bound to
its row: an envelope copied into another row or tenant does not decrypt. ``email_bidx`` is
its blind index, keyed per tenant, so the same address in two tenants has unrelated index
values and a lookup in one tenant never matches a row of another.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from greenlang_crypto.sqlalchemy import EMAIL, BlindIndex, EncryptedString, FromRow
from greenlang_crypto.sqlalchemy.migrate import ciphertext_check
from sqlalchemy import orm
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.crypto import service


class Base(DeclarativeBase):
    """The declarative base of the application's models."""


class User(Base):
    """A user of one tenant."""

    __tablename__ = "users"
    # The CHECK constraint revision 0002 adds with op.forbid_plaintext (same name), so that
    # `alembic check` finds the model and the database in agreement.
    __table_args__ = (ciphertext_check("email"),)

    # Row binding needs the primary key before the INSERT: a client-side UUID, not a serial.
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[str] = mapped_column(sa.String(64))
    email: Mapped[str] = mapped_column(
        EncryptedString(service, data_class="pii", tenant_id=FromRow("tenant_id"))
    )
    email_bidx: Mapped[bytes | None] = mapped_column(
        BlindIndex("email", normalizer=EMAIL, per_tenant=True), index=True
    )
    name: Mapped[str] = mapped_column(sa.String(200))


# Configure the mappers at import time: a model error then fails the app at start-up rather
# than in its first request.
orm.configure_mappers()
