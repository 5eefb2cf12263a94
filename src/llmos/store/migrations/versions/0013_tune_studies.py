"""tuning studies (their trials live in Optuna's own tables, beside llmos's)

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from alembic import op
import sqlalchemy as sa

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'tune_studies',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('name', sa.String(100), nullable=False),
        sa.Column('team', sa.String(100), nullable=True, index=True),
        sa.Column('owner', sa.String(200), nullable=False),
        sa.Column('system_admin', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('recipe', sa.JSON(), nullable=False),
        sa.Column('state', sa.String(16), nullable=False, index=True),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('optuna_study', sa.String(200), nullable=False),
        sa.Column('best', sa.JSON(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index('ux_tune_studies_name_team', 'tune_studies', ['name', 'team'],
                    unique=True)


def downgrade() -> None:
    op.drop_index('ux_tune_studies_name_team', 'tune_studies')
    op.drop_table('tune_studies')
