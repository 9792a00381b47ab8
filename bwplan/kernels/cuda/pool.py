"""Launch geometry of cuda/pool.cu: one thread per output element (forward) or input
element (dX, which gathers), grid-stride with 256 threads; the global forms take one warp
per plane in the forward."""
from __future__ import annotations

from bwplan.kernels.cuda.limits import (Launch, check_index, flag, grid_stride, i32, i64,
                                        ptr, warp_rows)
from bwplan.ops._shapes import pair


def shape(ctx) -> tuple[int, ...]:
    """PoolShape (pool.cu): nc, h, w, ho, wo, kh, kw, sh, sw, ph, pw, count_pad (1 for max
    pooling, where it is not read)."""
    n, c, h, w = ctx.x.shape
    ho, wo = ctx.out.shape[2:]
    kernel = pair(ctx.attrs["kernel"])
    stride = kernel if ctx.attrs["stride"] is None else pair(ctx.attrs["stride"])
    check_index(n * c, h * w)
    count_pad = int(ctx.attrs.get("count_pad", True))
    return (n * c, h, w, ho, wo, *kernel, *stride, *pair(ctx.attrs["pad"]), count_pad)


def maxpool_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    return [grid_stride("maxpool_fwd", ctx.out.numel, env, ptr(inputs[0]), ptr(out),
                        ptr(aux.get("argmax")), *map(i32, shape(ctx)))]


def maxpool_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    return [grid_stride("maxpool_dx", ctx.x.numel, env, ptr(saved["argmax"]), ptr(dout),
                        ptr(out), *map(i32, shape(ctx)), flag(accumulate))]


def avgpool_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    return [grid_stride("avgpool_fwd", ctx.out.numel, env, ptr(inputs[0]), ptr(out),
                        *map(i32, shape(ctx)))]


def avgpool_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    return [grid_stride("avgpool_dx", ctx.x.numel, env, ptr(dout), ptr(out),
                        *map(i32, shape(ctx)), flag(accumulate))]


def _planes(ctx) -> tuple[int, int]:
    n, c, h, w = ctx.x.shape
    check_index(h * w)
    return n * c, h * w


def global_maxpool_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    nc, hw = _planes(ctx)
    return [warp_rows("global_maxpool_fwd", nc, ptr(inputs[0]), ptr(out),
                      ptr(aux.get("argmax")), i64(nc), i32(hw))]


def global_maxpool_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    nc, hw = _planes(ctx)
    return [grid_stride("global_maxpool_dx", nc * hw, env, ptr(saved["argmax"]), ptr(dout),
                        ptr(out), i64(nc), i32(hw), flag(accumulate))]


def global_avgpool_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    nc, hw = _planes(ctx)
    return [warp_rows("global_avgpool_fwd", nc, ptr(inputs[0]), ptr(out), i64(nc), i32(hw))]


def global_avgpool_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    nc, hw = _planes(ctx)
    return [grid_stride("global_avgpool_dx", nc * hw, env, ptr(dout), ptr(out), i64(nc),
                        i32(hw), flag(accumulate))]


LAUNCH = {
    ("maxpool", "fwd"): maxpool_fwd, ("maxpool", "dx:x"): maxpool_dx,
    ("avgpool", "fwd"): avgpool_fwd, ("avgpool", "dx:x"): avgpool_dx,
    ("global_maxpool", "fwd"): global_maxpool_fwd,
    ("global_maxpool", "dx:x"): global_maxpool_dx,
    ("global_avgpool", "fwd"): global_avgpool_fwd,
    ("global_avgpool", "dx:x"): global_avgpool_dx,
}
