"""SQLite: AFTER triggers, and table rebuilds for what ALTER TABLE cannot do.

SQLite has one writer at a time, so "zero downtime" here is about both app versions working,
not about lock queues. Its ALTER TABLE cannot change a column's NULL-ability or default, so
those changes rebuild the table (copy, drop, rename) inside the phase's transaction, through
Alembic's batch mode, which knows how to carry constraints and indexes across.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from zdm.db import escape_binds, sql_text
from zdm.dialects import ColumnFacts, Dialect, Sync, UserTrigger, mentions, object_name


def rebuild_action(
    table: str,
    *,
    alter: dict[str, dict[str, Any]] | None = None,
    drop: list[str] | None = None,
    drop_indexes: list[str] | None = None,
    create_indexes: list[dict[str, Any]] | None = None,
    create_checks: list[dict[str, str]] | None = None,
    create_foreign_keys: list[dict[str, Any]] | None = None,
    drop_constraints: list[str] | None = None,
    renames: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A rebuild as a plain record: stored with the plan, run later against the live table."""
    return {"rebuild": {"table": table, "alter": alter or {}, "drop": drop or [],
                        "drop_indexes": drop_indexes or [], "create_indexes": create_indexes or [],
                        "create_checks": create_checks or [], "create_foreign_keys": create_foreign_keys or [],
                        "drop_constraints": drop_constraints or [], "renames": renames or {}}}


def describe_rebuild(spec: dict[str, Any], quote: Any) -> str:
    changes = [f"drop {quote(c)}" for c in spec["drop"]]
    for column, change in spec["alter"].items():
        parts = []
        if "nullable" in change:
            parts.append("NULL" if change["nullable"] else "NOT NULL")
        if "server_default" in change:
            default = change["server_default"]
            parts.append("no default" if default is None else f"DEFAULT {default}")
        changes.append(f"{quote(column)} {' '.join(parts)}")
    changes += [f"rename {quote(old)} to {quote(new)}" for old, new in spec.get("renames", {}).items()]
    changes += [f"drop constraint {quote(name)}" for name in spec.get("drop_constraints", [])]
    changes += [f"check {quote(c['name'])} ({c['condition']})" for c in spec.get("create_checks", [])]
    changes += [f"foreign key {quote(f['name'])} ({', '.join(map(quote, f['columns']))}) references "
                f"{quote(f['ref_table'])}" for f in spec.get("create_foreign_keys", [])]
    changes += [f"drop index {quote(name)}" for name in spec.get("drop_indexes", [])]
    for index in spec.get("create_indexes", []):
        kind = "unique index" if index["unique"] else "index"
        changes.append(f"{kind} {quote(index['name'])} ({', '.join(map(quote, index['columns']))})")
    return f"-- rebuild table {quote(spec['table'])} (copy, drop, rename): {'; '.join(changes)}"


def run_rebuild(connection: sa.Connection, spec: dict[str, Any]) -> None:
    """Rebuild the live table to the new shape, keeping what Alembic's batch mode would lose.

    Batch mode copies the table as SQLAlchemy reflects it, and reflection misses a column's
    COLLATE, a foreign key's ON DELETE / ON UPDATE, AUTOINCREMENT and expression indexes, reads
    an index's sort order as plain, and hands defaults and CHECK conditions to sa.text (a
    ``:word`` in them would become NULL); DROP TABLE takes the table's triggers along. zdm
    reflects the table itself, mends it from the table's own SQL, and puts back every index
    and trigger as it was written.
    """
    name, dropped = spec["table"], set(spec["drop"])
    gone = dropped | set(spec.get("renames", {}))  # names the new table no longer has
    table_sql = _master_sql(connection, "table", name)[name]
    triggers = _master_sql(connection, "trigger", name)
    indexes = _master_sql(connection, "index", name)
    with warnings.catch_warnings():  # expression indexes are not reflected: they are put back below
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        source = sa.Table(name, sa.MetaData(), autoload_with=connection,
                          listeners=[("column_reflect", _default_as_written)])
    _mend(source, table_sql, sa.inspect(connection).get_check_constraints(name))
    stale = [ix.name for ix in source.indexes if dropped & {c.name for c in ix.columns}]
    table_kwargs = {"sqlite_autoincrement": True} if "AUTOINCREMENT" in table_sql.upper() else {}
    operations = Operations(MigrationContext.configure(connection))
    # While the old table is gone, a modern RENAME re-checks every view naming it and fails;
    # the legacy rename does not. The views are checked once the new table stands, below.
    connection.exec_driver_sql("PRAGMA legacy_alter_table = ON")
    with operations.batch_alter_table(name, recreate="always", copy_from=source,
                                      table_kwargs=table_kwargs) as batch:
        for index in [*stale, *spec.get("drop_indexes", [])]:
            batch.drop_index(index)
        for column in spec["drop"]:
            batch.drop_column(column)
        for column, change in spec["alter"].items():
            kwargs: dict[str, Any] = {}
            if "nullable" in change:
                kwargs["nullable"] = change["nullable"]
            if "server_default" in change:
                default = change["server_default"]
                kwargs["server_default"] = sql_text(default) if default is not None else None
            batch.alter_column(column, **kwargs)
        for constraint in spec.get("drop_constraints", []):
            batch.drop_constraint(constraint)
        for old, new in spec.get("renames", {}).items():
            batch.alter_column(old, new_column_name=new)
        # Batch mode keys a renamed column by its old name: an index on it names that one.
        renamed_from = {new: old for old, new in spec.get("renames", {}).items()}
        for index in spec.get("create_indexes", []):
            columns = [renamed_from.get(column, column) for column in index["columns"]]
            batch.create_index(index["name"], columns, unique=index["unique"])
        for check in spec.get("create_checks", []):
            batch.create_check_constraint(check["name"], sql_text(check["condition"]))
        for key in spec.get("create_foreign_keys", []):
            batch.create_foreign_key(key["name"], key["ref_table"], key["columns"], key["ref_columns"],
                                     ondelete=key.get("on_delete"))
    connection.exec_driver_sql("PRAGMA legacy_alter_table = OFF")
    # Names the new table no longer has (a type change drops a column and gives its name to another:
    # what was written for that name fits again).
    gone -= {column["name"] for column in sa.inspect(connection).get_columns(name)}
    rebuilt = _master_sql(connection, "index", name)
    for index, sql in indexes.items():  # as written: an expression, a sort order, a collation
        changed_with_its_column = any(mentions(sql, column) for column in gone)
        if index in spec.get("drop_indexes", []) or changed_with_its_column or rebuilt.get(index) == sql:
            continue  # dropped on purpose, changed with its column, or kept as it was
        if index in rebuilt:
            connection.exec_driver_sql(f"DROP INDEX {connection.dialect.identifier_preparer.quote(index)}")
        connection.exec_driver_sql(sql)
    for trigger, sql in triggers.items():
        if trigger.startswith("zdm_") and any(mentions(sql, column) for column in gone):
            continue  # the plan's own trigger on a column its contract drops: its step drops it anyway
        _refuse_dropped_columns(sql, gone)
        connection.exec_driver_sql(sql)
    _check_views(connection)


def _refuse_dropped_columns(trigger_sql: str, dropped: set[str]) -> None:
    """SQLite's own DROP COLUMN refuses a column a trigger uses; a rebuild must too, or the app's
    next write would fail on the re-created trigger."""
    for column in dropped:
        if mentions(trigger_sql, column):
            name = re.search(r"TRIGGER\s+(?:IF\s+NOT\s+EXISTS\s+)?(\S+)", trigger_sql, re.I)
            raise RuntimeError(f"trigger {name.group(1) if name else '?'} uses column {column}: drop or change "
                               "the trigger first")


def _master_sql(connection: sa.Connection, kind: str, table: str) -> dict[str, str]:
    """name -> SQL of the table's objects of ``kind`` in sqlite_master (indexes SQLite made itself have none)."""
    rows = connection.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = :k AND tbl_name = :t "
                                      "AND sql IS NOT NULL"), {"k": kind, "t": table})
    return {name: sql for name, sql in rows}


def _mend(table: sa.Table, table_sql: str, checks: list[dict[str, Any]]) -> None:
    """Put back what reflection missed, read from the table's own CREATE TABLE."""
    for constraint in [c for c in table.constraints if isinstance(c, sa.CheckConstraint)]:
        table.constraints.remove(constraint)
    for check in checks:  # sa.text would read a ':word' in the condition as a bind parameter
        table.append_constraint(sa.CheckConstraint(sql_text(check["sqltext"]), name=check["name"]))
    actions = {}
    for item in _definition_items(table_sql):
        head = item.split(None, 1)[0].strip('"`[]')
        if head.upper() in ("CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"):
            keys = re.search(r"FOREIGN\s+KEY\s*\(([^)]*)\)", item, re.I)
            if keys:
                actions[frozenset(k.strip().strip('"`[]') for k in keys.group(1).split(","))] = item
            continue
        if head in table.c:
            collation = _collation(item)
            if collation and hasattr(table.c[head].type, "collation"):
                table.c[head].type.collation = collation
            if re.search(r"\bREFERENCES\b", item, re.I):
                actions[frozenset([head])] = item
    for key in table.foreign_key_constraints:
        item = actions.get(frozenset(key.column_keys), "")
        for event in ("DELETE", "UPDATE"):
            action = re.search(rf"\bON\s+{event}\s+(SET\s+NULL|SET\s+DEFAULT|CASCADE|RESTRICT|NO\s+ACTION)",
                               item, re.I)
            if action:
                setattr(key, f"on{event.lower()}", " ".join(action.group(1).upper().split()))


def _collation(column_definition: str) -> str | None:
    found = re.search(r"\bCOLLATE\s+(\w+|\"[^\"]+\")", column_definition, re.I)
    return found.group(1).strip('"') if found else None


def _definition_items(table_sql: str) -> list[str]:
    """The column definitions and table constraints of a CREATE TABLE, split at top-level commas."""
    body = table_sql[table_sql.index("(") + 1: table_sql.rindex(")")]
    items, current, depth, quote = [], [], 0, ""
    for char in body:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"`[":
            quote = "]" if char == "[" else char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    return [*items, "".join(current).strip()]


def _default_as_written(_inspector: Any, _table: sa.Table, column: dict[str, Any]) -> None:
    """Reflection wraps a default in ``sa.text``, which would turn its ``:word`` into NULL."""
    if isinstance(column.get("default"), str):
        column["default"] = escape_binds(column["default"])


def _check_views(connection: sa.Connection) -> None:
    """A view using a dropped column must fail the phase, as DROP COLUMN does on PostgreSQL."""
    views = connection.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'view'")).scalars().all()
    preparer = connection.dialect.identifier_preparer
    for view in views:
        try:
            connection.exec_driver_sql(f"SELECT * FROM {preparer.quote(view)} LIMIT 0")
        except sa.exc.OperationalError as exc:
            raise RuntimeError(f"view {view!r} depends on the change: {exc.orig}") from None


class SQLiteDialect(Dialect):
    name = "sqlite"

    def sync_triggers(self, sync: Sync) -> tuple[list[str], list[str]]:
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
                refuse = f"BEGIN SELECT RAISE(ABORT, 'NOT NULL constraint failed: {sync.table}.{sync.a}'); END"
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
        create = [
            f"CREATE TRIGGER {names['ins']} AFTER INSERT ON {table} BEGIN {' '.join(insert_body)} END",
            f"CREATE TRIGGER {names['a']} AFTER UPDATE OF {q(sync.a)} ON {table} "
            f"WHEN {new_a} IS NOT {old_a} AND {new_b} IS NOT {up} "
            f"BEGIN UPDATE {table} SET {q(sync.b)} = {up} WHERE {row}; END",
            *create_b,
        ]
        made = [name for name in names.values() if any(f"TRIGGER {name} " in sql for sql in create)]
        return create, [f"DROP TRIGGER IF EXISTS {name}" for name in reversed(made)]

    def fill_triggers(self, name: str, table: str, key: tuple[str, ...], column: str, value: str
                      ) -> tuple[list[str], list[str]]:
        q = self.quote
        row = " AND ".join(f"{q(k)} = NEW.{q(k)}" for k in key)
        names = {part: q(object_name("zdm_tg", name, part)) for part in ("ins", "upd")}
        fill = f"BEGIN UPDATE {q(table)} SET {q(column)} = {value} WHERE {row}; END"
        create = [
            f"CREATE TRIGGER {names['ins']} AFTER INSERT ON {q(table)} WHEN NEW.{q(column)} IS NULL {fill}",
            f"CREATE TRIGGER {names['upd']} AFTER UPDATE OF {q(column)} ON {q(table)} "
            f"WHEN NEW.{q(column)} IS NULL {fill}",
        ]
        return create, [f"DROP TRIGGER IF EXISTS {names[part]}" for part in ("upd", "ins")]

    def null_guard(self, name: str, table: str, column: str) -> tuple[list[str], list[str]]:
        """(create, drop) triggers refusing NULL in ``column`` as NOT NULL would: SQLite's twin of
        PostgreSQL's NOT VALID check, which holds for new writes until contract sets NOT NULL."""
        q = self.quote
        names = {part: q(object_name("zdm_tg", name, part)) for part in ("nni", "nnu")}
        refuse = f"BEGIN SELECT RAISE(ABORT, 'NOT NULL constraint failed: {table}.{column}'); END"
        create = [
            f"CREATE TRIGGER {names['nni']} BEFORE INSERT ON {q(table)} WHEN NEW.{q(column)} IS NULL {refuse}",
            f"CREATE TRIGGER {names['nnu']} BEFORE UPDATE OF {q(column)} ON {q(table)} "
            f"WHEN NEW.{q(column)} IS NULL {refuse}",
        ]
        return create, [f"DROP TRIGGER IF EXISTS {n}" for n in reversed(names.values())]

    def drop_column(self, table: str, name: str) -> list[Any]:
        # Native DROP COLUMN refuses indexed or constrained columns; a rebuild does not.
        return [rebuild_action(table, drop=[name])]

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
        generated = connection.exec_driver_sql(f"PRAGMA table_xinfo({self.quote(table)})").all()
        table_sql = _master_sql(connection, "table", table)[table]
        for item in _definition_items(table_sql):
            name = item.split(None, 1)[0].strip('"`[]')
            if any(g[1] == name and g[6] in (2, 3) for g in generated) and mentions(item.split(None, 1)[1], column):
                facts.dependents.append(f"generated column {name}")
        for name, sql in _master_sql(connection, "trigger", table).items():
            if not name.startswith("zdm_"):
                facts.triggers.append(UserTrigger(name, False, mentions(sql, column)))
        return facts

    def column_collations(self, connection: sa.Connection, table: str) -> dict[str, str]:
        """Read from the table's SQL: SQLite's reflection does not report a column's COLLATE."""
        collations = {}
        for item in _definition_items(_master_sql(connection, "table", table)[table]):
            if collation := _collation(item):
                collations[item.split(None, 1)[0].strip('"`[]')] = collation
        return collations

    def index_definitions(self, connection: sa.Connection, table: str) -> dict[str, str]:
        rows = connection.execute(sa.text(  # an index behind a UNIQUE constraint has no SQL: it is plain
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :t AND sql IS NOT NULL"),
            {"t": table})
        return {name: sql for name, sql in rows}

    def zdm_objects(self, connection: sa.Connection) -> list[str]:
        rows = connection.execute(
            sa.text("SELECT name FROM sqlite_master WHERE name LIKE 'zdm\\_%' ESCAPE '\\' "
                    "AND type IN ('trigger', 'index', 'view')")
        )
        return sorted(r[0] for r in rows)
