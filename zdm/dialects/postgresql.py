"""PostgreSQL: BEFORE row triggers, constraints added NOT VALID then validated, CONCURRENTLY indexes,
``lock_timeout`` as the lock budget, and a session advisory lock as the runner lock."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles

from zdm.actions import Action, Statement, statements
from zdm.coltypes import ColumnType, Family
from zdm.dialects import (
    ColumnFacts,
    Dialect,
    DisabledTrigger,
    Sync,
    UserTrigger,
    keeps_every_value,
    mentions,
    object_name,
)
from zdm.errors import ThrottleInvalid
from zdm.transforms import AtTimeZone, SafeCast, SafeInteger, SafeJson, Transform


@compiles(SafeInteger, "postgresql")
def _safe_integer(element: SafeInteger, compiler: Any, **kw: Any) -> str:
    value = compiler.process(next(iter(element.clauses)), **kw)
    return rf"CASE WHEN {value} ~ '^\s*[-+]?[0-9]{{1,18}}\s*$' THEN CAST({value} AS BIGINT) END"


@compiles(SafeJson, "postgresql")
def _safe_json(element: SafeJson, compiler: Any, **kw: Any) -> str:
    # No non-throwing JSON test before PostgreSQL 16 (pg_input_is_valid): a helper function
    # (TRY_JSON below) lives as long as the plan that needs it.
    value = compiler.process(next(iter(element.clauses)), **kw)
    return f"zdm_try_json({value})"


@compiles(SafeCast, "postgresql")
def _safe_cast(element: SafeCast, compiler: Any, **kw: Any) -> str:
    # The target's type travels as a typed NULL; the helper (TRY_CAST below) tries the cast.
    value = compiler.process(next(iter(element.clauses)), **kw)
    target = compiler.dialect.type_compiler_instance.process(element.type)
    return f"zdm_try_cast({value}, CAST(NULL AS {target}))"


@compiles(AtTimeZone, "postgresql")
def _at_time_zone(element: AtTimeZone, compiler: Any, **kw: Any) -> str:
    value = compiler.process(next(iter(element.clauses)), **kw)
    return f"({value} AT TIME ZONE {compiler.render_literal_value(element.zone, sa.Text())})"


#: Arbitrary but fixed: every zdm runner on a PostgreSQL database asks for this advisory lock.
ADVISORY_LOCK_KEY = 0x7A646D  # "zdm"
#: The setting a backfill batch sets for its own transaction (SET LOCAL): dual-write triggers skip its writes.
BACKFILL_MARK = "zdm.backfill"

#: Created while a plan converts text to JSON (PostgreSQL 15 has no non-throwing JSON test;
#: pg_input_is_valid came in 16), dropped by its contract or rollback.
TRY_JSON = (
    "CREATE OR REPLACE FUNCTION zdm_try_json(value text) RETURNS json LANGUAGE plpgsql IMMUTABLE AS $zdm$\n"
    "BEGIN\n  RETURN value::json;\nEXCEPTION WHEN others THEN\n  RETURN NULL;\nEND\n$zdm$"
)


#: Created while a plan converts text to a type whose input can fail (a UUID, an enum label): the
#: cast, or NULL (pg_input_is_valid came in PostgreSQL 16). ``target`` is a typed NULL that names the type.
TRY_CAST = (
    "CREATE OR REPLACE FUNCTION zdm_try_cast(value text, INOUT target anyelement) LANGUAGE plpgsql STABLE "
    "AS $zdm$\nBEGIN\n  EXECUTE format('SELECT %L::%s', value, pg_typeof(target)) INTO target;\n"
    "EXCEPTION WHEN others THEN\n  target := NULL;\nEND\n$zdm$"
)


#: How often (ms) the server checks, while one of zdm's statements runs, that zdm is still there.
CLIENT_CHECK_MS = 1000


def _end_with_the_client(dbapi_connection: Any, _record: Any) -> None:
    """A statement whose client is gone runs on until it ends by itself: PostgreSQL notices the
    closed socket only when it next reads or writes it (docs, ``client_connection_check_interval``).
    A runner killed with SIGKILL (or OOM-killed) would leave its VACUUM, or its CREATE INDEX
    CONCURRENTLY, holding SHARE UPDATE EXCLUSIVE on the table for as long as it takes, and the
    `zdm rollback` or `zdm start` run next would spend its lock budget behind it. From PostgreSQL
    14 the server polls the socket every CLIENT_CHECK_MS while a statement runs and ends the
    session once it is closed. Where the server cannot (before 14, or a platform without the
    poll: the SET fails), nothing changes."""
    if getattr(getattr(dbapi_connection, "info", None), "server_version", 0) < 140000:
        return
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"SET client_connection_check_interval = {CLIENT_CHECK_MS}")
        dbapi_connection.commit()
    except Exception:  # a server that cannot check (the platform has no poll for it)
        dbapi_connection.rollback()
    finally:
        cursor.close()


class PostgresDialect(Dialect):
    name = "postgresql"
    concurrent_indexes = True
    not_valid_constraints = True
    triggers_fill_before_checks = True
    unique_constraints = True
    judges_raw_sql = True
    updatable_views = True
    enforces_type_limits = True

    def syntax_error(self, sql: str) -> str | None:
        """PostgreSQL's own parser (pglast) reads ``sql``; what it says when it cannot."""
        import pglast

        try:
            pglast.parse_sql(sql)
        except pglast.parser.ParseError as exc:
            return f"not SQL PostgreSQL parses: {exc}"
        return None

    def engine_url(self, url: sa.URL) -> sa.URL:
        return url.set(drivername="postgresql+psycopg") if url.drivername == "postgresql" else url

    def connect_args(self) -> dict[str, Any]:
        return {"application_name": "zdm", "connect_timeout": 10}

    def configure_engine(self, engine: sa.Engine) -> None:
        sa.event.listen(engine, "connect", _end_with_the_client)

    # -- types -----------------------------------------------------------------------------------------
    def type_problem(self, column_type: ColumnType, connection: sa.Connection | None) -> str | None:
        """Built-in types are PostgreSQL's by their name (SQLAlchemy's ``ischema_names``); a user type
        (an enum or a domain, arrays of them too) must exist: ``to_regtype`` and ``pg_type.typtype``
        say so. Offline, a user type is taken on trust."""
        if problem := super().type_problem(column_type, connection):
            return problem
        item = column_type
        while item.family is Family.ARRAY and item.item is not None:
            item = item.item
        if item.family is not Family.ENUM or item.labels or connection is None:
            return None
        kind = connection.execute(sa.text("SELECT typtype FROM pg_type WHERE oid = to_regtype(:name)"),
                                  {"name": item.name}).scalar()
        if kind is None:
            return f"PostgreSQL has no type {item.name}"
        if kind not in ("e", "d"):
            return f"zdm declares enums and domains by name, and {item.name} is neither"
        return None

    def zone_problem(self, zone: str, connection: sa.Connection | None) -> str | None:
        """The zone must be one of the server's (``pg_timezone_names``, read from its tz database)."""
        if connection is None:
            return None
        known = connection.execute(sa.text("SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = :z)"),
                                   {"z": zone}).scalar()
        return None if known else f"PostgreSQL has no time zone {zone!r}"

    def in_place_retype(self, old: ColumnType, new: ColumnType) -> str | None:
        """Metadata only, no rewrite and no scan, ACCESS EXCLUSIVE for an instant under the lock
        budget: the widening changes (``keeps_every_value``), and TIMESTAMP -> TIMESTAMPTZ with the
        session's time zone UTC (PostgreSQL 12+ then skips the rewrite; zdm sets it for that
        statement, so stored values are read as UTC). Source: the ALTER TABLE notes, PostgreSQL 12
        release notes (E.13.3.1.3)."""
        if reason := keeps_every_value(old, new):
            return f"in place, metadata only: {reason}"
        if old.family is Family.TIMESTAMP and new.family is Family.TIMESTAMPTZ:
            return "in place, metadata only: values read as UTC (the statement's time zone)"
        return None

    def retype(self, table: str, column: str, new: ColumnType) -> list[Action]:
        from alembic.ddl.base import ColumnType as AlterType

        alter = Statement(self.sql(AlterType(table, column, self.column_type(new))))
        return [Statement("SET LOCAL TIME ZONE 'UTC'"), alter] if new.family is Family.TIMESTAMPTZ else [alter]

    def add_enum_value(self, enum: str, value: str, *, before: str | None = None,
                       after: str | None = None) -> list[Action]:
        """``ALTER TYPE ... ADD VALUE IF NOT EXISTS``: a step of its own outside a transaction (before
        PostgreSQL 12 it cannot run in a transaction block; from 12 the label is unusable until the
        transaction that added it commits). No compensation exists: PostgreSQL cannot drop a label."""
        from zdm.coltypes import NamedType

        def label(text: str) -> str:
            return self.sql(sa.literal(text, sa.Text()))

        where = f" BEFORE {label(before)}" if before is not None else f" AFTER {label(after)}" if after is not None \
            else ""
        name = NamedType(enum).compile(dialect=self.sa)
        return [Statement(f"ALTER TYPE {name} ADD VALUE IF NOT EXISTS {label(value)}{where}")]

    # -- reading the live schema ---------------------------------------------------------------
    def user_types(self, connection: sa.Connection) -> dict[str, ColumnType]:
        """Enums of the default schema, read by SQLAlchemy's inspector (``get_enums``)."""
        inspector: Any = sa.inspect(connection)
        return {enum["name"]: ColumnType(enum["name"], Family.ENUM, labels=tuple(enum["labels"]))
                for enum in inspector.get_enums() if enum.get("visible", True)}

    def domain_base(self, connection: sa.Connection, name: str) -> tuple[ColumnType, bool] | None:
        """Read from ``pg_type``: the innermost domain's base type as ``format_type`` prints it (with
        its typmod: ``character varying(5)``), parsed like a plan's type; ``pg_constraint`` says
        whether any domain on the way has a CHECK."""
        from zdm import coltypes

        row = connection.execute(sa.text(DOMAIN_BASE), {"name": name}).first()
        if row is None or row[0] is None:
            return None
        try:
            return coltypes.parse(row[0]), bool(row[1])
        except ValueError:
            return ColumnType(row[0], Family.OTHER), bool(row[1])

    def constraint_name(self, table: str, kind: str, columns: list[str]) -> str | None:
        # ChooseConstraintName (src/backend/commands/indexcmds.c): table, columns, label; 63 bytes.
        label = {"u": "key", "f": "fkey", "c": "check"}[kind]
        return "_".join([table, *columns[:1 if kind == "c" else None], label])[:63]

    def index_definitions(self, connection: sa.Connection, table: str) -> dict[str, str]:
        rows = connection.execute(sa.text(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass(:t)"), {"t": self.quote(table)})
        return {name: sql for name, sql in rows}

    def column_facts(self, connection: sa.Connection, table: str, column: str) -> ColumnFacts:
        """Read from pg_attribute, pg_constraint, pg_depend and pg_trigger (PostgreSQL's own record
        of what depends on the column, so nothing is guessed from names)."""
        relation = self.quote(table)
        row = connection.execute(sa.text(
            "SELECT a.attnum, a.attnotnull, a.attidentity, NULLIF(a.attstattarget, -1) AS statistics, "
            "CASE WHEN a.attstorage <> t.typstorage THEN a.attstorage END AS storage, "
            "col_description(a.attrelid, a.attnum) AS comment, pg_get_expr(d.adbin, d.adrelid) AS default, "
            "pg_get_serial_sequence(:t, a.attname) AS sequence "
            "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = to_regclass(:t) AND a.attname = :c AND NOT a.attisdropped"),
            {"t": relation, "c": column}).one()
        facts = ColumnFacts(default=row.default, comment=row.comment, not_null=row.attnotnull,
                            statistics=row.statistics, sequence=row.sequence,
                            identity={"a": "ALWAYS", "d": "BY DEFAULT"}.get(row.attidentity),
                            storage={"p": "PLAIN", "e": "EXTERNAL", "m": "MAIN", "x": "EXTENDED"}.get(row.storage))
        key = {"t": relation, "n": row.attnum}
        facts.grants = [(grantee, privilege, grantable) for grantee, privilege, grantable in connection.execute(sa.text(
            "SELECT CASE WHEN acl.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END, acl.privilege_type, "
            "acl.is_grantable FROM pg_attribute a, aclexplode(a.attacl) acl "
            "LEFT JOIN pg_roles r ON r.oid = acl.grantee "
            "WHERE a.attrelid = to_regclass(:t) AND a.attnum = :n ORDER BY 1, 2"), key)]
        for name, kind, relid, definition in connection.execute(sa.text(
                "SELECT conname, contype, conrelid, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE (conrelid = to_regclass(:t) AND :n = ANY(conkey)) "
                "OR (confrelid = to_regclass(:t) AND :n = ANY(confkey) AND conrelid <> to_regclass(:t))"), key):
            if relid == connection.scalar(sa.text("SELECT to_regclass(:t)::oid"), key):
                facts.constraints[name] = (kind, definition)
            else:
                child = connection.scalar(sa.text("SELECT relname FROM pg_class WHERE oid = :o"), {"o": relid})
                facts.referenced_by.append((child, name, definition))
        # Views and rules, policies, generated columns, publications, statistics and column triggers
        # that use the column; its own default, sequence, indexes and constraints are read above.
        facts.dependents = list(connection.execute(sa.text(
            "SELECT DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_depend d "
            "WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = to_regclass(:t) AND d.refobjsubid = :n "
            "AND d.classid IN ('pg_rewrite'::regclass, 'pg_policy'::regclass, 'pg_publication_rel'::regclass, "
            "'pg_statistic_ext'::regclass, 'pg_trigger'::regclass) "
            "OR (d.refclassid = 'pg_class'::regclass AND d.refobjid = to_regclass(:t) AND d.refobjsubid = :n "
            "AND d.classid = 'pg_attrdef'::regclass AND d.objid NOT IN (SELECT oid FROM pg_attrdef "
            "WHERE adrelid = to_regclass(:t) AND adnum = :n)) ORDER BY 1"), key).scalars())
        for name, kind, function, source, cost in connection.execute(sa.text(
                "SELECT t.tgname, t.tgtype, p.oid::regprocedure::text, p.prosrc, p.procost FROM pg_trigger t "
                "JOIN pg_proc p ON p.oid = t.tgfoid WHERE t.tgrelid = to_regclass(:t) AND NOT t.tgisinternal "
                "AND t.tgname NOT LIKE 'zdm\\_%' ORDER BY t.tgname"), key):
            row_level, before, on_insert, on_update = (bool(kind & bit) for bit in (1, 2, 4, 16))
            facts.triggers.append(UserTrigger(name, row_level and before and (on_insert or on_update),
                                              mentions(source or "", column), function, cost))
        return facts

    reads_locks = True

    def locks_held(self, connection: sa.Connection) -> list[tuple[str, str]]:
        rows = connection.execute(sa.text(
            "SELECT c.relname, l.mode FROM pg_locks l "
            "JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' "
            "ORDER BY c.relname, l.mode"
        ))
        return [(r.relname, r.mode) for r in rows]

    def storage_ids(self, connection: sa.Connection, tables: list[str]) -> dict[str, int]:
        rows = connection.execute(sa.text(
            "SELECT c.relname, c.relfilenode FROM pg_class c WHERE c.relname = ANY(:names) "
            "AND c.relkind IN ('r', 'p', 'm') AND pg_table_is_visible(c.oid)"
        ), {"names": tables})
        return {r.relname: int(r.relfilenode) for r in rows}

    def user_objects(self, connection: sa.Connection) -> dict[str, str]:
        # The current schema's views, triggers and functions, zdm's own (``zdm_``) left to zdm_objects.
        rows = connection.execute(sa.text("""
SELECT CASE c.relkind WHEN 'm' THEN 'materialized view ' ELSE 'view ' END || c.relname, pg_get_viewdef(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('v', 'm') AND n.nspname = current_schema() AND c.relname NOT LIKE 'zdm\\_%'
UNION ALL
SELECT 'trigger ' || t.tgname || ' on ' || c.relname, pg_get_triggerdef(t.oid)
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT t.tgisinternal AND n.nspname = current_schema() AND t.tgname NOT LIKE 'zdm\\_%'
UNION ALL
SELECT 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')', p.prosrc
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = current_schema() AND p.proname NOT LIKE 'zdm\\_%'
AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                AND d.deptype = 'e')"""))
        return {str(r[0]): r[1] or "" for r in rows}

    def statement_progress(self, engine: sa.Engine, sql: str) -> dict[str, Any]:
        """For an index build, what pg_stat_progress_create_index says of zdm's session: ``phase``,
        ``blocks_done``/``blocks_total``, ``tuples_done``/``tuples_total``, ``lockers_done``/``lockers_total``."""
        if not sql.lstrip().upper().startswith(("CREATE INDEX", "CREATE UNIQUE INDEX", "REINDEX")):
            return {}
        with engine.connect() as connection:
            row = connection.execute(sa.text(
                "SELECT p.phase, p.blocks_done, p.blocks_total, p.tuples_done, p.tuples_total, "
                "p.lockers_done, p.lockers_total FROM pg_stat_progress_create_index p "
                "JOIN pg_stat_activity a ON a.pid = p.pid WHERE p.datid = (SELECT oid FROM pg_database "
                "WHERE datname = current_database()) AND a.application_name = 'zdm' "
                "AND p.pid <> pg_backend_pid() LIMIT 1")).first()
        return dict(row._mapping) if row is not None else {}

    def estimate_rows(self, connection: sa.Connection, table: sa.Table) -> int:
        """The planner's estimate (pg_class.reltuples) when the table has statistics: counting a huge
        table would scan all of it before the first batch."""
        estimate = connection.scalar(sa.text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:t)"),
                                     {"t": self.quote(table.name)})
        return int(estimate) if estimate is not None and estimate > 0 else super().estimate_rows(connection, table)

    # -- columns ---------------------------------------------------------------------------------
    def alter_columns(self, table: str, changes: dict[str, dict[str, Any]]) -> list[Action]:
        q, found = self.quote, []
        for column, change in changes.items():
            head = f"ALTER TABLE {q(table)} ALTER COLUMN {q(column)}"
            if "server_default" in change:
                default = change["server_default"]
                found.append(f"{head} DROP DEFAULT" if default is None else f"{head} SET DEFAULT {default}")
            if "nullable" in change:
                found.append(f"{head} {'DROP' if change['nullable'] else 'SET'} NOT NULL")
        return statements(found)

    # -- constraints: added NOT VALID (brief lock), validated later (no write lock) ------------
    def add_check(self, table: str, name: str, condition: str) -> list[Action]:
        return [Statement(f"ALTER TABLE {self.quote(table)} ADD CONSTRAINT {self.quote(name)} "
                          f"CHECK ({condition}) NOT VALID")]

    def add_foreign_key(self, table: str, name: str, columns: list[str], ref_table: str, ref_columns: list[str],
                        on_delete: str | None) -> list[Action]:
        q = self.quote
        action = f" ON DELETE {on_delete}" if on_delete else ""
        return [Statement(f"ALTER TABLE {q(table)} ADD CONSTRAINT {q(name)} FOREIGN KEY ({', '.join(map(q, columns))}) "
                          f"REFERENCES {q(ref_table)} ({', '.join(map(q, ref_columns))}){action} NOT VALID")]

    def validate_constraint(self, table: str, name: str) -> list[Action]:
        return [Statement(f"ALTER TABLE {self.quote(table)} VALIDATE CONSTRAINT {self.quote(name)}")]

    def drop_constraint(self, table: str, name: str) -> list[Action]:
        return [Statement(f"ALTER TABLE {self.quote(table)} DROP CONSTRAINT IF EXISTS {self.quote(name)}")]

    def refuse_nulls(self, name: str, table: str, column: str) -> tuple[list[Action], list[Action], list[Action]]:
        # SET NOT NULL after a validated CHECK (col IS NOT NULL) skips the full-table scan under
        # ACCESS EXCLUSIVE (PostgreSQL 12+, ALTER TABLE docs); VALIDATE takes SHARE UPDATE EXCLUSIVE.
        check = object_name("zdm_nn", name)
        add = self.add_check(table, check, f"{self.quote(column)} IS NOT NULL")
        return add, self.validate_constraint(table, check), self.drop_constraint(table, check)

    def add_constraint(self, table: str, name: str, definition: str) -> list[Action]:
        return [Statement(f"ALTER TABLE {self.quote(table)} ADD CONSTRAINT {self.quote(name)} {definition} NOT VALID")]

    def constraint_for(self, definition: str, column: str, shadow: str, *, referenced: bool = False) -> str:
        from pglast import ast

        from zdm.sqltree import rename_column, render, statement

        constraint = statement(f"ALTER TABLE t ADD {definition}").cmds[0].def_
        if referenced:  # another table's foreign key: only the columns it refers to are ours
            constraint.pk_attrs = tuple(ast.String(sval=shadow) if n.sval == column else n
                                        for n in constraint.pk_attrs)
        else:
            rename_column(constraint, column, shadow)
        return render(constraint)

    def references(self, definition: str) -> str | None:
        from zdm.sqltree import statement

        constraint = statement(f"ALTER TABLE t ADD {definition}").cmds[0].def_
        return None if constraint.pktable is None else str(constraint.pktable.relname)

    def unique_constraint_using_index(self, table: str, name: str, index: str) -> list[Action]:
        q = self.quote
        return [Statement(f"ALTER TABLE {q(table)} ADD CONSTRAINT {q(name)} UNIQUE USING INDEX {q(index)}")]

    def primary_key_using_index(self, table: str, name: str, index: str, columns: list[str]) -> list[Action]:
        # ALTER TABLE docs: "ADD table_constraint_definition ... USING INDEX": the index is renamed
        # to the constraint; with the columns already NOT NULL no scan runs.
        q = self.quote
        return [Statement(f"ALTER TABLE {q(table)} ADD CONSTRAINT {q(name)} PRIMARY KEY USING INDEX {q(index)}")]

    def lock_tables(self, tables: list[str], *, exclusive: bool) -> list[Action]:
        # LOCK TABLE docs: tables are locked one by one in the order given. ADD FOREIGN KEY takes
        # SHARE ROW EXCLUSIVE on both tables; DROP/RENAME COLUMN ACCESS EXCLUSIVE.
        mode = "ACCESS EXCLUSIVE" if exclusive else "SHARE ROW EXCLUSIVE"
        return [Statement(f"LOCK TABLE {', '.join(self.quote(t) for t in tables)} IN {mode} MODE")]

    def widen_sequence(self, sequence: str, column_type: sa.types.TypeEngine[Any]) -> list[Action]:
        # ALTER SEQUENCE docs: AS changes MAXVALUE too when it was the old type's maximum; the
        # value is kept. serial's sequence is AS integer, bigserial's AS bigint.
        return [Statement(f"ALTER SEQUENCE {sequence} AS {column_type.compile(dialect=self.sa)}")]

    # -- indexes: CONCURRENTLY, which never blocks writes --------------------------------------------
    def create_index(self, name: str, table: str, columns: list[str], *, unique: bool = False) -> list[Action]:
        # A failed try leaves an INVALID index behind, which IF NOT EXISTS would then keep,
        # so an earlier attempt's leftover is dropped first.
        index = self._index(name, table, columns, unique, postgresql_concurrently=True)
        return [*self.drop_index(name, table), Statement(self.sql(sa.schema.CreateIndex(index)))]

    def drop_index(self, name: str, table: str) -> list[Action]:
        index = self._index(name, table, [], False, postgresql_concurrently=True)
        return [Statement(self.sql(sa.schema.DropIndex(index, if_exists=True)))]

    def index_copy(self, definition: str, column: str, shadow: str, name: str) -> str | None:
        # Any index: its definition, read by PostgreSQL's own parser, with the column renamed in its
        # elements, expressions, WHERE and INCLUDE clauses, built CONCURRENTLY.
        from zdm.sqltree import rename_column, render, statement

        copy = rename_column(statement(definition), column, shadow)
        copy.idxname, copy.concurrent, copy.if_not_exists = name, True, False
        return render(copy)

    def copy_problem(self, connection: sa.Connection, table: str, shadow: str, shadow_type: sa.types.TypeEngine[Any],
                     indexes: dict[str, str], checks: dict[str, str]) -> str | None:
        # Each copy is built on an empty temporary table of the same columns plus the new one, in a
        # savepoint rolled back at once: PostgreSQL's own analysis of every operator, function and
        # cast, with no lock on the table beyond a read's and nothing left behind.
        from zdm.sqltree import render, statement

        q, probe = self.quote, "zdm_copy_probe"
        savepoint = connection.begin_nested()
        try:
            try:
                connection.exec_driver_sql(f"CREATE TEMPORARY TABLE {q(probe)} AS SELECT * FROM {q(table)} LIMIT 0")
                connection.exec_driver_sql(f"ALTER TABLE {q(probe)} ADD COLUMN {q(shadow)} "
                                           f"{shadow_type.compile(dialect=self.sa)}")
            except sa.exc.DBAPIError:
                return None  # no right to a temporary table: the copies are tried when they are built
            for kind, found in (("index", indexes), ("constraint", checks)):
                for name, definition in found.items():
                    if kind == "index":
                        parsed = statement(definition)
                        parsed.relation.relname, parsed.relation.schemaname = probe, None
                        parsed.concurrent, parsed.idxname = False, None
                        sql = render(parsed)
                    else:
                        sql = f"ALTER TABLE {q(probe)} ADD {definition} NOT VALID"
                    inner = connection.begin_nested()
                    try:
                        connection.exec_driver_sql(sql)
                    except sa.exc.DBAPIError as exc:
                        why = _first_line(exc)
                        return (f"{kind} {name} on {table} cannot be built on the new "
                                f"{shadow_type.compile(dialect=self.sa)} column ({why}): drop it before this "
                                f"change and create it again after complete, or change it first")
                    finally:
                        inner.rollback()
            return None
        finally:
            savepoint.rollback()

    def retype_problem(self, connection: sa.Connection, table: str, column: str, new: ColumnType) -> str | None:
        # The in-place ALTER TYPE tried on an empty temporary copy with the table's indexes (LIKE ...
        # INCLUDING INDEXES), in a savepoint rolled back at once: an expression or predicate that
        # does not fit the new type (a cast that is not immutable for it) fails here, not at complete.
        q, probe = self.quote, "zdm_retype_probe"
        savepoint = connection.begin_nested()
        try:
            try:
                connection.exec_driver_sql(f"CREATE TEMPORARY TABLE {q(probe)} (LIKE {q(table)} INCLUDING INDEXES)")
            except sa.exc.DBAPIError:
                return None  # no right to a temporary table: the change is tried at complete
            try:
                for action in self.retype(probe, column, new):
                    action.run(connection, self)
            except sa.exc.DBAPIError as exc:
                why = _first_line(exc)
                return (f"{table}.{column} cannot become {new.value} in place ({why}): drop the index or "
                        "constraint that uses it before this change and create it again after complete")
            return None
        finally:
            savepoint.rollback()

    # -- a type change: the new column takes the old one's place -------------------------------------
    def replace_column(self, table: str, column: str, shadow: str, final_name: str, facts: ColumnFacts, *,
                       default: str | None,
                       not_null: tuple[list[Action], list[Action], list[Action]] | None,
                       constraints: list[tuple[str, str, str]], indexes: list[tuple[str, str, bool]]) -> list[Action]:
        q = self.quote
        swap: list[Action] = []
        for other, _temporary, final in constraints:  # other tables' keys to the column: the copies replace them
            if other != table:
                swap += self.drop_constraint(other, final)
        found: list[str] = []
        if facts.sequence and not facts.identity:  # DROP COLUMN would drop the sequence it owns
            found.append(f"ALTER SEQUENCE {facts.sequence} OWNED BY {q(table)}.{q(shadow)}")
        swap += statements(found)
        if not_null is not None:  # SET NOT NULL trusts the validated check: no scan under the lock
            swap += [*self.alter_columns(table, {shadow: {"nullable": False}}), *not_null[2]]
        found = []
        if facts.identity and facts.sequence:  # a new identity, going on from the old one's value
            serial = f"pg_get_serial_sequence({self.sql(sa.literal(q(table)))}, {self.sql(sa.literal(shadow))})"
            found += [f"ALTER TABLE {q(table)} ALTER COLUMN {q(shadow)} ADD GENERATED {facts.identity} AS IDENTITY",
                      f"SELECT setval({serial}, last_value, is_called) FROM {facts.sequence}"]
        swap += [*statements(found), *self.drop_column(table, column)]
        if shadow != final_name:
            swap += self.rename_column(table, shadow, final_name)
        found = []
        if facts.identity and facts.sequence:
            made = q(f"{table}_{shadow}_seq"[:63])  # the name ADD GENERATED AS IDENTITY gives its sequence
            found.append(f"ALTER SEQUENCE {made} RENAME TO {q(facts.sequence.split('.')[-1])}")
        swap += statements(found)
        if default is not None and not facts.identity:
            swap += self.alter_columns(table, {final_name: {"server_default": default}})
        for other, temporary, final in constraints:
            swap.append(Statement(f"ALTER TABLE {q(other)} RENAME CONSTRAINT {q(temporary)} TO {q(final)}"))
        for temporary, final, constraint in indexes:
            swap += (self.unique_constraint_using_index(table, final, temporary) if constraint
                     else self.rename_index(temporary, final))
        head = f"ALTER TABLE {q(table)} ALTER COLUMN {q(final_name)}"
        found = []
        if facts.comment is not None:
            found.append(f"COMMENT ON COLUMN {q(table)}.{q(final_name)} IS {self.sql(sa.literal(facts.comment))}")
        if facts.statistics is not None:
            found.append(f"{head} SET STATISTICS {int(facts.statistics)}")
        if facts.storage is not None:
            found.append(f"{head} SET STORAGE {facts.storage}")
        for grantee, privilege, grantable in facts.grants:
            option = " WITH GRANT OPTION" if grantable else ""
            found.append(f"GRANT {privilege} ({q(final_name)}) ON {q(table)} TO {grantee}{option}")
        for function, cost in sorted({(t.function, t.cost) for t in facts.triggers if t.names_column and t.function}):
            # PL/pgSQL sessions keep plans made for the old type ("type of parameter ... does not match
            # that when preparing the plan"); an ALTER FUNCTION makes them compile the function again.
            found.append(f"ALTER FUNCTION {function} COST {cost:g}")
        return [*swap, *statements(found)]

    # -- triggers -----------------------------------------------------------------------------------
    def sync_triggers(self, sync: Sync) -> tuple[list[Action], list[Action]]:
        # A BEFORE trigger edits NEW in place: no second UPDATE, so no recursion, and the value
        # is there before NOT NULL and CHECK constraints are tested. The rules are Sync's.
        q = self.quote
        fn = q(object_name("zdm_fn", sync.name))
        trigger = q(object_name("zdm_tg", sync.name))
        table = q(sync.table)
        new_a, new_b, old_a, old_b = f"NEW.{q(sync.a)}", f"NEW.{q(sync.b)}", f"OLD.{q(sync.a)}", f"OLD.{q(sync.b)}"
        up = self.expr(sync.up, new_a)

        def text(value: str) -> str:
            # Compare text forms: json has no equality operator, text forms work for every type.
            return f"({value})::text"

        left_out = f"{new_b} IS NULL" if sync.b_default is None else \
            f"{text(new_b)} IS NOT DISTINCT FROM {text(sync.b_default)}"
        insert = [f"    IF {left_out} THEN", f"      {new_b} := {up};"]
        update = [f"  ELSIF {text(new_a)} IS DISTINCT FROM {text(old_a)} THEN", f"    {new_b} := {up};"]
        if sync.down is not None:
            down = self.expr(sync.down, new_b)
            insert += ["    ELSE", f"      {new_a} := {down};"]
            update += [f"  ELSIF {text(new_b)} IS DISTINCT FROM {text(old_b)} "
                       f"AND {text(new_b)} IS DISTINCT FROM {text(up)} THEN", f"    {new_a} := {down};"]
        if sync.fill_unreached:
            update += [f"  ELSIF {new_b} IS NULL AND {new_a} IS NOT NULL THEN", f"    {new_b} := {up};"]
        body = "\n".join(
            ["BEGIN", "  IF TG_OP = 'INSERT' THEN", *insert, "    END IF;", *update, "  END IF;",
             "  RETURN NEW;", "END"]
        )
        create = [
            f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS {_dollar_quoted(body)}",
            # The backfill's own batches set b to up(a), what this trigger would do: they mark their
            # transaction (``batch_begin``) and skip it, so the backfill costs what a plain UPDATE
            # costs. The WHEN test is a C function call per row, no PL/pgSQL; app writes never carry the mark.
            f"CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON {table} "
            f"FOR EACH ROW WHEN (current_setting('{BACKFILL_MARK}', true) IS DISTINCT FROM 'on') "
            f"EXECUTE FUNCTION {fn}()",
        ]
        drop = [f"DROP TRIGGER IF EXISTS {trigger} ON {table}", f"DROP FUNCTION IF EXISTS {fn}()"]
        return statements(create), statements(drop)

    def holds(self, column: str, value: str, column_type: ColumnType) -> str:
        # json has no equality operator: the text forms of the column and of the value read as the
        # column's type (as the fill trigger's assignment reads it: jsonb orders its keys) are compared.
        type_sql = self.column_type(column_type).compile(dialect=self.sa)
        return f"({self.quote(column)})::text = (CAST({value} AS {type_sql}))::text"

    def fill_triggers(self, name: str, table: str, key: tuple[str, ...], column: str, value: str,
                      record: str | None = None) -> tuple[list[Action], list[Action]]:
        q = self.quote
        fn, trigger = q(object_name("zdm_fn", name)), q(object_name("zdm_tg", name))
        note = "" if record is None else (f" INSERT INTO {q(record)} ({', '.join(q(k) for k in key)}) "
                                          f"VALUES ({', '.join(f'NEW.{q(k)}' for k in key)});")
        body = (f"BEGIN\n  IF NEW.{q(column)} IS NULL THEN NEW.{q(column)} := {value};{note} END IF;\n"
                "  RETURN NEW;\nEND")
        create = [
            f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS {_dollar_quoted(body)}",
            f"CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON {q(table)} FOR EACH ROW EXECUTE FUNCTION {fn}()",
        ]
        return statements(create), statements([f"DROP TRIGGER IF EXISTS {trigger} ON {q(table)}",
                                               f"DROP FUNCTION IF EXISTS {fn}()"])

    def helper_functions(self, up: Transform, down: Transform | None) -> tuple[list[Action], list[Action]]:
        create: list[Action] = []
        drop: list[Action] = []
        if up.needs_try_json or (down is not None and down.needs_try_json):
            create, drop = [Statement(TRY_JSON)], [Statement("DROP FUNCTION IF EXISTS zdm_try_json(text)")]
        if up.needs_try_cast or (down is not None and down.needs_try_cast):
            create.append(Statement(TRY_CAST))
            drop.append(Statement("DROP FUNCTION IF EXISTS zdm_try_cast(text, anyelement)"))
        return create, drop

    # -- transactions, the lock budget and faults -------------------------------------------------
    def begin(self, lock_timeout_ms: int, *, autocommit: bool = False) -> list[str]:
        # SET LOCAL: the budget ends with the transaction, the app's sessions never see it. A session
        # whose statements each commit on their own (CONCURRENTLY) takes it for the session.
        scope = "" if autocommit else " LOCAL"
        return [f"SET{scope} lock_timeout = '{int(lock_timeout_ms)}ms'"]

    def batch_begin(self, timeout_ms: int) -> list[str]:
        # One round trip: set_config(..., true) is SET LOCAL (PostgreSQL docs, "Configuration
        # Settings Functions"), and a backfill runs many batches.
        return [f"SELECT set_config('statement_timeout', '{int(timeout_ms)}ms', true), "
                f"set_config('{BACKFILL_MARK}', 'on', true)"]

    def user_triggers_quiet(self, connection: sa.Connection, table: str, columns: list[str]) -> tuple[bool, str | None]:
        """The batches run with ``session_replication_role = replica``, under which triggers in the
        default ``ENABLE`` state do not fire (PostgreSQL docs, "ALTER TABLE ... ENABLE TRIGGER" and
        the ``session_replication_role`` setting; logical replication tools such as Bucardo and
        pgstream write the same way). It needs a superuser or, from PostgreSQL 15, ``GRANT SET ON
        PARAMETER session_replication_role``. It also stops foreign-key checks and actions, so it is
        not used when a foreign key (of this table, or another's that references it) covers a column
        the backfill sets. Triggers marked ``ENABLE ALWAYS`` fire
        whatever zdm does: they are named in the note."""
        key = {"t": self.quote(table)}
        triggers = connection.execute(sa.text(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = to_regclass(:t) AND NOT tgisinternal "
            "AND tgenabled <> 'D' AND tgname NOT LIKE 'zdm\\_%' ORDER BY tgname"), key).all()
        if not triggers:
            return False, None
        always = [name for name, enabled in triggers if enabled == "A"]
        allowed = connection.scalar(sa.text(
            "SELECT rolsuper OR (current_setting('server_version_num')::int >= 150000 "
            "AND has_parameter_privilege('session_replication_role', 'SET')) "
            "FROM pg_roles WHERE rolname = current_user"))
        # Either side of a foreign key: the referencing columns are checked, and the referenced ones
        # carry ON UPDATE actions and NO ACTION checks (RI triggers, which the replica role skips).
        keyed = connection.scalars(sa.text(
            "SELECT DISTINCT a.attname FROM pg_constraint c JOIN pg_attribute a ON "
            "(a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)) OR (a.attrelid = c.confrelid AND "
            "a.attnum = ANY(c.confkey)) WHERE c.contype = 'f' AND a.attrelid = to_regclass(:t) "
            "AND a.attname = ANY(:c) ORDER BY 1"), {**key, "c": list(columns)}).all()
        firing = ", ".join(name for name, _ in triggers)
        if not allowed:
            return False, (f"the backfill of {table} fires its triggers {firing} on every row it updates: "
                           "grant the role SET ON PARAMETER session_replication_role (PostgreSQL 15) "
                           "to keep them quiet")
        if keyed:
            return False, (f"the backfill of {table} fires its triggers {firing} on every row it updates: a foreign "
                           f"key covers {', '.join(keyed)}, which it sets, and must be checked")
        if always:
            return True, (f"the backfill of {table} fires its triggers {', '.join(always)} on every row it updates: "
                          "they are ENABLE ALWAYS")
        return True, None

    @contextmanager
    def user_triggers_off(self, connection: sa.Connection, table: str) -> Iterator[None]:
        connection.exec_driver_sql("SET LOCAL session_replication_role = replica")
        yield
        # The rest of the transaction (a rollback's next statements) fires triggers and checks again.
        connection.exec_driver_sql("SET LOCAL session_replication_role = DEFAULT")

    def reclaim(self, engine: sa.Engine, table: str, lock_timeout_ms: int,
                cancel_with: Callable[[Callable[[], None]], None]) -> str | None:
        """``VACUUM`` the table, so that the space of the rows the batches so far left dead is free for
        the next ones (PostgreSQL docs, "Routine Vacuuming": VACUUM records free space in the free
        space map, which later inserts and non-HOT updates use; a table grows only when it has
        none). Its options (PostgreSQL 12+, docs "VACUUM") keep it cheap and lock-light: no index
        pass, no truncation. It takes SHARE UPDATE EXCLUSIVE, which app reads and writes do not wait for, under
        the lock budget: when another VACUUM or DDL holds the table, this one is skipped (its
        reason is returned) and the next stretch tries again. So is one that someone else ends
        (``pg_cancel_backend``, ``pg_terminate_backend``, a ``statement_timeout``) or whose
        connection is lost: it only keeps the table from growing, and the backfill's own
        connection says for itself whether the server is still there."""
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                driver = connection.connection.driver_connection

                def cancel() -> None:  # libpq's cancel request, which may come from any thread
                    with suppress(Exception):  # the connection may be gone already: nothing to cancel
                        if driver is not None:
                            driver.cancel()

                cancel_with(cancel)
                try:
                    connection.exec_driver_sql(f"SET lock_timeout = '{int(lock_timeout_ms)}ms'")
                    # INDEX_CLEANUP OFF: the heap's dead rows are pruned and their space recorded, without
                    # scanning every index at each stretch (autovacuum cleans the index entries later);
                    # TRUNCATE OFF: no ACCESS EXCLUSIVE lock to cut empty pages off the end (app waits).
                    connection.exec_driver_sql(f"VACUUM (INDEX_CLEANUP OFF, TRUNCATE OFF) {self.quote(table)}")
                finally:  # a connection lost meanwhile refuses it (SQLAlchemy wants a rollback first)
                    with suppress(sa.exc.SQLAlchemyError):
                        connection.exec_driver_sql("RESET lock_timeout")
        except sa.exc.DBAPIError as exc:
            if self.is_lock_timeout(exc):
                return f"VACUUM {table} skipped: no lock within {lock_timeout_ms} ms"
            if self.connection_lost(exc) or getattr(exc.orig, "sqlstate", None) == "57014":  # query_canceled
                return f"VACUUM {table} skipped: {_first_line(exc)}"
            raise
        return None

    def is_lock_timeout(self, exc: sa.exc.DBAPIError) -> bool:
        return getattr(exc.orig, "sqlstate", None) == "55P03"  # lock_not_available

    def connection_lost(self, exc: sa.exc.DBAPIError) -> bool:
        # psycopg reports a failed connect without a SQLSTATE (57P03: the server is starting up).
        return super().connection_lost(exc) or (
            isinstance(exc, sa.exc.OperationalError) and getattr(exc.orig, "sqlstate", None) in (None, "57P03"))

    def blockers(self, engine: sa.Engine, tables: list[str]) -> str:
        # Only what watch_blockers saw counts: after the timeout, sessions holding locks on the
        # tables may be innocent (queued behind zdm), and the real blocker may hold none (a snapshot).
        return "no session was seen blocking zdm's statement (the blocker had finished when zdm looked)"

    @contextmanager
    def watch_blockers(self, engine: sa.Engine, connection: sa.Connection, lock_timeout_ms: int
                       ) -> Iterator[Callable[[], str | None]]:
        # pg_blocking_pids() names the sessions a backend waits for: lock holders, sessions ahead in
        # the queue, and virtual-transaction waits (CREATE INDEX CONCURRENTLY waiting for older
        # snapshots, on any table). Sampled from a second session once half the budget has passed.
        import threading

        info = getattr(connection.connection.driver_connection, "info", None)
        pid = getattr(info, "backend_pid", None)
        seen: list[str] = []
        done = threading.Event()

        def sample() -> None:
            if done.wait(lock_timeout_ms / 2000):
                return
            while not done.is_set():
                try:
                    with engine.connect() as watcher:
                        rows = watcher.execute(sa.text(
                            "SELECT a.pid, a.application_name, a.state, "
                            "EXTRACT(EPOCH FROM now() - a.xact_start) AS open_s FROM pg_stat_activity a "
                            "WHERE a.pid = ANY (pg_blocking_pids(:pid)) ORDER BY a.xact_start LIMIT 3"),
                            {"pid": pid}).all()
                except sa.exc.DBAPIError:
                    return
                if rows:
                    seen[:] = ["blocked by " + "; ".join(
                        f"pid {r.pid} (application_name {r.application_name!r}, {r.state}, transaction open "
                        f"{float(r.open_s or 0):.1f} s)" for r in rows)]
                done.wait(min(0.1, lock_timeout_ms / 4000))

        thread = threading.Thread(target=sample, name="zdm-blockers", daemon=True) if pid else None
        if thread is not None:
            thread.start()
        try:
            yield lambda: seen[0] if seen else None
        finally:
            done.set()
            if thread is not None:
                thread.join()

    # -- throttling -------------------------------------------------------------------------------
    measures_load = True

    def replica_lags(self, connection: sa.Connection) -> dict[str, float | None]:
        """``pg_stat_replication.replay_lag`` of each streaming replica (PostgreSQL docs, "The
        Cumulative Statistics System": the time between a commit on the primary and its replay
        on the replica). The lag columns are NULL for users without ``pg_monitor``: no figure
        (None) then; ``--replica URL`` measures on the replica itself."""
        # replay_lag goes NULL once a replica has caught up and idles: 0 then. It keeps growing
        # while the replica receives WAL but does not replay it (replay paused, or slow).
        rows = connection.execute(sa.text(
            "SELECT coalesce(nullif(application_name, ''), host(client_addr), pid::text) AS name, "
            "CASE WHEN replay_lag IS NULL AND replay_lsn IS NOT NULL THEN 0 "
            "ELSE EXTRACT(EPOCH FROM replay_lag) * 1000 END AS lag_ms FROM pg_stat_replication ORDER BY 1")).all()
        return {row.name: None if row.lag_ms is None else float(row.lag_ms) for row in rows}

    def replay_lag_ms(self, connection: sa.Connection) -> float:
        """On the replica: 0 when it replayed all it received, else the age of the last transaction it
        replayed (``now() - pg_last_xact_replay_timestamp()``, the lag measure of PostgreSQL's docs,
        "Hot Standby"; gh-ost's and pt-heartbeat's heartbeat measures the same on MySQL). A replica
        whose replay is paused (``pg_wal_replay_pause()``) or slow shows a growing figure."""
        row = connection.execute(sa.text(
            "SELECT pg_is_in_recovery() AS replica, "
            "CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0 "
            "ELSE EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp()) * 1000 END AS lag_ms"
        )).one()
        if not row.replica:
            raise ThrottleInvalid("--replica names a server that is not a replica (pg_is_in_recovery() is false)")
        return float(row.lag_ms or 0.0)

    def active_sessions(self, connection: sa.Connection) -> int:
        """Client sessions of this database running a statement now (``pg_stat_activity.state =
        'active'``), zdm's own sessions left out: this one, and those with its ``application_name``
        (the VACUUM of a stretch, which runs beside the batches, is not the app's load). Sessions
        of other users show their state only to superusers and ``pg_read_all_stats`` members:
        others count as idle."""
        return int(connection.scalar(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND backend_type = 'client backend' "
            "AND datname = current_database() AND pid <> pg_backend_pid() "
            "AND application_name IS DISTINCT FROM current_setting('application_name')")) or 0)

    def probe_ms(self, engine: sa.Engine, sql: str) -> float:
        """In a READ ONLY transaction, rolled back: a probe never changes data."""
        with engine.connect() as connection:
            try:
                connection.exec_driver_sql("SET TRANSACTION READ ONLY")
                started = time.perf_counter()
                connection.execute(sa.text(sql)).fetchall()
                return (time.perf_counter() - started) * 1000
            finally:
                connection.rollback()

    @contextmanager
    def runner_lock(self, engine: sa.Engine) -> Iterator[Callable[[], None]]:
        """A session advisory lock, released by the server if the runner dies. It lives on an idle
        connection that the server may close (a restart, ``idle_session_timeout``,
        ``pg_terminate_backend``): the check yielded takes it again on a new session when it is free,
        and raises RunnerLockLost when another runner has it."""
        from zdm.state import RunnerBusy, RunnerLockLost

        # AUTOCOMMIT: the lock is the session's, and the check before each transaction (every
        # backfill batch) is then one round trip instead of BEGIN, SELECT, COMMIT.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            got = connection.scalar(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
            connection.commit()
            if not got:
                raise RunnerBusy(f"another zdm runner is working on this database "
                                 f"({_holder(connection) or 'holder unknown'})")

            def still_held() -> None:
                try:
                    held = connection.scalar(sa.text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :k AND granted "
                        "AND pid = pg_backend_pid()"), {"k": ADVISORY_LOCK_KEY})
                    if not held:  # its session is gone: take it again, unless another runner was quicker
                        held = connection.scalar(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
                    connection.commit()
                except sa.exc.DBAPIError:
                    connection.rollback()  # the caller retries a lost connection; the next check reconnects
                    raise
                if not held:
                    holder = _holder(connection) or "holder unknown"
                    raise RunnerLockLost("the runner lock was lost with its database connection, and another "
                                         f"runner holds it now ({holder}): zdm stopped")

            try:
                yield still_held
            finally:
                try:
                    connection.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
                    connection.commit()
                except sa.exc.DBAPIError:
                    # A lost connection took its session, and the lock with it; any other failure:
                    # closing the session releases the lock, so it must not go back to the pool.
                    connection.invalidate()

    def runner_at_work(self, engine: sa.Engine) -> str | None:
        with engine.connect() as connection:
            return _holder(connection)

    def missing_objects(self, connection: sa.Connection, actions: list[Action]) -> list[str]:
        # The objects the statements leave, read from their parse trees (pglast), then looked up:
        # a CONCURRENTLY build or drop that was cancelled leaves an INVALID index (PostgreSQL docs,
        # CREATE INDEX, "Building Indexes Concurrently"), which a record cannot tell.
        left: dict[tuple[str, str], str] = {}  # (kind, name) -> table; kind: index, trigger, constraint, valid
        for action in actions:
            if isinstance(action, Statement):
                _track(action.sql, left)
        problems = []
        for (kind, name), table in left.items():
            if kind == "index":
                valid = connection.execute(sa.text(
                    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE c.relname = :name AND n.nspname = current_schema()"),
                    {"name": name}).scalar()
                if valid is None:
                    problems.append(f"index {name} on {table} is missing")
                elif not valid:
                    problems.append(f"index {name} on {table} is INVALID (a build or drop was interrupted)")
            elif kind == "trigger":
                if connection.execute(sa.text(
                        "SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n "
                        "ON n.oid = c.relnamespace WHERE t.tgname = :name AND c.relname = :table "
                        "AND n.nspname = current_schema()"), {"name": name, "table": table}).first() is None:
                    problems.append(f"trigger {name} on {table} is missing")
            else:
                validated = connection.execute(sa.text(
                    "SELECT co.convalidated FROM pg_constraint co JOIN pg_class c ON c.oid = co.conrelid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE co.conname = :name AND c.relname = :table "
                    "AND n.nspname = current_schema()"), {"name": name, "table": table}).scalar()
                if validated is None:
                    problems.append(f"constraint {name} on {table} is missing")
                elif kind == "valid" and not validated:
                    problems.append(f"constraint {name} on {table} is not validated")
        return problems

    def disabled_triggers(self, connection: sa.Connection, actions: list[Action]) -> list[DisabledTrigger]:
        # pg_trigger.tgenabled: 'O' fires in origin (ordinary) and local sessions, 'A' always, 'R' only
        # with session_replication_role = replica, 'D' never (PostgreSQL docs, "pg_trigger" and
        # ALTER TABLE ... ENABLE/DISABLE TRIGGER). The app's sessions are ordinary ones: 'D' and 'R'
        # leave its writes out of step. Only zdm's own triggers: a raw step may disable its own.
        left: dict[tuple[str, str], str] = {}
        for action in actions:
            if isinstance(action, Statement):
                _track(action.sql, left)
        found = []
        for (kind, name), table in left.items():
            if kind != "trigger" or not name.startswith("zdm_"):
                continue
            row = connection.execute(sa.text(
                "SELECT t.tgenabled, n.nspname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.tgname = :name AND c.relname = :table "
                "AND n.nspname = current_schema()"), {"name": name, "table": table}).first()
            if row is not None and row.tgenabled in ("D", "R"):
                # the team runs it from a session of its own (psql), whose search_path may not find the
                # table: named in its schema, unless that is public
                where = "" if row.nspname == "public" else f"{self.quote(row.nspname)}."
                found.append(DisabledTrigger(table, name, "disabled" if row.tgenabled == "D" else "replica",
                                             f"ALTER TABLE {where}{self.quote(table)} ENABLE TRIGGER "
                                             f"{self.quote(name)}"))
        return found

    def object_names(self, connection: sa.Connection) -> dict[str, str]:
        # Relations (tables, views, indexes, sequences...) and types share one namespace per schema
        # (CREATE TABLE makes a type too); constraints, triggers and functions are named here as
        # well, since zdm drops what it made by name. Source: PostgreSQL docs, "System Catalogs".
        rows = connection.execute(sa.text("""
SELECT c.relname, CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'
  WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign table'
  WHEN 'c' THEN 'type' ELSE CASE WHEN ix.indisunique THEN 'unique index' ELSE 'index' END END
  || ' ' || c.relname || COALESCE(' on ' || t.relname, '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_index ix ON ix.indexrelid = c.oid LEFT JOIN pg_class t ON t.oid = ix.indrelid
WHERE n.nspname = current_schema()
UNION ALL
SELECT ty.typname, 'type ' || ty.typname FROM pg_type ty JOIN pg_namespace n ON n.oid = ty.typnamespace
WHERE n.nspname = current_schema() AND ty.typrelid = 0 AND ty.typcategory <> 'A'
UNION ALL
SELECT co.conname, 'constraint ' || co.conname || COALESCE(' on ' || t.relname, '')
FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace LEFT JOIN pg_class t ON t.oid = co.conrelid
WHERE n.nspname = current_schema()
UNION ALL
SELECT tg.tgname, 'trigger ' || tg.tgname || ' on ' || t.relname
FROM pg_trigger tg JOIN pg_class t ON t.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE NOT tg.tgisinternal AND n.nspname = current_schema()
UNION ALL
SELECT p.proname, 'function ' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = current_schema()"""))
        names: dict[str, str] = {}
        for name, holder in rows:
            names.setdefault(str(name), str(holder))
        return names

    def zdm_objects(self, connection: sa.Connection) -> list[str]:
        rows = connection.execute(
            sa.text(
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'zdm\\_%' "
                "UNION ALL SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE proname LIKE 'zdm\\_%' AND n.nspname = current_schema() "
                "UNION ALL SELECT conname FROM pg_constraint WHERE conname LIKE 'zdm\\_%' "
                "AND conrelid IS DISTINCT FROM to_regclass('zdm_migrations')"
            )
        )
        return sorted(r[0] for r in rows)


def _dollar_quoted(body: str) -> str:
    """``body`` as a dollar-quoted string whose tag it does not contain, so no value in it (a fill of
    ``'$zdm$'``) can end the string early (PostgreSQL docs, "Dollar-Quoted String Constants")."""
    tag = "zdm"
    while f"${tag}$" in body:
        tag += "_"
    return f"${tag}$\n{body}\n${tag}$"


def _track(sql: str, left: dict[tuple[str, str], str]) -> None:
    """Follow what ``sql`` creates, renames, validates and drops in ``left`` (see missing_objects);
    SQL pglast cannot read (a user's odd statement) is skipped: its objects are not checked."""
    import pglast
    from pglast import ast, enums

    try:
        parsed = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        return
    for raw in parsed:
        stmt: Any = raw.stmt
        node = type(stmt)  # not isinstance: pglast's fields are typed Optional, and these are set
        if node is ast.IndexStmt and stmt.idxname:
            left[("index", stmt.idxname)] = stmt.relation.relname
        elif node is ast.CreateTrigStmt:
            left[("trigger", stmt.trigname)] = stmt.relation.relname
        elif node is ast.DropStmt:
            for parts in stmt.objects or ():
                names = [part.sval for part in parts] if isinstance(parts, tuple) else []
                if stmt.removeType == enums.ObjectType.OBJECT_INDEX and names:
                    left.pop(("index", names[-1]), None)
                elif stmt.removeType == enums.ObjectType.OBJECT_TRIGGER and names:
                    left.pop(("trigger", names[-1]), None)
                elif stmt.removeType == enums.ObjectType.OBJECT_TABLE and names:
                    for key in [key for key, table in left.items() if table == names[-1]]:
                        del left[key]
        elif node is ast.RenameStmt and stmt.relation is not None:
            old, new = stmt.relation.relname, stmt.newname
            if stmt.renameType == enums.ObjectType.OBJECT_INDEX and ("index", old) in left:
                left[("index", new)] = left.pop(("index", old))
            elif stmt.renameType == enums.ObjectType.OBJECT_TABLE:
                for key, table in list(left.items()):
                    left[key] = new if table == old else table
        elif node is ast.AlterTableStmt and stmt.relation is not None:
            table = stmt.relation.relname
            for cmd in stmt.cmds or ():
                kind = cmd.subtype
                if kind == enums.AlterTableType.AT_AddConstraint and cmd.def_.conname:
                    if cmd.def_.indexname:  # USING INDEX: the index takes the constraint's name
                        left.pop(("index", cmd.def_.indexname), None)
                    left[("constraint", cmd.def_.conname)] = table
                elif kind == enums.AlterTableType.AT_ValidateConstraint:
                    left.pop(("constraint", cmd.name), None)
                    left[("valid", cmd.name)] = table
                elif kind == enums.AlterTableType.AT_DropConstraint:
                    left.pop(("constraint", cmd.name), None)
                    left.pop(("valid", cmd.name), None)


def _holder(connection: sa.Connection) -> str | None:
    row = connection.execute(
        sa.text(
            "SELECT a.pid, a.application_name, a.backend_start FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
            "AND l.objid = :k AND l.granted AND a.datname = current_database() LIMIT 1"
        ),
        {"k": ADVISORY_LOCK_KEY},
    ).first()
    if row is None:
        return None
    since = f"{row.backend_start:%Y-%m-%d %H:%M:%S}"
    return f"pid {row.pid}, application_name {row.application_name!r}, connected since {since}"



#: A domain's innermost base type (with the typmod the domain gives it) and whether any domain on
#: the way has a CHECK constraint.
DOMAIN_BASE = """
WITH RECURSIVE chain AS (
    SELECT oid, typbasetype, typtypmod FROM pg_type WHERE oid = to_regtype(:name) AND typtype = 'd'
    UNION ALL
    SELECT t.oid, t.typbasetype, t.typtypmod FROM pg_type t JOIN chain ON t.oid = chain.typbasetype
    WHERE t.typtype = 'd'
)
SELECT (SELECT format_type(c.typbasetype, c.typtypmod) FROM chain c
        WHERE NOT EXISTS (SELECT 1 FROM chain d WHERE d.oid = c.typbasetype)),
       EXISTS (SELECT 1 FROM pg_constraint WHERE contypid IN (SELECT oid FROM chain) AND contype = 'c')
WHERE EXISTS (SELECT 1 FROM chain)
"""


def _first_line(exc: sa.exc.DBAPIError) -> str:
    """PostgreSQL's message without its DETAIL/HINT lines, on one line."""
    return " ".join(str(exc.orig).split("\n")[0].split()) if exc.orig else str(exc)
