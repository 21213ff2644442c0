"""The app workload every operation's test drives: old- and new-version clients doing every kind of write.

A real app does not only write the column a migration changes. Here each app version knows its own
shape of the table (the old one before the plan, the new one after complete) and does, through
real connections, every kind of write an ORM does: inserts that name every column it knows and
inserts that leave out each optional one, explicit NULLs, updates of *any* column on rows the
backfill has reached and rows it has not, upserts (INSERT ... ON CONFLICT) down both paths,
deletes (with the foreign keys' ON DELETE actions), and writes the schema must refuse (a NULL
into NOT NULL, a duplicate, an orphan, a value a CHECK forbids).

Each write is applied to the reference model too. The model says whether the write must succeed;
the database must agree, and must then hold exactly the row the model predicts. After each round
the whole table and its catalogue (defaults, comments, indexes, constraints) are compared.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from support import assert_agrees, without_fsync

from zdm import introspect
from zdm.coltypes import Family, parse, to_sa
from zdm.model import Column, ColumnType, ConstraintViolation, ForeignKey, Index, Schema, Table

#: A value for a column, given a number that makes it fresh; None where the generic value fits.
Values = Callable[[str, ColumnType, int], Any]


#: Columns of real types the users table also has (``workload_schema(typed=...)``), by database:
#: name -> (type, value of row i). SQLite lacks UUID, TIMESTAMPTZ and arrays.
TYPED: dict[str, tuple[str, Callable[[int], Any]]] = {
    "handle": ("VARCHAR(40)", lambda i: f"handle-{i}-ü"),
    "price": ("NUMERIC(10,2)", lambda i: Decimal(i * 1234) / 100),
    "born": ("DATE", lambda i: dt.date(2000, 2, 29) + dt.timedelta(days=i)),
}
TYPED_POSTGRESQL: dict[str, tuple[str, Callable[[int], Any]]] = {
    **TYPED,
    "ref": ("UUID", lambda i: uuid.UUID(int=i)),
    "seen_at": ("TIMESTAMPTZ",
                lambda i: dt.datetime(2024, 2, 29, 23, i % 60, tzinfo=dt.timezone(dt.timedelta(hours=-12)))),
    "tags": ("TEXT[]", lambda i: [f"t{i}", "ü", ""] if i % 2 else []),
}


def workload_schema(rows: int = 40, typed: str | None = None) -> Schema:
    """Four tables in the shape of a real app: a parent, the table plans change, a child, and a log
    without a primary key.

    ``users`` has a NOT NULL unique column with a comment, a column with a default, one of each
    type (with ``typed``, a database's name, also the real types in TYPED or TYPED_POSTGRESQL), a
    CHECK, an index, a foreign key out (to ``teams``, ON DELETE SET NULL) and one in (from
    ``orders``, ON DELETE CASCADE, onto the unique ``email``).
    """
    teams = Table("teams", [Column("id", ColumnType.INTEGER, nullable=False, primary_key=True),
                            Column("title", ColumnType.TEXT)])
    users = Table("users", [
        Column("id", ColumnType.INTEGER, nullable=False, primary_key=True),
        Column("email", ColumnType.TEXT, nullable=False, comment="how the user logs in"),
        Column("name", ColumnType.TEXT, default="anon"),
        Column("legacy_flag", ColumnType.BOOLEAN),
        Column("created_at", ColumnType.TIMESTAMP),
        Column("profile", ColumnType.JSON),
        Column("score", ColumnType.BIGINT),
        Column("age", ColumnType.INTEGER),
        Column("code", ColumnType.TEXT),  # digits as text, to convert
        Column("qty", ColumnType.INTEGER, nullable=False, default=1),
        Column("team_id", ColumnType.INTEGER),
    ])
    extra = {} if typed is None else TYPED_POSTGRESQL if typed == "postgresql" else TYPED
    for name, (type_name, _) in extra.items():
        users.add_column(Column(name, parse(type_name)))
    users.uniques["users_email_key"] = ("email",)
    users.checks["users_age_check"] = "age >= 0"
    users.indexes["users_name_ix"] = Index(("name",))
    users.foreign_keys["users_team_id_fkey"] = ForeignKey(("team_id",), "teams", ("id",), "SET NULL")
    orders = Table("orders", [Column("id", ColumnType.INTEGER, nullable=False, primary_key=True),
                              Column("user_email", ColumnType.TEXT, nullable=False),
                              Column("total", ColumnType.INTEGER)])
    orders.foreign_keys["orders_user_email_fkey"] = ForeignKey(("user_email",), "users", ("email",), "CASCADE")
    # A log without a primary key (add_primary_key gives it one); its id may be NULL until then.
    events = Table("events", [Column("id", ColumnType.INTEGER), Column("what", ColumnType.TEXT)])
    schema = Schema({"teams": teams, "users": users, "orders": orders, "events": events})
    for i in range(1, rows + 1):
        events.insert({"id": i, "what": f"event {i}"})
    for i in range(1, 5):
        teams.insert({"id": i, "title": f"team {i}"})
    for i in range(1, rows + 1):
        users.insert({
            "id": i, "email": f"user{i}@example.com", "name": None if i % 7 == 0 else f"user {i}",
            "legacy_flag": i % 2 == 0, "created_at": dt.datetime(2026, 1, 1) + dt.timedelta(minutes=i),
            "profile": {"n": i} if i % 3 else None, "score": i * 10**9, "age": 18 + i % 60,
            "code": f"{i:05d}", "qty": i % 4 + 1, "team_id": i % 3 + 1 if i % 5 else None,
            **{name: make(i) if i % 4 else None for name, (_, make) in extra.items()},
        })
    for i in range(1, rows // 2):
        orders.insert({"id": i, "user_email": f"user{2 * i}@example.com", "total": i * 10})
    return schema


def value(column: str, column_type: ColumnType, n: int) -> Any:
    """A fresh value of ``column_type`` (unique per ``n``, so uniqueness is broken only on purpose)."""
    if column == "team_id":
        return n % 3 + 1
    if column_type == ColumnType.TEXT:
        return f"v{n} 'ü\"" if n % 2 else f"w{n}@example.com"
    if column_type == ColumnType.INTEGER:
        return n % 1000 + 1
    if column_type == ColumnType.BIGINT:
        return n * 10**10
    if column_type == ColumnType.BOOLEAN:
        return n % 2 == 0
    if column_type == ColumnType.TIMESTAMP:
        return dt.datetime(2030, 1, 1) + dt.timedelta(minutes=n)
    if column_type == ColumnType.JSON:
        return {"n": n, "s": "x"}
    if column_type.family is Family.TEXT:
        return f"v{n} 'ü\""[: column_type.length]
    if column_type.family is Family.NUMERIC:
        return Decimal(n % 10**6) / 100 * (-1 if n % 3 == 0 else 1)
    if column_type.family is Family.DATE:
        return dt.date(1999, 12, 31) + dt.timedelta(days=n % 5000)
    if column_type.family is Family.UUID:
        return uuid.UUID(int=n * 7919)
    if column_type.family is Family.TIMESTAMPTZ:
        return dt.datetime(2030, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=14))) + dt.timedelta(minutes=n)
    if column_type.family is Family.ENUM:
        return ("new", "paid", "shipped")[n % 3]  # tests' enums have these labels
    if column_type.family is Family.ARRAY and column_type.item is not None:
        return [value(column, column_type.item, n), value(column, column_type.item, n + 1)]
    raise AssertionError(f"no value for {column_type}")


class WriteMismatch(AssertionError):
    """The database and the model disagree about a write."""


@dataclass
class Client:
    """One app version: knows ``view`` (the table as that version declares it) and writes through it."""

    engine: sa.Engine
    model: Schema
    version: str  # "old" or "new"
    view: Table  # the columns this version knows, under the table name it uses
    values: Values | None = None
    #: False where the app's table is a SQLite view, which takes no INSERT ... ON CONFLICT.
    upserts: bool = True
    log: list[str] = field(default_factory=list)
    #: The live tables reflected by name, once per client: a client lives in one window, and no DDL
    #: runs while its app writes (reflecting per write was a third of a case's time on PostgreSQL).
    reflected: dict[str, sa.Table] = field(default_factory=dict)

    @property
    def physical(self) -> Table:
        """The model's table as it stands in the database now (a renamed table under its new name)."""
        return self.model.table(self.view.name)

    def _type(self, column: str) -> ColumnType:
        return self.physical.column(column).type

    def fresh(self, column: str, n: int) -> Any:
        column_type = self._type(column)
        if self.values is not None and (chosen := self.values(column, column_type, n)) is not None:
            return chosen
        return value(column, column_type, n)

    def _sa(self, names: list[str]) -> sa.TableClause:
        return sa.table(self.view.name, *[sa.column(n, to_sa(self._type(n))) for n in names])

    # -- the writes -----------------------------------------------------------------------------
    def insert(self, values: dict[str, Any]) -> None:
        self._write(f"insert {values}", lambda c: c.execute(self._sa(list(values)).insert().values(values)),
                    lambda: self.model.insert(self.view.name, values), values.get("id"))  # a table without a key

    def update(self, key: int, values: dict[str, Any]) -> None:
        table = self._sa([*values, "id"])
        self._write(f"update id={key} {values}",
                    lambda c: c.execute(table.update().where(table.c.id == key).values(values)),
                    lambda: self.model.update(self.view.name, {"id": key}, values), key)

    def upsert(self, values: dict[str, Any]) -> None:
        """INSERT ... ON CONFLICT (id) DO UPDATE SET every named column = EXCLUDED's."""
        insert = (postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert)(
            self._sa(list(values)))
        changes = {n: insert.excluded[n] for n in values if n != "id"}
        statement = (insert.values(values).on_conflict_do_update(index_elements=["id"], set_=changes) if changes
                     else insert.values(values).on_conflict_do_nothing(index_elements=["id"]))
        self._write(f"upsert {values}", lambda c: c.execute(statement),
                    lambda: self.model.upsert(self.view.name, values, {n: values[n] for n in changes}),
                    values["id"])

    def delete(self, key: int) -> None:
        table = self._sa(["id"])
        self._write(f"delete id={key}", lambda c: c.execute(table.delete().where(table.c.id == key)),
                    lambda: self.model.delete(self.view.name, {"id": key}), key)

    def _write(self, what: str, database: Callable[[sa.Connection], Any], model: Callable[[], Any],
               key: int | None) -> None:
        what = f"{self.version} app: {what}"
        self.log.append(what)
        # A write changes rows only, and never a row in place: each table's list of rows, copied,
        # restores the model (a deep copy of the whole schema per write was half a case's time).
        before = [(table, list(table.rows)) for table in self.model.tables.values()]
        try:
            model()
            expected: str | None = None
        except ConstraintViolation as exc:
            expected = f"{exc.kind}: {exc}"
            for table, rows in before:  # the write never happened
                table.rows = rows
        try:
            with self.engine.begin() as connection:
                database(connection)
            refused = None
        except (sa.exc.IntegrityError, sa.exc.DataError) as exc:  # DataError: beyond a type's limits
            refused = " ".join(str(exc.orig).split())
        if (expected is None) != (refused is None):
            raise WriteMismatch(f"{what}: the model says {expected or 'ok'}, the database "
                                f"{'refused: ' + refused if refused else 'accepted it'}")
        self._compare_row(what, key)

    def _compare_row(self, what: str, key: int | None) -> None:
        table = self.physical
        # A read of what is committed needs no transaction of its own (BEGIN and ROLLBACK are two
        # more round trips per write on PostgreSQL).
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            if (live := self.reflected.get(table.name)) is None:
                live = self.reflected[table.name] = introspect.live_table(connection, table.name)
            found = connection.execute(sa.select(live).where(live.c.id == key)).first()
        row = None if found is None else {
            n: introspect.column_type(live.c[n].type).coerce(v) for n, v in found._mapping.items()}
        expected = table.find({"id": key})
        if row != expected:
            raise WriteMismatch(f"after {what}: the database holds {row}, the model {expected}")


@dataclass
class Round:
    """One window of the migration: the clients of the app versions running then, and fresh keys."""

    clients: list[Client]
    #: An original row the backfill has reached by now (or will never need), and one it has not.
    reached: int
    unreached: int
    #: Columns the apps keep non-NULL in this window (a set_not_null without fill needs them to).
    avoid_null: frozenset[str] = frozenset()
    #: Whether the apps also write what a rule the plan adds refuses (a duplicate, a negative number);
    #: not while that rule is not there: the next start would rightly refuse the data.
    breaking: bool = True
    numbers: itertools.count = field(default_factory=itertools.count)

    def play(self, base: int) -> None:
        self.numbers = itertools.count(base)  # values fresh across windows too
        for client in self.clients:
            self._writes(client, base)
            base += 1000

    def _writes(self, client: Client, base: int) -> None:
        view = client.view
        keys = itertools.count(base)
        columns = [c for c in view.columns.values() if not c.primary_key]
        known = [c.name for c in columns if c.name in client.physical.columns]

        def full(key: int) -> dict[str, Any]:
            return {"id": key, **{n: client.fresh(n, next(self.numbers)) for n in known}}

        nullable = [n for n in known if n not in self.avoid_null]
        client.insert(full(next(keys)))
        for left_out in nullable:  # every column left out in turn: defaults, triggers and NOT NULL meet
            client.insert({k: v for k, v in full(next(keys)).items() if k != left_out})
        client.insert({**full(next(keys)), **{n: None for n in nullable}})  # explicit NULLs
        for row in (self.reached, self.unreached, base):
            for name in known:
                client.update(row, {name: client.fresh(name, next(self.numbers))})
            for name in nullable[:2]:
                client.update(row, {name: None})
        if self.breaking and (first := client.physical.find({"id": self.reached})) is not None:
            client.insert({"id": next(keys), **{n: first[n] for n in known}})  # a duplicate of every value
        for name in known if self.breaking else ():
            if client._type(name) in (ColumnType.INTEGER, ColumnType.BIGINT):  # what a CHECK may forbid
                client.update(self.unreached, {name: -5})
        if client.upserts:
            client.upsert(full(self.unreached))  # the update path
            client.upsert(full(next(keys)))  # the insert path
        client.delete(base + 1)
        client.delete(self.reached + len(client.version))  # an original row, with its orders


def sqlite_app_engine(url: str) -> sa.Engine:
    """An app's engine: on SQLite with foreign keys enforced, as apps that use them turn on."""
    engine = without_fsync(sa.create_engine(url))
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", lambda connection, _: connection.execute("PRAGMA foreign_keys = ON"))
    return engine


__all__ = ["Client", "Round", "WriteMismatch", "assert_agrees", "sqlite_app_engine", "workload_schema"]
