"""Ops that repeat values along axes: Caffe's Bias (a bias broadcast over the dimensions
around `axis`, learned or given as a second input) and Tile (copies along one axis).
Their backward sums the output gradient over the repeated positions and reads nothing
from the forward.

Every tensor here is seen as [outer, dim, inner] around the repeated span (`split`), so
the kernels need no more than three sizes.
"""
from __future__ import annotations

import math

import numpy as np

from bwplan.ir.types import TensorType
from bwplan.ops.opdef import (REQUIRED, AttrSpec, GradRule, in_numel, on_every_target, OpCtx,
                              OpDef, ParamSlot, Port, zero_flops)


def canonical_axis(axis: int, rank: int, op: str, shape) -> int:
    a = axis + rank if axis < 0 else axis
    if not 0 <= a < rank:
        raise ValueError(f"{op} axis={axis} is out of range for a shape {tuple(shape)}")
    return a


def split(shape: tuple[int, ...], axis: int, count: int) -> tuple[int, int, int]:
    """(outer, dim, inner): the elements before dimension `axis`, in dimensions
    axis .. axis + count - 1, and after them."""
    return (math.prod(shape[:axis]), math.prod(shape[axis:axis + count]),
            math.prod(shape[axis + count:]))


# ---- Bias ------------------------------------------------------------------------------
def _bias_span(ctx: OpCtx) -> tuple[int, int]:
    """(axis, count) of the dimensions the learned bias covers."""
    shape, a = ctx.x.shape, ctx.attrs
    axis = canonical_axis(a["axis"], len(shape), "bias", shape)
    count = len(shape) - axis if a["num_axes"] == -1 else a["num_axes"]
    if not 0 <= count <= len(shape) - axis:
        raise ValueError(f"bias num_axes={a['num_axes']} does not fit {ctx.x} from axis "
                         f"{axis}; give -1 (every dimension from axis on) or 0 to "
                         f"{len(shape) - axis}")
    return axis, count


def _bias_shape(ctx: OpCtx) -> tuple[int, ...]:
    # num_axes 0: Caffe's 0-d blob of one value is a vector of one here
    axis, count = _bias_span(ctx)
    return ctx.x.shape[axis:axis + count] or (1,)


def _bias_infer(ctx: OpCtx) -> TensorType:
    _bias_span(ctx)
    return ctx.x


def bias_split(ctx: OpCtx) -> tuple[int, int, int]:
    """(outer, dim, inner) of the input around the bias, for either bias op."""
    if ctx.inputs[1:]:
        b = ctx.inputs[1]
        if not b.shape:
            return ctx.x.numel, 1, 1   # a scalar bias, whatever the axis (as Caffe)
        axis = canonical_axis(ctx.attrs["axis"], len(ctx.x.shape), "bias_add", ctx.x.shape)
        return split(ctx.x.shape, axis, len(b.shape))
    axis, count = _bias_span(ctx)
    return split(ctx.x.shape, axis, count)


def _add_bias(ctx, x, b):
    outer, dim, inner = bias_split(ctx)
    return (x.reshape(outer, dim, inner) + b.reshape(1, dim, 1)).reshape(x.shape)


def _bias_grad(ctx, dout):
    outer, dim, inner = bias_split(ctx)
    return dout.reshape(outer, dim, inner).sum(axis=(0, 2))


BIAS = OpDef(
    name="bias",
    family="broadcast",
    doc="x plus a learned bias over the `num_axes` dimensions from `axis` (-1: every "
        "dimension from `axis` on; 0: one scalar), repeated over the others (Caffe Bias "
        "with one input).",
    ports=(Port("x"),),
    attrs=(AttrSpec("axis", "int", 1), AttrSpec("num_axes", "int", 1)),
    params=(ParamSlot("bias", _bias_shape, init="zeros"),),
    infer=_bias_infer,
    flops=in_numel,
    grads=(GradRule("x", frozenset(), zero_flops, lambda ctx, s, dout, i: dout),
           GradRule("bias", frozenset(), in_numel,
                    lambda ctx, s, dout, i: _bias_grad(ctx, dout).reshape(
                        _bias_shape(ctx)))),
    forward_ref=lambda ctx, inputs, params, training, rng: (
        _add_bias(ctx, inputs[0], params["bias"]), {}),
    kernels=on_every_target({"fwd": "broadcast.bias_fwd", "dx:x": "broadcast.bias_dx",
                             "dw:bias": "broadcast.bias_dw"}),
)


def _bias_add_infer(ctx: OpCtx) -> TensorType:
    x, b = ctx.inputs
    if b.shape:
        axis = canonical_axis(ctx.attrs["axis"], len(x.shape), "bias_add", x.shape)
        if x.shape[axis:axis + len(b.shape)] != b.shape:
            raise ValueError(f"bias {b} does not match {x} from axis {axis} (expected "
                             f"the shape {x.shape[axis:axis + len(b.shape)]} or a scalar)")
    if b.dtype != x.dtype:
        raise ValueError(f"bias {b} must have the element type of {x}")
    return x


BIAS_ADD = OpDef(
    name="bias_add",
    family="broadcast",
    doc="x plus the second input b, whose shape is that of x's dimensions from `axis` "
        "on (as many as b has) or a scalar, repeated over the others (Caffe Bias with two "
        "inputs).",
    ports=(Port("x"), Port("b")),
    attrs=(AttrSpec("axis", "int", 1),),
    infer=_bias_add_infer,
    flops=in_numel,
    grads=(GradRule("x", frozenset(), zero_flops, lambda ctx, s, dout, i: dout),
           GradRule("b", frozenset(), in_numel,
                    lambda ctx, s, dout, i: _bias_grad(ctx, dout).reshape(
                        ctx.inputs[1].shape))),
    forward_ref=lambda ctx, inputs, params, training, rng: (
        _add_bias(ctx, inputs[0], inputs[1]), {}),
    # the CUDA kernels of `bias` serve, given b's address for the parameter's
    kernels={"cpu": {"fwd": "broadcast.bias_add_fwd", "dx:x": "broadcast.bias_dx",
                     "dx:b": "broadcast.bias_add_db"},
             "cuda": {"fwd": "broadcast.bias_fwd", "dx:x": "broadcast.bias_dx",
                      "dx:b": "broadcast.bias_dw"}},
)


# ---- Tile ------------------------------------------------------------------------------
def tile_split(ctx: OpCtx) -> tuple[int, int]:
    """(outer, inner): the input's elements before `axis`, and from `axis` on (one block
    the output repeats `tiles` times)."""
    shape = ctx.x.shape
    axis = canonical_axis(ctx.attrs["axis"], len(shape), "tile", shape)
    return math.prod(shape[:axis]), math.prod(shape[axis:])


def _tile_infer(ctx: OpCtx) -> TensorType:
    shape, tiles = ctx.x.shape, ctx.attrs["tiles"]
    axis = canonical_axis(ctx.attrs["axis"], len(shape), "tile", shape)
    if tiles < 1:
        raise ValueError(f"tile tiles={tiles} must be at least 1")
    out = list(shape)
    out[axis] *= tiles
    return TensorType(ctx.x.dtype, tuple(out))


def _tile_fwd(ctx, inputs, params, training, rng):
    outer, inner = tile_split(ctx)
    x = inputs[0].reshape(outer, 1, inner)
    return np.repeat(x, ctx.attrs["tiles"], axis=1).reshape(ctx.out.shape), {}


def _tile_dx(ctx, saved, dout, index):
    outer, inner = tile_split(ctx)
    return dout.reshape(outer, ctx.attrs["tiles"], inner).sum(axis=1).reshape(ctx.x.shape)


TILE = OpDef(
    name="tile",
    family="broadcast",
    doc="`tiles` copies of the input along `axis`, each copy the whole block of "
        "dimensions from `axis` on (Caffe Tile).",
    ports=(Port("x"),),
    attrs=(AttrSpec("axis", "int", 1), AttrSpec("tiles", "int", REQUIRED)),
    infer=_tile_infer,
    flops=zero_flops,
    grads=(GradRule("x", frozenset(), lambda ctx: ctx.out.numel, _tile_dx),),
    forward_ref=_tile_fwd,
    kernels=on_every_target({"fwd": "broadcast.tile_fwd", "dx:x": "broadcast.tile_dx"}),
)

OPS = (BIAS, BIAS_ADD, TILE)
