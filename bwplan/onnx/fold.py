"""Evaluates at import what does not depend on the data: initializers, Constant and
ConstantOfShape nodes, and the shape arithmetic an exporter writes for `x.view(x.size(0),
-1)` (Shape -> Gather -> Unsqueeze -> Concat -> Reshape), computed from the shapes that
shape inference fixed. One row per foldable op type, each a NumPy function.

A node is folded when all its inputs are constant (Shape needs only its input's shape,
CastLike only the element type of its second);
its outputs then become constants too. Every other node is left for the op table.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


def attrs_of(node) -> dict[str, Any]:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _tensor(t) -> np.ndarray:
    from onnx import numpy_helper
    return np.array(numpy_helper.to_array(t))


def _axes(node, args, attrs, position: int) -> list[int] | None:
    """Axes from the attribute (older opsets) or from input `position` (newer ones)."""
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    if len(args) > position and args[position] is not None:
        return [int(a) for a in np.asarray(args[position]).reshape(-1)]
    return None


def _constant(node, args, attrs, shapes):
    for key in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        if key in attrs:
            v = attrs[key]
            return [_tensor(v) if key == "value" else np.asarray(
                v, dtype=np.float32 if "float" in key else np.int64)]
    raise ValueError("Constant without a numeric value")


def _constant_of_shape(node, args, attrs, shapes):
    value = _tensor(attrs["value"]).reshape(-1) if "value" in attrs else np.zeros(1, np.float32)
    return [np.full(tuple(int(d) for d in args[0]), value[0], dtype=value.dtype)]


def _unsqueeze(node, args, attrs, shapes):
    out = args[0]
    axes = _axes(node, args, attrs, 1)
    rank = out.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        out = np.expand_dims(out, a)
    return [out]


def _squeeze(node, args, attrs, shapes):
    axes = _axes(node, args, attrs, 1)
    return [np.squeeze(args[0], axis=None if axes is None else tuple(axes))]


def _slice(node, args, attrs, shapes):
    x = args[0]
    if "starts" in attrs:   # opset < 10
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        starts, ends = list(args[1]), list(args[2])
        axes = list(args[3]) if len(args) > 3 and args[3] is not None else None
        steps = list(args[4]) if len(args) > 4 and args[4] is not None else None
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    where = [slice(None)] * x.ndim
    for s, e, a, k in zip(starts, ends, axes, steps):
        where[int(a)] = slice(int(s), int(e), int(k))
    return [x[tuple(where)]]


def _expand(node, args, attrs, shapes):
    shape = tuple(int(d) for d in args[1])
    return [np.array(np.broadcast_to(args[0], np.broadcast_shapes(args[0].shape, shape)))]


def _binary(f):
    return lambda node, args, attrs, shapes: [np.asarray(f(args[0], args[1]))]


def _div(a, b):
    return a // b if np.issubdtype(np.asarray(a).dtype, np.integer) else a / b


def _cast(node, args, attrs, shapes):
    from onnx import helper
    return [args[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))]


def _reshape(node, args, attrs, shapes):
    shape = [int(d) for d in args[1]]
    shape = [args[0].shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [args[0].reshape(shape)]


def _transpose(node, args, attrs, shapes):
    return [np.transpose(args[0], attrs.get("perm"))]


def _gather(node, args, attrs, shapes):
    return [np.take(args[0], args[1].astype(np.int64), axis=attrs.get("axis", 0))]


def _concat(node, args, attrs, shapes):
    return [np.concatenate([np.atleast_1d(a) for a in args], axis=attrs["axis"])]


# op type -> fn(node, constant inputs, attributes, shapes) -> outputs
FOLD: Mapping[str, Callable] = {
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Identity": lambda node, args, attrs, shapes: [np.array(args[0], copy=True)],
    "Cast": _cast,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": _concat,
    "Slice": _slice,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Expand": _expand,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(_div),
}


# every op type try_fold can evaluate: the table's, and the two it reads specially
FOLDABLE = frozenset(FOLD) | {"Shape", "CastLike"}


def try_fold(node, constants: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]],
             dtypes: Mapping[str, int]) -> list[np.ndarray] | None:
    """The node's outputs if it can be evaluated now, else None."""
    if node.op_type == "Shape":
        shape = shapes.get(node.input[0])
        if shape is None:
            return None
        attrs = attrs_of(node)
        start, end = attrs.get("start", 0), attrs.get("end", len(shape))
        return [np.asarray(shape, dtype=np.int64)[start:end]]
    if node.op_type == "CastLike" and node.input[0] in constants:
        # only the element type of the second input matters, and shape inference knows it
        from onnx import helper
        elem = dtypes.get(node.input[1])
        if elem is None:
            return None
        return [constants[node.input[0]].astype(helper.tensor_dtype_to_np_dtype(elem))]
    fn = FOLD.get(node.op_type)
    if fn is None or node.domain not in ("", "ai.onnx"):
        return None
    present = [name for name in node.input if name]
    if not all(name in constants for name in present):
        return None
    args = [constants[name] if name else None for name in node.input]
    return fn(node, args, attrs_of(node), shapes)
