"""The op registry: every op bwplan knows, by name.

Each family module lists its ops in `OPS`; adding an op means adding its `OpDef` to its
family's `OPS` and its kernels (docs/architecture.md lists the few rows beside them, and
tests/test_op_places.py keeps every other module from naming an op).
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from bwplan.ops import conv, elementwise, linear, loss, norm, pool, shape
from bwplan.ops import activation, broadcast, embed, reduction, spatial_norm
from bwplan.ops import spatial
from bwplan.ops import unpool
from bwplan.ops import stochastic
from bwplan.ops.opdef import OpDef

_FAMILIES = (conv, linear, elementwise, pool, norm, shape, loss, activation, reduction,
             broadcast, embed, spatial_norm, spatial, unpool, stochastic)


def _collect() -> Mapping[str, OpDef]:
    table: dict[str, OpDef] = {}
    for family in _FAMILIES:
        for op in family.OPS:
            if op.name in table:
                raise RuntimeError(f"op {op.name!r} registered twice")
            table[op.name] = op
    return MappingProxyType(table)


OPS: Mapping[str, OpDef] = _collect()


def get(name: str) -> OpDef | None:
    return OPS.get(name)
