"""nodes; jobs: placement (labels, group, spread, anti-affinity) and the executor's handle;
deployments: autoscaling bounds and node labels

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from alembic import op
import sqlalchemy as sa

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # recreate="never": only ADD COLUMN. Copying a table in SQLite drops the old one, and
    # with foreign keys on that would cascade into the rows that reference it.
    op.create_table(
        'nodes',
        sa.Column('name', sa.String(200), primary_key=True),
        sa.Column('node_id', sa.String(200), nullable=True),
        sa.Column('executor', sa.String(50), nullable=False),
        sa.Column('address', sa.String(200), nullable=True),
        sa.Column('labels', sa.JSON(), nullable=False),
        sa.Column('capacity', sa.JSON(), nullable=False),
        sa.Column('free', sa.JSON(), nullable=False),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('drain_requested', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('joined_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table('jobs', recreate='never') as batch:
        batch.add_column(sa.Column('node_labels', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('spread_group', sa.String(200), nullable=True))
        batch.add_column(sa.Column('spread', sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column('anti_affinity', sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column('handle', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('checkpoint_artifact', sa.Integer(), nullable=True))
    with op.batch_alter_table('deployments', recreate='never') as batch:
        batch.add_column(sa.Column('min_replicas', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('max_replicas', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('idle_s', sa.Float(), nullable=True))
        batch.add_column(sa.Column('node_labels', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('deployments') as batch:
        for name in ('node_labels', 'idle_s', 'max_replicas', 'min_replicas'):
            batch.drop_column(name)
    with op.batch_alter_table('jobs') as batch:
        for name in ('checkpoint_artifact', 'handle', 'anti_affinity', 'spread', 'spread_group', 'node_labels'):
            batch.drop_column(name)
    op.drop_table('nodes')
