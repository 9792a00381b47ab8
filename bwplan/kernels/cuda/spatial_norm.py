"""Launch geometry of cuda/spatial_norm.cu: MVN takes one block per row (per_channel over
the rows); within-channel LRN is a grid-stride loop that also needs the plane size."""
from __future__ import annotations

from bwplan.kernels.cuda.limits import (Launch, check_index, f32, flag, grid_stride, i32, i64,
                                        per_channel, ptr)
from bwplan.ops.spatial_norm import mvn_rows


def mvn_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    a = ctx.attrs
    num, dim = mvn_rows(ctx)
    return [per_channel("mvn_fwd", num, ptr(inputs[0]), ptr(out), ptr(aux.get("std")),
                        i64(dim), flag(a["normalize_variance"]), f32(a["eps"]))]


def mvn_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    a = ctx.attrs
    num, dim = mvn_rows(ctx)
    return [per_channel("mvn_dx", num, ptr(saved.get("out")), ptr(saved.get("std")), ptr(dout),
                        ptr(out), i64(dim), flag(a["normalize_variance"]), f32(a["eps"]),
                        flag(accumulate))]


def _lrn_args(ctx) -> tuple:
    n, c, h, w = ctx.x.shape
    check_index(h * w)
    a = ctx.attrs
    return (i64(ctx.x.numel), i32(h), i32(w), i32(a["size"]), f32(a["alpha"]),
            f32(a["beta"]))


def lrn_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    return [grid_stride("lrn_within_channel_fwd", ctx.x.numel, env, ptr(inputs[0]), ptr(out),
                        ptr(aux.get("scale")), *_lrn_args(ctx))]


def lrn_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    return [grid_stride("lrn_within_channel_dx", ctx.x.numel, env, ptr(saved["x"]),
                        ptr(saved["out"]), ptr(saved["scale"]), ptr(dout), ptr(out),
                        *_lrn_args(ctx), flag(accumulate))]


LAUNCH = {
    ("mvn", "fwd"): mvn_fwd, ("mvn", "dx:x"): mvn_dx,
    ("lrn_within_channel", "fwd"): lrn_fwd, ("lrn_within_channel", "dx:x"): lrn_dx,
}
