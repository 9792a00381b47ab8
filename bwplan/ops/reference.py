"""Running an op's NumPy references generically, the way a compiled kernel is checked.

`run_forward` fills in default attributes, infers the output type and calls the forward
reference. `saved_values` builds the dictionary a backward reference receives: exactly the
values its rule's `needs` names, so a reference that reads anything else fails with a
KeyError. `run_grad` puts the two together for one gradient.

Arrays are NumPy; parameters are passed as a dict keyed by slot name.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from bwplan.ir.types import TensorType
from bwplan.ops.needs import bind_needs
from bwplan.ops.opdef import REQUIRED, Attrs, GradRule, OpCtx, OpDef

_DTYPES = {np.dtype(np.float16): "f16", np.dtype(np.float32): "f32",
           np.dtype(np.float64): "f64", np.dtype(np.int32): "i32", np.dtype(np.int64): "i64",
           np.dtype(np.uint8): "u8", np.dtype(np.bool_): "bool"}


def tensor_type(a: np.ndarray) -> TensorType:
    return TensorType(_DTYPES[np.asarray(a).dtype], tuple(int(d) for d in np.shape(a)))


def full_attrs(op: OpDef, attrs: Attrs) -> Attrs:
    """`attrs` with every attribute the caller left out set to its default."""
    unknown = set(attrs) - {a.name for a in op.attrs}
    if unknown:
        raise KeyError(f"{op.name} has no attribute {sorted(unknown)[0]!r}")
    values = dict(attrs)
    for spec in op.attrs:
        if spec.name not in values:
            if spec.default is REQUIRED:
                raise KeyError(f"{op.name} needs the attribute {spec.name!r}")
            values[spec.name] = spec.default
    return MappingProxyType(values)


def make_ctx(op: OpDef, attrs: Attrs, inputs: Sequence[np.ndarray]) -> OpCtx:
    """The OpCtx of the inputs' types, with the output type from the op's shape rule."""
    attrs = full_attrs(op, attrs)
    types = tuple(tensor_type(x) for x in inputs)
    if not op.arity_ok(len(types)):
        raise ValueError(f"{op.name} cannot take {len(types)} inputs")
    return OpCtx(attrs, types, op.infer(OpCtx(attrs, types)))


def run_forward(op: OpDef, attrs: Attrs, inputs: Sequence[np.ndarray],
                params: Mapping[str, np.ndarray], training: bool = True,
                rng: np.random.Generator | None = None) -> tuple[Any, dict[str, Any]]:
    """(out, aux) of the op's forward reference."""
    ctx = make_ctx(op, attrs, inputs)
    return op.forward_ref(ctx, list(inputs), dict(params), training, rng)


def saved_values(op: OpDef, rule: GradRule, ctx: OpCtx, inputs: Sequence[np.ndarray],
                 params: Mapping[str, np.ndarray], out: Any,
                 aux: Mapping[str, Any]) -> dict[str, Any]:
    """The forward values `rule` declares it needs, and nothing else. A variadic port's
    name maps to the list of all its tensors."""
    saved: dict[str, Any] = {}
    for need in bind_needs(op, rule, ctx.attrs, len(inputs)):
        if need.kind == "out":
            saved[need.name] = out
        elif need.kind == "port":
            bound = [inputs[i] for i in need.inputs]
            saved[need.name] = bound if need.variadic else bound[0]
        elif need.kind == "param":
            saved[need.name] = params[need.name]
        else:
            saved[need.name] = aux[need.name]
    return saved


def grad_index(op: OpDef, wrt: str, index: int | None = None) -> int:
    """The `index` a reference receives: the input position for a variadic port, else 0."""
    port = next((p for p in op.ports if p.name == wrt), None)
    if port is not None and port.variadic:
        if index is None:
            raise ValueError(f"{op.name}: a gradient into variadic {wrt!r} needs an index")
        return index
    return 0


def run_grad(op: OpDef, wrt: str, ctx: OpCtx, inputs: Sequence[np.ndarray],
             params: Mapping[str, np.ndarray], out: Any, aux: Mapping[str, Any], dout: Any,
             index: int | None = None) -> Any:
    """The gradient of sum(out * dout) with respect to port or slot `wrt` (for a variadic
    port, the input at position `index`), from the rule's reference."""
    rule = op.grad_for(wrt)
    if rule is None or rule.reference is None:
        raise KeyError(f"{op.name} has no gradient reference for {wrt!r}")
    saved = saved_values(op, rule, ctx, inputs, params, out, aux)
    return rule.reference(ctx, saved, dout, grad_index(op, wrt, index))
