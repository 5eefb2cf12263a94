"""the model registry: models, versions, aliases

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'models',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('team', sa.String(length=100), nullable=True),
        sa.Column('owner', sa.String(length=200), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'),
    )
    op.create_index(op.f('ix_models_team'), 'models', ['team'], unique=False)
    op.create_table(
        'model_versions',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('model_id', sa.Integer(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('architecture', sa.String(length=200), nullable=True),
        sa.Column('task', sa.String(length=50), nullable=False),
        sa.Column('parameters', sa.BigInteger(), nullable=False),
        sa.Column('size_bytes', sa.BigInteger(), nullable=False),
        sa.Column('dtype', sa.String(length=100), nullable=False),
        sa.Column('context_length', sa.Integer(), nullable=True),
        sa.Column('info', sa.JSON(), nullable=False),
        sa.Column('files', sa.JSON(), nullable=False),
        sa.Column('lineage', sa.JSON(), nullable=False),
        sa.Column('metrics', sa.JSON(), nullable=False),
        sa.Column('card', sa.Text(), nullable=False),
        sa.Column('job_id', sa.Integer(), nullable=True),
        sa.Column('owner', sa.String(length=200), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['model_id'], ['models.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ux_model_versions', 'model_versions', ['model_id', 'version'], unique=True)
    op.create_table(
        'model_aliases',
        sa.Column('model_id', sa.Integer(), nullable=False),
        sa.Column('alias', sa.String(length=50), nullable=False),
        sa.Column('version_id', sa.Integer(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['model_id'], ['models.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['version_id'], ['model_versions.id'], ondelete='RESTRICT'),
        sa.PrimaryKeyConstraint('model_id', 'alias'),
    )


def downgrade() -> None:
    op.drop_table('model_aliases')
    op.drop_index('ux_model_versions', table_name='model_versions')
    op.drop_table('model_versions')
    op.drop_index(op.f('ix_models_team'), table_name='models')
    op.drop_table('models')
