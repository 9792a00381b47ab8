"""The syntax tree of a .bw file, with a Span on every node.

The parser produces a `Module` that may hold blocks and block instances; `expand` turns it
into a flat `Module` that holds only inputs, params and layers with fully qualified names.
The Caffe importer produces a flat Module directly.
"""
from __future__ import annotations

from typing import Union

from bwplan.ir.types import TensorType
from bwplan.records import record
from bwplan.source import Span


@record
class NameRef:
    """A bare name used as a value: an enum choice, a parameter, or a block argument."""

    name: str
    span: Span


Value = Union[int, float, bool, str, NameRef, tuple]


@record
class Arg:
    """A tensor argument of a call; `stop_gradient(x)` cuts the gradient along this edge."""

    name: str
    stop_gradient: bool
    span: Span


@record
class KwArg:
    key: str
    value: Value
    span: Span


@record
class Call:
    op: str
    args: tuple[Arg, ...]
    kwargs: tuple[KwArg, ...]
    span: Span
    op_span: Span


@record
class Modifier:
    """A training setting after a call: `frozen`, `shares NAME`, `lr=`, `decay=`, `weight=`
    (loss weight), `<slot>.lr=`, `<slot>.decay=`."""

    key: str
    value: Value | None
    span: Span


@record
class InputDecl:
    name: str
    type: TensorType
    grad: bool
    span: Span
    # False: the input has no batch axis (SSD's priors and ground truth); see Input.batched
    batched: bool = True


@record
class ParamDecl:
    name: str
    type: TensorType
    modifiers: tuple[Modifier, ...]
    span: Span


@record
class LayerStmt:
    name: str
    call: Call
    modifiers: tuple[Modifier, ...]
    span: Span
    name_span: Span
    # set by expansion on the layers of a block instance written with lr= / decay=: the
    # product of the enclosing instances' values, scaling the layer's own multipliers
    lr_scale: float = 1.0
    decay_scale: float = 1.0


@record
class BlockParam:
    """A block parameter: a tensor when `kind` is None, else a value of that kind."""

    name: str
    kind: str | None
    default: Value | None
    span: Span


@record
class BlockDef:
    name: str
    params: tuple[BlockParam, ...]
    body: tuple[LayerStmt, ...]
    ret: NameRef
    span: Span


Statement = Union[InputDecl, ParamDecl, LayerStmt, BlockDef]


@record
class Module:
    path: str
    statements: tuple[Statement, ...]
