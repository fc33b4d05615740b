"""Alembic environment: runs aLAN's migrations against the URL the caller configured."""

from __future__ import annotations

from alembic import context

from engine.store.database import create_db_engine
from engine.store.models import Base
from engine.store.postgres import lock_migrations

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url must be set"
    # Foreign keys off while migrating: SQLite's batch mode rebuilds tables, which would cascade-delete.
    engine = create_db_engine(url, foreign_keys=False)
    postgresql = engine.dialect.name == "postgresql"
    # On PostgreSQL several aLAN processes may start at once, each upgrading: the first to take the migration lock
    # migrates, and the others, reading committed data once they hold it, find nothing left to do.
    isolation = {"isolation_level": "READ COMMITTED"} if postgresql else {}
    with engine.connect().execution_options(**isolation) as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            if postgresql:
                lock_migrations(connection)
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
