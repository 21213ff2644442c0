"""The operation catalogue: one module per schema change, phases side by side."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from zdm.operations.add_column import AddColumn
from zdm.operations.base import Compiler, Operation
from zdm.operations.drop_column import DropColumn
from zdm.operations.rename_column import RenameColumn

AnyOperation = Annotated[AddColumn | RenameColumn | DropColumn, Field(discriminator="op")]

__all__ = ["AddColumn", "AnyOperation", "Compiler", "DropColumn", "Operation", "RenameColumn"]
