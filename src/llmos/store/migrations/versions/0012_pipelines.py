"""pipelines, their runs, steps and triggers; jobs: the program's result; deployments: a
canary version and its share of traffic

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from alembic import op
import sqlalchemy as sa

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # recreate="never": only ADD COLUMN (see 0011).
    op.create_table(
        'pipelines',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('name', sa.String(100), nullable=False),
        sa.Column('team', sa.String(100), nullable=True, index=True),
        sa.Column('owner', sa.String(200), nullable=False),
        sa.Column('system_admin', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('spec', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ux_pipelines_name_team', 'pipelines', ['name', 'team'], unique=True)
    op.create_table(
        'pipeline_runs',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('pipeline_id', sa.Integer(),
                  sa.ForeignKey('pipelines.id', ondelete='CASCADE'), nullable=False,
                  index=True),
        sa.Column('team', sa.String(100), nullable=True, index=True),
        sa.Column('owner', sa.String(200), nullable=False),
        sa.Column('system_admin', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('spec', sa.JSON(), nullable=False),
        sa.Column('params', sa.JSON(), nullable=False),
        sa.Column('no_cache', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('trigger', sa.String(300), nullable=False),
        sa.Column('state', sa.String(16), nullable=False, index=True),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        'pipeline_steps',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('run_id', sa.Integer(),
                  sa.ForeignKey('pipeline_runs.id', ondelete='CASCADE'), nullable=False),
        sa.Column('name', sa.String(200), nullable=False),
        sa.Column('step', sa.String(100), nullable=False),
        sa.Column('index', sa.Integer(), nullable=True),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('job_id', sa.Integer(), sa.ForeignKey('jobs.id', ondelete='SET NULL'),
                  nullable=True, index=True),
        sa.Column('cache_key', sa.String(64), nullable=True, index=True),
        sa.Column('cached_from', sa.Integer(), nullable=True),
        sa.Column('inputs', sa.JSON(), nullable=True),
        sa.Column('outputs', sa.JSON(), nullable=True),
        sa.Column('detail', sa.JSON(), nullable=True),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index('ux_pipeline_steps', 'pipeline_steps', ['run_id', 'name'], unique=True)
    op.create_table(
        'pipeline_triggers',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('pipeline_id', sa.Integer(),
                  sa.ForeignKey('pipelines.id', ondelete='CASCADE'), nullable=False,
                  index=True),
        sa.Column('kind', sa.String(16), nullable=False),
        sa.Column('target', sa.String(200), nullable=False),
        sa.Column('params', sa.JSON(), nullable=False),
        sa.Column('overlap', sa.String(16), nullable=False),
        sa.Column('last_version', sa.Integer(), nullable=True),
        sa.Column('last_fired_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table('jobs', recreate='never') as batch:
        batch.add_column(sa.Column('result', sa.JSON(), nullable=True))
    with op.batch_alter_table('deployments', recreate='never') as batch:
        batch.add_column(sa.Column('canary_version_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('canary_weight', sa.Integer(), nullable=False,
                                   server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('deployments') as batch:
        batch.drop_column('canary_weight')
        batch.drop_column('canary_version_id')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('result')
    op.drop_table('pipeline_triggers')
    op.drop_index('ux_pipeline_steps', 'pipeline_steps')
    op.drop_table('pipeline_steps')
    op.drop_table('pipeline_runs')
    op.drop_index('ux_pipelines_name_team', 'pipelines')
    op.drop_table('pipelines')
