"""zdm operations on Alembic's ``op``: ``op.zdm_<name>(...)`` for every operation in the catalogue.

The methods are generated from ``zdm.operations.AnyOperation`` through Alembic's operation plugin
API (``Operations.register_operation`` / ``implementation_for``), so an operation added to the
catalogue is available in revision files with no code here. Its fields become the arguments:
the required ones positional, in declaration order (``table`` first), the optional ones by
keyword. A column type may be given as a zdm type name (``"TEXT"``) or as a SQLAlchemy type
(``sa.Text()``).

Every method also takes Alembic-style hints, read only by offline mode (``--sql``), where there
is no database to read the table from: ``existing_type``, ``existing_nullable`` and
``existing_server_default`` describe the column the operation reads (``from_column``, else
``column``) as it is before the revision, ``existing_primary_key`` the table's key (see
``zdm.alembic.offline``).
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from typing import Any

import sqlalchemy as sa
from alembic.operations import MigrateOperation, Operations
from pydantic import ValidationError

from zdm import introspect
from zdm.alembic.autogenerate import diff_tuple
from zdm.alembic.offline import Hints
from zdm.alembic.runtime import ZdmAlembicError, rollback_revision, run_operation
from zdm.operations import AnyOperation, Operation

PREFIX = "zdm_"
HINTS = ("existing_type", "existing_nullable", "existing_server_default", "existing_primary_key")
_LITERALS = (type(None), bool, int, float, str)


class ZdmOperation(MigrateOperation):
    """One zdm operation declared in a revision file; run by zdm's runner, not by Alembic's DDL."""

    def __init__(self, operation: Operation, hints: Hints) -> None:
        self.operation = operation
        self.hints = hints

    @classmethod
    def declare(cls, operations: Operations, name: str, arguments: dict[str, Any]) -> None:
        """Validate the call like a plan file entry, then hand it to Alembic to run."""
        hints = Hints(**{key: arguments.pop(key) for key in HINTS})
        if hints.existing_primary_key is not None:
            hints = dataclasses.replace(hints, existing_primary_key=tuple(hints.existing_primary_key))
        operation_class = _operation_classes()[name]
        try:
            given = {key: _plain(value) for key, value in arguments.items()
                     if value is not None or _takes_none(operation_class, key)}
        except ValueError as exc:
            raise ZdmAlembicError(f"op.{PREFIX}{name}(): {exc}") from None
        try:
            operation = operation_class.model_validate({"op": name, **given})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            message = first["msg"].removeprefix("Value error, ")
            raise ZdmAlembicError(f"op.{PREFIX}{name}(): {where + ': ' if where else ''}{message}") from None
        operations.invoke(cls(operation, hints))

    def reverse(self) -> MigrateOperation:
        raise NotImplementedError("a zdm operation is undone by op.zdm_rollback(), not by a reverse operation")

    def to_diff_tuple(self) -> tuple[Any, ...]:
        """The operation as an Alembic diff tuple: ``("zdm_<name>", table, {field: value})``."""
        return diff_tuple(self.operation)


@Operations.register_operation("zdm_rollback")
class ZdmRollback(MigrateOperation):
    """``op.zdm_rollback()`` in a revision's downgrade(): roll back the zdm plans of that revision."""

    @classmethod
    def zdm_rollback(cls, operations: Operations) -> None:
        """Roll back this revision's zdm plans (compensating SQL, newest step first).

        Refused for a plan already completed: its contract phase dropped what a rollback needs.
        """
        operations.invoke(cls())

    def to_diff_tuple(self) -> tuple[Any, ...]:
        """The operation as an Alembic diff tuple: ``("zdm_rollback",)``."""
        return ("zdm_rollback",)


def _plain(value: Any) -> Any:
    """A SQLAlchemy type becomes the zdm type name; other values pass through.

    Only a type zdm creates exactly as written: ``sa.String(200)`` would become TEXT and a
    timezone-aware DateTime a TIMESTAMP without one, silently.
    """
    if isinstance(value, type) and issubclass(value, sa.types.TypeEngine):
        value = value()
    if not isinstance(value, sa.types.TypeEngine):
        return value
    declared = introspect.column_type(value)
    if not declared.declared or getattr(value, "collation", None):
        what = "a collation" if getattr(value, "collation", None) else f"type {declared.name}"
        raise ValueError(f"zdm cannot declare {value!r}: {what} would be lost; use a plain Alembic op")
    return declared.value


def _operation_classes() -> dict[str, type[Operation]]:
    """The catalogue: every member of the AnyOperation union, by its ``op`` name."""
    union = typing.get_args(AnyOperation)[0]
    members = typing.get_args(union) or (union,)
    return {member.model_fields["op"].default: member for member in members}


def _signature_default(field: Any) -> str:
    """The default as Python source; None where it has none (Alembic re-renders the signature as text)."""
    if field.default_factory is None and isinstance(field.default, str):
        return repr(str(field.default))  # a StrEnum member reads as its value
    if field.default_factory is None and isinstance(field.default, _LITERALS):
        return repr(field.default)
    return "None"


def _takes_none(operation_class: type[Operation], name: str) -> bool:
    """Whether None is a real value for this argument, rather than "not given" (see _signature_default)."""
    fields = {f.alias or n: f for n, f in operation_class.model_fields.items()}
    field = fields.get(name)
    if field is None or field.is_required():
        return True
    return field.default_factory is None and isinstance(field.default, _LITERALS)


def _method(name: str, operation_class: type[Operation]) -> Any:
    """A classmethod whose real parameters are the operation's fields (Alembic reads the code object)."""
    required, optional = [], []
    for declared_name, field in operation_class.model_fields.items():
        if declared_name == "op":
            continue
        field_name = field.alias or declared_name  # as a plan file names it (alter_column's ``up``)
        if field.is_required():
            required.append(field_name)
        else:
            optional.append(f"{field_name}={_signature_default(field)}")
    hints = [f"{hint}=None" for hint in HINTS]
    parameters = ", ".join(["cls", "operations", *required, "*", *optional, *hints])
    names = [*required, *(entry.split("=")[0] for entry in optional), *HINTS]
    source = (
        f"def {PREFIX}{name}({parameters}):\n"
        f"    return cls.declare(operations, {name!r}, {{{', '.join(f'{n!r}: {n}' for n in names)}}})\n"
    )
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # field names are identifiers from the catalogue, never user input
    function = namespace[f"{PREFIX}{name}"]
    # help(op.zdm_rename_column) shows what the operation does in each phase: its module says it.
    function.__doc__ = (sys.modules[operation_class.__module__].__doc__ or f"zdm: {name}").strip() + (
        "\n\nArguments are the plan file's fields (see the README's Operations table); existing_type, "
        "existing_nullable, existing_server_default and existing_primary_key describe the table for "
        "offline (--sql) runs.")
    return classmethod(function)


def register() -> list[str]:
    """Put ``op.zdm_<name>`` on Alembic's Operations for every catalogue operation; returns the names."""
    names = []
    for name, operation_class in _operation_classes().items():
        method = f"{PREFIX}{name}"
        if not hasattr(Operations, method):
            op_class = type(f"Zdm{operation_class.__name__}", (ZdmOperation,), {method: _method(name, operation_class)})
            Operations.register_operation(method)(op_class)
        names.append(method)
    return names


@Operations.implementation_for(ZdmOperation)
def _run(operations: Operations, declared: ZdmOperation) -> None:
    run_operation(operations.migration_context, declared.operation, declared.hints)


@Operations.implementation_for(ZdmRollback)
def _rollback(operations: Operations, _: ZdmRollback) -> None:
    rollback_revision(operations.migration_context)
