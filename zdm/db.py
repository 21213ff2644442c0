"""Engines that behave the way the runner needs (the dialect says how), and SQL run as written."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa


class DatabaseUnavailable(RuntimeError):
    """The database URL is malformed, uses an unsupported driver, or does not answer."""


class BadDatabaseUrl(DatabaseUnavailable):
    """The URL itself is wrong (malformed, another database, a driver zdm cannot load): bad input."""


def create_engine(url: str | sa.URL, **kwargs: Any) -> sa.Engine:
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise BadDatabaseUrl(f"not a database URL: {shown_url(url)!r}") from None
    from zdm.dialects import for_name

    try:
        dialect = for_name(parsed.get_backend_name())
    except ValueError as exc:
        raise BadDatabaseUrl(str(exc)) from None
    parsed = dialect.engine_url(parsed)
    try:
        engine = sa.create_engine(parsed, connect_args=dialect.connect_args(), **kwargs)
    except (ImportError, sa.exc.ArgumentError) as exc:
        raise BadDatabaseUrl(f"cannot use {parsed.render_as_string(hide_password=True)}: {exc}") from None
    dialect.configure_engine(engine)
    return engine


#: The password part of a URL that SQLAlchemy could not parse: ``scheme://user:PASSWORD@``.
_PASSWORD = re.compile(r"(://[^/:@]*:)[^/@]*@")


def shown_url(url: str | sa.URL) -> str:
    """A URL as zdm prints it: without its password, even when it is malformed."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return _PASSWORD.sub(r"\1***@", str(url))


#: What SQLAlchemy's text() takes for a bind parameter (its own pattern): ``:name``, not ``::`` casts.
_BIND_PARAMETER = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")


def sql_text(sql: str) -> sa.TextClause:
    """SQL written by a person (a default, a condition) as a clause, taken as written.

    ``sa.text`` reads ``:name`` as a bind parameter, and a DDL statement renders an unbound one
    as NULL: a default of ``'at :noon'`` would silently become ``'at NULL'``.
    """
    return sa.text(escape_binds(sql))


def escape_binds(sql: str) -> str:
    """``sql`` with every ``:name`` escaped, for code that hands it to ``sa.text`` itself."""
    return _BIND_PARAMETER.sub(r"\\:\1", sql)


def run_sql(connection: sa.Connection, statement: str) -> sa.CursorResult[Any]:
    """Run a stored statement as written.

    Drivers with pyformat placeholders (psycopg) read ``%`` as a placeholder even without
    parameters, so a literal ``%`` (a LIKE pattern, a default of '50%') is doubled for them.
    """
    if connection.dialect.paramstyle in ("pyformat", "format"):
        statement = statement.replace("%", "%%")
    return connection.exec_driver_sql(statement)


def check_connection(engine: sa.Engine) -> None:
    """Fail early, in one line, when the database does not answer."""
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as exc:
        reason = " ".join(str(exc.orig).split()) if exc.orig else str(exc)
        where = engine.url.render_as_string(hide_password=True)
        raise DatabaseUnavailable(f"cannot connect to {where}: {reason}") from None


def describe(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=True)
