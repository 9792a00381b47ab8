"""Max unpooling (SegNet's Upsample) and the max-pooling mask it reads.

Caffe's Pooling layer may write a second top: the mask, the flat position (h * W + w) of
each window's winner in its input plane, as floats. A bwplan op has one output, so the mask
is an op of its own, `maxpool_mask`, with maxpool's window attributes: it computes the same
argmax as `maxpool` (the first maximum in row-major window order wins, padding never
wins) and outputs it as a float tensor of the pooled shape. It is not differentiable: a
position has no gradient. The Caffe importer turns a Pooling layer with two tops into a
`maxpool` and a `maxpool_mask` of the same bottom.

`max_unpool(x, mask)` places each value of x at its mask position in a zeroed plane of the
output size (SegNet's UpsampleLayer, PyTorch's max_unpool2d); its dX is the gather
dx[i] = dout[mask[i]], and nothing flows into the mask. Two values sent to one position
(possible only with overlapping windows): the later in row-major order lands on the CPU;
on CUDA one of them does, as in Caffe's GPU kernel. Every one of them receives the
position's gradient, as in Caffe. A position outside the output plane is skipped.
"""
from __future__ import annotations

import numpy as np

from bwplan.ir.types import TensorType
from bwplan.ops._shapes import pair
from bwplan.ops.opdef import AttrSpec, GradRule, on_every_target, OpCtx, OpDef, Port
from bwplan.ops.pool import MAXPOOL, _max_planes, _pool_infer, _pool_flops, _window


def _mask_fwd(ctx, inputs, params, training, rng):
    kernel, stride, pad = _window(ctx)
    _, arg = _max_planes(inputs[0], kernel, stride, pad, ctx.out.shape[2:])
    return arg.astype(inputs[0].dtype), {}


MAXPOOL_MASK = OpDef(
    name="maxpool_mask",
    family="unpool",
    doc="The flat position (h * W + w) in its input plane of each max-pooling window's "
        "winner, as floats (Caffe Pooling MAX's second top): what `max_unpool` reads. "
        "Takes maxpool's window attributes; not differentiable.",
    ports=(Port("x", differentiable=False),),
    attrs=MAXPOOL.attrs,
    infer=_pool_infer,
    flops=_pool_flops,
    forward_ref=_mask_fwd,
    kernels=on_every_target({"fwd": "unpool.maxpool_mask_fwd"}),
)


def unpool_size(ctx: OpCtx) -> tuple[int, int]:
    """(H, W) of the output: `size` when given, else the input's times `scale`."""
    if ctx.attrs["size"] is not None:
        return pair(ctx.attrs["size"])
    sh, sw = pair(ctx.attrs["scale"])
    return ctx.x.shape[2] * sh, ctx.x.shape[3] * sw


def _unpool_infer(ctx: OpCtx) -> TensorType:
    x, mask = ctx.inputs
    if len(x.shape) != 4:
        raise ValueError(f"max_unpool expects an NCHW input, got {x}")
    if mask.shape != x.shape:
        raise ValueError(f"the mask {mask} must have the shape of the input {x}")
    h, w = unpool_size(ctx)
    if h < x.shape[2] or w < x.shape[3]:
        raise ValueError(f"the output size {h} x {w} is smaller than the input's "
                         f"{x.shape[2]} x {x.shape[3]}")
    return x.with_shape(x.shape[0], x.shape[1], h, w)


def _positions(mask: np.ndarray, plane: int) -> tuple[np.ndarray, np.ndarray]:
    """[N*C, H*W] integer positions of the mask and whether each lies in the output."""
    where = mask.reshape(mask.shape[0] * mask.shape[1], -1).astype(np.int64)
    return where, (where >= 0) & (where < plane)


def _unpool_fwd(ctx, inputs, params, training, rng):
    x, mask = inputs
    n, c, h, w = ctx.out.shape
    where, ok = _positions(mask, h * w)
    out = np.zeros((n * c, h * w), dtype=x.dtype)
    values = x.reshape(n * c, -1)
    for t in range(n * c):      # fancy assignment keeps the last of repeated positions
        out[t, where[t, ok[t]]] = values[t, ok[t]]
    return out.reshape(ctx.out.shape), {}


def _unpool_dx(ctx, saved, dout, index):
    n, c, h, w = dout.shape
    where, ok = _positions(saved["mask"], h * w)
    flat = dout.reshape(n * c, -1)
    dx = np.take_along_axis(flat, np.where(ok, where, 0), 1) * ok
    return dx.reshape(ctx.x.shape)


MAX_UNPOOL = OpDef(
    name="max_unpool",
    family="unpool",
    doc="Each value of an NCHW input placed at its `mask` position (h * W + w, from "
        "`maxpool_mask`) in a zeroed plane of the output size (SegNet Upsample, PyTorch "
        "max_unpool2d); no gradient flows into the mask.",
    ports=(Port("x"), Port("mask", differentiable=False)),
    attrs=(AttrSpec("scale", "ints", 2, doc="output size = input size times this, s or "
                    "[sh, sw]", at_least=1, arity=(1, 2)),
           AttrSpec("size", "ints", None, doc="the output's [H, W] (overrides scale)",
                    at_least=1, arity=(2,))),
    infer=_unpool_infer,
    flops=lambda ctx: ctx.out.numel,
    grads=(GradRule("x", frozenset({"mask"}), lambda ctx: ctx.x.numel, _unpool_dx),),
    forward_ref=_unpool_fwd,
    kernels=on_every_target({"fwd": "unpool.max_unpool_fwd", "dx:x": "unpool.max_unpool_dx"}),
)

OPS = (MAXPOOL_MASK, MAX_UNPOOL)
