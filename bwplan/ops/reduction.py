"""Ops that reduce their input to fewer values: Caffe's Reduction (a sum, absolute sum, sum
of squares or mean over the axes from `axis` to the end), ArgMax (the top-k indices or
values), and Silence, which reduces its inputs to nothing.

ArgMax and Silence have no gradient: their inputs are not differentiable, so the planner
stops the gradient at them (an ArgMax is a prediction, not a loss; Caffe's Silence
backward writes zeros, which is the same as no gradient).
"""
from __future__ import annotations

import math

import numpy as np

from bwplan.ir.types import TensorType
from bwplan.ops.opdef import (AttrSpec, GradRule, on_every_target, OpCtx, OpDef, Port,
                              zero_flops)


def _axis(ctx: OpCtx, axis: int, op: str, end: bool = False) -> int:
    """`axis` of the input, negative counted from the end; `end` also allows rank."""
    rank = len(ctx.x.shape)
    a = axis + rank if axis < 0 else axis
    if not 0 <= a < rank + end:
        raise ValueError(f"{op} axis={axis} is out of range for {ctx.x}")
    return a


# ---- Reduction -------------------------------------------------------------------------
OPERATIONS = ("SUM", "ASUM", "SUMSQ", "MEAN")


def _reduction_infer(ctx: OpCtx) -> TensorType:
    # Caffe: the output keeps the dimensions before the axis; axis 0 gives a scalar
    axis = _axis(ctx, ctx.attrs["axis"], "reduction")
    return TensorType(ctx.x.dtype, ctx.x.shape[:axis])


def reduced_rows(ctx: OpCtx) -> tuple[int, int]:
    """(num, dim): the output's elements and the input elements reduced into each."""
    assert ctx.out is not None
    num = ctx.out.numel
    return num, ctx.x.numel // num if num else 0


def reduced_coeff(ctx: OpCtx) -> float:
    """Caffe divides the coefficient of a MEAN by the reduced count."""
    a = ctx.attrs
    dim = reduced_rows(ctx)[1]
    return a["coeff"] / dim if a["operation"] == "MEAN" and dim else a["coeff"]


def _reduction_fwd(ctx, inputs, params, training, rng):
    num, dim = reduced_rows(ctx)
    x = inputs[0].reshape(num, dim)
    op = ctx.attrs["operation"]
    value = {"SUM": x, "MEAN": x, "ASUM": np.abs(x), "SUMSQ": x * x}[op].sum(axis=1)
    return (value * reduced_coeff(ctx)).reshape(ctx.out.shape).astype(inputs[0].dtype), {}


def _reduction_dx(ctx, saved, dout, index):
    num, dim = reduced_rows(ctx)
    g = np.asarray(dout).reshape(num, 1) * reduced_coeff(ctx)
    op = ctx.attrs["operation"]
    if op == "ASUM":
        g = g * np.sign(saved["x"].reshape(num, dim))
    elif op == "SUMSQ":
        g = g * 2 * saved["x"].reshape(num, dim)
    return np.broadcast_to(g, (num, dim)).reshape(ctx.x.shape)


REDUCTION = OpDef(
    name="reduction",
    family="reduction",
    doc="coeff times the SUM, ASUM (sum of |x|), SUMSQ (sum of x^2) or MEAN of the input "
        "over every dimension from `axis` on; the output keeps the dimensions before "
        "`axis` (a scalar for axis 0) (Caffe Reduction).",
    ports=(Port("x"),),
    attrs=(AttrSpec("operation", "choice", "SUM", OPERATIONS),
           AttrSpec("axis", "int", 0, doc="the first reduced dimension"),
           AttrSpec("coeff", "float", 1.0, doc="scales the result")),
    infer=_reduction_infer,
    flops=lambda ctx: (2 if ctx.attrs["operation"] in ("ASUM", "SUMSQ") else 1) * ctx.x.numel,
    grads=(GradRule("x", lambda a: frozenset({"x"}) if a["operation"] in ("ASUM", "SUMSQ")
                    else frozenset(), lambda ctx: 2 * ctx.x.numel, _reduction_dx),),
    forward_ref=_reduction_fwd,
    kernels=on_every_target({"fwd": "reduction.reduction_fwd",
                             "dx:x": "reduction.reduction_dx"}),
)


# ---- ArgMax ----------------------------------------------------------------------------
def argmax_geometry(ctx: OpCtx) -> tuple[int, int, int]:
    """(num, dim, stride): `num` rows of `dim` candidates, `stride` elements apart.
    Without an axis each sample's flattened values are one row."""
    shape, axis = ctx.x.shape, ctx.attrs["axis"]
    if axis is None:
        return shape[0], math.prod(shape[1:]), 1
    a = _axis(ctx, axis, "argmax")
    stride = math.prod(shape[a + 1:])
    return ctx.x.numel // shape[a], shape[a], stride


def _argmax_infer(ctx: OpCtx) -> TensorType:
    a = ctx.attrs
    if a["axis"] is not None and not isinstance(a["axis"], int):
        raise ValueError(f"argmax axis={a['axis']} must be one integer")
    if len(ctx.x.shape) < 1 + (a["axis"] is None):
        raise ValueError(f"argmax without an axis needs a batch dimension, got {ctx.x}")
    _, dim, _ = argmax_geometry(ctx)
    if not 1 <= a["top_k"] <= dim:
        raise ValueError(f"argmax top_k={a['top_k']} must be between 1 and the {dim} "
                         "candidates")
    if a["axis"] is not None:
        axis = _axis(ctx, a["axis"], "argmax")
        shape = list(ctx.x.shape)
        shape[axis] = a["top_k"]
        return TensorType(ctx.x.dtype, tuple(shape))
    # Caffe: (N, 1 or 2 with the values, top_k), padded with 1s to the input's rank
    shape = [1] * max(3, len(ctx.x.shape))
    shape[0], shape[1], shape[2] = ctx.x.shape[0], 2 if a["out_max_val"] else 1, a["top_k"]
    return TensorType(ctx.x.dtype, tuple(shape))


def top_k_order(values: np.ndarray, k: int) -> np.ndarray:
    """The indices of the k largest values, largest first; a tie goes to the larger index,
    as Caffe's partial_sort of (value, index) pairs with std::greater orders them."""
    order = sorted(range(len(values)), key=lambda j: (values[j], j), reverse=True)
    return np.asarray(order[:k], dtype=np.int64)


def _argmax_fwd(ctx, inputs, params, training, rng):
    a = ctx.attrs
    x = inputs[0]
    num, dim, stride = argmax_geometry(ctx)
    k = a["top_k"]
    rows = x.reshape(num // stride, dim, stride)
    out = np.empty((num // stride, 2 if a["out_max_val"] and a["axis"] is None else 1, k,
                    stride), x.dtype)
    for outer in range(num // stride):
        for s in range(stride):
            column = rows[outer, :, s]
            order = top_k_order(column, k)
            if a["out_max_val"] and a["axis"] is not None:
                out[outer, 0, :, s] = column[order]
            else:
                out[outer, 0, :, s] = order
                if a["out_max_val"]:
                    out[outer, 1, :, s] = column[order]
    return out.reshape(ctx.out.shape), {}


ARGMAX = OpDef(
    name="argmax",
    family="reduction",
    doc="The indices of the `top_k` largest values (with `out_max_val`, also or instead "
        "their values) per sample, or along `axis` (Caffe ArgMax). A prediction: no "
        "gradient flows through it.",
    ports=(Port("x", differentiable=False),),
    attrs=(AttrSpec("out_max_val", "bool", False,
                    doc="output the values too (without axis) or instead (with axis)"),
           AttrSpec("top_k", "int", 1),
           AttrSpec("axis", "ints", None, doc="unset: over each sample's values")),
    infer=_argmax_infer,
    flops=lambda ctx: ctx.attrs["top_k"] * ctx.x.numel,
    forward_ref=_argmax_fwd,
    kernels=on_every_target({"fwd": "reduction.argmax_fwd"}),
)


# ---- Silence ---------------------------------------------------------------------------
SILENCE = OpDef(
    name="silence",
    family="reduction",
    doc="Consumes its inputs and produces nothing (an output of no elements), so that "
        "tops nothing else reads are not outputs (Caffe Silence). No gradient flows "
        "through it; nothing runs for it in a training step.",
    ports=(Port("xs", differentiable=False, variadic=True),),
    infer=lambda ctx: TensorType(ctx.x.dtype, (0,)),
    flops=zero_flops,
    forward_ref=lambda ctx, inputs, params, training, rng: (
        np.empty((0,), inputs[0].dtype), {}),
    kernels=on_every_target({"fwd": "reduction.silence_fwd"}),
)

OPS = (REDUCTION, ARGMAX, SILENCE)
