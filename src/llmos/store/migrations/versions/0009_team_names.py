"""team names: datasets, models, pools and deployments are named within their team

Their names were unique across the whole system, so one team's name was "taken" for every
other team (and a refusal told the other team that it existed). They become unique per
team: the global unique constraint on ``name`` is replaced by a unique index on
``(name, team)`` (name first: a bare name is looked up by name alone).

SQLite cannot drop a constraint, so each table is rebuilt (batch mode). ``datasets`` and
``models`` have children that cascade on delete, and dropping the old table would delete
them: on SQLite the rebuild runs with foreign keys off (the pragma only changes outside a
transaction), and every reference is checked before they are turned on again.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from alembic import op
import sqlalchemy as sa

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

TABLES = ('datasets', 'models', 'serving_pools', 'deployments')
# Unnamed constraints get this name when SQLite's batch mode reflects them, so they can
# be dropped by name.
SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == 'sqlite':
        _without_foreign_keys(bind, _upgrade_sqlite)
        return
    inspector = sa.inspect(bind)
    for table in TABLES:
        for uq in inspector.get_unique_constraints(table):
            if uq['column_names'] == ['name']:
                op.drop_constraint(uq['name'], table, type_='unique')
        op.create_index(f'ux_{table}_name_team', table, ['name', 'team'], unique=True)


def _upgrade_sqlite() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, naming_convention=SQLITE_NAMES,
                                  recreate='always') as batch:
            batch.drop_constraint(f'uq_{table}_name', type_='unique')
            batch.create_index(f'ux_{table}_name_team', ['name', 'team'], unique=True)


def downgrade() -> None:
    """Back to global names: refused (by the unique constraint) while two teams use one."""
    bind = op.get_bind()
    if bind.dialect.name == 'sqlite':
        _without_foreign_keys(bind, _downgrade_sqlite)
        return
    for table in TABLES:
        op.drop_index(f'ux_{table}_name_team', table_name=table)
        op.create_unique_constraint(f'{table}_name_key', table, ['name'])


def _downgrade_sqlite() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, naming_convention=SQLITE_NAMES,
                                  recreate='always') as batch:
            batch.drop_index(f'ux_{table}_name_team')
            batch.create_unique_constraint(f'uq_{table}_name', ['name'])


def _without_foreign_keys(bind, work) -> None:
    """Run ``work`` on SQLite with foreign keys off: rebuilding a table drops the old one,
    and with foreign keys on that deletes (ON DELETE CASCADE) every row that refers to it.
    The pragma is a no-op inside a transaction, so what came before is committed first
    (earlier revisions, already complete); the rows are checked before keys come back."""
    dbapi = bind.connection.dbapi_connection
    dbapi.commit()
    bind.exec_driver_sql('PRAGMA foreign_keys=OFF')
    try:
        work()
        broken = bind.exec_driver_sql('PRAGMA foreign_key_check').fetchall()
        if broken:
            raise RuntimeError(f'0009: rows refer to missing rows after the rebuild: '
                               f'{broken[:5]}')
        dbapi.commit()
    except BaseException:
        dbapi.rollback()  # so that the pragma below applies (never a connection left off)
        raise
    finally:
        bind.exec_driver_sql('PRAGMA foreign_keys=ON')
