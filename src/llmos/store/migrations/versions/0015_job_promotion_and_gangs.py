"""jobs: when the scheduling policy last promoted a waiting job (Tiresias' starvation
guard); whether a job may run over several nodes as a gang

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

from alembic import op
import sqlalchemy as sa

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('promoted_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('multi_node', sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('multi_node')
        batch.drop_column('promoted_at')
