"""Launch geometry of cuda/broadcast.cu: the bias, scale_mul and tile kernels take the
[outer, dim, inner] sizes the op module computes (bias_split, tile_split); bias_dx takes the
default launch (default.py). The gradient of a bias, a parameter or a second input, and of
scale_mul's factor takes one block per element of it; scale_mul's dX runs its forward's
kernel on dY."""
from __future__ import annotations

from bwplan.kernels.cuda.limits import Launch, flag, grid_stride, i32, i64, per_channel, ptr
from bwplan.ops.broadcast import bias_split, tile_split


def _bias_fwd(bias_of):
    def fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
        outer, dim, inner = bias_split(ctx)
        n = ctx.x.numel
        return [grid_stride("bias_fwd", n, env, ptr(inputs[0]), ptr(bias_of(inputs, params)),
                            ptr(out), i64(n), i64(dim), i64(inner))]
    return fwd


def _bias_sum(ctx, dout, out, accumulate) -> list[Launch]:
    outer, dim, inner = bias_split(ctx)
    return [per_channel("bias_dw", dim, ptr(dout), ptr(out), i64(outer), i64(dim), i64(inner),
                        flag(accumulate))]


def bias_dw(ctx, saved, dout, out, accumulate, env) -> list[Launch]:
    return _bias_sum(ctx, dout, out, accumulate)


def bias_add_db(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    return _bias_sum(ctx, dout, out, accumulate)


def scale_mul_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    _, dim, inner = bias_split(ctx)
    n = ctx.x.numel
    return [grid_stride("scale_mul_fwd", n, env, ptr(inputs[0]), ptr(inputs[1]), ptr(out),
                        i64(n), i64(dim), i64(inner), flag(False))]


def scale_mul_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    # dX = dout * s: the forward's kernel, on dout
    _, dim, inner = bias_split(ctx)
    n = ctx.x.numel
    return [grid_stride("scale_mul_fwd", n, env, ptr(dout), ptr(saved["s"]), ptr(out),
                        i64(n), i64(dim), i64(inner), flag(accumulate))]


def scale_mul_ds(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    outer, dim, inner = bias_split(ctx)
    return [per_channel("scale_mul_ds", dim, ptr(dout), ptr(saved["x"]), ptr(out), i64(outer),
                        i64(dim), i64(inner), flag(accumulate))]


def tile_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    _, inner = tile_split(ctx)
    n = ctx.out.numel
    return [grid_stride("tile_fwd", n, env, ptr(inputs[0]), ptr(out), i64(n), i64(inner),
                        i32(ctx.attrs["tiles"]))]


def tile_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    _, inner = tile_split(ctx)
    n = ctx.x.numel
    return [grid_stride("tile_dx", n, env, ptr(dout), ptr(out), i64(n), i64(inner),
                        i32(ctx.attrs["tiles"]), flag(accumulate))]


LAUNCH = {
    ("bias", "fwd"): _bias_fwd(lambda inputs, params: params["bias"]),
    ("bias", "dw:bias"): bias_dw,
    ("bias_add", "fwd"): _bias_fwd(lambda inputs, params: inputs[1]),
    ("bias_add", "dx:b"): bias_add_db,
    ("tile", "fwd"): tile_fwd, ("tile", "dx:x"): tile_dx,
    ("scale_mul", "fwd"): scale_mul_fwd, ("scale_mul", "dx:x"): scale_mul_dx,
    ("scale_mul", "dx:s"): scale_mul_ds,
}
