"""PostgreSQL: BEFORE row triggers, constraints added NOT VALID then validated, CONCURRENTLY indexes,
``lock_timeout`` as the lock budget, and a session advisory lock as the runner lock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles

from zdm.actions import Action, Statement, statements
from zdm.dialects import ColumnFacts, Dialect, Sync, UserTrigger, mentions, object_name
from zdm.transforms import SafeInteger, SafeJson, Transform


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


#: Arbitrary but fixed: every zdm runner on a PostgreSQL database asks for this advisory lock.
ADVISORY_LOCK_KEY = 0x7A646D  # "zdm"

#: Created while a plan converts text to JSON (PostgreSQL 15 has no non-throwing JSON test;
#: pg_input_is_valid came in 16), dropped by its contract or rollback.
TRY_JSON = (
    "CREATE OR REPLACE FUNCTION zdm_try_json(value text) RETURNS json LANGUAGE plpgsql IMMUTABLE AS $zdm$\n"
    "BEGIN\n  RETURN value::json;\nEXCEPTION WHEN others THEN\n  RETURN NULL;\nEND\n$zdm$"
)


class PostgresDialect(Dialect):
    name = "postgresql"
    concurrent_indexes = True
    not_valid_constraints = True
    triggers_fill_before_checks = True
    unique_constraints = True
    judges_raw_sql = True
    updatable_views = True

    def engine_url(self, url: sa.URL) -> sa.URL:
        return url.set(drivername="postgresql+psycopg") if url.drivername == "postgresql" else url

    def connect_args(self) -> dict[str, Any]:
        return {"application_name": "zdm", "connect_timeout": 10}

    # -- reading the live schema ---------------------------------------------------------------
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
            f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $zdm$\n{body}\n$zdm$",
            f"CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {fn}()",
        ]
        drop = [f"DROP TRIGGER IF EXISTS {trigger} ON {table}", f"DROP FUNCTION IF EXISTS {fn}()"]
        return statements(create), statements(drop)

    def fill_triggers(self, name: str, table: str, key: tuple[str, ...], column: str, value: str
                      ) -> tuple[list[Action], list[Action]]:
        q = self.quote
        fn, trigger = q(object_name("zdm_fn", name)), q(object_name("zdm_tg", name))
        body = f"BEGIN\n  IF NEW.{q(column)} IS NULL THEN NEW.{q(column)} := {value}; END IF;\n  RETURN NEW;\nEND"
        create = [
            f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $zdm$\n{body}\n$zdm$",
            f"CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON {q(table)} FOR EACH ROW EXECUTE FUNCTION {fn}()",
        ]
        return statements(create), statements([f"DROP TRIGGER IF EXISTS {trigger} ON {q(table)}",
                                               f"DROP FUNCTION IF EXISTS {fn}()"])

    def helper_functions(self, up: Transform, down: Transform | None) -> tuple[list[Action], list[Action]]:
        if not (up.needs_try_json or (down is not None and down.needs_try_json)):
            return [], []
        return [Statement(TRY_JSON)], [Statement("DROP FUNCTION IF EXISTS zdm_try_json(text)")]

    # -- transactions, the lock budget and faults -------------------------------------------------
    def begin(self, lock_timeout_ms: int, *, autocommit: bool = False) -> list[str]:
        # SET LOCAL: the budget ends with the transaction, the app's sessions never see it. A session
        # whose statements each commit on their own (CONCURRENTLY) takes it for the session.
        scope = "" if autocommit else " LOCAL"
        return [f"SET{scope} lock_timeout = '{int(lock_timeout_ms)}ms'"]

    def batch_timeout(self, milliseconds: int) -> list[str]:
        return [f"SET LOCAL statement_timeout = '{int(milliseconds)}ms'"]

    def is_lock_timeout(self, exc: sa.exc.DBAPIError) -> bool:
        return getattr(exc.orig, "sqlstate", None) == "55P03"  # lock_not_available

    def connection_lost(self, exc: sa.exc.DBAPIError) -> bool:
        # psycopg reports a failed connect without a SQLSTATE (57P03: the server is starting up).
        return super().connection_lost(exc) or (
            isinstance(exc, sa.exc.OperationalError) and getattr(exc.orig, "sqlstate", None) in (None, "57P03"))

    def blockers(self, engine: sa.Engine, tables: list[str]) -> str:
        # The sessions holding a lock on the plan's tables (on any table for a raw step without one),
        # oldest transaction first: the one zdm queued behind is among them.
        quoted = [self.quote(name) for name in tables]
        with engine.connect() as connection:
            rows = connection.execute(sa.text(
                "SELECT a.pid, a.application_name, a.state, "
                "EXTRACT(EPOCH FROM now() - a.xact_start) AS open_s FROM pg_stat_activity a "
                "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() "
                "AND a.xact_start IS NOT NULL AND EXISTS (SELECT 1 FROM pg_locks l "
                "WHERE l.pid = a.pid AND l.granted AND l.locktype = 'relation' AND (cardinality(:tables) = 0 "
                "OR l.relation IN (SELECT to_regclass(t) FROM unnest(:tables) t))) "
                "ORDER BY a.xact_start LIMIT 3"
            ).bindparams(sa.bindparam("tables", type_=sa.ARRAY(sa.Text))), {"tables": quoted}).all()
        if not rows:
            return "the blocking session had finished by the time zdm looked"
        return "blocked by " + "; ".join(
            f"pid {r.pid} (application_name {r.application_name!r}, {r.state}, transaction open "
            f"{float(r.open_s):.1f} s)" for r in rows
        )

    @contextmanager
    def runner_lock(self, engine: sa.Engine) -> Iterator[Callable[[], None]]:
        """A session advisory lock, released by the server if the runner dies. It lives on an idle
        connection that the server may close (a restart, ``idle_session_timeout``,
        ``pg_terminate_backend``): the check yielded takes it again on a new session when it is free,
        and raises RunnerLockLost when another runner has it."""
        from zdm.state import RunnerBusy, RunnerLockLost

        with engine.connect() as connection:
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

