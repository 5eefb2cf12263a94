"""serving: pools of workers and deployments

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'serving_pools',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('team', sa.String(length=100), nullable=True),
        sa.Column('owner', sa.String(length=200), nullable=False),
        sa.Column('cpu', sa.Float(), nullable=False),
        sa.Column('memory_mb', sa.Integer(), nullable=False),
        sa.Column('gpu', sa.Integer(), nullable=False),
        sa.Column('budget_mb', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'),
    )
    op.create_index(op.f('ix_serving_pools_team'), 'serving_pools', ['team'], unique=False)
    op.create_table(
        'deployments',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('team', sa.String(length=100), nullable=True),
        sa.Column('owner', sa.String(length=200), nullable=False),
        sa.Column('model', sa.String(length=100), nullable=False),
        sa.Column('ref', sa.String(length=50), nullable=False),
        sa.Column('version_id', sa.Integer(), nullable=False),
        sa.Column('engine', sa.String(length=50), nullable=False),
        sa.Column('replicas', sa.Integer(), nullable=False),
        sa.Column('max_batch', sa.Integer(), nullable=False),
        sa.Column('max_queue', sa.Integer(), nullable=False),
        sa.Column('priority', sa.String(length=16), nullable=False),
        sa.Column('pool', sa.String(length=100), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['version_id'], ['model_versions.id'], ondelete='RESTRICT'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'),
    )
    op.create_index(op.f('ix_deployments_team'), 'deployments', ['team'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_deployments_team'), table_name='deployments')
    op.drop_table('deployments')
    op.drop_index(op.f('ix_serving_pools_team'), table_name='serving_pools')
    op.drop_table('serving_pools')
