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
        raise BadDatabaseUrl(f"cannot use {shown_url(parsed)}: {exc}") from None
    dialect.configure_engine(engine)
    return engine


#: Query-string keys whose values are secrets (libpq's password and sslpassword, and the usual others).
SECRET_KEYS = frozenset({"password", "sslpassword", "passwd", "pwd", "secret", "token", "access_token", "api_key"})
MASK = "***"


def shown_url(url: str | sa.URL) -> str:
    """A URL as zdm prints it, everywhere: no password, neither after the user name nor in the
    query string (``?password=``), even when the URL is malformed. SQLAlchemy renders a parsed one
    (``render_as_string(hide_password=True)``); urllib splits one it cannot parse."""
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        return _shown_unparsed(str(url))
    shown = parsed.set(query={}).render_as_string(hide_password=True)
    return shown + (f"?{_shown_query(list(parsed.query.items()))}" if parsed.query else "")


def _shown_query(pairs: list[tuple[str, Any]]) -> str:
    from urllib.parse import urlencode

    flat = [(key, item) for key, value in pairs for item in (value if isinstance(value, tuple) else (value,))]
    return urlencode([(key, MASK if key.lower() in SECRET_KEYS else item) for key, item in flat], safe="*")


def _shown_unparsed(url: str) -> str:
    from urllib.parse import parse_qsl, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{MASK}" if rest else MASK
    user, at, host = parts.netloc.rpartition("@")
    netloc = f"{user.partition(':')[0]}{':' + MASK if ':' in user else ''}@{host}" if at else host
    query = _shown_query(parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


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
        raise DatabaseUnavailable(f"cannot connect to {shown_url(engine.url)}: {reason}") from None


def describe(engine: sa.Engine) -> str:
    return shown_url(engine.url)
