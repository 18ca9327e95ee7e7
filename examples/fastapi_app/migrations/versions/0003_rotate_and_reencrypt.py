"""Rotate the keys and re-encrypt users.email under the new ones.

Revision ID: 0003
Revises: 0002

Key rotation is usually an operations task, separate from schema migrations::

    greenlang-crypto keys rotate        # new primary master-key version
    (or POST /api/v1/encryption/keys/rotate with an admin token)

After a rotation new values are written under the new version at once and old ones keep
decrypting; re-encrypting the stored values is what lets the old version be retired later.
This revision does both, so the example shows the whole cycle: it rotates the data key and
the blind-index key, then runs the re-encryption job, which moves every envelope to the
primary version and recomputes every blind index made with an older index key.

The rotations are recorded in the key store and the audit log as they happen, outside this
migration's transaction: if the job fails and the revision rolls back, the new versions
stay (harmless: the rows keep their old versions, which still decrypt), and a second attempt
rotates once more. Retiring the old versions (``greenlang-crypto keys retire``) is left to
operations, after this revision is committed everywhere.
"""

from __future__ import annotations

from alembic import op

from app import crypto
from app.models import User

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Rotates the data and blind-index keys and re-encrypts the e-mail column."""
    service = crypto.service()
    service.rotate()
    service.rotate_index_key()
    op.reencrypt_column(User.email)


def downgrade() -> None:
    """Nothing to undo: the older key versions still decrypt (until they are retired)."""
