"""SQLite: AFTER triggers, table rebuilds for what ALTER TABLE cannot do, and a file lock as the runner lock.

SQLite has one writer at a time, so "zero downtime" here is about both app versions working,
not about lock queues: each transaction zdm runs begins with BEGIN IMMEDIATE (see zdm.db) and
waits up to the driver's busy timeout. What ALTER TABLE cannot change is a rebuild
(zdm.dialects.sqlite_rebuild), run inside the phase's transaction.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles

from zdm import coltypes
from zdm.actions import Action, Rebuild, Statement, statements
from zdm.coltypes import ColumnType
from zdm.dialects import ColumnFacts, Dialect, Sync, UserTrigger, keeps_every_value, mentions, object_name
from zdm.dialects.sqlite_rebuild import (
    _master_sql,
    _names,
    _read_table,
    _Unreadable,
    check_rebuild,
    describe_rebuild,
    run_rebuild,
)
from zdm.model import Schema
from zdm.transforms import SafeInteger, SafeJson


@compiles(SafeInteger, "sqlite")
def _safe_integer(element: SafeInteger, compiler: Any, **kw: Any) -> str:
    # No REGEXP here: it is not built into SQLite, and the app's connections would lack it.
    value = compiler.process(next(iter(element.clauses)), **kw)
    digits = f"ltrim(trim({value}), '+-')"
    return (f"CASE WHEN length({digits}) BETWEEN 1 AND 18 AND {digits} NOT GLOB '*[^0-9]*' "
            f"AND length(trim({value})) - length({digits}) <= 1 THEN CAST(trim({value}) AS INTEGER) END")


@compiles(SafeJson, "sqlite")
def _safe_json(element: SafeJson, compiler: Any, **kw: Any) -> str:
    value = compiler.process(next(iter(element.clauses)), **kw)
    return f"CASE WHEN json_valid({value}) THEN {value} END"


class SQLiteDialect(Dialect):
    name = "sqlite"
    retypes_in_place = True
    # "INTEGER PRIMARY KEY" is the rowid, a 64-bit signed integer (sqlite.org/lang_createtable.html#rowid);
    # a column declared BIGINT PRIMARY KEY is not (no automatic ids, AUTOINCREMENT refused).
    wide_integer_keys = True

    def syntax_error(self, sql: str) -> str | None:
        """SQLite's own parser reads each statement of ``sql`` (``EXPLAIN`` on an empty in-memory
        database: compiled, never run); a syntax error is refused, an unknown table or column is
        not (the real database may have it)."""
        import sqlite3

        statements, pending = [], ""
        for piece in sql.split(";"):
            pending += piece + ";"
            if sqlite3.complete_statement(pending):
                statements.append(pending)
                pending = ""
        if pending.strip(" \t\r\n;"):
            statements.append(pending)  # incomplete: SQLite says so
        scratch = sqlite3.connect(":memory:")
        try:
            for statement in statements:
                if not statement.strip(" \t\r\n;"):
                    continue
                try:
                    scratch.execute(f"EXPLAIN {statement.rstrip().rstrip(';')}")
                except sqlite3.Warning:
                    continue  # more than one statement after all (a comment-only piece): not a syntax verdict
                except sqlite3.Error as exc:
                    if any(word in str(exc) for word in ("syntax error", "incomplete input", "unrecognized token")):
                        return f"not SQL SQLite parses: {exc}"
        finally:
            scratch.close()
        return None

    # -- engines: zdm, not pysqlite, decides when a transaction begins --------------------------------
    def user_triggers_quiet(self, connection: sa.Connection, table: str, columns: list[str]) -> tuple[bool, str | None]:
        """SQLite cannot switch a trigger off, but a batch can drop the table's own triggers and
        create them again before it commits: SQLite runs one writer at a time and its schema
        changes are transactional, so no other connection ever sees the table without them."""
        return bool(self._own_triggers(connection, table)), None

    @contextmanager
    def user_triggers_off(self, connection: sa.Connection, table: str) -> Iterator[None]:
        triggers = self._own_triggers(connection, table)
        for name, _ in triggers:
            connection.exec_driver_sql(f"DROP TRIGGER {self.quote(name)}")
        yield
        for _, sql in triggers:
            connection.exec_driver_sql(sql)

    @staticmethod
    def _own_triggers(connection: sa.Connection, table: str) -> list[tuple[str, str]]:
        """The user's triggers on ``table`` (name, CREATE statement), zdm's own left out."""
        found = connection.execute(sa.text(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t ORDER BY name"),
            {"t": table}).all()
        return [(name, sql) for name, sql in found if not name.startswith("zdm_")]

    def connect_args(self) -> dict[str, Any]:
        return {"timeout": 30}  # seconds the driver waits for the database's write lock

    def configure_engine(self, engine: sa.Engine) -> None:
        # pysqlite starts transactions lazily and only before DML, so a phase made of DDL would run
        # in autocommit. SQLAlchemy's documented recipe hands transaction control back, and BEGIN
        # IMMEDIATE takes the write lock up front instead of failing halfway through a phase.
        sa.event.listen(engine, "connect", _autocommit_driver)
        sa.event.listen(engine, "begin", _begin_immediate)

    @contextmanager
    def transactional_ddl(self, connection: sa.Connection) -> Iterator[None]:
        # pysqlite's legacy transaction handling begins a transaction before INSERT, UPDATE, DELETE
        # only, so DDL commits on its own. SQLAlchemy's documented pysqlite recipe ("Serializable
        # isolation / Savepoints / Transactional DDL"): the driver begins nothing, and an explicit
        # BEGIN starts each transaction SQLAlchemy begins. A deferred BEGIN takes no lock until
        # the transaction's first write, so zdm's own BEGIN IMMEDIATE connections are not held back
        # while Alembic's connection only reads or sits in an autocommit block.
        driver = connection.connection.driver_connection
        assert driver is not None
        before = driver.isolation_level
        sa.event.listen(connection, "begin", _begin_deferred)
        try:
            yield
        finally:
            sa.event.remove(connection, "begin", _begin_deferred)
            if not connection.in_transaction():  # changing it inside a transaction would commit it
                driver.isolation_level = before

    def missing_database(self, url: sa.URL) -> str | None:
        # SQLite would create an empty database and zdm would report on it: a typo must not look fine.
        database = url.database
        if database not in (None, "", ":memory:") and not os.path.exists(database):
            return f"no SQLite database at {database}"
        return None

    # -- types -----------------------------------------------------------------------------------------
    def type_problem(self, column_type: ColumnType, connection: sa.Connection | None) -> str | None:
        """SQLite keeps a column's declared type as text and reads it back by SQLAlchemy's rules
        (``ischema_names``, then SQLite's type affinity): a type is SQLite's when the column zdm would
        declare reads back as the same type. ``UUID`` would read back NUMERIC (and turn ``'1e3'`` into a
        number), ``TIMESTAMPTZ`` as TIMESTAMP (dropping the offset): both refused, as are arrays and
        enums, which SQLite lacks. Source: https://www.sqlite.org/datatype3.html (3.1, affinity)."""
        if problem := super().type_problem(column_type, connection):
            return problem
        try:
            declared = str(self.column_type(column_type).compile(dialect=self.sa))
        except sa.exc.CompileError:
            return f"SQLite has no type {column_type.name}"
        back = coltypes.from_sa(self.sa._resolve_type_affinity(declared))  # type: ignore[attr-defined]
        if back != column_type:
            return f"SQLite has no type {column_type.name} (a column declared {declared} reads back as {back.name})"
        return None

    def in_place_retype(self, old: ColumnType, new: ColumnType) -> str | None:
        """The widening changes (``keeps_every_value``): SQLite stores the values as they are, so a
        rebuild with the new declared type is all (no new column, triggers or backfill)."""
        if reason := keeps_every_value(old, new):
            return f"in place, one rebuild with the new declared type: {reason}"
        return None

    def retype(self, table: str, column: str, new: ColumnType) -> list[Action]:
        declared = str(self.column_type(new).compile(dialect=self.sa))
        return [Rebuild(table, alter={column: {"type": declared}})]

    # -- columns: what ALTER TABLE cannot change is a rebuild ---------------------------------------
    def drop_column(self, table: str, name: str) -> list[Action]:
        # Native DROP COLUMN refuses indexed or constrained columns; a rebuild does not.
        return [Rebuild(table, drop=[name])]

    def alter_columns(self, table: str, changes: dict[str, dict[str, Any]]) -> list[Action]:
        return [Rebuild(table, alter=changes)]

    def retype_in_place(self, table: str, column: str, type_sql: str, values_from: str, *, nullable: bool,
                        default: str | None, drop: str) -> list[Action]:
        change = {"type": type_sql, "values_from": values_from, "nullable": nullable, "server_default": default}
        return [Rebuild(table, drop=[drop], alter={column: change})]

    # -- constraints: added by a rebuild, whose copy of the rows checks every one ---------------------
    def add_check(self, table: str, name: str, condition: str) -> list[Action]:
        return [Rebuild(table, create_checks=[{"name": name, "condition": condition}])]

    def add_foreign_key(self, table: str, name: str, columns: list[str], ref_table: str, ref_columns: list[str],
                        on_delete: str | None) -> list[Action]:
        key = {"name": name, "columns": columns, "ref_table": ref_table, "ref_columns": ref_columns,
               "on_delete": on_delete}
        return [Rebuild(table, create_foreign_keys=[key])]

    def drop_constraint(self, table: str, name: str) -> list[Action]:
        return [Rebuild(table, drop_constraints=[name])]

    def unique_constraint_using_index(self, table: str, name: str, index: str) -> list[Action]:
        raise NotImplementedError("SQLite keeps a unique index (unique_constraints is False)")

    def primary_key_using_index(self, table: str, name: str, index: str, columns: list[str]) -> list[Action]:
        # SQLite adds no key to a table: a rebuild with it in the CREATE TABLE, checking every row.
        key = {"name": name, "columns": columns, "unique": True, "constraint": True, "primary_key": True}
        return [Rebuild(table, drop_indexes=[index], create_indexes=[key])]

    def combine(self, actions: list[Action]) -> list[Action]:
        """Adjacent rebuilds of one table as one: each rebuild copies the whole table."""
        combined: list[Action] = []
        for action in actions:
            last = combined[-1] if combined else None
            if isinstance(action, Rebuild) and isinstance(last, Rebuild) and last.table == action.table \
                    and not last.renames and not set(action.alter) & set(last.drop):
                alter = {column: {**last.alter.get(column, {}), **action.alter.get(column, {})}
                         for column in [*last.alter, *[c for c in action.alter if c not in last.alter]]}
                combined[-1] = Rebuild(
                    last.table, alter=alter, drop=[*last.drop, *action.drop],
                    drop_indexes=[*last.drop_indexes, *action.drop_indexes],
                    create_indexes=[*last.create_indexes, *action.create_indexes],
                    create_checks=[*last.create_checks, *action.create_checks],
                    create_foreign_keys=[*last.create_foreign_keys, *action.create_foreign_keys],
                    drop_constraints=[*last.drop_constraints, *action.drop_constraints], renames=action.renames)
            else:
                combined.append(action)
        return combined

    # -- tables ------------------------------------------------------------------------------------
    def table_alias(self, name: str, old: str, new: str, columns: dict[str, str | None], key: list[str]
                    ) -> tuple[list[Action], list[Action]]:
        # A view takes no writes in SQLite: INSTEAD OF triggers pass them to the table. They cannot
        # tell a column left out from one given NULL, so both take the column's default.
        q = self.quote
        create, drop = super().table_alias(name, old, new, columns, key)
        values = [f"coalesce(NEW.{q(n)}, {default})" if default else f"NEW.{q(n)}" for n, default in columns.items()]
        row = " AND ".join(f"{q(k)} = OLD.{q(k)}" for k in key)
        names = {part: q(object_name("zdm_tg", name, "view", part)) for part in ("i", "u", "d")}
        create += statements([
            f"CREATE TRIGGER {names['i']} INSTEAD OF INSERT ON {q(old)} BEGIN INSERT INTO {q(new)} "
            f"({', '.join(map(q, columns))}) VALUES ({', '.join(values)}); END",
            f"CREATE TRIGGER {names['u']} INSTEAD OF UPDATE ON {q(old)} BEGIN UPDATE {q(new)} SET "
            f"{', '.join(f'{q(n)} = NEW.{q(n)}' for n in columns)} WHERE {row}; END",
            f"CREATE TRIGGER {names['d']} INSTEAD OF DELETE ON {q(old)} BEGIN DELETE FROM {q(new)} WHERE {row}; END",
        ])
        return create, [*statements([f"DROP TRIGGER IF EXISTS {n}" for n in names.values()]), *drop]

    # -- triggers: AFTER, updating the row again -----------------------------------------------------
    def sync_triggers(self, sync: Sync) -> tuple[list[Action], list[Action]]:
        # AFTER triggers that UPDATE the row again: SQLite cannot edit NEW. The rules are Sync's;
        # each guard skips a write that is already consistent, so the triggers never chase each other.
        q = self.quote
        table = q(sync.table)
        new_a, new_b, old_a, old_b = f"NEW.{q(sync.a)}", f"NEW.{q(sync.b)}", f"OLD.{q(sync.a)}", f"OLD.{q(sync.b)}"
        row = " AND ".join(f"{q(k)} = NEW.{q(k)}" for k in sync.key)
        up = self.expr(sync.up, new_a)
        default = sync.b_default or "NULL"
        names = {part: q(object_name("zdm_tg", sync.name, part)) for part in ("ins", "a", "b", "fill", "nn", "nnu")}

        insert_body = [f"UPDATE {table} SET {q(sync.b)} = {up} WHERE {row} AND {new_b} IS {default};"]
        create_b: list[str] = []
        if sync.down is not None:
            down = self.expr(sync.down, new_b)
            insert_body.append(f"UPDATE {table} SET {q(sync.a)} = {down} WHERE {row} AND {new_b} IS NOT {default};")
            create_b.append(
                f"CREATE TRIGGER {names['b']} AFTER UPDATE OF {q(sync.b)} ON {table} "
                f"WHEN {new_b} IS NOT {old_b} AND {new_a} IS {old_a} AND {new_b} IS NOT {up} "
                f"BEGIN UPDATE {table} SET {q(sync.a)} = {down} WHERE {row}; END"
            )
            if sync.a_not_null:
                # What a would hold once the triggers ran; NULL is refused as SQLite's NOT NULL would.
                refuse = self._refuse_null(sync.table, sync.a)
                create_b += [
                    f"CREATE TRIGGER {names['nn']} BEFORE INSERT ON {table} "
                    f"WHEN (CASE WHEN {new_b} IS {default} THEN {new_a} ELSE {down} END) IS NULL {refuse}",
                    f"CREATE TRIGGER {names['nnu']} BEFORE UPDATE OF {q(sync.a)}, {q(sync.b)} ON {table} "
                    f"WHEN (CASE WHEN {new_a} IS NOT {old_a} THEN {new_a} "
                    f"WHEN {new_b} IS NOT {old_b} AND {new_b} IS NOT {up} THEN {down} ELSE {new_a} END) IS NULL "
                    f"{refuse}",
                ]
        if sync.fill_unreached:
            create_b.append(
                f"CREATE TRIGGER {names['fill']} AFTER UPDATE ON {table} "
                f"WHEN {old_b} IS NULL AND {new_b} IS NULL AND {new_a} IS NOT NULL AND {new_a} IS {old_a} "
                f"BEGIN UPDATE {table} SET {q(sync.b)} = {up} WHERE {row}; END"
            )
        # The UPDATEs of a above (b written: a follows down(b)) fire the trigger of a in turn; where up(down(b))
        # is not b (a text ' 12' back from INTEGER 12, a NUMERIC rounded), it would overwrite the b just
        # written. Such a cascade leaves a exactly down(b): the trigger of a skips it.
        from_b = f" AND {new_a} IS NOT {self.expr(sync.down, new_b)}" if sync.down is not None else ""
        create = [
            f"CREATE TRIGGER {names['ins']} AFTER INSERT ON {table} BEGIN {' '.join(insert_body)} END",
            f"CREATE TRIGGER {names['a']} AFTER UPDATE OF {q(sync.a)} ON {table} "
            f"WHEN {new_a} IS NOT {old_a} AND {new_b} IS NOT {up}{from_b} "
            f"BEGIN UPDATE {table} SET {q(sync.b)} = {up} WHERE {row}; END",
            *create_b,
        ]
        made = [name for name in names.values() if any(f"TRIGGER {name} " in sql for sql in create)]
        return statements(create), statements([f"DROP TRIGGER IF EXISTS {name}" for name in reversed(made)])

    def fill_triggers(self, name: str, table: str, key: tuple[str, ...], column: str, value: str,
                      record: str | None = None) -> tuple[list[Action], list[Action]]:
        q = self.quote
        row = " AND ".join(f"{q(k)} = NEW.{q(k)}" for k in key)
        names = {part: q(object_name("zdm_tg", name, part)) for part in ("ins", "upd")}
        note = "" if record is None else (f" INSERT INTO {q(record)} ({', '.join(q(k) for k in key)}) "
                                          f"VALUES ({', '.join(f'NEW.{q(k)}' for k in key)});")
        fill = f"BEGIN UPDATE {q(table)} SET {q(column)} = {value} WHERE {row};{note} END"
        create = [
            f"CREATE TRIGGER {names['ins']} AFTER INSERT ON {q(table)} WHEN NEW.{q(column)} IS NULL {fill}",
            f"CREATE TRIGGER {names['upd']} AFTER UPDATE OF {q(column)} ON {q(table)} "
            f"WHEN NEW.{q(column)} IS NULL {fill}",
        ]
        return statements(create), statements([f"DROP TRIGGER IF EXISTS {names[part]}" for part in ("upd", "ins")])

    def refuse_nulls(self, name: str, table: str, column: str) -> tuple[list[Action], list[Action], list[Action]]:
        # Triggers refusing NULL as NOT NULL would: SQLite's twin of PostgreSQL's NOT VALID check.
        q = self.quote
        names = {part: q(object_name("zdm_tg", name, part)) for part in ("nni", "nnu")}
        refuse = self._refuse_null(table, column)
        create = [
            f"CREATE TRIGGER {names['nni']} BEFORE INSERT ON {q(table)} WHEN NEW.{q(column)} IS NULL {refuse}",
            f"CREATE TRIGGER {names['nnu']} BEFORE UPDATE OF {q(column)} ON {q(table)} "
            f"WHEN NEW.{q(column)} IS NULL {refuse}",
        ]
        return statements(create), [], statements([f"DROP TRIGGER IF EXISTS {n}" for n in reversed(names.values())])

    def _refuse_null(self, table: str, column: str) -> str:
        """A trigger body failing the write with SQLite's own NOT NULL message (an IntegrityError)."""
        message = self.sql(sa.literal(f"NOT NULL constraint failed: {table}.{column}"))
        return f"BEGIN SELECT RAISE(ABORT, {message}); END"

    # -- the runner's transactions and lock ----------------------------------------------------------
    def run_rebuild(self, connection: sa.Connection, spec: Rebuild) -> None:
        run_rebuild(connection, spec)

    def describe_rebuild(self, spec: Rebuild) -> str:
        return describe_rebuild(spec, self.quote)

    def check_rebuild(self, connection: sa.Connection, spec: Rebuild) -> None:
        check_rebuild(connection, spec)

    def is_lock_timeout(self, exc: sa.exc.DBAPIError) -> bool:
        return "database is locked" in str(exc.orig)

    def blockers(self, engine: sa.Engine, tables: list[str]) -> str:
        return "another connection holds the database's write lock"

    @contextmanager
    def runner_lock(self, engine: sa.Engine) -> Iterator[Callable[[], None]]:
        """An flock on the database file itself, so every path that reaches it (a symlink, a hard
        link, a relative path, a bind mount) meets the same lock; released by the kernel if the
        runner dies. SQLite locks with fcntl, which flock does not touch on Linux. The holder's
        PID is written beside the database's real path (``app.db.zdm-lock``) for `zdm status`."""
        from zdm.state import RunnerBusy

        lock_file = _lock_file(engine)
        if lock_file is None:
            yield lambda: None
            return
        # "a+", not "w": that would erase the holder's PID before the lock is tried
        with open(lock_file, "a+") as handle, _identity(engine, handle) as locked:
            try:
                fcntl.flock(locked, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunnerBusy(f"another zdm runner is working on {engine.url.database} "
                                 f"(lock file {handle.name})") from None
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            try:
                yield lambda: None
            finally:
                fcntl.flock(locked, fcntl.LOCK_UN)

    def runner_at_work(self, engine: sa.Engine) -> str | None:
        lock_file = _lock_file(engine)
        if lock_file is None or not os.path.exists(lock_file):
            return None
        with open(lock_file) as handle, _identity(engine, handle) as locked:
            try:
                fcntl.flock(locked, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return f"pid {handle.read().strip() or '?'}"
            fcntl.flock(locked, fcntl.LOCK_UN)
        return None

    # -- reading the live schema ---------------------------------------------------------------
    def user_objects(self, connection: sa.Connection) -> dict[str, str]:
        rows = connection.execute(sa.text(
            "SELECT type || ' ' || name || CASE type WHEN 'trigger' THEN ' on ' || tbl_name ELSE '' END, sql "
            "FROM sqlite_master WHERE type IN ('view', 'trigger') AND name NOT LIKE 'zdm\\_%' ESCAPE '\\'"))
        return {str(r[0]): r[1] or "" for r in rows}

    def column_facts(self, connection: sa.Connection, table: str, column: str) -> ColumnFacts:
        """Read from sqlite_master and the table PRAGMAs. SQLite has no comments, grants, storage,
        statistics targets or sequences per column; AUTOINCREMENT belongs to the table."""
        info = next(c for c in sa.inspect(connection).get_columns(table) if c["name"] == column)
        facts = ColumnFacts(default=info.get("default"), not_null=not info["nullable"])
        for other in sa.inspect(connection).get_table_names():
            for key in sa.inspect(connection).get_foreign_keys(other):
                if key["referred_table"] == table and column in key["referred_columns"]:
                    columns = ", ".join(key["constrained_columns"])
                    facts.referenced_by.append((other, key["name"] or "(unnamed)", columns))
        for name, sql in connection.execute(sa.text(
                "SELECT name, sql FROM sqlite_master WHERE type = 'view' AND sql IS NOT NULL")):
            if mentions(sql, column):
                facts.dependents.append(f"view {name}")
        for definition in _read_table(_master_sql(connection, "table", table)[table]).columns:
            if any(column.lower() in _names(clause.tokens) for clause in definition.of("generated")):
                facts.dependents.append(f"generated column {definition.name}")
        for name, sql in _master_sql(connection, "trigger", table).items():
            if not name.startswith("zdm_"):
                facts.triggers.append(UserTrigger(name, False, mentions(sql, column)))
        return facts

    def column_collations(self, connection: sa.Connection, table: str) -> dict[str, str]:
        """Read from the table's SQL: SQLite's reflection does not report a column's COLLATE."""
        try:
            columns = _read_table(_master_sql(connection, "table", table)[table]).columns
        except _Unreadable:
            return {}
        return {column.name: clause.tokens[-1].identifier for column in columns for clause in column.of("collate")}

    unique_constraints_have_indexes = False  # an autoindex: no SQL, nothing to copy (see index_definitions)

    def model_facts(self, schema: Schema, table: str, column: str) -> ColumnFacts:
        # As column_facts reads them: no constraints (a rebuild carries them), other tables' keys by columns.
        found = super().model_facts(schema, table, column)
        referenced_by = [(other.name, name or "(unnamed)", ", ".join(key.columns))
                         for other in schema.tables.values() for name, key in other.foreign_keys.items()
                         if other.name != table and key.ref_table == table and column in key.ref_columns]
        return ColumnFacts(default=found.default, not_null=found.not_null, referenced_by=referenced_by)

    def index_definitions(self, connection: sa.Connection, table: str) -> dict[str, str]:
        rows = connection.execute(sa.text(  # an index behind a UNIQUE constraint has no SQL: it is plain
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :t AND sql IS NOT NULL"),
            {"t": table})
        return {name: sql for name, sql in rows}

    def object_names(self, connection: sa.Connection) -> dict[str, str]:
        # Tables, views and indexes share one namespace, triggers another, all case-insensitive
        # (sqlite.org/lang_createtable.html); a name is refused if any of them holds it.
        rows = connection.execute(sa.text(
            "SELECT name, CASE type WHEN 'index' THEN 'index ' || name || ' on ' || tbl_name "
            "WHEN 'trigger' THEN 'trigger ' || name || ' on ' || tbl_name ELSE type || ' ' || name END "
            "FROM sqlite_master"))
        names: dict[str, str] = {}
        for name, holder in rows:
            names.setdefault(self.fold_name(str(name)), str(holder))
        return names

    def fold_name(self, name: str) -> str:
        return name.lower()

    def missing_objects(self, connection: sa.Connection, actions: list[Action]) -> list[str]:
        # Every step commits with its record here, so a kill cannot part them; but zdm is not the
        # only one with the file: a trigger, index or column dropped by hand since the record was
        # written would let complete build the final shape on what is no longer there.
        left: dict[tuple[str, str], str] = {}  # (kind, folded name) -> table; kind: index, trigger, view, column, check
        for action in actions:
            if isinstance(action, Rebuild):
                _track_rebuild(action, left)
            elif isinstance(action, Statement):
                _track(action.sql, left)
        master = {(kind, name.lower()): table.lower() for kind, name, table in connection.execute(sa.text(
            "SELECT type, name, tbl_name FROM sqlite_master WHERE type IN ('index', 'trigger', 'view')"))}
        problems = []
        for (kind, name), table in left.items():
            if kind == "view":
                if (kind, name) not in master:
                    problems.append(f"view {name} is missing")
            elif kind in ("index", "trigger"):
                if (kind, name) not in master:
                    problems.append(f"{kind} {name} on {table} is missing")
            elif kind == "column":
                if name.split(".", 1)[1] not in _column_names(connection, table):
                    problems.append(f"column {name} is missing")
            elif name not in {str(check.get("name") or "").lower()
                              for check in sa.inspect(connection).get_check_constraints(table)}:
                problems.append(f"constraint {name} on {table} is missing")
        return problems

    def zdm_objects(self, connection: sa.Connection) -> list[str]:
        rows = connection.execute(
            sa.text("SELECT name FROM sqlite_master WHERE name LIKE 'zdm\\_%' ESCAPE '\\' "
                    "AND type IN ('trigger', 'index', 'view')")
        )
        return sorted(r[0] for r in rows)


def _autocommit_driver(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None


def _begin_immediate(connection: sa.Connection) -> None:
    # An AUTOCOMMIT connection (a step with transactional: false) gets no transaction: nothing
    # would commit it, and its statements would be rolled back when the connection closes.
    if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
        connection.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def _identity(engine: sa.Engine, fallback: IO[str]) -> Iterator[IO[Any]]:
    """The database file, opened read-only, to lock by identity (its inode); ``fallback`` (the PID
    file) while the database file does not exist yet."""
    try:
        database = open(os.path.realpath(engine.url.database or ""), "rb")  # noqa: SIM115 - closed below
    except OSError:
        yield fallback
        return
    with database:
        yield database


def _begin_deferred(connection: sa.Connection) -> None:
    # SQLAlchemy resets the driver's isolation level after an AUTOCOMMIT block (Alembic's
    # autocommit_block): hand transaction control back before every BEGIN. No transaction is open
    # at this point, so the change commits nothing.
    if connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        return
    driver = connection.connection.driver_connection
    assert driver is not None
    driver.isolation_level = None
    connection.exec_driver_sql("BEGIN")


def _lock_file(engine: sa.Engine) -> str | None:
    """SQLite's runner lock file, beside the database's real path (a symlink is the same database)."""
    database = engine.url.database
    return None if not database or database == ":memory:" else f"{os.path.realpath(database)}.zdm-lock"


_IDENT = r'("(?:[^"]|"")+"|\w+)'
_TRACKED = re.compile(
    rf"\bCREATE\s+(?:UNIQUE\s+)?(?P<create>INDEX|TRIGGER|VIEW)\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<cname>{_IDENT})"
    rf"(?:[^;]*?\bON\s+(?P<ctable>{_IDENT}))?"
    rf"|\bDROP\s+(?P<drop>INDEX|TRIGGER|VIEW|TABLE)\s+(?:IF\s+EXISTS\s+)?(?P<dname>{_IDENT})"
    rf"|\bALTER\s+TABLE\s+(?P<atable>{_IDENT})\s+(?:"
    rf"ADD\s+(?:COLUMN\s+)?(?P<add>{_IDENT})|DROP\s+(?:COLUMN\s+)?(?P<dropped>{_IDENT})"
    rf"|RENAME\s+(?:COLUMN\s+)?(?P<old>{_IDENT})\s+TO\s+(?P<new>{_IDENT})|RENAME\s+TO\s+(?P<renamed>{_IDENT}))",
    re.I)


def _unquote(name: str | None) -> str:
    name = name or ""
    return (name[1:-1].replace('""', '"') if name.startswith('"') else name).lower()


def _track(sql: str, left: dict[tuple[str, str], str]) -> None:
    """Follow what ``sql`` creates, renames and drops in ``left`` (see missing_objects). Read by
    pattern (no parser here reads SQLite's triggers), after taking string literals out, so that a
    value a trigger writes cannot look like a statement; a trigger's body holds only DML."""
    text = re.sub(r"'(?:[^']|'')*'", "''", sql)
    for match in _TRACKED.finditer(text):
        if match["create"]:
            kind = match["create"].lower()
            left[(kind, _unquote(match["cname"]))] = _unquote(match["ctable"] or match["cname"])
        elif match["drop"]:
            kind, name = match["drop"].lower(), _unquote(match["dname"])
            if kind == "table":
                for key in [key for key, table in left.items() if table == name]:
                    del left[key]
            else:
                left.pop((kind, name), None)
        else:
            table = _unquote(match["atable"])
            if match["add"] and match["add"].upper() not in ("CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"):
                left[("column", f"{table}.{_unquote(match['add'])}")] = table
            elif match["dropped"]:
                left.pop(("column", f"{table}.{_unquote(match['dropped'])}"), None)
            elif match["old"] and ("column", f"{table}.{_unquote(match['old'])}") in left:
                left[("column", f"{table}.{_unquote(match['new'])}")] = \
                    left.pop(("column", f"{table}.{_unquote(match['old'])}"))
            elif match["renamed"]:
                new = _unquote(match["renamed"])
                for (kind, name), held in list(left.items()):
                    if held == table:
                        del left[(kind, name)]
                        left[(kind, f"{new}.{name.split('.', 1)[1]}" if kind == "column" else name)] = new


def _track_rebuild(rebuild: Rebuild, left: dict[tuple[str, str], str]) -> None:
    """What a rebuild leaves: its indexes and named checks; the columns it drops or renames go."""
    table = rebuild.table.lower()
    for name in rebuild.drop_indexes:
        left.pop(("index", name.lower()), None)
    for index in rebuild.create_indexes:
        left[("index", str(index["name"]).lower())] = table
    for name in rebuild.drop_constraints:
        left.pop(("check", name.lower()), None)
    for check in rebuild.create_checks:
        left[("check", check["name"].lower())] = table
    for column in rebuild.drop:
        left.pop(("column", f"{table}.{column.lower()}"), None)
    for old, new in rebuild.renames.items():
        if ("column", f"{table}.{old.lower()}") in left:
            left[("column", f"{table}.{new.lower()}")] = left.pop(("column", f"{table}.{old.lower()}"))


def _column_names(connection: sa.Connection, table: str) -> set[str]:
    """The table's columns, generated ones included, in lower case (SQLite ignores case)."""
    q = connection.dialect.identifier_preparer.quote
    return {str(row[1]).lower() for row in connection.exec_driver_sql(f"PRAGMA table_xinfo({q(table)})")}
