"""An Alembic environment wired to zdm: `zdm.alembic.run_migrations(context)` is the only zdm line.

The database is `-x db=URL`, else $ZDM_DATABASE_URL, else `sqlalchemy.url` from alembic.ini (a
SQLite file next to it). `-x zdm=complete` contracts started zdm plans first, `-x zdm=apply` runs
every phase at once (dev databases); offline (`--sql`), `-x zdm=contract` prints the contract SQL.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context

import zdm.alembic

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> sa.URL:
    url = sa.make_url(
        context.get_x_argument(as_dictionary=True).get("db")
        or os.environ.get("ZDM_DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    # plain postgresql:// means psycopg 3 here, as it does for the zdm command
    return url.set(drivername="postgresql+psycopg") if url.drivername == "postgresql" else url


if context.is_offline_mode():
    context.configure(url=database_url(), literal_binds=True, transaction_per_migration=True)
    zdm.alembic.run_migrations(context)
else:
    # A plain engine: zdm takes its own connections (and SQLite's write lock) while Alembic's waits.
    engine = sa.create_engine(database_url(), poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=True)
        zdm.alembic.run_migrations(context)
