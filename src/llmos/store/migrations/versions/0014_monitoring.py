"""monitoring: resource usage samples and the event stream; jobs asking a share of a GPU

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30
"""

from alembic import op
import sqlalchemy as sa

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'usage_samples',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('kind', sa.String(8), nullable=False),
        sa.Column('subject', sa.String(200), nullable=False),
        sa.Column('team', sa.String(100), nullable=True, index=True),
        sa.Column('resolution_s', sa.Integer(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column('cpu', sa.Float(), nullable=True),
        sa.Column('memory_mb', sa.Float(), nullable=True),
        sa.Column('read_bytes_s', sa.Float(), nullable=True),
        sa.Column('write_bytes_s', sa.Float(), nullable=True),
        sa.Column('gpu_util', sa.Float(), nullable=True),
        sa.Column('gpu_memory_mb', sa.Float(), nullable=True),
    )
    op.create_index('ix_usage_samples_subject', 'usage_samples',
                    ['kind', 'subject', 'resolution_s', 'at'])
    op.create_table(
        'events',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('kind', sa.String(20), nullable=False),
        sa.Column('subject', sa.String(200), nullable=False),
        sa.Column('action', sa.String(50), nullable=False),
        sa.Column('team', sa.String(100), nullable=True, index=True),
        sa.Column('state', sa.String(32), nullable=True),
        sa.Column('detail', sa.JSON(), nullable=True),
    )
    op.create_index('ix_events_kind_id', 'events', ['kind', 'id'])
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('gpu_share_mb', sa.Integer(), nullable=False,
                                   server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('gpu_share_mb')
    op.drop_index('ix_events_kind_id', 'events')
    op.drop_table('events')
    op.drop_index('ix_usage_samples_subject', 'usage_samples')
    op.drop_table('usage_samples')
