"""security: key check values

One row per encryption (and audit) key id: an HMAC of a constant under the key, so the
daemon can tell a wrong key for a known id and refuse it (``security/crypto.py``). The
audit chain changes no table: its records keep their columns, keyed from the upgrade on,
and its anchor lives in a file outside the database (``security/audit.py``).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from alembic import op
import sqlalchemy as sa

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'key_checks',
        sa.Column('key_id', sa.String(length=100), nullable=False),
        sa.Column('check_value', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('key_id'),
    )


def downgrade() -> None:
    op.drop_table('key_checks')
