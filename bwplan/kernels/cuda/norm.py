"""Launch geometry of cuda/norm.cu: per-channel reductions take one block of 256 threads
per channel; per-element passes are grid-stride loops; softmax takes one warp per row.
Every tensor is seen as [N, C, S] (S: the product of the dimensions after the channel)."""
from __future__ import annotations

import math

from bwplan.kernels.cuda.limits import (Launch, check_index, f32, flag, grid_stride, i32,
                                        i64, per_channel, ptr, warp_rows)
from bwplan.ops.norm import batchnorm_mode


def ncs(shape: tuple[int, ...]) -> tuple[int, int, int]:
    check_index(shape[0], shape[1])
    return shape[0], shape[1], math.prod(shape[2:])


# ---- batchnorm ---------------------------------------------------------------------------
def batchnorm_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n, c, s = ncs(ctx.x.shape)
    a = ctx.attrs
    mode = batchnorm_mode(a)
    use_batch = training and mode.batch
    return [per_channel("batchnorm_fwd", c, ptr(inputs[0]), ptr(out), ptr(params["mean"]),
                        ptr(params["var"]), ptr(params.get("weight")), ptr(params.get("bias")),
                        ptr(aux.get("batch_stats")), i32(n), i32(c), i64(s), f32(a["eps"]),
                        f32(a["momentum"]), flag(use_batch),
                        flag(training and mode.update_stats))]


def batchnorm_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    n, c, s = ncs(ctx.x.shape)
    a = ctx.attrs
    return [per_channel("batchnorm_dx", c, ptr(saved.get("x")), ptr(dout), ptr(out),
                        ptr(saved.get("weight")), ptr(saved.get("var")),
                        ptr(saved.get("batch_stats")), i32(n), i32(c), i64(s), f32(a["eps"]),
                        flag(batchnorm_mode(a).batch), flag(accumulate))]


def batchnorm_dw(ctx, saved, dout, out, accumulate, env) -> list[Launch]:
    n, c, s = ncs(ctx.x.shape)
    a = ctx.attrs
    return [per_channel("batchnorm_dw", c, ptr(saved["x"]), ptr(dout), ptr(out),
                        ptr(saved.get("mean")), ptr(saved.get("var")),
                        ptr(saved.get("batch_stats")), i32(n), i32(c), i64(s), f32(a["eps"]),
                        flag(batchnorm_mode(a).saves_stats), flag(accumulate))]


def _channel_sum(kernel: str):
    def db(ctx, saved, dout, out, accumulate, env) -> list[Launch]:
        n, c, s = ncs(ctx.x.shape)
        return [per_channel(kernel, c, ptr(dout), ptr(out), i32(n), i32(c), i64(s),
                            flag(accumulate))]
    return db


# ---- scale -------------------------------------------------------------------------------
def scale_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n, c, s = ncs(ctx.x.shape)
    total = ctx.x.numel
    return [grid_stride("scale_fwd", total, env, ptr(inputs[0]), ptr(out),
                        ptr(params["weight"]), ptr(params.get("bias")), i64(total), i32(c),
                        i64(s))]


def scale_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    n, c, s = ncs(ctx.x.shape)
    total = ctx.x.numel
    return [grid_stride("scale_dx", total, env, ptr(saved["weight"]), ptr(dout), ptr(out),
                        i64(total), i32(c), i64(s), flag(accumulate))]


def scale_dw(ctx, saved, dout, out, accumulate, env) -> list[Launch]:
    n, c, s = ncs(ctx.x.shape)
    return [per_channel("scale_dw", c, ptr(saved["x"]), ptr(dout), ptr(out), i32(n), i32(c),
                        i64(s), flag(accumulate))]


# ---- lrn ---------------------------------------------------------------------------------
def _lrn_attrs(ctx):
    a = ctx.attrs
    return i32(a["size"]), f32(a["alpha"]), f32(a["beta"])


def lrn_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n, c, s = ncs(ctx.x.shape)
    total = ctx.x.numel
    return [grid_stride("lrn_fwd", total, env, ptr(inputs[0]), ptr(out), ptr(aux.get("scale")),
                        i64(total), i32(c), i64(s), *_lrn_attrs(ctx), f32(ctx.attrs["k"]))]


def lrn_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    n, c, s = ncs(ctx.x.shape)
    total = ctx.x.numel
    return [grid_stride("lrn_dx", total, env, ptr(saved["x"]), ptr(saved["out"]),
                        ptr(saved["scale"]), ptr(dout), ptr(out), i64(total), i32(c), i64(s),
                        *_lrn_attrs(ctx), flag(accumulate))]


# ---- softmax -----------------------------------------------------------------------------
def _rows(ctx) -> tuple[int, int, int]:
    shape = ctx.x.shape
    axis = ctx.attrs["axis"] % len(shape)
    length = shape[axis]
    check_index(length)
    return math.prod(shape[:axis]), length, math.prod(shape[axis + 1:])


def softmax_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    outer, length, inner = _rows(ctx)
    return [warp_rows("softmax_fwd", outer * inner, ptr(inputs[0]), ptr(out), i64(outer),
                      i32(length), i64(inner))]


def softmax_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    outer, length, inner = _rows(ctx)
    return [warp_rows("softmax_dx", outer * inner, ptr(saved["out"]), ptr(dout), ptr(out),
                      i64(outer), i32(length), i64(inner), flag(accumulate))]


LAUNCH = {
    ("batchnorm", "fwd"): batchnorm_fwd, ("batchnorm", "dx:x"): batchnorm_dx,
    ("batchnorm", "dw:weight"): batchnorm_dw, ("batchnorm", "dw:bias"):
        _channel_sum("batchnorm_db"),
    ("scale", "fwd"): scale_fwd, ("scale", "dx:x"): scale_dx, ("scale", "dw:weight"): scale_dw,
    ("scale", "dw:bias"): _channel_sum("scale_db"),
    ("lrn", "fwd"): lrn_fwd, ("lrn", "dx:x"): lrn_dx,
    ("softmax", "fwd"): softmax_fwd, ("softmax", "dx:x"): softmax_dx,
}
