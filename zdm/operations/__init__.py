"""The operation catalogue: one module per schema change, phases side by side."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from zdm.operations.add_check import AddCheck
from zdm.operations.add_column import AddColumn
from zdm.operations.add_enum_value import AddEnumValue
from zdm.operations.add_foreign_key import AddForeignKey
from zdm.operations.add_primary_key import AddPrimaryKey
from zdm.operations.add_unique import AddUnique
from zdm.operations.alter_column import AlterColumn
from zdm.operations.base import Compiler, Operation
from zdm.operations.create_index import CreateIndex
from zdm.operations.create_table import CreateTable
from zdm.operations.drop_column import DropColumn
from zdm.operations.drop_constraint import DropConstraint
from zdm.operations.drop_default import DropDefault
from zdm.operations.drop_index import DropIndex
from zdm.operations.drop_not_null import DropNotNull
from zdm.operations.drop_table import DropTable
from zdm.operations.rename_column import RenameColumn
from zdm.operations.rename_table import RenameTable
from zdm.operations.set_default import SetDefault
from zdm.operations.set_not_null import SetNotNull
from zdm.operations.sql import RawSql

CATALOGUE = (
    AddColumn, RenameColumn, AlterColumn, DropColumn, SetNotNull, DropNotNull, SetDefault, DropDefault,
    AddCheck, AddUnique, AddForeignKey, AddPrimaryKey, DropConstraint, CreateIndex, DropIndex,
    CreateTable, DropTable, RenameTable, AddEnumValue, RawSql,
)
AnyOperation = Annotated[
    AddColumn | RenameColumn | AlterColumn | DropColumn | SetNotNull | DropNotNull | SetDefault | DropDefault
    | AddCheck | AddUnique | AddForeignKey | AddPrimaryKey | DropConstraint | CreateIndex | DropIndex
    | CreateTable | DropTable | RenameTable | AddEnumValue | RawSql,
    Field(discriminator="op"),
]

__all__ = ["CATALOGUE", "AnyOperation", "Compiler", "Operation", *[op.__name__ for op in CATALOGUE]]
