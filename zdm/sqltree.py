"""SQL read with PostgreSQL's own parser (pglast): walk a statement, find and rename the columns it names.

One place for what several modules need from a parse tree: the risk check walks statements, the
reference model reads CHECK conditions, a type change rewrites index and constraint definitions
for the new column. Rewritten SQL is rendered by pglast, never pasted together.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pglast
from pglast import ast
from pglast.stream import RawStream


def statement(sql: str) -> Any:
    """The first statement of ``sql``, parsed (raises pglast.parser.ParseError). Typed Any: pglast's
    nodes carry their fields as attributes that depend on the kind of statement."""
    return pglast.parse_sql(sql)[0].stmt


def walk(node: object) -> Iterable[ast.Node]:
    """Every node of a parsed statement, ``node`` first."""
    if isinstance(node, ast.Node):
        yield node
        for name in node:
            yield from walk(getattr(node, name))
    elif isinstance(node, tuple):
        for item in node:
            yield from walk(item)


def column_names(node: ast.Node) -> set[str]:
    """The column names a parsed statement or expression uses: references and index elements."""
    names: set[str] = set()
    for found in walk(node):
        if isinstance(found, ast.IndexElem) and found.name:
            names.add(found.name)
        elif isinstance(found, ast.ColumnRef) and found.fields and isinstance(found.fields[-1], ast.String):
            names.add(str(found.fields[-1].sval))
    return names


def rename_column(node: Any, old: str, new: str) -> Any:
    """``node``, changed in place to name ``new`` wherever it named ``old``: references, index
    elements (with WHERE and INCLUDE clauses) and the key lists of constraints."""
    found: Any
    for found in walk(node):
        if isinstance(found, ast.IndexElem) and found.name == old:
            found.name = new
        elif isinstance(found, ast.ColumnRef) and found.fields and isinstance(found.fields[-1], ast.String) \
                and found.fields[-1].sval == old:
            found.fields = (*found.fields[:-1], ast.String(sval=new))
        elif isinstance(found, ast.Constraint):
            for attribute in ("keys", "fk_attrs", "pk_attrs", "including"):
                names = getattr(found, attribute)
                if names:
                    setattr(found, attribute, tuple(ast.String(sval=new) if n.sval == old else n for n in names))
    return node


def expression(sql: str) -> Any:
    """One SQL expression, parsed (raises pglast.parser.ParseError)."""
    return statement(f"SELECT {sql}").targetList[0].val


def condition_columns(condition: str) -> set[str]:
    """The column names a condition (a CHECK, a WHERE clause) reads; none when it does not parse."""
    try:
        return column_names(expression(condition))
    except pglast.parser.ParseError:
        return set()


def rename_in_condition(condition: str, old: str, new: str) -> str:
    """``condition`` reading column ``new`` wherever it read ``old``."""
    if old not in condition_columns(condition):
        return condition
    return RawStream()(rename_column(expression(condition), old, new))


def render(node: ast.Node) -> str:
    """A parsed statement or expression as SQL, as pglast prints it."""
    return str(RawStream()(node))


def substitute_column(sql: str, column: str, reference: str) -> str:
    """Expression ``sql`` with every unqualified reference to ``column`` replaced by ``reference``
    (an already-quoted column reference such as ``NEW."id"``), rendered by pglast."""
    tree = expression(sql)
    replacement = expression(reference)
    assert isinstance(replacement, ast.ColumnRef), reference
    found: Any
    for found in walk(tree):
        fields = found.fields if isinstance(found, ast.ColumnRef) else None
        if fields and len(fields) == 1 and isinstance(fields[0], ast.String) and fields[0].sval == column:
            found.fields = replacement.fields
    return render(tree)

