"""Normalisation along the channel dimension (dim 1): batch normalisation, Caffe's
per-channel Scale, local response normalisation across channels, and softmax.

Batch normalisation runs in a `BatchNormMode`, two independent choices decided once from
its attributes by `batchnorm_mode`: which statistics normalise (the batch's or the stored
`mean`/`var`) and whether a training step moves the stored ones towards the batch's. The
two kinds of statistics have different backwards. With batch statistics, dX reads the input
and the saved per-channel mean and 1/std, because every output depends on the whole batch.
With stored statistics it is a per-channel affine map and dX reads only `var`.

    stats=auto     stored when `global_stats` (Caffe's name) or the layer is frozen, else batch
    update_stats   auto: update exactly when normalising with batch statistics

An explicit `stats=batch` survives freezing (Caffe's `lr_mult: 0` in TRAIN).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bwplan.ir.types import TensorType
from bwplan.ops.opdef import (Attrs, AttrSpec, AuxSpec, GradRule, in_numel, on_every_target, OpCtx,
                              OpDef, ParamSlot, Port)


def _channels(ctx: OpCtx) -> tuple[int]:
    return (ctx.x.shape[1],)


def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    """A [C] vector shaped to broadcast over dimension 1 of an ndim-D tensor."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _other_axes(ndim: int) -> tuple[int, ...]:
    return (0,) + tuple(range(2, ndim))


def _channel_infer(ctx: OpCtx) -> TensorType:
    if len(ctx.x.shape) < 2:
        raise ValueError(f"expects channels in dimension 1, got {ctx.x}")
    return ctx.x


# ---- batchnorm -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BatchNormMode:
    """How a batchnorm layer runs in a training step. `stats` is "batch" or "stored";
    `update_stats`: the step moves the stored statistics towards the batch's."""

    stats: str
    update_stats: bool

    @property
    def batch(self) -> bool:
        return self.stats == "batch"

    @property
    def saves_stats(self) -> bool:
        """The forward saves the per-channel [mean; 1/std] it normalised with: the batch's,
        or stored ones that the update is about to move (the backward needs the old)."""
        return self.batch or self.update_stats

    def cell(self) -> str:
        return f"stats={self.stats}, {'updated' if self.update_stats else 'fixed'}"


def batchnorm_mode(attrs: Attrs) -> BatchNormMode:
    """The one place the attributes of a batchnorm layer become its mode."""
    stats = attrs.get("stats", "auto")
    if stats == "auto":
        stats = "stored" if attrs["global_stats"] else "batch"
    update = attrs.get("update_stats", "auto")
    return BatchNormMode(stats, stats == "batch" if update == "auto" else update == "true")


def _batch(attrs: Attrs) -> bool:
    return batchnorm_mode(attrs).batch


def _bn_infer(ctx: OpCtx) -> TensorType:
    if len(ctx.x.shape) not in (2, 4):
        raise ValueError(f"batchnorm expects an [N, C] or NCHW input, got {ctx.x}")
    if ctx.attrs["eps"] <= 0:
        raise ValueError(f"eps={ctx.attrs['eps']} must be positive")
    return ctx.x


def _bn_fwd(ctx, inputs, params, training, rng):
    x = inputs[0]
    axes = _other_axes(x.ndim)
    eps = ctx.attrs["eps"]
    aux = {}
    mode = batchnorm_mode(ctx.attrs)
    if not (training and mode.batch):
        mean, inv = params["mean"], 1.0 / np.sqrt(params["var"] + eps)
    else:
        mean = x.mean(axis=axes)
        inv = 1.0 / np.sqrt(x.var(axis=axes) + eps)  # biased variance, as Caffe and torch
    if training and mode.saves_stats:
        aux["batch_stats"] = np.stack([mean, inv]).astype(x.dtype)
    out = (x - _per_channel(mean, x.ndim)) * _per_channel(inv, x.ndim)
    if ctx.attrs["affine"]:
        out = out * _per_channel(params["weight"], x.ndim) + _per_channel(params["bias"], x.ndim)
    return out, aux


def _bn_update(ctx, inputs, params):
    """running = momentum * running + (1 - momentum) * batch, with the unbiased batch
    variance (Caffe's moving average, one step at a time)."""
    if not batchnorm_mode(ctx.attrs).update_stats:
        return
    x = inputs[0]
    axes = _other_axes(x.ndim)
    m = x.size // x.shape[1]
    keep = ctx.attrs["momentum"]
    var = x.var(axis=axes) * (m / (m - 1) if m > 1 else 1.0)
    params["mean"][...] = keep * params["mean"] + (1 - keep) * x.mean(axis=axes)
    params["var"][...] = keep * params["var"] + (1 - keep) * var


def _bn_dx(ctx, saved, dout, index):
    nd = dout.ndim
    g = dout * _per_channel(saved["weight"], nd) if ctx.attrs["affine"] else dout
    mode = batchnorm_mode(ctx.attrs)
    if not mode.batch:
        inv = saved["batch_stats"][1] if mode.saves_stats else \
            1.0 / np.sqrt(saved["var"] + ctx.attrs["eps"])
        return g * _per_channel(inv, nd)
    axes = _other_axes(nd)
    mean, inv = saved["batch_stats"]
    xhat = (saved["x"] - _per_channel(mean, nd)) * _per_channel(inv, nd)
    # d/dx of (x - mean(x)) / std(x): remove the components along 1 and along xhat.
    return _per_channel(inv, nd) * (g - g.mean(axis=axes, keepdims=True)
                                    - xhat * (g * xhat).mean(axis=axes, keepdims=True))


def _bn_dweight(ctx, saved, dout, index):
    nd = dout.ndim
    if not batchnorm_mode(ctx.attrs).saves_stats:
        mean, inv = saved["mean"], 1.0 / np.sqrt(saved["var"] + ctx.attrs["eps"])
    else:
        mean, inv = saved["batch_stats"]
    xhat = (saved["x"] - _per_channel(mean, nd)) * _per_channel(inv, nd)
    return (dout * xhat).sum(axis=_other_axes(nd))


def _bn_dx_needs(attrs: Attrs) -> frozenset[str]:
    mode = batchnorm_mode(attrs)
    needs = {"x", "batch_stats"} if mode.batch else {"batch_stats"} if mode.saves_stats \
        else {"var"}
    return frozenset(needs | ({"weight"} if attrs["affine"] else set()))


def _bn_dweight_needs(attrs: Attrs) -> frozenset[str]:
    saves = batchnorm_mode(attrs).saves_stats
    return frozenset({"x", "batch_stats"} if saves else {"x", "mean", "var"})


def _bn_flops(ctx: OpCtx) -> int:
    # normalise: subtract, multiply; batch statistics: sum, square-and-sum; affine: mul-add
    mode = batchnorm_mode(ctx.attrs)
    stats = 3 if mode.saves_stats else 0
    per = 2 + stats + (2 if ctx.attrs["affine"] else 0)
    return per * ctx.x.numel


def _bn_dx_flops(ctx: OpCtx) -> int:
    per = 8 if _batch(ctx.attrs) else 1
    return (per + (1 if ctx.attrs["affine"] else 0)) * ctx.x.numel


def _stats_shape(ctx: OpCtx) -> tuple[int, ...]:
    """The mean and 1/sqrt(var + eps) per channel the forward normalised with; nothing
    when it normalises with stored statistics that do not move."""
    return (2, ctx.x.shape[1]) if batchnorm_mode(ctx.attrs).saves_stats else (0,)


def _freeze_bn(attrs: Attrs) -> Attrs:
    """Freezing switches to stored statistics unless the mode was chosen explicitly."""
    return attrs if attrs.get("stats", "auto") != "auto" else {**attrs, "global_stats": True}


def _bn_deterministic(attrs: Attrs) -> bool:
    mode = batchnorm_mode(attrs)
    return not mode.batch and not mode.update_stats


def _affine(attrs: Attrs) -> bool:
    return attrs["affine"]


BATCHNORM = OpDef(
    name="batchnorm",
    family="norm",
    doc="Normalise each channel (dimension 1) of an [N, C] or NCHW input to zero mean and "
        "unit variance, with batch statistics or the stored `mean` and `var` (`stats`; "
        "`update_stats` says whether training moves the stored ones); then, when `affine`, "
        "scale by `weight` and add `bias`.",
    ports=(Port("x"),),
    attrs=(
        AttrSpec("eps", "float", 1e-5, doc="added to the variance", above=0),
        AttrSpec("momentum", "float", 0.999, at_least=0, at_most=1,
                 doc="Caffe's moving_average_fraction: the weight the running statistics "
                     "keep at each update (applied by the runtime)"),
        AttrSpec("global_stats", "bool", False, doc="use the stored mean and var (Caffe's "
                 "use_global_stats; the same as stats=stored)"),
        AttrSpec("affine", "bool", False, doc="learn a per-channel weight and bias"),
        AttrSpec("stats", "choice", "auto", choices=("auto", "batch", "stored"),
                 doc="the statistics that normalise in training: auto is stored when "
                     "global_stats or frozen, else batch; an explicit choice survives "
                     "freezing"),
        AttrSpec("update_stats", "choice", "auto", choices=("auto", "true", "false"),
                 doc="whether a training step updates the stored mean and var (auto: "
                     "exactly when normalising with batch statistics)"),
    ),
    params=(
        ParamSlot("mean", _channels, learnable=False, init="zeros"),
        ParamSlot("var", _channels, learnable=False, init="ones"),
        ParamSlot("weight", _channels, enabled=_affine, init="ones"),
        ParamSlot("bias", _channels, enabled=_affine, init="zeros"),
    ),
    infer=_bn_infer,
    flops=_bn_flops,
    grads=(
        GradRule("x", _bn_dx_needs, _bn_dx_flops, _bn_dx),
        GradRule("weight", _bn_dweight_needs, lambda ctx: 3 * ctx.x.numel, _bn_dweight),
        GradRule("bias", frozenset(), in_numel,
                 lambda ctx, saved, dout, i: dout.sum(axis=_other_axes(dout.ndim))),
    ),
    aux=(AuxSpec("batch_stats", _stats_shape),),
    deterministic=_bn_deterministic,
    on_freeze=_freeze_bn,
    mode=batchnorm_mode,
    forward_ref=_bn_fwd,
    state_update_ref=_bn_update,
    kernels=on_every_target({
        "fwd": "norm.batchnorm_fwd",
        "dx:x": "norm.batchnorm_dx",
        "dw:weight": "norm.batchnorm_dw",
        "dw:bias": "norm.batchnorm_db"}),
)


# ---- scale -----------------------------------------------------------------------------
def _scale_fwd(ctx, inputs, params, training, rng):
    x = inputs[0]
    out = x * _per_channel(params["weight"], x.ndim)
    if ctx.attrs["bias"]:
        out = out + _per_channel(params["bias"], x.ndim)
    return out, {}


SCALE = OpDef(
    name="scale",
    family="norm",
    doc="Multiply each channel (dimension 1) by a learned `weight`, optionally add a learned "
        "`bias` (Caffe Scale with one input).",
    ports=(Port("x"),),
    attrs=(AttrSpec("bias", "bool", False, doc="add a learned bias per channel"),),
    params=(
        ParamSlot("weight", _channels, init="ones"),
        ParamSlot("bias", _channels, enabled=lambda a: a["bias"], init="zeros"),
    ),
    infer=_channel_infer,
    flops=lambda ctx: (2 if ctx.attrs["bias"] else 1) * ctx.x.numel,
    grads=(
        GradRule("x", frozenset({"weight"}), in_numel,
                 lambda ctx, s, dout, i: dout * _per_channel(s["weight"], dout.ndim)),
        GradRule("weight", frozenset({"x"}), lambda ctx: 2 * ctx.x.numel,
                 lambda ctx, s, dout, i: (dout * s["x"]).sum(axis=_other_axes(dout.ndim))),
        GradRule("bias", frozenset(), in_numel,
                 lambda ctx, s, dout, i: dout.sum(axis=_other_axes(dout.ndim))),
    ),
    forward_ref=_scale_fwd,
    kernels=on_every_target({
        "fwd": "norm.scale_fwd",
        "dx:x": "norm.scale_dx",
        "dw:weight": "norm.scale_dw",
        "dw:bias": "norm.scale_db"}),
)


# ---- lrn -------------------------------------------------------------------------------
def _lrn_infer(ctx: OpCtx) -> TensorType:
    size = ctx.attrs["size"]
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size={size} must be a positive odd number (a window centred on "
                         "each channel)")
    return _channel_infer(ctx)


def _window_sum(v: np.ndarray, size: int) -> np.ndarray:
    """Sum over channels c - size//2 .. c + size//2, zero padded: a symmetric window, so
    the same sum also gathers every output a channel contributed to."""
    half = size // 2
    padded = np.pad(v, [(0, 0), (half, half)] + [(0, 0)] * (v.ndim - 2))
    csum = np.cumsum(padded, axis=1)
    csum = np.concatenate([np.zeros_like(csum[:, :1]), csum], axis=1)
    return csum[:, size:] - csum[:, :-size]


def _lrn_fwd(ctx, inputs, params, training, rng):
    x = inputs[0]
    a = ctx.attrs
    scale = a["k"] + a["alpha"] / a["size"] * _window_sum(x * x, a["size"])
    return x * scale ** -a["beta"], {"scale": scale}


def _lrn_dx(ctx, saved, dout, index):
    a = ctx.attrs
    x, out, scale = saved["x"], saved["out"], saved["scale"]
    spread = _window_sum(dout * out / scale, a["size"])
    return dout * scale ** -a["beta"] - 2.0 * a["alpha"] * a["beta"] / a["size"] * x * spread


LRN = OpDef(
    name="lrn",
    family="norm",
    doc="Local response normalisation across channels (Caffe LRN ACROSS_CHANNELS): "
        "out = x * (k + alpha/size * sum of x^2 over `size` neighbouring channels)^-beta.",
    ports=(Port("x"),),
    attrs=(
        AttrSpec("size", "int", 5, doc="channels in the window (odd)", at_least=1),
        AttrSpec("alpha", "float", 1e-4),
        AttrSpec("beta", "float", 0.75),
        AttrSpec("k", "float", 1.0),
    ),
    infer=_lrn_infer,
    # square, window sum, mul-add, power, multiply; the power counts as one FLOP
    flops=lambda ctx: (ctx.attrs["size"] + 5) * ctx.x.numel,
    grads=(GradRule("x", frozenset({"x", "out", "scale"}),
                    lambda ctx: (ctx.attrs["size"] + 7) * ctx.x.numel, _lrn_dx),),
    aux=(AuxSpec("scale", lambda ctx: ctx.x.shape),),
    forward_ref=_lrn_fwd,
    kernels=on_every_target({
        "fwd": "norm.lrn_fwd",
        "dx:x": "norm.lrn_dx"}),
)


# ---- softmax ---------------------------------------------------------------------------
def _softmax_infer(ctx: OpCtx) -> TensorType:
    rank = len(ctx.x.shape)
    if not -rank <= ctx.attrs["axis"] < rank:
        raise ValueError(f"axis {ctx.attrs['axis']} is out of range for {ctx.x}")
    return ctx.x


def _softmax_fwd(ctx, inputs, params, training, rng):
    x = inputs[0]
    axis = ctx.attrs["axis"]
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True), {}


def _softmax_dx(ctx, saved, dout, index):
    out = saved["out"]
    return out * (dout - (dout * out).sum(axis=ctx.attrs["axis"], keepdims=True))


SOFTMAX = OpDef(
    name="softmax",
    family="norm",
    doc="exp(x) normalised to sum 1 along `axis`.",
    ports=(Port("x"),),
    attrs=(AttrSpec("axis", "int", 1),),
    infer=_softmax_infer,
    # max, subtract, exp, sum, divide
    flops=lambda ctx: 5 * ctx.x.numel,
    grads=(GradRule("x", frozenset({"out"}), lambda ctx: 4 * ctx.x.numel, _softmax_dx),),
    forward_ref=_softmax_fwd,
    kernels=on_every_target({
        "fwd": "norm.softmax_fwd",
        "dx:x": "norm.softmax_dx"}),
)

OPS = (BATCHNORM, SCALE, LRN, SOFTMAX)
