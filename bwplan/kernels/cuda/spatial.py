"""Launch geometry of cuda/spatial.cu: crop as a 4-D gather and pad as crop's transpose
(spatial.cu's header; tensors of more than four dimensions are refused here, before any launch), and
deconv2d's direct loops: grid-stride over the elements written, one block per element of
the weight (dW) and per channel (dB); interp's gathers over the output (forward) and the
input (dX)."""
from __future__ import annotations

import numpy as np

from bwplan.kernels.cuda.limits import (Launch, CudaCannotRun, check_index, f32, flag,
                                        grid_stride, i32, i64, per_channel, ptr)
from bwplan.ops._shapes import pair
from bwplan.ops.spatial import crop_offsets

RANK = 4


def _four(values, fill) -> list[int]:
    """`values` padded in front to four entries."""
    values = list(values)
    if len(values) > RANK:
        raise CudaCannotRun(f"the CUDA crop takes at most {RANK} dimensions, not "
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


def pad_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    """crop's dX with the roles swapped: every element of the padded output is written, x
    inside the window at the begin offsets, 0 around it."""
    (bh, bw) = pair(ctx.attrs["begin"])
    n = ctx.out.numel
    return [grid_stride("crop_dx", n, env, ptr(inputs[0]), ptr(out),
                        *(i64(v) for v in ctx.out.shape[1:]),
                        *(i64(v) for v in ctx.x.shape), *(i64(v) for v in (0, 0, bh, bw)),
                        i64(n), flag(False))]


def pad_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    """crop's forward: the window of dY at the begin offsets, gathered into dX."""
    strides = _strides(ctx.out.shape)
    (bh, bw) = pair(ctx.attrs["begin"])
    offset = bh * strides[2] + bw * strides[3]
    return [_gather(dout, out, ctx.x.shape, strides, offset, ctx.x.numel, accumulate, env)]


def deconv_shape(ctx) -> tuple[int, ...]:
    """DeconvShape (spatial.cu): n, c, h, w, o, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw,
    groups."""
    n, c, h, w = ctx.x.shape
    _, o, ho, wo = ctx.out.shape
    a = ctx.attrs
    check_index(n * c * h * w, n * o * ho * wo)
    return (n, c, h, w, o, ho, wo, *pair(a["kernel"]), *pair(a["stride"]), *pair(a["pad"]),
            *pair(a["dilation"]), a["groups"])


def deconv2d_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    return [grid_stride("deconv2d_fwd", ctx.out.numel, env, ptr(inputs[0]),
                        ptr(params["weight"]), ptr(params.get("bias")), ptr(out),
                        *map(i32, deconv_shape(ctx)))]


def deconv2d_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    return [grid_stride("deconv2d_dx", ctx.x.numel, env, ptr(saved["weight"]), ptr(dout),
                        ptr(out), *map(i32, deconv_shape(ctx)), flag(accumulate))]


def deconv2d_dw(ctx, saved, dout, out, accumulate, env) -> list[Launch]:
    c, og = ctx.x.shape[1], ctx.attrs["out"] // ctx.attrs["groups"]
    kh, kw = pair(ctx.attrs["kernel"])
    return [per_channel("deconv2d_dw", c * og * kh * kw, ptr(saved["x"]), ptr(dout),
                        ptr(out), *map(i32, deconv_shape(ctx)), flag(accumulate))]


def deconv2d_db(ctx, saved, dout, out, accumulate, env) -> list[Launch]:
    n, o, ho, wo = ctx.out.shape
    return [per_channel("deconv2d_db", o, ptr(dout), ptr(out), i32(n), i32(o), i64(ho * wo),
                        flag(accumulate))]


def _interp_dims(ctx):
    n, c, h, w = ctx.x.shape
    ho, wo = ctx.attrs["height"], ctx.attrs["width"]
    rh = (h - 1) / (ho - 1) if ho > 1 else 0.0
    rw = (w - 1) / (wo - 1) if wo > 1 else 0.0
    return (i64(n * c), i32(h), i32(w), i32(ho), i32(wo), f32(rh), f32(rw))


def interp_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    return [grid_stride("interp_fwd", ctx.out.numel, env, ptr(inputs[0]), ptr(out),
                        *_interp_dims(ctx))]


def interp_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    return [grid_stride("interp_dx", ctx.x.numel, env, ptr(dout), ptr(out),
                        *_interp_dims(ctx), flag(accumulate))]


def roi_pool_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    _, c, h, w = ctx.x.shape
    a = ctx.attrs
    return [grid_stride("roi_pool_fwd", ctx.out.numel, env, ptr(inputs[0]), ptr(inputs[1]),
                        ptr(out), ptr(aux.get("argmax")), i32(ctx.inputs[1].shape[0]), i32(c),
                        i32(h), i32(w), i32(a["pooled_h"]), i32(a["pooled_w"]),
                        f32(a["spatial_scale"]))]


def roi_pool_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    n, c, h, w = ctx.x.shape
    a = ctx.attrs
    return [grid_stride("roi_pool_dx", ctx.x.numel, env, ptr(saved["rois"]),
                        ptr(saved["argmax"]), ptr(dout), ptr(out), i32(n),
                        i32(ctx.inputs[1].shape[0]), i32(c), i32(h), i32(w),
                        i32(a["pooled_h"]), i32(a["pooled_w"]), f32(a["spatial_scale"]),
                        flag(accumulate))]


def _normalize_dims(ctx):
    n, c = ctx.x.shape[:2]
    s = ctx.x.numel // max(1, n * c)
    across, shared = ctx.attrs["across_spatial"], ctx.attrs["channel_shared"]
    return n, c, s, across, shared, n * (1 if across else s)


def normalize_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n, c, s, across, shared, groups = _normalize_dims(ctx)
    return [per_channel("normalize_fwd", groups, ptr(inputs[0]), ptr(params["weight"]),
                        ptr(out), ptr(aux.get("norm")), i32(n), i32(c), i64(s), flag(across),
                        flag(shared), f32(ctx.attrs["eps"]))]


def normalize_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    n, c, s, across, shared, groups = _normalize_dims(ctx)
    return [per_channel("normalize_dx", groups, ptr(saved["x"]), ptr(saved["norm"]),
                        ptr(saved["weight"]), ptr(dout), ptr(out), i32(n), i32(c), i64(s),
                        flag(across), flag(shared), flag(accumulate))]


def normalize_dw(ctx, saved, dout, out, accumulate, env) -> list[Launch]:
    n, c, s, across, shared, _ = _normalize_dims(ctx)
    return [per_channel("normalize_dw", 1 if shared else c, ptr(saved["x"]),
                        ptr(saved["norm"]), ptr(dout), ptr(out), i32(n), i32(c), i64(s),
                        flag(across), flag(shared), flag(accumulate))]


LAUNCH = {
    ("normalize", "fwd"): normalize_fwd, ("normalize", "dx:x"): normalize_dx,
    ("normalize", "dw:weight"): normalize_dw,
    ("roi_pool", "fwd"): roi_pool_fwd, ("roi_pool", "dx:x"): roi_pool_dx,
    ("interp", "fwd"): interp_fwd, ("interp", "dx:x"): interp_dx,
    ("deconv2d", "fwd"): deconv2d_fwd, ("deconv2d", "dx:x"): deconv2d_dx,
    ("deconv2d", "dw:weight"): deconv2d_dw, ("deconv2d", "dw:bias"): deconv2d_db,
    ("crop", "fwd"): crop_fwd, ("crop", "dx:x"): crop_dx,
    ("pad", "fwd"): pad_fwd, ("pad", "dx:x"): pad_dx,
}
