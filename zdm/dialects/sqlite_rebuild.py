"""SQLite table rebuilds, for what its ALTER TABLE cannot do.

Its ALTER TABLE cannot change a column's NULL-ability, default or type, and its DROP COLUMN
refuses indexed or constrained columns, so those changes rebuild the table inside the phase's
transaction, following SQLite's own recipe (sqlite.org/lang_altertable.html, "other kinds of
table schema changes"). The new CREATE TABLE is the old one's own text with only the requested
changes edited in, so what a change does not touch stays as it was written; CARRIED lists what a
rebuild keeps, REFUSED what it refuses before anything runs. No library reads SQLite's CREATE
TABLE and gives back its own text (pglast stops at AUTOINCREMENT, WITHOUT ROWID and [brackets];
SQLAlchemy's reflection re-renders), hence the small reader of SQLite's grammar below.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Any

import sqlalchemy as sa

from zdm.actions import Rebuild
from zdm.dialects import mint, object_name
from zdm.introspect import describe_reference, referencing_foreign_keys


def describe_rebuild(spec: Rebuild, quote: Any) -> str:
    changes = [f"drop {quote(c)}" for c in spec.drop]
    for column, change in spec.alter.items():
        parts = []
        if "type" in change:
            source = f" (values from {quote(change['values_from'])})" if "values_from" in change else ""
            parts.append(f"{change['type']}{source}")
        if "nullable" in change:
            parts.append("NULL" if change["nullable"] else "NOT NULL")
        if "server_default" in change:
            default = change["server_default"]
            parts.append("no default" if default is None else f"DEFAULT {default}")
        changes.append(f"{quote(column)} {' '.join(parts)}")
    changes += [f"rename {quote(old)} to {quote(new)}" for old, new in spec.renames.items()]
    changes += [f"drop constraint {quote(name)}" for name in spec.drop_constraints]
    changes += [f"check {quote(c['name'])} ({c['condition']})" for c in spec.create_checks]
    changes += [f"foreign key {quote(f['name'])} ({', '.join(map(quote, f['columns']))}) references "
                f"{quote(f['ref_table'])}" for f in spec.create_foreign_keys]
    changes += [f"drop index {quote(name)}" for name in spec.drop_indexes]
    for index in spec.create_indexes:
        kind = "primary key" if index.get("primary_key") else "unique constraint" if index.get("constraint") \
            else "unique index" if index["unique"] else "index"
        changes.append(f"{kind} {quote(index['name'])} ({', '.join(map(quote, index['columns']))})")
    return f"-- rebuild table {quote(spec.table)} (copy, drop, rename): {'; '.join(changes)}"


#: Everything a rebuild carries from the old table to the new one; tests/test_sqlite_rebuild.py
#: checks each item after rebuilds driven through the runner. The new CREATE TABLE is the old
#: one's own text with only the requested changes edited in, so the first group rides along
#: as written; run_rebuild copies, restores or checks the rest.
CARRIED = (
    # in the CREATE TABLE text, as written
    "column names and order",
    "declared types as written (so each column's affinity, and INTEGER PRIMARY KEY as the rowid alias)",
    "COLLATE",
    "defaults as written: literals, expressions, CURRENT_TIMESTAMP, ':word' inside strings",
    "NOT NULL (with its constraint name and ON CONFLICT clause)",
    "PRIMARY KEY: single, composite, ASC/DESC, ON CONFLICT",
    "AUTOINCREMENT",
    "UNIQUE constraints, named or not, as constraints (not as unique indexes)",
    "CHECK constraints, named and unnamed, on a column or on the table",
    "FOREIGN KEYs with ON DELETE, ON UPDATE, MATCH and DEFERRABLE",
    "generated columns, VIRTUAL and STORED",
    "table options WITHOUT ROWID and STRICT",
    "comments and layout inside the CREATE TABLE",
    # copied, restored or checked by run_rebuild
    "the rows: every value byte-exact whatever its storage class, and each row's rowid",
    "the sqlite_sequence value of an AUTOINCREMENT table (a deleted highest id is not reused)",
    "indexes exactly as written (partial, expression, DESC, COLLATE), under their names",
    "triggers on the table, exactly as written",
    "ANALYZE statistics of the table and its indexes (sqlite_stat1, sqlite_stat4)",
    "views using the table: still work (checked)",
    "foreign keys of other tables referencing the table: still resolve, no new violation "
    "(PRAGMA foreign_key_check, before and after, in the same transaction)",
)

#: What a rebuild refuses, before anything runs (at compile time, through check_rebuild, and
#: again at the start of run_rebuild): it cannot carry these. A dropped column takes along what
#: PostgreSQL's DROP COLUMN takes: its indexes and the UNIQUE, CHECK and FOREIGN KEY constraints
#: that name it; what else uses it is refused.
REFUSED = (
    "a connection with PRAGMA foreign_keys=ON: dropping the old table would run ON DELETE actions",
    "a virtual table, or the shadow table of one: its content lives in its module",
    "a table whose columns are named rowid, _rowid_ and oid: its row ids cannot be read to be copied",
    "a CREATE TABLE zdm cannot read",
    "dropping a column that is part of the primary key",
    "dropping a column a generated column uses",
    "dropping a column a trigger on the table uses (SQLite's own DROP COLUMN refuses it too)",
    "dropping a column other tables' foreign keys reference (they would fail with 'foreign key mismatch')",
)


class RebuildRefused(ValueError):
    """A rebuild would lose something it cannot carry. Raised before anything runs."""


def check_rebuild(connection: sa.Connection, spec: Rebuild) -> None:
    """Refuse, at compile time, a rebuild that cannot carry the live table.

    The live table is the one before the plan runs, so what does not exist yet (a column an
    earlier step adds, zdm's own triggers) is not judged here; run_rebuild judges it again.
    """
    if problem := rebuild_refusal(connection, spec, strict=False):
        raise RebuildRefused(problem)


def rebuild_refusal(connection: sa.Connection, spec: Rebuild, *, strict: bool = True) -> str | None:
    """Why ``spec`` cannot be run on the live table, in one line; None when it can.

    ``strict``: everything the spec names must exist (at run time); otherwise what is missing
    is skipped (at compile time, before the plan's earlier steps ran).
    """
    name = spec.table
    if connection.exec_driver_sql("PRAGMA foreign_keys").scalar():
        return (f"cannot rebuild table {name}: this connection has PRAGMA foreign_keys=ON, under which dropping "
                "the old copy would run other tables' ON DELETE actions; run zdm with foreign keys off (SQLite's "
                "default) and let the app turn them on in its own connections")
    sql = _master_sql(connection, "table", name).get(name)
    if sql is None:
        return f"cannot rebuild table {name}: there is no such table" if strict else None
    aside = object_name("zdm_rebuild", mint(name))
    if holder := connection.execute(sa.text("SELECT type FROM sqlite_master WHERE lower(name) = lower(:n)"),
                                    {"n": aside}).scalar():
        return (f"cannot rebuild table {name}: zdm moves it aside as {aside} while it copies the rows, and a "
                f"{holder} has that name; rename or drop that {holder} first")
    if _tokens(sql)[1].word == "VIRTUAL":
        return (f"cannot rebuild table {name}: it is a virtual table, whose content lives in its module; "
                "change it by hand")
    if _table_kind(connection, name) == "shadow":
        return (f"cannot rebuild table {name}: it is the shadow table of a virtual table; "
                "change the virtual table by hand")
    try:
        table = _read_table(sql)
    except _Unreadable as exc:
        return f"cannot rebuild table {name}: zdm cannot read its CREATE TABLE ({exc}); change it by hand"
    if table.has_rowid and not set(_ROWID_NAMES) - _lower(_columns(connection, name, stored=False)):
        return (f"cannot rebuild table {name}: its columns named rowid, _rowid_ and oid hide the row ids, which "
                "a rebuild must copy; rename one of them first")
    references = referencing_foreign_keys(connection, name) if spec.drop else []
    for column in spec.drop:
        found = table.column(column)
        if found is None:
            if strict:
                return f"cannot rebuild table {name}: it has no column {column}"
            continue
        if found.of("primary") or any(column.lower() in _lower(c.columns) for c in table.constraints("primary")):
            return f"cannot drop {name}.{column}: it is part of the primary key"
        for other in table.columns:
            if other is not found and any(column.lower() in _names(c.tokens) for c in other.of("generated")):
                return (f"cannot drop {name}.{column}: generated column {other.name} uses it; drop or change "
                        f"{other.name} first")
        for trigger, trigger_sql in _master_sql(connection, "trigger", name).items():
            # zdm's own triggers belong to the plan being run, whose steps drop them
            if not trigger.startswith("zdm_") and column.lower() in _names(_tokens(trigger_sql)):
                return f"trigger {trigger} uses column {column}: drop or change the trigger first"
        for key in references:
            if column.lower() in _lower(key["referred_columns"]):
                return (f"cannot drop {name}.{column}: {describe_reference(key, name)}, and would fail with "
                        "'foreign key mismatch'; drop that foreign key first, or keep the column")
    if strict:
        for column in [*spec.alter, *spec.renames]:
            if table.column(column) is None:
                return f"cannot rebuild table {name}: it has no column {column}"
        names = {(c.name or "").lower() for c in table.all_constraints()}
        for constraint in spec.drop_constraints:
            if constraint.lower() not in names:
                return f"cannot rebuild table {name}: it has no constraint {constraint}"
    return None


def run_rebuild(connection: sa.Connection, spec: Rebuild) -> None:
    """Rebuild the live table into the new shape, carrying everything in CARRIED.

    SQLite's own recipe, inside the phase's transaction: the old table is renamed aside (with
    legacy_alter_table, so that nothing referring to it follows the rename), the new one is
    created from the old one's CREATE TABLE with only the spec's changes edited in, the rows are
    copied with their rowids, the old table is dropped, and its indexes and triggers are put
    back as they were written. Renames run last, as SQLite's own RENAME COLUMN, which also
    rewrites the indexes, triggers and views that use the column. Then the table's
    sqlite_sequence and statistics are restored, and views and foreign keys are checked: a
    problem fails the phase, and its transaction rolls back.
    """
    if problem := rebuild_refusal(connection, spec):
        raise RebuildRefused(problem)
    name, q = spec.table, connection.dialect.identifier_preparer.quote
    table = _read_table(_master_sql(connection, "table", name)[name])
    dropped = _lower(spec.drop)
    new_sql = _new_table_sql(table, spec, q)
    indexes = [sql for index, sql in _master_sql(connection, "index", name).items()
               if index not in spec.drop_indexes and not _index_names(sql) & dropped]
    triggers = [sql for trigger, sql in _master_sql(connection, "trigger", name).items()
                if not (trigger.startswith("zdm_") and _names(_tokens(sql)) & dropped)]  # the plan's own, going
    checked = [name, *sorted({key["table"] for key in referencing_foreign_keys(connection, name)} - {name})]
    problems, broken_views = _foreign_key_problems(connection, checked), _broken_views(connection)
    sequence, statistics = _sequence(connection, name), _statistics(connection, name)
    columns_before = _column_facts(connection, name)

    legacy = connection.exec_driver_sql("PRAGMA legacy_alter_table").scalar()
    connection.exec_driver_sql("PRAGMA legacy_alter_table = ON")
    try:
        sources = {column: change["values_from"] for column, change in spec.alter.items()
                   if "values_from" in change}
        _copy(connection, name, new_sql, table.has_rowid, dropped, sources)
        for sql in [*indexes, *triggers]:  # as written: an expression, a sort order, a collation
            connection.exec_driver_sql(sql)
    finally:  # a connection setting, which a rolled back transaction would not undo
        connection.exec_driver_sql(f"PRAGMA legacy_alter_table = {int(legacy or 0)}")
    for old, new in spec.renames.items():
        connection.exec_driver_sql(f"ALTER TABLE {q(name)} RENAME COLUMN {q(old)} TO {q(new)}")
    for index in spec.create_indexes:
        if not index.get("constraint"):  # a UNIQUE constraint is part of the new CREATE TABLE
            holder = sa.Table(name, sa.MetaData(), *[sa.Column(c) for c in index["columns"]])
            connection.execute(sa.schema.CreateIndex(
                sa.Index(index["name"], *[holder.c[c] for c in index["columns"]], unique=index["unique"])))
    _restore_sequence(connection, name, sequence)
    _restore_statistics(connection, name, statistics)

    if views := sorted(_broken_views(connection).items() - broken_views.items()):
        raise RuntimeError(f"view {views[0][0]!r} depends on the change: {views[0][1]}")
    if new_problems := _foreign_key_problems(connection, checked) - problems:
        raise RuntimeError(f"after the rebuild of {name}, PRAGMA foreign_key_check reports "
                           f"{_describe_problems(new_problems)}: the phase is rolled back")
    if changed := _unexpected_changes(columns_before, _column_facts(connection, name), spec):
        raise RuntimeError(f"the rebuild of {name} changed column {changed} (a zdm bug, please report it): "
                           "the phase is rolled back")


def _copy(connection: sa.Connection, name: str, new_sql: str, has_rowid: bool, dropped: set[str],
          sources: dict[str, str]) -> None:
    """Steps of SQLite's recipe: the old table goes aside, the new one takes its name and every
    row (with its rowid, so rowids a row is known by stay the same), the old one is dropped.
    ``sources``: a column that takes its values from another one (a type change)."""
    q = connection.dialect.identifier_preparer.quote
    copied = [column for column in _columns(connection, name) if column.lower() not in dropped]
    values = [q(sources.get(column, column)) for column in copied]
    if has_rowid:
        hidden = _lower(_columns(connection, name, stored=False))
        copied.insert(0, next(alias for alias in _ROWID_NAMES if alias not in hidden))
        values.insert(0, q(copied[0]))
    columns, aside = ", ".join(map(q, copied)), q(object_name("zdm_rebuild", mint(name)))  # free: rebuild_refusal
    connection.exec_driver_sql(f"ALTER TABLE {q(name)} RENAME TO {aside}")
    connection.exec_driver_sql(new_sql)
    # OR ABORT: a column's own ON CONFLICT IGNORE / REPLACE must not skip or change a row here.
    select = ", ".join(values)
    connection.exec_driver_sql(f"INSERT OR ABORT INTO {q(name)} ({columns}) SELECT {select} FROM {aside}")
    counts = [connection.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar() for t in (aside, q(name))]
    if counts[0] != counts[1]:
        raise RuntimeError(f"the rebuild of {name} copied {counts[1]} of its {counts[0]} rows")
    connection.exec_driver_sql(f"DROP TABLE {aside}")


def _column_facts(connection: sa.Connection, table: str) -> list[tuple[Any, ...]]:
    """(name, declared type, notnull, default, pk, hidden) of each column, as SQLite reads them."""
    return [tuple(row) for row in connection.execute(sa.text(
        'SELECT name, type, "notnull", dflt_value, pk, hidden FROM pragma_table_xinfo(:t)'), {"t": table})]


def _unexpected_changes(before: list[tuple[Any, ...]], after: list[tuple[Any, ...]], spec: Rebuild
                        ) -> str | None:
    """A column whose definition the rebuild changed beyond what ``spec`` asked: a guard on the text edits."""
    renames = {old.lower(): new for old, new in spec.renames.items()}
    nullable = {column.lower(): change["nullable"] for column, change in spec.alter.items() if "nullable" in change}
    retyped = {column.lower(): change["type"] for column, change in spec.alter.items() if "type" in change}
    # a new default is checked by SQLite's own parser; it reports it in its own way
    new_default = {renames.get(column.lower(), column).lower()
                   for column, change in spec.alter.items() if "server_default" in change}
    keyed = {column.lower(): number for index in spec.create_indexes if index.get("primary_key")
             for number, column in enumerate(index["columns"], start=1)}  # pragma's pk: place in the key
    expected = [(renames.get(name.lower(), name), retyped.get(name.lower(), declared),
                 int(not nullable[name.lower()]) if name.lower() in nullable else notnull, default,
                 keyed.get(name.lower(), pk), hidden)
                for name, declared, notnull, default, pk, hidden in before if name.lower() not in _lower(spec.drop)]

    def compared(facts: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        return facts and (*facts[:3], None if facts[0].lower() in new_default else facts[3], *facts[4:])

    for want, got in zip_longest(expected, after):
        if compared(want) != compared(got):
            return f"{(want or got)[0]}: {got} where {want} was expected"
    return None


_ROWID_NAMES = ("rowid", "_rowid_", "oid")


def _master_sql(connection: sa.Connection, kind: str, table: str) -> dict[str, str]:
    """name -> SQL of the table's objects of ``kind`` in sqlite_master (indexes SQLite made itself have none)."""
    rows = connection.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = :k AND tbl_name = :t "
                                      "AND sql IS NOT NULL"), {"k": kind, "t": table})
    return {name: sql for name, sql in rows}


def _columns(connection: sa.Connection, table: str, *, stored: bool = True) -> list[str]:
    """The table's columns in order; ``stored``: without generated ones, which are computed, not copied."""
    rows = connection.execute(sa.text("SELECT name, hidden FROM pragma_table_xinfo(:t)"), {"t": table})
    return [name for name, hidden in rows if hidden == 0 or not stored]


def _table_kind(connection: sa.Connection, table: str) -> str | None:
    """'table', 'view', 'shadow' or 'virtual' (PRAGMA table_list, SQLite 3.37); None where unknown."""
    try:
        row = connection.execute(sa.text("SELECT type FROM pragma_table_list(:t) WHERE schema = 'main'"),
                                 {"t": table}).first()
    except sa.exc.OperationalError:  # older SQLite
        return None
    return row[0] if row else None


def _sequence(connection: sa.Connection, table: str) -> int | None:
    """The AUTOINCREMENT counter: the highest id ever given, which a deleted row does not lower."""
    if not _master_sql(connection, "table", "sqlite_sequence"):
        return None
    return connection.execute(sa.text("SELECT seq FROM sqlite_sequence WHERE name = :t"), {"t": table}).scalar()


def _restore_sequence(connection: sa.Connection, table: str, sequence: int | None) -> None:
    """The copy set the counter to the highest id left; put back the highest id ever given."""
    if sequence is None:
        return
    values = {"t": table, "seq": sequence}
    if not connection.execute(sa.text("UPDATE sqlite_sequence SET seq = :seq WHERE name = :t"), values).rowcount:
        connection.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :seq)"), values)


_STATISTICS = ("sqlite_stat1", "sqlite_stat4")


def _statistics(connection: sa.Connection, table: str) -> dict[str, list[dict[str, Any]]]:
    """ANALYZE's rows for the table, which the query planner reads."""
    found = {}
    for stat in _STATISTICS:
        if _master_sql(connection, "table", stat):
            rows = connection.execute(sa.text(f"SELECT * FROM {stat} WHERE tbl = :t"), {"t": table})
            found[stat] = [dict(row._mapping) for row in rows]
    return found


def _restore_statistics(connection: sa.Connection, table: str, statistics: dict[str, list[dict[str, Any]]]) -> None:
    """Put the statistics back, for the table and for the indexes it still has."""
    indexes = set(connection.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = :t"),
                                     {"t": table}).scalars())
    for stat, rows in statistics.items():
        connection.execute(sa.text(f"DELETE FROM {stat} WHERE tbl = :t"), {"t": table})
        kept = [row for row in rows if row["idx"] is None or row["idx"] in indexes]
        if kept:
            names = list(kept[0])
            connection.execute(sa.text(f"INSERT INTO {stat} ({', '.join(names)}) "
                                       f"VALUES ({', '.join(':' + n for n in names)})"), kept)


def _foreign_key_problems(connection: sa.Connection, tables: list[str]) -> Counter[tuple[Any, ...]]:
    """What PRAGMA foreign_key_check reports for ``tables``: rows whose parent row is missing, and
    'foreign key mismatch' where a foreign key no longer matches a key of its parent table."""
    found: Counter[tuple[Any, ...]] = Counter()
    for table in tables:
        try:
            rows = connection.execute(sa.text("SELECT \"table\", rowid, parent FROM pragma_foreign_key_check(:t)"),
                                      {"t": table}).all()
        except sa.exc.OperationalError as exc:  # "foreign key mismatch - "child" referencing "parent""
            found[("mismatch", str(exc.orig))] += 1
            continue
        found.update(("missing", child, parent, rowid) for child, rowid, parent in rows)
    return found


def _describe_problems(problems: Counter[tuple[Any, ...]]) -> str:
    described = []
    for problem in sorted(problems, key=str)[:5]:
        if problem[0] == "mismatch":
            described.append(str(problem[1]))
        else:
            _, child, parent, rowid = problem
            described.append(f"row {rowid} of {child} references a missing row of {parent}")
    more = f" (and {sum(problems.values()) - len(described)} more)" if sum(problems.values()) > len(described) else ""
    return "; ".join(described) + more


def _broken_views(connection: sa.Connection) -> dict[str, str]:
    """Views that fail to read, with why: after a rebuild, one that used a dropped column."""
    broken = {}
    for view in connection.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'view'")).scalars().all():
        try:
            connection.exec_driver_sql(f"SELECT * FROM {connection.dialect.identifier_preparer.quote(view)} LIMIT 0")
        except sa.exc.OperationalError as exc:
            broken[view] = str(exc.orig)
    return broken


# -- reading SQLite's CREATE TABLE ---------------------------------------------------------------
# No parser at hand reads SQLite's dialect whole (pglast stops at AUTOINCREMENT, WITHOUT ROWID,
# [brackets]...), and a rebuild must keep the text exactly, so this is a small reader of
# SQLite's own grammar (sqlite.org/lang_createtable.html) over tokens that keep their offsets:
# an edit replaces only the tokens it means to change.

_TOKEN = re.compile(r"""
      (?P<space>\s+)
    | (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
    | (?P<blob>[xX]'[^']*')
    | (?P<string>'(?:[^']|'')*')
    | (?P<quoted>"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\])
    | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<word>[^\W\d][\w$]*)
    | (?P<variable>[?:@$][\w$]*)
    | (?P<punct>\|\||<<|>>|<=|>=|==|!=|<>|->>|->|.)
""", re.VERBOSE | re.DOTALL)

#: The words that end a column's type and start one of its constraints.
_COLUMN_CONSTRAINTS = frozenset({"CONSTRAINT", "PRIMARY", "NOT", "NULL", "UNIQUE", "CHECK", "DEFAULT", "COLLATE",
                                 "REFERENCES", "GENERATED", "AS"})
_TABLE_CONSTRAINTS = frozenset({"CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"})


class _Unreadable(ValueError):
    """SQL that this reader does not follow."""


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.text)

    @property
    def word(self) -> str:
        """The keyword this token may be, upper case; '' for anything but a bare word."""
        return self.text.upper() if self.kind == "word" else ""

    @property
    def identifier(self) -> str:
        """The name this token spells (SQLite also takes a 'string' for a name)."""
        if self.kind == "word":
            return self.text
        if self.kind in ("quoted", "string"):
            close = self.text[-1]
            return self.text[1:-1] if close == "]" else self.text[1:-1].replace(close * 2, close)
        raise _Unreadable(f"{self.text!r} is not a name")


def _tokens(sql: str) -> list[_Token]:
    """The significant tokens of ``sql`` (no spaces or comments), each with its offset."""
    return [_Token(str(m.lastgroup), m.group(), m.start()) for m in _TOKEN.finditer(sql)
            if m.lastgroup not in ("space", "comment")]


def _names(tokens: list[_Token]) -> set[str]:
    """The names (lower case) that SQL refers to: bare and quoted identifiers, less the names of
    functions and collations. Keywords come along too, which only ever errs on the side of caution."""
    found = set()
    for k, token in enumerate(tokens):
        if token.kind == "quoted" or (token.kind == "word" and not (k + 1 < len(tokens) and tokens[k + 1].text == "(")
                                      and not (k and tokens[k - 1].word == "COLLATE")):
            found.add(token.identifier.lower())
    return found


def _lower(names: list[str]) -> set[str]:
    return {name.lower() for name in names}


def _index_names(index_sql: str) -> set[str]:
    """The names an index's columns, expressions and WHERE clause use."""
    tokens = _tokens(index_sql)
    on = next(k for k, token in enumerate(tokens) if token.word == "ON")
    return _names(tokens[next(k for k in range(on, len(tokens)) if tokens[k].text == "("):])


def _split(tokens: list[_Token]) -> list[list[_Token]]:
    """Tokens split at the commas outside parentheses."""
    parts: list[list[_Token]] = [[]]
    depth = 0
    for token in tokens:
        if token.kind == "punct":
            depth += {"(": 1, ")": -1}.get(token.text, 0)
            if token.text == "," and depth == 0:
                parts.append([])
                continue
        parts[-1].append(token)
    return parts


class _Cursor:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens, self.i = tokens, 0

    def peek(self, ahead: int = 0) -> _Token | None:
        return self.tokens[self.i + ahead] if self.i + ahead < len(self.tokens) else None

    def word(self, ahead: int = 0) -> str:
        token = self.peek(ahead)
        return token.word if token else ""

    def text(self) -> str:
        token = self.peek()
        return token.text if token else ""

    def take(self, *words: str) -> _Token:
        token = self.peek()
        if token is None or (words and token.word not in words):
            raise _Unreadable(f"expected {' or '.join(words) or 'more'} at {token.text if token else 'the end'!r}")
        self.i += 1
        return token

    def accept(self, *words: str) -> bool:
        if self.word() in words:
            self.i += 1
            return True
        return False

    def group(self) -> list[_Token]:
        """A parenthesised group, parentheses included."""
        first, depth = self.i, 0
        if self.text() != "(":
            raise _Unreadable(f"expected '(' at {self.text() or 'the end'!r}")
        while (token := self.peek()) is not None:
            self.i += 1
            if token.kind == "punct":
                depth += {"(": 1, ")": -1}.get(token.text, 0)
            if depth == 0:
                return self.tokens[first:self.i]
        raise _Unreadable("unbalanced parentheses")

    def conflict(self) -> None:
        if self.word() == "ON" and self.word(1) == "CONFLICT":
            self.i += 2
            self.take()

    def references(self) -> None:
        """The rest of a foreign key clause, after REFERENCES."""
        self.take()
        if self.text() == "(":
            self.group()
        while True:
            if self.accept("ON"):
                self.take("DELETE", "UPDATE", "INSERT")
                if self.accept("SET"):
                    self.take("NULL", "DEFAULT")
                elif self.accept("NO"):
                    self.take("ACTION")
                else:
                    self.take("CASCADE", "RESTRICT")
            elif self.accept("MATCH"):
                self.take()
            elif self.word() == "DEFERRABLE" or (self.word() == "NOT" and self.word(1) == "DEFERRABLE"):
                self.i += 1 if self.word() == "DEFERRABLE" else 2
                if self.accept("INITIALLY"):
                    self.take("DEFERRED", "IMMEDIATE")
            else:
                return


class _Span:
    """Something read from the CREATE TABLE text: where its tokens start and end."""

    tokens: list[_Token]

    @property
    def start(self) -> int:
        return self.tokens[0].start

    @property
    def end(self) -> int:
        return self.tokens[-1].end


@dataclass
class _Clause(_Span):
    """One constraint: of a column (kind 'not null', 'default', 'collate'...) or of the table."""

    kind: str
    name: str | None  # CONSTRAINT name
    tokens: list[_Token]  # CONSTRAINT name included
    core: list[_Token]  # from the constraint's keyword on
    columns: list[str] = field(default_factory=list)  # a table PRIMARY KEY, UNIQUE or FOREIGN KEY's


def _constraint(cursor: _Cursor, table: bool) -> _Clause:
    """The next constraint: of the table when ``table``, else of a column."""
    first, name = cursor.i, None
    if cursor.accept("CONSTRAINT"):
        name = cursor.take().identifier
    core, keyword, columns = cursor.i, cursor.word(), []
    if cursor.accept("PRIMARY"):
        cursor.take("KEY")
        if table:
            columns = _column_list(cursor.group())
        cursor.accept("ASC", "DESC")
        cursor.conflict()
        cursor.accept("AUTOINCREMENT")
        kind = "primary"
    elif cursor.accept("UNIQUE"):
        if table:
            columns = _column_list(cursor.group())
        cursor.conflict()
        kind = "unique"
    elif cursor.accept("CHECK"):
        cursor.group()
        kind = "check"
    elif table and cursor.accept("FOREIGN"):
        cursor.take("KEY")
        columns = _column_list(cursor.group())
        cursor.take("REFERENCES")
        cursor.references()
        kind = "foreign"
    elif table:
        raise _Unreadable(f"unexpected {cursor.text() or 'end'!r} in a table constraint")
    elif keyword == "NOT" and cursor.word(1) == "NULL":
        cursor.i += 2
        cursor.conflict()
        kind = "not null"
    elif cursor.accept("NULL"):
        cursor.conflict()
        kind = "null"
    elif cursor.accept("DEFAULT"):
        if cursor.text() == "(":
            cursor.group()
        else:
            if cursor.text() in ("+", "-"):
                cursor.take()
            cursor.take()
        kind = "default"
    elif cursor.accept("COLLATE"):
        cursor.take()
        kind = "collate"
    elif cursor.accept("REFERENCES"):
        cursor.references()
        kind = "references"
    elif keyword in ("GENERATED", "AS"):
        if cursor.accept("GENERATED"):
            cursor.take("ALWAYS")
        cursor.take("AS")
        cursor.group()
        cursor.accept("STORED", "VIRTUAL")
        kind = "generated"
    else:
        raise _Unreadable(f"unexpected {cursor.text() or 'end'!r} in a column definition")
    return _Clause(kind, name, cursor.tokens[first:cursor.i], cursor.tokens[core:cursor.i], columns)


def _starts_constraint(cursor: _Cursor) -> bool:
    """Whether a column constraint starts here (GENERATED and AS are also plain words that may
    name a type)."""
    word = cursor.word()
    if word == "GENERATED":
        return cursor.word(1) == "ALWAYS"
    if word == "AS":
        following = cursor.peek(1)
        return following is not None and following.text == "("
    return word in _COLUMN_CONSTRAINTS


def _column_list(group: list[_Token]) -> list[str]:
    return [part[0].identifier for part in _split(group[1:-1]) if part]


@dataclass
class _ColumnDef:
    name: str
    type_end: int  # offset just after the declared type (after the name when there is none)
    clauses: list[_Clause]
    name_end: int = 0  # offset just after the name

    def of(self, *kinds: str) -> list[_Clause]:
        return [clause for clause in self.clauses if clause.kind in kinds]

    def removal(self, clause: _Clause) -> tuple[int, int, str]:
        """An edit removing ``clause`` with the space before it."""
        k = self.clauses.index(clause)
        return (self.clauses[k - 1].end if k else self.type_end, clause.end, "")


@dataclass
class _Item(_Span):
    """One comma-separated part of a CREATE TABLE: a column, or table constraints (SQLite lets
    several stand without commas between them)."""

    tokens: list[_Token]
    column: _ColumnDef | None
    constraints: list[_Clause]


@dataclass
class _TableSQL:
    sql: str
    items: list[_Item]
    options: set[str]  # "WITHOUT ROWID", "STRICT"

    @property
    def has_rowid(self) -> bool:
        return "WITHOUT ROWID" not in self.options

    @property
    def columns(self) -> list[_ColumnDef]:
        return [item.column for item in self.items if item.column is not None]

    def column(self, name: str) -> _ColumnDef | None:
        return next((c for c in self.columns if c.name.lower() == name.lower()), None)

    def constraints(self, *kinds: str) -> list[_Clause]:
        """Table constraints of these kinds."""
        return [c for item in self.items for c in item.constraints if c.kind in kinds]

    def all_constraints(self) -> list[_Clause]:
        return [*self.constraints("primary", "unique", "check", "foreign"),
                *[clause for column in self.columns for clause in column.clauses]]


def _read_table(sql: str) -> _TableSQL:
    cursor = _Cursor(_tokens(sql))
    cursor.take("CREATE")
    cursor.accept("TEMP", "TEMPORARY")
    cursor.take("TABLE")
    while cursor.peek() is not None and cursor.text() != "(":  # [IF NOT EXISTS] [schema.]name
        cursor.take()
    body = cursor.group()
    items = [_read_item(part) for part in _split(body[1:-1])]
    options = {" ".join(token.word for token in part) for part in _split(cursor.tokens[cursor.i:]) if part}
    if options - {"WITHOUT ROWID", "STRICT"}:
        raise _Unreadable(f"unknown table options {', '.join(sorted(options))}")
    return _TableSQL(sql, items, options)


def _read_item(tokens: list[_Token]) -> _Item:
    if not tokens:
        raise _Unreadable("an empty column definition")
    cursor = _Cursor(tokens)
    if tokens[0].word in _TABLE_CONSTRAINTS:
        constraints = []
        while cursor.peek() is not None:
            constraints.append(_constraint(cursor, table=True))
        return _Item(tokens, None, constraints)
    name = cursor.take()
    type_end, typed = name.end, False
    while (token := cursor.peek()) is not None and token.kind in ("word", "quoted", "string") \
            and not _starts_constraint(cursor):
        type_end, typed = cursor.take().end, True
    if typed and cursor.text() == "(":
        type_end = cursor.group()[-1].end
    clauses = []
    while cursor.peek() is not None:
        clauses.append(_constraint(cursor, table=False))
    return _Item(tokens, _ColumnDef(name.identifier, type_end, clauses, name.end), [])


# -- writing the new CREATE TABLE ----------------------------------------------------------------

def _new_table_sql(table: _TableSQL, spec: Rebuild, quote: Any) -> str:
    """The old CREATE TABLE with only the spec's changes edited in; renames are left to RENAME COLUMN."""
    dropped = _lower(spec.drop)
    unwanted = _lower(spec.drop_constraints)
    alter = {column.lower(): change for column, change in spec.alter.items()}

    def gone(clause: _Clause) -> bool:
        """Dropped by name, or it names a dropped column (as PostgreSQL drops it with the column)."""
        return ((clause.name or "").lower() in unwanted or bool(_lower(clause.columns) & dropped)
                or (clause.kind == "check" and bool(_names(clause.tokens) & dropped)))

    sql = table.sql
    parts: list[tuple[int, int, str | None]] = []
    for item in table.items:
        edits: list[tuple[int, int, str]] = []
        if item.column is not None:
            column = item.column
            if column.name.lower() in dropped:
                parts.append((item.start, item.end, None))
                continue
            edits += [column.removal(clause) for clause in column.clauses if gone(clause)]
            edits += _alter_edits(column, alter.get(column.name.lower(), {}))
            parts.append((item.start, item.end, _edited(sql, item.start, item.end, edits)))
        else:
            kept = [(c.start, c.end, None if gone(c) else sql[c.start:c.end]) for c in item.constraints]
            text = _joined(sql, kept)
            parts.append((item.start, item.end, text or None))
    renamed_from = {new: old for old, new in spec.renames.items()}
    added = [f"CONSTRAINT {quote(check['name'])} CHECK ({check['condition']})"
             for check in spec.create_checks]
    for key in spec.create_foreign_keys:
        added.append(f"CONSTRAINT {quote(key['name'])} FOREIGN KEY ({', '.join(map(quote, key['columns']))}) "
                     f"REFERENCES {quote(key['ref_table'])} ({', '.join(map(quote, key['ref_columns']))})"
                     + (f" ON DELETE {key['on_delete']}" if key.get("on_delete") else ""))
    for index in spec.create_indexes:
        if index.get("constraint"):  # the new table is built before RENAME COLUMN: the old names
            columns = [renamed_from.get(column, column) for column in index["columns"]]
            kind = "PRIMARY KEY" if index.get("primary_key") else "UNIQUE"
            added.append(f"CONSTRAINT {quote(index['name'])} {kind} ({', '.join(map(quote, columns))})")
    items = table.items
    between = sql[items[-2].end:items[-1].start] if len(items) > 1 else ", "
    separator = between if between.strip() == "," else ", "  # the table's own layout, unless a comment is there
    return (sql[:items[0].start] + _joined(sql, parts) + "".join(separator + clause for clause in added)
            + sql[items[-1].end:])


def _alter_edits(column: _ColumnDef, change: dict[str, Any]) -> list[tuple[int, int, str]]:
    """Edits setting the declared type, NULL-ability and default. Relaxing NOT NULL writes NULL in
    its place, so that setting it again (a rollback) restores the definition exactly, wherever NOT
    NULL stood."""
    edits = []
    if "type" in change:  # a type change: the column keeps its name, place and constraints
        edits.append((column.name_end, column.type_end, f" {change['type']}"))
    if "nullable" in change:
        if change["nullable"]:
            edits += [(c.core[0].start, c.core[1].end, "NULL") for c in column.of("not null")]
        elif not column.of("not null"):
            nulls = column.of("null")
            edits += [(c.core[0].start, c.core[0].end, "NOT NULL") for c in nulls]
            if not nulls:
                edits.append((column.type_end, column.type_end, " NOT NULL"))
    if "server_default" in change:
        default, defaults = change["server_default"], column.of("default")
        if default is None:
            edits += [column.removal(clause) for clause in defaults]
        elif defaults:
            value = defaults[0].core[1:]
            edits.append((value[0].start, value[-1].end, _default_sql(default)))
            edits += [column.removal(clause) for clause in defaults[1:]]
        else:
            at = max([clause.end for clause in column.of("not null", "null")], default=column.type_end)
            edits.append((at, at, f" DEFAULT {_default_sql(default)}"))
    return edits


def _default_sql(expression: str) -> str:
    """A default as a DEFAULT clause takes it: a literal or signed number as it is, else in
    parentheses (reflection reports ``DEFAULT (abs(-1))`` as ``abs(-1)``)."""
    expression = expression.strip()
    tokens = _tokens(expression)
    if len(tokens) == 1 and tokens[0].kind in ("string", "number", "blob", "word"):
        return expression
    if len(tokens) == 2 and tokens[0].text in ("+", "-") and tokens[1].kind == "number":
        return expression
    if tokens and tokens[0].text == "(":
        cursor = _Cursor(tokens)
        cursor.group()
        if cursor.peek() is None:
            return expression
    return f"({expression})"


def _edited(sql: str, start: int, end: int, edits: list[tuple[int, int, str]]) -> str:
    """``sql[start:end]`` with each ``(from, to, text)`` edit; edits at one point keep their order."""
    out, at = [], start
    for begin, stop, text in sorted(edits, key=lambda edit: edit[:2]):
        out += [sql[at:begin], text]
        at = max(at, stop)
    return "".join([*out, sql[at:end]])


def _joined(sql: str, parts: list[tuple[int, int, str | None]]) -> str:
    """The kept parts (``(start, end, text)``, text None when dropped), each after the separator
    that stood before it in ``sql``, so a part that is added and removed again leaves no trace."""
    out: list[str] = []
    for k, (start, _end, text) in enumerate(parts):
        if text is None:
            continue
        if out:
            out.append(sql[parts[k - 1][1]:start])
        out.append(text)
    return "".join(out)


