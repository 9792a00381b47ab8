"""Ops of the Caffe forks that rearrange a tensor's positions: crop (Caffe Crop, FCN) and
permute (SSD's Permute).

Both move data and compute nothing, like the shape family, and neither backward reads a
forward value: crop's dX is dY written into zeros at the crop's offsets, permute's dX is
dY permuted back. Crop's second input only gives the output its size: it is not
differentiable, so no gradient flows into it (Caffe's CropLayer leaves it untouched too).
"""
from __future__ import annotations

import numpy as np

from bwplan.ir.types import TensorType
from bwplan.ops.opdef import AttrSpec, GradRule, OpCtx, OpDef, Port, zero_flops


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for a {rank}-D input")
    return axis % rank


# ---- crop ------------------------------------------------------------------------------
def crop_offsets(ctx: OpCtx) -> tuple[int, ...]:
    """The offset on every axis of the input: 0 before `axis`; after it, Caffe's rule: one
    offset for every cropped axis, or one per cropped axis, or 0."""
    x, like = ctx.inputs[0].shape, ctx.inputs[1].shape
    if len(like) != len(x):
        raise ValueError(f"crop: the reference input has {len(like)} dimensions, the input "
                         f"{len(x)}")
    axis = _axis(ctx.attrs["axis"], len(x))
    given = tuple(ctx.attrs["offset"])
    n = len(x) - axis
    if len(given) not in (0, 1, n):
        raise ValueError(f"crop: {len(given)} offsets for {n} cropped axes; give one, one "
                         "per cropped axis, or none")
    offsets = (0,) * axis + tuple(given[0 if len(given) == 1 else i] if given else 0
                                  for i in range(n))
    for i in range(axis, len(x)):
        if offsets[i] < 0 or offsets[i] + like[i] > x[i]:
            raise ValueError(f"crop: dimension {i} of size {like[i]} at offset {offsets[i]} "
                             f"does not fit inside the input's {x[i]}")
    return offsets


def crop_window(ctx: OpCtx) -> tuple[slice, ...]:
    out = _crop_shape(ctx)
    return tuple(slice(o, o + d) for o, d in zip(crop_offsets(ctx), out))


def _crop_shape(ctx: OpCtx) -> tuple[int, ...]:
    x, like = ctx.inputs[0].shape, ctx.inputs[1].shape
    axis = _axis(ctx.attrs["axis"], len(x))
    return x[:axis] + like[axis:]


def _crop_infer(ctx: OpCtx) -> TensorType:
    crop_offsets(ctx)
    return ctx.x.with_shape(*_crop_shape(ctx))


def _crop_fwd(ctx, inputs, params, training, rng):
    return inputs[0][crop_window(ctx)].copy(), {}


def _crop_dx(ctx, saved, dout, index):
    dx = np.zeros(ctx.x.shape, dtype=dout.dtype)
    dx[crop_window(ctx)] = dout
    return dx


CROP = OpDef(
    name="crop",
    family="spatial",
    doc="The part of x the size of `like` from dimension `axis` on, starting at `offset` "
        "(Caffe Crop): one offset for every cropped dimension, one per cropped dimension, "
        "or none (0). `like` gives only the size and takes no gradient.",
    ports=(Port("x"), Port("like", differentiable=False)),
    attrs=(AttrSpec("axis", "int", 2, doc="first dimension cropped"),
           AttrSpec("offset", "ints", (), doc="where the crop starts in each cropped "
                                              "dimension")),
    infer=_crop_infer,
    flops=zero_flops,
    grads=(GradRule("x", frozenset(), zero_flops, _crop_dx),),
    forward_ref=_crop_fwd,
    kernels={"cpu": {"fwd": "spatial.crop_fwd", "dx:x": "spatial.crop_dx"},
             "cuda": {"fwd": "spatial.gather4", "dx:x": "spatial.crop_dx"}},
)


# ---- permute ---------------------------------------------------------------------------
def permute_order(ctx: OpCtx) -> tuple[int, ...]:
    """SSD's order: the axes given, then the rest in their order."""
    rank = len(ctx.x.shape)
    given = [_axis(a, rank) for a in ctx.attrs["order"]]
    if len(set(given)) != len(given):
        raise ValueError(f"permute: order {list(ctx.attrs['order'])} repeats an axis")
    return tuple(given + [a for a in range(rank) if a not in given])


def _permute_infer(ctx: OpCtx) -> TensorType:
    return ctx.x.with_shape(*(ctx.x.shape[a] for a in permute_order(ctx)))


def _permute_fwd(ctx, inputs, params, training, rng):
    return np.ascontiguousarray(np.transpose(inputs[0], permute_order(ctx))), {}


def _permute_dx(ctx, saved, dout, index):
    return np.ascontiguousarray(np.transpose(dout, np.argsort(permute_order(ctx))))


PERMUTE = OpDef(
    name="permute",
    family="spatial",
    doc="The input's dimensions reordered: output dimension i is input dimension order[i]; "
        "dimensions not named follow in their order (SSD Permute).",
    ports=(Port("x"),),
    attrs=(AttrSpec("order", "ints", (), doc="the input dimension of each output "
                                             "dimension"),),
    infer=_permute_infer,
    flops=zero_flops,
    grads=(GradRule("x", frozenset(), zero_flops, _permute_dx),),
    forward_ref=_permute_fwd,
    kernels={"cpu": {"fwd": "spatial.permute_fwd", "dx:x": "spatial.permute_dx"},
             "cuda": {"fwd": "spatial.gather4", "dx:x": "spatial.gather4"}},
)

OPS = (CROP, PERMUTE)
