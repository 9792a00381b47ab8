"""Ops that repeat values along axes: Caffe's Bias (a bias broadcast over the dimensions
around `axis`, learned or given as a second input), scale_mul (a second input that
multiplies, broadcast the same way: Caffe's Scale with two inputs, the gate of a
squeeze-and-excitation block) and Tile (copies along one axis). The backward of Bias and
Tile sums the output gradient over the repeated positions and reads nothing from the
forward; scale_mul's dX reads the factor and its dS the input.

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
    """(outer, dim, inner) of the input around the bias, for either bias op (and around the
    factor of scale_mul)."""
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


def _second_input_infer(op: str, what: str):
    """The shape rule of an op whose second input broadcasts over x from `axis` on."""
    def infer(ctx: OpCtx) -> TensorType:
        x, b = ctx.inputs
        if b.shape:
            axis = canonical_axis(ctx.attrs["axis"], len(x.shape), op, x.shape)
            if x.shape[axis:axis + len(b.shape)] != b.shape:
                raise ValueError(f"{what} {b} does not match {x} from axis {axis} (expected "
                                 f"the shape {x.shape[axis:axis + len(b.shape)]} or a "
                                 "scalar)")
        if b.dtype != x.dtype:
            raise ValueError(f"{what} {b} must have the element type of {x}")
        return x
    return infer


BIAS_ADD = OpDef(
    name="bias_add",
    family="broadcast",
    doc="x plus the second input b, whose shape is that of x's dimensions from `axis` "
        "on (as many as b has) or a scalar, repeated over the others (Caffe Bias with two "
        "inputs).",
    ports=(Port("x"), Port("b")),
    attrs=(AttrSpec("axis", "int", 1),),
    infer=_second_input_infer("bias_add", "bias"),
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


# ---- scale_mul -------------------------------------------------------------------------
def _scale_mul(ctx, x, s):
    outer, dim, inner = bias_split(ctx)
    return (x.reshape(outer, dim, inner) * s.reshape(1, dim, 1)).reshape(x.shape)


def _scale_mul_ds(ctx, saved, dout, index):
    outer, dim, inner = bias_split(ctx)
    prod = dout.reshape(outer, dim, inner) * saved["x"].reshape(outer, dim, inner)
    return prod.sum(axis=(0, 2)).reshape(ctx.inputs[1].shape)


SCALE_MUL = OpDef(
    name="scale_mul",
    family="broadcast",
    doc="x times the second input s, whose shape is that of x's dimensions from `axis` on "
        "(as many as s has) or a scalar, repeated over the others (Caffe Scale with two "
        "inputs; a squeeze-and-excitation gate [N, C] at axis 0 of [N, C, H, W]).",
    ports=(Port("x"), Port("s")),
    attrs=(AttrSpec("axis", "int", 1),),
    infer=_second_input_infer("scale_mul", "factor"),
    flops=in_numel,
    grads=(GradRule("x", frozenset({"s"}), in_numel,
                    lambda ctx, saved, dout, i: _scale_mul(ctx, dout, saved["s"])),
           GradRule("s", frozenset({"x"}), lambda ctx: 2 * ctx.x.numel, _scale_mul_ds)),
    forward_ref=lambda ctx, inputs, params, training, rng: (
        _scale_mul(ctx, inputs[0], inputs[1]), {}),
    # on CUDA, dX (dout * s) is the forward's kernel run on dout
    kernels={"cpu": {"fwd": "broadcast.scale_mul_fwd", "dx:x": "broadcast.scale_mul_dx",
                     "dx:s": "broadcast.scale_mul_ds"},
             "cuda": {"fwd": "broadcast.scale_mul_fwd", "dx:x": "broadcast.scale_mul_fwd",
                      "dx:s": "broadcast.scale_mul_ds"}},
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

OPS = (BIAS, BIAS_ADD, TILE, SCALE_MUL)
