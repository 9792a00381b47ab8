"""Launch geometry of cuda/unpool.cu: grid-stride with 256 threads, one thread per output
element (the mask, the zeroing) or per input element (the unpooling scatter, its dX)."""
from __future__ import annotations

from bwplan.kernels.cuda.limits import Launch, check_index, flag, grid_stride, i32, i64, ptr
from bwplan.kernels.cuda.pool import shape as pool_shape


def maxpool_mask_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    return [grid_stride("maxpool_mask_fwd", ctx.out.numel, env, ptr(inputs[0]), ptr(out),
                        *map(i32, pool_shape(ctx)))]


def _planes(ctx) -> tuple[int, int]:
    """(input plane, output plane) sizes."""
    h, w = ctx.x.shape[2:]
    ho, wo = ctx.out.shape[2:]
    check_index(h * w, ho * wo)
    return h * w, ho * wo


def max_unpool_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    in_plane, out_plane = _planes(ctx)
    return [grid_stride("max_unpool_zero", ctx.out.numel, env, ptr(out), i64(ctx.out.numel)),
            grid_stride("max_unpool_fwd", ctx.x.numel, env, ptr(inputs[0]), ptr(inputs[1]),
                        ptr(out), i64(ctx.x.numel), i32(in_plane), i32(out_plane))]


def max_unpool_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    in_plane, out_plane = _planes(ctx)
    return [grid_stride("max_unpool_dx", ctx.x.numel, env, ptr(saved["mask"]), ptr(dout),
                        ptr(out), i64(ctx.x.numel), i32(in_plane), i32(out_plane),
                        flag(accumulate))]


LAUNCH = {
    ("maxpool_mask", "fwd"): maxpool_mask_fwd,
    ("max_unpool", "fwd"): max_unpool_fwd,
    ("max_unpool", "dx:x"): max_unpool_dx,
}
# the forward zeroes the output before it scatters
ALSO = {("max_unpool", "fwd"): ("max_unpool_zero",)}
