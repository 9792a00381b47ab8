"""Channel normalisation on the CPU: batchnorm, scale, lrn, softmax.

Tensors are seen as [N, C, S] (S: the product of the dimensions after the channel, 1 for
[N, C]). Per-channel reductions run in parallel over channels and accumulate in float64
with reassociation allowed, as in `reduce`; per-element passes run in parallel over
samples.

Batchnorm runs in the layer's `BatchNormMode` (ops.norm.batchnorm_mode, the one decision).
A training forward whose mode updates the statistics also updates the stored ones in
place, as Caffe and torch do during training:

    params["mean"] = momentum * mean + (1 - momentum) * batch mean
    params["var"]  = momentum * var  + (1 - momentum) * batch var * m / (m - 1)

with m = N*S values per channel: the stored variance is the unbiased estimate (m / (m-1),
Caffe's bias correction; a factor 1 when m = 1), while the normalisation itself uses the
biased one. The backward of batch statistics never reads the stored ones (it reads the
saved batch_stats), so the update cannot disturb it; in the rarer mode that normalises with
stored statistics while updating them, the forward saves the stored values from before the
update in batch_stats and the backward reads those.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from bwplan.kernels.cpu import scratch
from bwplan.kernels.cpu.reduce import channel_dot, channel_sum
from bwplan.kernels.cpu.views import ncs, view
from bwplan.ops.norm import batchnorm_mode


# ---- per-channel affine map ----------------------------------------------------------
@njit(cache=True, parallel=True)
def _channel_affine(x, scale, shift, out):
    """out[:, c, :] = x[:, c, :] * scale[c] + shift[c]."""
    for n in prange(x.shape[0]):
        for c in range(x.shape[1]):
            a, b = scale[c], shift[c]
            for s in range(x.shape[2]):
                out[n, c, s] = x[n, c, s] * a + b


# ---- batchnorm -----------------------------------------------------------------------------
@njit(cache=True, parallel=True, fastmath={"reassoc"})
def _batch_stats(x, eps, mean, inv, var):
    """Per channel: mean, 1/sqrt(biased var + eps) and the biased var, two passes (the
    second over deviations, which keeps the variance accurate when |mean| >> std)."""
    m = x.shape[0] * x.shape[2]
    for c in prange(x.shape[1]):
        acc = 0.0
        for n in range(x.shape[0]):
            for s in range(x.shape[2]):
                acc += x[n, c, s]
        mu = acc / m
        acc = 0.0
        for n in range(x.shape[0]):
            for s in range(x.shape[2]):
                d = x[n, c, s] - mu
                acc += d * d
        mean[c] = mu
        var[c] = acc / m
        inv[c] = 1.0 / np.sqrt(acc / m + eps)


@njit(cache=True, parallel=True, fastmath={"reassoc"})
def _bn_back(x, dout, weight, mean, inv, out):
    """dX with batch statistics: inv * (g - mean(g) - xhat * mean(g * xhat)), g = dout *
    weight, means over the channel's N*S values."""
    m = x.shape[0] * x.shape[2]
    for c in prange(x.shape[1]):
        mu, iv, wc = mean[c], inv[c], weight[c]
        sg, sgx = 0.0, 0.0
        for n in range(x.shape[0]):
            for s in range(x.shape[2]):
                g = dout[n, c, s] * wc
                sg += g
                sgx += g * (x[n, c, s] - mu) * iv
        sg /= m
        sgx /= m
        for n in range(x.shape[0]):
            for s in range(x.shape[2]):
                xhat = (x[n, c, s] - mu) * iv
                out[n, c, s] = iv * (dout[n, c, s] * wc - sg - xhat * sgx)


@njit(cache=True, parallel=True, fastmath={"reassoc"})
def _bn_dweight(x, dout, mean, inv, out):
    """out[c] = sum of dout * (x - mean[c]) * inv[c] over the channel."""
    for c in prange(x.shape[1]):
        mu = mean[c]
        acc = 0.0
        for n in range(x.shape[0]):
            for s in range(x.shape[2]):
                acc += dout[n, c, s] * (x[n, c, s] - mu)
        out[c] = acc * inv[c]


def _bn_uses_batch(ctx, training: bool) -> bool:
    return training and batchnorm_mode(ctx.attrs).batch


def _affine_or_identity(ctx, params, c: int) -> tuple[np.ndarray, np.ndarray]:
    if ctx.attrs["affine"]:
        return params["weight"], params["bias"]
    return np.ones(c), np.zeros(c)


def batchnorm_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    """Normalise with the batch's statistics or the stored ones, as the layer's mode says;
    a training forward whose mode updates them also moves the stored mean and var in place
    (see the module docstring)."""
    x = ncs(inputs[0])
    c = x.shape[1]
    eps = ctx.attrs["eps"]
    weight, bias = _affine_or_identity(ctx, params, c)
    mode = batchnorm_mode(ctx.attrs)
    if not _bn_uses_batch(ctx, training):
        # read before any update below: the stored values as they were
        mean = params["mean"].astype(np.float64)
        inv = 1.0 / np.sqrt(params["var"].astype(np.float64) + eps)
    if training and mode.saves_stats:
        b_mean, b_inv, var = np.empty(c), np.empty(c), np.empty(c)
        _batch_stats(x, eps, b_mean, b_inv, var)
        if mode.batch:
            mean, inv = b_mean, b_inv
        if "batch_stats" in aux:
            aux["batch_stats"][0] = mean
            aux["batch_stats"][1] = inv
        if mode.update_stats:
            m = x.shape[0] * x.shape[2]
            momentum = ctx.attrs["momentum"]
            unbiased = var * (m / (m - 1) if m > 1 else 1.0)
            params["mean"][...] = momentum * params["mean"] + (1 - momentum) * b_mean
            params["var"][...] = momentum * params["var"] + (1 - momentum) * unbiased
    # y = (x - mean) * inv * weight + bias, folded into one scale and shift per channel
    scale = inv * weight
    _channel_affine(x, scale.astype(x.dtype), (bias - mean * scale).astype(x.dtype), ncs(out))


def _bn_stats(ctx, saved) -> tuple[np.ndarray, np.ndarray]:
    """(mean, inv) the forward normalised with, from what the rule saved."""
    if not batchnorm_mode(ctx.attrs).saves_stats:
        mean, var = saved["mean"].astype(np.float64), saved["var"].astype(np.float64)
        return mean, 1.0 / np.sqrt(var + ctx.attrs["eps"])
    # float64 in both modes: one compiled specialisation of the loops that read them
    stats = saved["batch_stats"].astype(np.float64)
    return stats[0], stats[1]


def batchnorm_dx(ctx, saved, dout, index, out) -> None:
    d = ncs(dout)
    c = d.shape[1]
    weight = saved["weight"] if ctx.attrs["affine"] else np.ones(c, dout.dtype)
    mode = batchnorm_mode(ctx.attrs)
    if not mode.batch:
        # a fixed per-channel affine map: dX = dY * weight / sqrt(var + eps)
        inv = saved["batch_stats"][1].astype(np.float64) if mode.saves_stats else \
            1.0 / np.sqrt(saved["var"].astype(np.float64) + ctx.attrs["eps"])
        scale = weight * inv
        _channel_affine(d, scale.astype(dout.dtype), np.zeros(c, dout.dtype), ncs(out))
        return
    mean, inv = _bn_stats(ctx, saved)
    _bn_back(ncs(saved["x"]), d, weight, mean, inv, ncs(out))


def batchnorm_dw(ctx, saved, dout, out) -> None:
    mean, inv = _bn_stats(ctx, saved)
    _bn_dweight(ncs(saved["x"]), ncs(dout), mean, inv, out)


def batchnorm_db(ctx, saved, dout, out) -> None:
    channel_sum(ncs(dout), out)


# ---- scale ---------------------------------------------------------------------------------
def scale_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    x = ncs(inputs[0])
    weight = params["weight"]
    bias = params["bias"] if ctx.attrs["bias"] else np.zeros_like(weight)
    _channel_affine(x, weight, bias, ncs(out))


def scale_dx(ctx, saved, dout, index, out) -> None:
    weight = saved["weight"]
    _channel_affine(ncs(dout), weight, np.zeros_like(weight), ncs(out))


def scale_dw(ctx, saved, dout, out) -> None:
    channel_dot(ncs(dout), ncs(saved["x"]), out)


def scale_db(ctx, saved, dout, out) -> None:
    channel_sum(ncs(dout), out)


# ---- lrn -----------------------------------------------------------------------------------
@njit(cache=True, parallel=True)
def _lrn_fwd(x, size, alpha, beta, k, out, scale, keep_scale):
    """scale = k + alpha/size * (sum of x^2 over the channel window), out = x * scale^-beta.
    The window sum is taken directly (size terms per element), not as a running sum, so
    no rounding drifts along the channels."""
    half = size // 2
    a = alpha / size
    c_n, s_n = x.shape[1], x.shape[2]
    for n in prange(x.shape[0]):
        for c in range(c_n):
            lo, hi = max(c - half, 0), min(c + half + 1, c_n)
            for s in range(s_n):
                acc = 0.0
                for cc in range(lo, hi):
                    v = x[n, cc, s]
                    acc += v * v
                sc = k + a * acc
                out[n, c, s] = x[n, c, s] * sc ** -beta
                if keep_scale:
                    scale[n, c, s] = sc


@njit(cache=True, parallel=True)
def _lrn_back(x, y, scale, dout, size, alpha, beta, ratio, out):
    """dX = dY * scale^-beta - 2 alpha beta / size * x * (window sum of dY * y / scale);
    the window is symmetric, so the same sum gathers every output a channel fed."""
    half = size // 2
    coef = 2.0 * alpha * beta / size
    c_n, s_n = x.shape[1], x.shape[2]
    for n in prange(x.shape[0]):
        for c in range(c_n):
            for s in range(s_n):
                ratio[n, c, s] = dout[n, c, s] * y[n, c, s] / scale[n, c, s]
        for c in range(c_n):
            lo, hi = max(c - half, 0), min(c + half + 1, c_n)
            for s in range(s_n):
                acc = 0.0
                for cc in range(lo, hi):
                    acc += ratio[n, cc, s]
                out[n, c, s] = (dout[n, c, s] * scale[n, c, s] ** -beta
                                - coef * x[n, c, s] * acc)


def lrn_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    a = ctx.attrs
    x = ncs(inputs[0])
    keep = "scale" in aux
    scale = ncs(aux["scale"]) if keep else x  # never written when not kept
    _lrn_fwd(x, a["size"], a["alpha"], a["beta"], a["k"], ncs(out), scale, keep)


def lrn_dx(ctx, saved, dout, index, out) -> None:
    a = ctx.attrs
    d = ncs(dout)
    ratio = scratch.buffer("lrn.ratio", d.shape, dout.dtype)
    _lrn_back(ncs(saved["x"]), ncs(saved["out"]), ncs(saved["scale"]), d, a["size"],
              a["alpha"], a["beta"], ratio, ncs(out))


# ---- softmax -------------------------------------------------------------------------------
def _around(a: np.ndarray, axis: int) -> np.ndarray:
    """`a` as [outer, L, inner], L the softmax axis."""
    axis %= a.ndim
    return view(a, (math.prod(a.shape[:axis]), a.shape[axis], -1))


@njit(cache=True, parallel=True)
def _softmax(x, out):
    for o in prange(x.shape[0]):
        for i in range(x.shape[2]):
            top = x[o, 0, i]
            for j in range(1, x.shape[1]):
                top = max(top, x[o, j, i])
            total = 0.0
            for j in range(x.shape[1]):
                e = np.exp(x[o, j, i] - top)
                out[o, j, i] = e
                total += e
            for j in range(x.shape[1]):
                out[o, j, i] /= total


@njit(cache=True, parallel=True)
def _softmax_back(y, dout, out):
    for o in prange(y.shape[0]):
        for i in range(y.shape[2]):
            dot = 0.0
            for j in range(y.shape[1]):
                dot += dout[o, j, i] * y[o, j, i]
            for j in range(y.shape[1]):
                out[o, j, i] = y[o, j, i] * (dout[o, j, i] - dot)


def softmax_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    axis = ctx.attrs["axis"]
    _softmax(_around(inputs[0], axis), _around(out, axis))


def softmax_dx(ctx, saved, dout, index, out) -> None:
    axis = ctx.attrs["axis"]
    _softmax_back(_around(saved["out"], axis), _around(dout, axis), _around(out, axis))
