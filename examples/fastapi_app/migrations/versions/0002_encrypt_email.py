"""Encrypt users.email, with a per-tenant blind index for lookups.

Revision ID: 0002
Revises: 0001

Phase 1 and phase 2 of a plaintext-to-ciphertext migration in one revision (the table is
small enough to encrypt inside one migration transaction):

1. ``email`` becomes ``bytea``, each value kept as its UTF-8 bytes (still plaintext);
2. the blind-index column and its B-tree index are added;
3. ``op.encrypt_column`` encrypts every row and fills the index, in batches (SAVEPOINTs) on
   this migration's connection; a row it cannot encrypt fails the revision, and everything
   above is rolled back with it;
4. ``op.forbid_plaintext`` checks that no plaintext is left and adds the CHECK constraint
   ``glc_email_is_envelope``, so plaintext can never be written again.

For a table too large for one transaction, use ``op.encrypt_column(User.email, defer=True)``:
it prints the resumable ``greenlang-crypto db encrypt-column`` command to run after this
revision; ``op.forbid_plaintext`` then goes in a later revision (and the model reads with
``allow_plaintext=True`` until it has run).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.models import User

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Encrypts every e-mail address and indexes it per tenant."""
    op.alter_column_to_encrypted("users", "email", from_type=sa.String(length=255))
    op.add_column("users", sa.Column("email_bidx", sa.LargeBinary(), nullable=True))
    op.create_index("ix_users_email_bidx", "users", ["email_bidx"])
    # The job reads every setting from the model (tenant column, row binding, index
    # normalizer, per-tenant keys) and round-trips a sample before it writes anything.
    op.encrypt_column(User.email)
    op.forbid_plaintext(User.email)


def downgrade() -> None:
    """Decrypts the addresses back into a text column (reads the whole table into memory)."""
    bind = op.get_bind()
    # Read through the model: it decrypts each row with the row's tenant and primary key.
    with Session(bind=bind) as session:
        rows = session.execute(select(User.id, User.tenant_id, User.email)).all()
    op.drop_constraint("glc_email_is_envelope", "users", type_="check")
    op.drop_index("ix_users_email_bidx", table_name="users")
    op.drop_column("users", "email_bidx")
    # UTF-8 bytes in the bytea column: the form alter_column_from_encrypted converts back.
    update = text("UPDATE users SET email = :email WHERE id = :id")
    for row in rows:
        bind.execute(update, {"id": row.id, "email": row.email.encode()})
    op.alter_column_from_encrypted("users", "email", type_=sa.String(length=255))
