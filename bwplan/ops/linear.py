"""Fully connected layer, as Caffe's InnerProduct: the input is flattened from dimension 1
([N, ...] -> [N, K]) and y = x W^T + b with W [out, K].

dX reads only W, dW reads only x, dB reads nothing but dY.
"""
from __future__ import annotations

import math

from bwplan.ir.types import TensorType
from bwplan.ops.opdef import AttrSpec, GradRule, on_every_target, OpCtx, OpDef, ParamSlot, Port


def _k(ctx: OpCtx) -> int:
    return math.prod(ctx.x.shape[1:])


def _infer(ctx: OpCtx) -> TensorType:
    if len(ctx.x.shape) < 2:
        raise ValueError(f"linear expects [N, ...] input, got {ctx.x}")
    return ctx.x.with_shape(ctx.x.shape[0], ctx.attrs["out"])


def _macs(ctx: OpCtx) -> int:
    return ctx.x.shape[0] * _k(ctx) * ctx.attrs["out"]


def _forward(ctx, inputs, params, training, rng):
    x = inputs[0].reshape(inputs[0].shape[0], -1)
    out = x @ params["weight"].T
    if "bias" in params:
        out = out + params["bias"]
    return out, {}


def _dx(ctx, saved, dout, index):
    return (dout @ saved["weight"]).reshape(ctx.x.shape)


def _dw(ctx, saved, dout, index):
    return dout.T @ saved["x"].reshape(dout.shape[0], -1)


def _db(ctx, saved, dout, index):
    return dout.sum(axis=0)


LINEAR = OpDef(
    name="linear",
    family="linear",
    doc="Fully connected layer; input flattened from dimension 1 (Caffe InnerProduct).",
    ports=(Port("x"),),
    attrs=(
        AttrSpec("out", "int", doc="output features", at_least=1),
        AttrSpec("bias", "bool", True, doc="add a learned bias"),
    ),
    params=(
        ParamSlot("weight", lambda ctx: (ctx.attrs["out"], _k(ctx))),
        ParamSlot("bias", lambda ctx: (ctx.attrs["out"],), enabled=lambda a: a["bias"],
                  init="zeros"),
    ),
    infer=_infer,
    flops=lambda ctx: 2 * _macs(ctx) + (ctx.out.numel if ctx.attrs["bias"] else 0),
    grads=(
        GradRule("x", frozenset({"weight"}), lambda ctx: 2 * _macs(ctx), _dx),
        GradRule("weight", frozenset({"x"}), lambda ctx: 2 * _macs(ctx), _dw, by_rows=True),
        GradRule("bias", frozenset(), lambda ctx: ctx.out.numel, _db, by_rows=True,
                 channel_sum=True),
    ),
    forward_ref=_forward,
    kernels=on_every_target({
        "fwd": "linear.linear_fwd",
        "dx:x": "linear.linear_dx",
        "dw:weight": "linear.linear_dw",
        "dw:bias": "linear.linear_db"}),
)

OPS = (LINEAR,)
