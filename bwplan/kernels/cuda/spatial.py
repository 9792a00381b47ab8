"""Launch geometry of cuda/spatial.cu: crop and permute as 4-D gathers (spatial.cu's
header). Tensors of more than four dimensions are refused here, before any launch."""
from __future__ import annotations

import numpy as np

from bwplan.kernels.cuda.limits import Launch, Unsupported, flag, grid_stride, i64, ptr
from bwplan.ops.spatial import crop_offsets, permute_order

RANK = 4


def _four(values, fill) -> list[int]:
    """`values` padded in front to four entries."""
    values = list(values)
    if len(values) > RANK:
        raise Unsupported(f"the CUDA crop and permute take at most {RANK} dimensions, not "
                          f"{len(values)}")
    return [fill] * (RANK - len(values)) + values


def _strides(shape) -> list[int]:
    return [int(s) for s in np.cumprod([1] + list(shape[::-1]))[:-1][::-1]]


def _gather(src, dst, dims, strides, offset, n, accumulate, env) -> Launch:
    d = _four(dims, 1)
    s = _four(strides, 0)
    return grid_stride("gather4", n, env, ptr(src), ptr(dst), i64(d[1]), i64(d[2]), i64(d[3]),
                       *(i64(v) for v in s), i64(offset), i64(n), flag(accumulate))


def crop_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    strides = _strides(ctx.x.shape)
    offset = sum(o * s for o, s in zip(crop_offsets(ctx), strides))
    return [_gather(inputs[0], out, ctx.out.shape, strides, offset, ctx.out.numel, False,
                    env)]


def crop_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    x, e = _four(ctx.x.shape, 1), _four(ctx.out.shape, 1)
    o = _four(crop_offsets(ctx), 0)
    n = ctx.x.numel
    return [grid_stride("crop_dx", n, env, ptr(dout), ptr(out), *(i64(v) for v in x[1:]),
                        *(i64(v) for v in e), *(i64(v) for v in o), i64(n),
                        flag(accumulate))]


def permute_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    strides = _strides(ctx.x.shape)
    order = permute_order(ctx)
    return [_gather(inputs[0], out, ctx.out.shape, [strides[a] for a in order], 0,
                    ctx.out.numel, False, env)]


def permute_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    strides = _strides(ctx.out.shape)
    inverse = np.argsort(permute_order(ctx))
    return [_gather(dout, out, ctx.x.shape, [strides[a] for a in inverse], 0, ctx.x.numel,
                    accumulate, env)]


LAUNCH = {
    ("crop", "fwd"): crop_fwd, ("crop", "dx:x"): crop_dx,
    ("permute", "fwd"): permute_fwd, ("permute", "dx:x"): permute_dx,
}
