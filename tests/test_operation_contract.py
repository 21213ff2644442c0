"""Adding an operation means one module, one catalogue entry, one example, one workload case and one
README row (the contract in ``zdm/operations/base.py``): this test names whatever is missing."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from zdm import planfile
from zdm.operations import CATALOGUE, Operation

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_workload import CASES  # noqa: E402


def name_of(operation: type[Operation]) -> str:
    return str(operation.model_fields["op"].default)


def readme_rows() -> set[str]:
    """The op names of the README's Operations table: a row starts with one or more `name`s."""
    names: set[str] = set()
    for line in (ROOT / "README.md").read_text().splitlines():
        if found := re.match(r"\| (`[a-z_]+`(?: / `[a-z_]+`)*) \|", line):
            names |= set(re.findall(r"`([a-z_]+)`", found.group(1)))
    return names


@pytest.mark.parametrize("operation", CATALOGUE, ids=name_of)
def test_every_operation_is_complete(operation: type[Operation]) -> None:
    name = name_of(operation)
    missing = []
    if operation.__module__ != f"zdm.operations.{name}":
        missing.append(f"its own module zdm/operations/{name}.py (found {operation.__module__})")
    example = ROOT / "examples" / f"{name}.yaml"
    if not example.exists() or name not in {op.op for op in planfile.load(example).operations}:
        missing.append(f"an example examples/{name}.yaml that uses it")
    if name not in {op["op"] for case in CASES for op in case.operations}:
        missing.append("a case in tests/test_workload.py")
    if name not in readme_rows():
        missing.append("a row in the README's Operations table")
    assert not missing, f"operation {name} lacks " + "; ".join(missing)


def test_the_catalogue_is_the_plan_format() -> None:
    """Every operation of the catalogue is one a plan file can name, and no other."""
    from typing import get_args

    from zdm.planfile import PlanFile

    (any_operation,) = get_args(PlanFile.model_fields["operations"].annotation)
    union, _discriminator = get_args(any_operation)
    assert set(get_args(union)) == set(CATALOGUE)
