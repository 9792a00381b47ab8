"""Convolution: conv2d (stride, pad, dilation, groups, optional bias), NCHW, weight
[out, in/groups, kh, kw].

Backward is three separate components, so each can be skipped on its own:
dX reads only the weights, dW reads only the input, dB reads nothing but dY.
"""
from __future__ import annotations

import numpy as np

from bwplan.ir.types import TensorType
from bwplan.ops._shapes import pair, spatial_out
from bwplan.ops.opdef import AttrSpec, GradRule, on_every_target, OpCtx, OpDef, ParamSlot, Port


def _geometry(ctx: OpCtx):
    n, c, h, w = ctx.x.shape
    kh, kw = pair(ctx.attrs["kernel"])
    ho, wo = spatial_out(ctx.attrs, h, w)
    return n, c, h, w, kh, kw, ho, wo


def _infer(ctx: OpCtx) -> TensorType:
    if len(ctx.x.shape) != 4:
        raise ValueError(f"conv2d expects an NCHW input, got {ctx.x}")
    n, c, h, w, kh, kw, ho, wo = _geometry(ctx)
    groups = ctx.attrs["groups"]
    if c % groups or ctx.attrs["out"] % groups:
        raise ValueError(f"groups={groups} must divide input channels {c} "
                         f"and out={ctx.attrs['out']}")
    if ho <= 0 or wo <= 0:
        raise ValueError(f"a {kh}x{kw} kernel does not fit the {h}x{w} input")
    return ctx.x.with_shape(n, ctx.attrs["out"], ho, wo)


def _macs(ctx: OpCtx) -> int:
    """Multiply-adds of the forward; dX and dW cost the same number."""
    n, c, _, _, kh, kw, ho, wo = _geometry(ctx)
    return n * ctx.attrs["out"] * ho * wo * (c // ctx.attrs["groups"]) * kh * kw


def _weight_shape(ctx: OpCtx) -> tuple[int, ...]:
    kh, kw = pair(ctx.attrs["kernel"])
    return (ctx.attrs["out"], ctx.x.shape[1] // ctx.attrs["groups"], kh, kw)


# ---- NumPy reference (im2col formulation) ----------------------------------------------
def _im2col(x: np.ndarray, ctx: OpCtx) -> np.ndarray:
    """[N, C, H, W] -> [N, C*kh*kw, Ho*Wo]."""
    n, c, h, w, kh, kw, ho, wo = _geometry(ctx)
    sh, sw = pair(ctx.attrs["stride"])
    ph, pw = pair(ctx.attrs["pad"])
    dh, dw = pair(ctx.attrs["dilation"])
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i * dh:i * dh + sh * ho:sh, j * dw:j * dw + sw * wo:sw][
                :, :, :ho, :wo]
    return cols.reshape(n, c * kh * kw, ho * wo)


def _col2im(cols: np.ndarray, ctx: OpCtx) -> np.ndarray:
    n, c, h, w, kh, kw, ho, wo = _geometry(ctx)
    sh, sw = pair(ctx.attrs["stride"])
    ph, pw = pair(ctx.attrs["pad"])
    dh, dw = pair(ctx.attrs["dilation"])
    cols = cols.reshape(n, c, kh, kw, ho, wo)
    xp = np.zeros((n, c, h + 2 * ph + sh, w + 2 * pw + sw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i * dh:i * dh + sh * ho:sh, j * dw:j * dw + sw * wo:sw] += cols[:, :, i, j]
    return xp[:, :, ph:ph + h, pw:pw + w]


def _grouped(ctx: OpCtx):
    g = ctx.attrs["groups"]
    c = ctx.x.shape[1]
    kh, kw = pair(ctx.attrs["kernel"])
    return g, c // g * kh * kw, ctx.attrs["out"] // g


def _forward(ctx, inputs, params, training, rng):
    x = inputs[0]
    n, _, _, _, _, _, ho, wo = _geometry(ctx)
    g, k, og = _grouped(ctx)
    cols = _im2col(x, ctx)
    wmat = params["weight"].reshape(g, og, k)
    out = np.empty((n, ctx.attrs["out"], ho * wo), dtype=x.dtype)
    for gi in range(g):
        out[:, gi * og:(gi + 1) * og] = np.einsum("ok,nkp->nop", wmat[gi],
                                                  cols[:, gi * k:(gi + 1) * k])
    if "bias" in params:
        out += params["bias"][None, :, None]
    return out.reshape(n, ctx.attrs["out"], ho, wo), {}


def _dx(ctx, saved, dout, index):
    n = dout.shape[0]
    g, k, og = _grouped(ctx)
    wmat = saved["weight"].reshape(g, og, k)
    dy = dout.reshape(n, ctx.attrs["out"], -1)
    cols = np.empty((n, g * k, dy.shape[2]), dtype=dout.dtype)
    for gi in range(g):
        cols[:, gi * k:(gi + 1) * k] = np.einsum("ok,nop->nkp", wmat[gi],
                                                 dy[:, gi * og:(gi + 1) * og])
    return _col2im(cols, ctx)


def _dw(ctx, saved, dout, index):
    n = dout.shape[0]
    g, k, og = _grouped(ctx)
    cols = _im2col(saved["x"], ctx)
    dy = dout.reshape(n, ctx.attrs["out"], -1)
    dw = np.empty((g, og, k), dtype=dout.dtype)
    for gi in range(g):
        dw[gi] = np.einsum("nop,nkp->ok", dy[:, gi * og:(gi + 1) * og],
                           cols[:, gi * k:(gi + 1) * k])
    return dw.reshape(_weight_shape(ctx))


def _db(ctx, saved, dout, index):
    return dout.sum(axis=(0, 2, 3))


CONV2D = OpDef(
    name="conv2d",
    family="conv",
    doc="2-D convolution over NCHW input: out channels `out`, square or [h, w] `kernel`.",
    ports=(Port("x"),),
    attrs=(
        AttrSpec("out", "int", doc="output channels", at_least=1),
        AttrSpec("kernel", "ints", doc="kernel size, k or [kh, kw]", at_least=1, arity=(1, 2)),
        AttrSpec("stride", "ints", 1, at_least=1, arity=(1, 2)),
        AttrSpec("pad", "ints", 0, at_least=0, arity=(1, 2)),
        AttrSpec("dilation", "ints", 1, at_least=1, arity=(1, 2)),
        AttrSpec("groups", "int", 1, at_least=1),
        AttrSpec("bias", "bool", True, doc="add a learned bias per output channel"),
    ),
    params=(
        ParamSlot("weight", _weight_shape),
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
        "fwd": "conv.conv2d_fwd",
        "dx:x": "conv.conv2d_dx",
        "dw:weight": "conv.conv2d_dw",
        "dw:bias": "conv.conv2d_db"}),
)

OPS = (CONV2D,)
