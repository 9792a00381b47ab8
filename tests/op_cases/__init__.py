"""One row per op: everything the tests know about an op that its `OpDef` does not say.

`ROWS` maps every registered op to its `OpRow` (row.py): the Hypothesis strategy of its
cases, its PyTorch translation, and its lines in a generated training net. The rows live in
one module per op family, named as the family's module in bwplan/ops/, so adding an op to
bwplan/ops/<family>.py adds its row to tests/op_cases/<family>.py and nothing else here.

Who reads them: test_ops_reference.py (references against finite differences, the shape
rule and torch), test_kernels_cpu.py and the CUDA tests (their cases), torch_oracle.py
(the training oracle's translations), nets.py (the training nets of
test_pruning_equivalence.py and test_train_vs_torch.py), and bench/torch_peer.py (the
benchmark's PyTorch peer).
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType

from bwplan import ops as registry

from .draw import valid
from .row import Case, NetUse, OpRow

__all__ = ["Case", "NetUse", "OpRow", "FAMILIES", "ROWS", "ROWS_BY_FAMILY", "draw_case"]

FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(op.family for op in registry.OPS.values()))
ROWS_BY_FAMILY: Mapping[str, Mapping[str, OpRow]] = MappingProxyType({
    family: importlib.import_module(f"{__name__}.{family}").ROWS for family in FAMILIES})


def _collect() -> Mapping[str, OpRow]:
    rows: dict[str, OpRow] = {}
    for family, table in ROWS_BY_FAMILY.items():
        for name, row in table.items():
            if name in rows:
                raise RuntimeError(f"op {name!r} has a row in two families' modules")
            rows[name] = row
    return MappingProxyType(rows)


ROWS: Mapping[str, OpRow] = _collect()


def draw_case(data, name: str) -> Case:
    """A case of op `name` drawn from its row, one the shape rule accepts."""
    return valid(name, data.draw(ROWS[name].cases, label=name))
