"""users, teams, memberships, API tokens; artifacts belong to a team

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'users',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('is_admin', sa.Boolean(), nullable=False),
        sa.Column('disabled', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'),
    )
    op.create_table(
        'teams',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('quota_cpu', sa.Float(), nullable=True),
        sa.Column('quota_memory_mb', sa.Integer(), nullable=True),
        sa.Column('quota_gpu', sa.Integer(), nullable=True),
        sa.Column('quota_jobs', sa.Integer(), nullable=True),
        sa.Column('quota_rps', sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'),
    )
    op.create_table(
        'memberships',
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('team_id', sa.Integer(), nullable=False),
        sa.Column('role', sa.String(length=20), nullable=False),
        sa.ForeignKeyConstraint(['team_id'], ['teams.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('user_id', 'team_id'),
    )
    op.create_table(
        'api_tokens',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('prefix', sa.String(length=20), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.Column('scopes', sa.JSON(), nullable=False),
        sa.Column('team', sa.String(length=100), nullable=True),
        sa.Column('priority', sa.String(length=16), nullable=False),
        sa.Column('rate_limit_rps', sa.Float(), nullable=True),
        sa.Column('job_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('hash'),
    )
    op.create_index(op.f('ix_api_tokens_user_id'), 'api_tokens', ['user_id'], unique=False)
    op.create_index(op.f('ix_api_tokens_job_id'), 'api_tokens', ['job_id'], unique=False)
    with op.batch_alter_table('artifacts') as batch:
        batch.add_column(sa.Column('team', sa.String(length=100), nullable=True))
        batch.add_column(sa.Column('owner', sa.String(length=200), nullable=True))
        batch.create_index('ix_artifacts_team', ['team'], unique=False)
    # What existed before identities belongs to the team and administrator that the first
    # start creates.
    for table in ('jobs', 'datasets', 'artifacts'):
        op.execute(f"UPDATE {table} SET team = 'default' WHERE team IS NULL")
    op.execute("UPDATE jobs SET owner = 'admin' WHERE owner = 'local'")
    op.execute("UPDATE datasets SET owner = 'admin' WHERE owner = 'local'")


def downgrade() -> None:
    with op.batch_alter_table('artifacts') as batch:
        batch.drop_index('ix_artifacts_team')
        batch.drop_column('owner')
        batch.drop_column('team')
    op.drop_table('api_tokens')
    op.drop_table('memberships')
    op.drop_table('teams')
    op.drop_table('users')
