"""Normalizations over a sample's positions: Caffe's MVN (mean-variance normalization per
sample or per channel) and LRN with `norm_region: WITHIN_CHANNEL` (each value divided by
a power of the energy of its spatial neighbourhood in its own channel). The
ACROSS_CHANNELS LRN is `lrn` in norm.py.

Both see their input as [num, dim] rows (MVN) or [N * C, H, W] planes (LRN).
"""
from __future__ import annotations

import numpy as np

from bwplan.ir.types import TensorType
from bwplan.ops.opdef import AttrSpec, AuxSpec, GradRule, on_every_target, OpCtx, OpDef, Port


# ---- MVN -------------------------------------------------------------------------------
def mvn_rows(ctx: OpCtx) -> tuple[int, int]:
    """(num, dim): the rows normalized and their length; a row is a sample (across
    channels) or one channel of a sample."""
    shape = ctx.x.shape
    num = shape[0] if ctx.attrs["across_channels"] else shape[0] * shape[1]
    return num, ctx.x.numel // num if num else 0


def _mvn_infer(ctx: OpCtx) -> TensorType:
    if len(ctx.x.shape) < 2:
        raise ValueError(f"mvn needs [N, C, ...], got {ctx.x}")
    if not ctx.attrs["eps"] >= 0:
        raise ValueError(f"mvn eps={ctx.attrs['eps']} must not be negative")
    return ctx.x


def _mvn_fwd(ctx, inputs, params, training, rng):
    num, dim = mvn_rows(ctx)
    x = inputs[0].reshape(num, dim)
    c = x - x.mean(axis=1, keepdims=True)
    if not ctx.attrs["normalize_variance"]:
        return c.reshape(inputs[0].shape), {}
    # as Caffe: the biased standard deviation, eps added to it (not to the variance)
    std = np.sqrt((c * c).mean(axis=1))
    out = c / (std + ctx.attrs["eps"])[:, None]
    return out.reshape(inputs[0].shape), {"std": std.astype(inputs[0].dtype)}


def _mvn_dx(ctx, saved, dout, index):
    """y = c / (s + eps), c = x - mean(x), s = sqrt(mean(c^2)):
    dx = (g - mean(g) - (c / s) mean(g y)) / (s + eps), with c / s = y (s + eps) / s.
    Caffe's backward uses y for c / s, which is this with eps = 0."""
    num, dim = mvn_rows(ctx)
    g = dout.reshape(num, dim)
    centered = g - g.mean(axis=1, keepdims=True)
    if not ctx.attrs["normalize_variance"]:
        return centered.reshape(dout.shape)
    y = saved["out"].reshape(num, dim)
    s = saved["std"][:, None]
    denom = s + ctx.attrs["eps"]
    unit = np.divide(y * denom, s, out=np.zeros_like(y), where=s > 0)
    return ((centered - unit * (g * y).mean(axis=1, keepdims=True)) / denom).reshape(dout.shape)


MVN = OpDef(
    name="mvn",
    family="spatial_norm",
    doc="Subtract the mean of each sample's channel (of each sample with "
        "`across_channels`) and, with `normalize_variance`, divide by its standard "
        "deviation plus `eps` (Caffe MVN).",
    ports=(Port("x"),),
    attrs=(AttrSpec("normalize_variance", "bool", True),
           AttrSpec("across_channels", "bool", False),
           AttrSpec("eps", "float", 1e-9, doc="added to the standard deviation")),
    infer=_mvn_infer,
    flops=lambda ctx: (6 if ctx.attrs["normalize_variance"] else 2) * ctx.x.numel,
    grads=(GradRule("x", lambda a: frozenset({"out", "std"}) if a["normalize_variance"]
                    else frozenset(), lambda ctx: 6 * ctx.x.numel, _mvn_dx),),
    aux=(AuxSpec("std", lambda ctx: (mvn_rows(ctx)[0] if ctx.attrs["normalize_variance"]
                                     else 0,)),),
    forward_ref=_mvn_fwd,
    kernels=on_every_target({"fwd": "spatial_norm.mvn_fwd", "dx:x": "spatial_norm.mvn_dx"}),
)


# ---- LRN within a channel --------------------------------------------------------------
def _lrn_infer(ctx: OpCtx) -> TensorType:
    if len(ctx.x.shape) != 4:
        raise ValueError(f"lrn_within_channel needs NCHW, got {ctx.x}")
    if ctx.attrs["size"] < 1 or ctx.attrs["size"] % 2 == 0:
        raise ValueError(f"lrn_within_channel size={ctx.attrs['size']} must be odd")
    return ctx.x


def window_sum(a: np.ndarray, size: int) -> np.ndarray:
    """Sum over the size x size window centred on each position of the last two axes,
    zero outside (Caffe's average pooling with pad (size - 1) / 2, times size^2)."""
    pad = (size - 1) // 2
    h, w = a.shape[-2:]
    padded = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(pad, pad), (pad, pad)])
    out = np.zeros_like(a)
    for i in range(size):
        for j in range(size):
            out += padded[..., i:i + h, j:j + w]
    return out


def _lrn_scale(ctx, x):
    a = ctx.attrs
    return 1.0 + a["alpha"] / a["size"] ** 2 * window_sum(x * x, a["size"])


def _lrn_fwd(ctx, inputs, params, training, rng):
    x = inputs[0]
    scale = _lrn_scale(ctx, x)
    return x * scale ** -ctx.attrs["beta"], {"scale": scale}


def _lrn_dx(ctx, saved, dout, index):
    """out = x s^-beta, s = 1 + alpha / size^2 * W(x^2) (W: the window sum, symmetric):
    dx = g s^-beta - 2 alpha beta / size^2 * x * W(g * out / s)."""
    a = ctx.attrs
    x, out, scale = saved["x"], saved["out"], saved["scale"]
    spread = window_sum(dout * out / scale, a["size"])
    return dout * scale ** -a["beta"] - 2 * a["alpha"] * a["beta"] / a["size"] ** 2 * x * spread


LRN_WITHIN_CHANNEL = OpDef(
    name="lrn_within_channel",
    family="spatial_norm",
    doc="x * (1 + alpha / size^2 * sum of x^2 over the size x size window around it in its "
        "channel)^-beta, zero padded (Caffe LRN with norm_region WITHIN_CHANNEL, which has "
        "no k).",
    ports=(Port("x"),),
    attrs=(AttrSpec("size", "int", 5, doc="the window side (odd), Caffe's local_size"),
           AttrSpec("alpha", "float", 1.0), AttrSpec("beta", "float", 0.75)),
    infer=_lrn_infer,
    flops=lambda ctx: (ctx.attrs["size"] ** 2 + 4) * ctx.x.numel,
    grads=(GradRule("x", frozenset({"x", "out", "scale"}),
                    lambda ctx: (ctx.attrs["size"] ** 2 + 6) * ctx.x.numel, _lrn_dx),),
    aux=(AuxSpec("scale", lambda ctx: ctx.x.shape),),
    forward_ref=_lrn_fwd,
    kernels=on_every_target({"fwd": "spatial_norm.lrn_within_channel_fwd",
                             "dx:x": "spatial_norm.lrn_within_channel_dx"}),
)

OPS = (MVN, LRN_WITHIN_CHANNEL)
