"""Pooling over NCHW input: windowed max and average pooling with Caffe's geometry, and
their global forms (one window covering the whole plane).

`stride` defaults to the kernel. `ceil=true` rounds the output size up like Caffe, which
also drops a last window that would start inside the right padding. Padding never wins a
max; an average divides by the window clipped to the padded image (Caffe AVE), so border
outputs count padding cells as zeros, unless `count_pad=false`: then it divides by the real
cells of the window only (ONNX AveragePool's default, count_include_pad=0; PyTorch's
count_include_pad=False).

Max pooling saves the flat position (h * W + w) of each window's winner; its dX scatters
into those positions and reads nothing else. Average pooling's dX reads nothing at all.
"""
from __future__ import annotations

import numpy as np

from bwplan.ir.types import TensorType
from bwplan.ops._shapes import pair, window_out
from bwplan.ops.opdef import (AttrSpec, AuxSpec, GradRule, on_every_target, OpCtx, OpDef, out_numel,
                              Port)


def _nchw(ctx: OpCtx, what: str) -> tuple[int, int, int, int]:
    if len(ctx.x.shape) != 4:
        raise ValueError(f"{what} expects an NCHW input, got {ctx.x}")
    return ctx.x.shape


def _window(ctx: OpCtx) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(kernel, stride, pad), each as (h, w)."""
    kernel = pair(ctx.attrs["kernel"])
    stride = ctx.attrs["stride"]
    return kernel, kernel if stride is None else pair(stride), pair(ctx.attrs["pad"])


def _out_len(size: int, k: int, s: int, p: int, ceil: bool) -> int:
    if k <= 0 or s <= 0 or p < 0:
        raise ValueError(f"kernel {k} and stride {s} must be positive and pad {p} >= 0")
    if p >= k:
        raise ValueError(f"pad {p} must be smaller than the kernel {k}, or a window could "
                         "hold padding only")
    out = window_out(size, k, s, p, ceil=ceil)
    if out <= 0:
        raise ValueError(f"a kernel of {k} does not fit an extent of {size} with pad {p}")
    if (out - 1) * s - p >= size:
        # Only ceil mode without padding gets here (stride > kernel): Caffe would pool an
        # empty window; refuse instead.
        raise ValueError(f"the last window (stride {s}, kernel {k}) starts past the end of "
                         f"an extent of {size}; use ceil=false or a smaller stride")
    return out


def _pool_infer(ctx: OpCtx) -> TensorType:
    n, c, h, w = _nchw(ctx, "pooling")
    (kh, kw), (sh, sw), (ph, pw) = _window(ctx)
    ceil = ctx.attrs["ceil"]
    return ctx.x.with_shape(n, c, _out_len(h, kh, sh, ph, ceil), _out_len(w, kw, sw, pw, ceil))


def _pool_flops(ctx: OpCtx) -> int:
    """One comparison or add per window cell (an average adds one divide per output)."""
    (kh, kw), _, _ = _window(ctx)
    return ctx.out.numel * kh * kw


# ---- max -------------------------------------------------------------------------------
def _max_planes(x: np.ndarray, kernel, stride, pad, out_hw) -> tuple[np.ndarray, np.ndarray]:
    """Max and flat argmax (h * W + w) of every window; the first maximum in row-major
    window order wins ties, as in Caffe."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    ho, wo = out_hw
    # Pad with -inf on the left and far enough right for ceil mode's overhanging windows.
    right_h = max(0, (ho - 1) * sh + kh - ph - h)
    right_w = max(0, (wo - 1) * sw + kw - pw - w)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, right_h), (pw, right_w)), constant_values=-np.inf)
    best = np.full((n, c, ho, wo), -np.inf, dtype=x.dtype)
    arg = np.zeros((n, c, ho, wo), dtype=np.int32)
    rows = np.arange(ho)[:, None] * sh - ph
    cols = np.arange(wo)[None, :] * sw - pw
    for i in range(kh):
        for j in range(kw):
            cand = xp[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
            better = cand > best
            best = np.where(better, cand, best)
            arg = np.where(better, ((rows + i) * w + cols + j).astype(np.int32), arg)
    return best, arg


def _scatter(dout: np.ndarray, argmax: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    n, c, h, w = shape
    dx = np.zeros((n * c, h * w), dtype=dout.dtype)
    np.add.at(dx, (np.arange(n * c)[:, None], argmax.reshape(n * c, -1)),
              dout.reshape(n * c, -1))
    return dx.reshape(shape)


def _maxpool_fwd(ctx, inputs, params, training, rng):
    kernel, stride, pad = _window(ctx)
    out, arg = _max_planes(inputs[0], kernel, stride, pad, ctx.out.shape[2:])
    return out, {"argmax": arg}


def _max_dx(ctx, saved, dout, index):
    return _scatter(dout, saved["argmax"], ctx.x.shape)


_ARGMAX = AuxSpec("argmax", lambda ctx: ctx.out.shape, "i32")

_WINDOW_ATTRS = (
    AttrSpec("kernel", "ints", doc="window size, k or [kh, kw]", at_least=1, arity=(1, 2)),
    AttrSpec("stride", "ints", None, doc="step, k or [sh, sw]; default: the kernel",
             at_least=1, arity=(1, 2)),
    AttrSpec("pad", "ints", 0, doc="implicit padding on each side, p or [ph, pw]",
             at_least=0, arity=(1, 2)),
    AttrSpec("ceil", "bool", False, doc="round the output size up, as Caffe does (ONNX and "
             "PyTorch ceil_mode); a last window starting in the right padding is dropped"),
)
_AVG_ATTRS = _WINDOW_ATTRS + (
    AttrSpec("count_pad", "bool", True, doc="divide by the window clipped to the padded image "
             "(Caffe AVE, ONNX count_include_pad=1); false: by its real cells only (ONNX's "
             "default)"),
)

MAXPOOL = OpDef(
    name="maxpool",
    family="pool",
    doc="Max over each window of an NCHW input (Caffe Pooling MAX); padding never wins.",
    ports=(Port("x"),),
    attrs=_WINDOW_ATTRS,
    infer=_pool_infer,
    flops=_pool_flops,
    grads=(GradRule("x", frozenset({"argmax"}), out_numel, _max_dx),),
    aux=(_ARGMAX,),
    forward_ref=_maxpool_fwd,
    kernels=on_every_target({
        "fwd": "pool.maxpool_fwd",
        "dx:x": "pool.maxpool_dx"}),
)


# ---- average ---------------------------------------------------------------------------
def _avg_matrix(size: int, out: int, k: int, s: int, p: int, count_pad: bool,
                dtype) -> np.ndarray:
    """[out, size]: row o weights the real cells of window o by 1 / (its extent clipped to
    [-p, size + p), or to [0, size) without count_pad). Average pooling is separable, so
    dividing by the product of the two extents is the product of a row weight and a column
    weight."""
    m = np.zeros((out, size), dtype=dtype)
    for o in range(out):
        start = o * s - p
        end = min(start + k, size + p)
        lo, hi = max(start, 0), min(end, size)
        m[o, lo:hi] = 1.0 / ((end - start) if count_pad else (hi - lo))
    return m


def _avg_matrices(ctx: OpCtx, dtype) -> tuple[np.ndarray, np.ndarray]:
    (kh, kw), (sh, sw), (ph, pw) = _window(ctx)
    _, _, h, w = ctx.x.shape
    ho, wo = ctx.out.shape[2:]
    count_pad = ctx.attrs["count_pad"]
    return (_avg_matrix(h, ho, kh, sh, ph, count_pad, dtype),
            _avg_matrix(w, wo, kw, sw, pw, count_pad, dtype))


def _avgpool_fwd(ctx, inputs, params, training, rng):
    x = inputs[0]
    mh, mw = _avg_matrices(ctx, x.dtype)
    return np.einsum("oh,nchw,pw->ncop", mh, x, mw), {}


def _avg_dx(ctx, saved, dout, index):
    mh, mw = _avg_matrices(ctx, dout.dtype)
    return np.einsum("oh,ncop,pw->nchw", mh, dout, mw)


AVGPOOL = OpDef(
    name="avgpool",
    family="pool",
    doc="Mean over each window of an NCHW input (Caffe Pooling AVE): the divisor is the "
        "window clipped to the padded image, padding cells counting as zeros (or, with "
        "`count_pad=false`, the real cells only).",
    ports=(Port("x"),),
    attrs=_AVG_ATTRS,
    infer=_pool_infer,
    flops=lambda ctx: _pool_flops(ctx) + ctx.out.numel,
    grads=(GradRule("x", frozenset(), _pool_flops, _avg_dx),),
    forward_ref=_avgpool_fwd,
    kernels=on_every_target({
        "fwd": "pool.avgpool_fwd",
        "dx:x": "pool.avgpool_dx"}),
)


# ---- global ----------------------------------------------------------------------------
def _global_infer(ctx: OpCtx) -> TensorType:
    n, c, _, _ = _nchw(ctx, "global pooling")
    return ctx.x.with_shape(n, c, 1, 1)


def _global_max_fwd(ctx, inputs, params, training, rng):
    x = inputs[0]
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    arg = flat.argmax(axis=2).astype(np.int32)
    out = np.take_along_axis(flat, arg[..., None].astype(np.intp), 2)
    return out.reshape(n, c, 1, 1), {"argmax": arg.reshape(n, c, 1, 1)}


GLOBAL_MAXPOOL = OpDef(
    name="global_maxpool",
    family="pool",
    doc="Max over each whole H x W plane: [N, C, H, W] -> [N, C, 1, 1].",
    ports=(Port("x"),),
    infer=_global_infer,
    flops=lambda ctx: ctx.x.numel,
    grads=(GradRule("x", frozenset({"argmax"}), out_numel, _max_dx),),
    aux=(_ARGMAX,),
    forward_ref=_global_max_fwd,
    kernels=on_every_target({
        "fwd": "pool.global_maxpool_fwd",
        "dx:x": "pool.global_maxpool_dx"}),
)


def _global_avg_dx(ctx, saved, dout, index):
    h, w = ctx.x.shape[2:]
    return np.broadcast_to(dout / (h * w), ctx.x.shape).copy()


GLOBAL_AVGPOOL = OpDef(
    name="global_avgpool",
    family="pool",
    doc="Mean over each whole H x W plane: [N, C, H, W] -> [N, C, 1, 1].",
    ports=(Port("x"),),
    infer=_global_infer,
    flops=lambda ctx: ctx.x.numel + ctx.out.numel,
    grads=(GradRule("x", frozenset(), lambda ctx: ctx.x.numel, _global_avg_dx),),
    forward_ref=lambda ctx, inputs, params, training, rng: (
        inputs[0].mean(axis=(2, 3), keepdims=True), {}),
    kernels=on_every_target({
        "fwd": "pool.global_avgpool_fwd",
        "dx:x": "pool.global_avgpool_dx"}),
)

OPS = (MAXPOOL, AVGPOOL, GLOBAL_MAXPOOL, GLOBAL_AVGPOOL)
