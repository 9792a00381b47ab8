"""MVN and within-channel LRN on the CPU (bwplan/ops/spatial_norm.py).

MVN takes one row at a time ([num, dim]), its sums in float64. The LRN window sums are
direct loops over the size x size neighbourhood of each position (size is 3 or 5 in
Caffe's nets), zero outside the plane.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from bwplan.kernels.cpu.views import view
from bwplan.ops.spatial_norm import mvn_rows


# ---- MVN -------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _mvn(x, normalize, eps, out, std, keep_std):
    for r in range(x.shape[0]):
        mean = 0.0
        for j in range(x.shape[1]):
            mean += x[r, j]
        mean /= max(1, x.shape[1])
        var = 0.0
        for j in range(x.shape[1]):
            c = x[r, j] - mean
            out[r, j] = c
            var += c * c
        if normalize:
            s = np.sqrt(var / max(1, x.shape[1]))
            if keep_std:
                std[r] = s
            for j in range(x.shape[1]):
                out[r, j] = out[r, j] / (s + eps)


@njit(cache=True, nogil=True)
def _mvn_back(y, std, g, normalize, eps, out):
    dim = max(1, g.shape[1])
    for r in range(g.shape[0]):
        mean_g = 0.0
        mean_gy = 0.0
        for j in range(g.shape[1]):
            mean_g += g[r, j]
            if normalize:
                mean_gy += g[r, j] * y[r, j]
        mean_g /= dim
        mean_gy /= dim
        if not normalize:
            for j in range(g.shape[1]):
                out[r, j] = g[r, j] - mean_g
            continue
        s = std[r]
        denom = s + eps
        for j in range(g.shape[1]):
            unit = y[r, j] * denom / s if s > 0 else 0.0   # (x - mean) / s
            out[r, j] = (g[r, j] - mean_g - unit * mean_gy) / denom


def mvn_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    a = ctx.attrs
    num, dim = mvn_rows(ctx)
    keep = "std" in aux
    std = aux["std"] if keep else np.empty(1, out.dtype)
    _mvn(view(inputs[0], (num, dim)), a["normalize_variance"], a["eps"], view(out, (num, dim)),
         std, keep)


def mvn_dx(ctx, saved, dout, index, out) -> None:
    a = ctx.attrs
    num, dim = mvn_rows(ctx)
    g = view(dout, (num, dim))
    if a["normalize_variance"]:
        y, std = view(saved["out"], (num, dim)), saved["std"]
    else:  # neither is read: the mean is all the backward needs
        y, std = g, np.empty(1, g.dtype)
    _mvn_back(y, std, g, a["normalize_variance"], a["eps"], view(out, (num, dim)))


# ---- LRN within a channel --------------------------------------------------------------
@njit(cache=True, nogil=True)
def _window_sum(a, size, out):
    """out[p, i, j] = sum of a[p] over the size x size window centred on (i, j)."""
    pad = (size - 1) // 2
    planes, h, w = a.shape
    for p in range(planes):
        for i in range(h):
            for j in range(w):
                acc = 0.0
                for di in range(max(0, i - pad), min(h, i + pad + 1)):
                    for dj in range(max(0, j - pad), min(w, j + pad + 1)):
                        acc += a[p, di, dj]
                out[p, i, j] = acc


@njit(cache=True, nogil=True)
def _lrn_apply(x, wsum, coef, beta, out, scale, keep_scale):
    for i in range(x.size):
        s = 1.0 + coef * wsum[i]
        if keep_scale:
            scale[i] = s
        out[i] = x[i] * s ** -beta


@njit(cache=True, nogil=True)
def _lrn_back(x, s, g, spread, coef, beta, out):
    for i in range(x.size):
        out[i] = g[i] * s[i] ** -beta - 2.0 * coef * beta * x[i] * spread[i]


def _planes(ctx):
    n, c, h, w = ctx.x.shape
    return n * c, h, w


def lrn_within_channel_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    a = ctx.attrs
    shape = _planes(ctx)
    x = view(inputs[0], shape)
    wsum = np.empty(shape, np.float64)
    _window_sum(x * x, a["size"], wsum)
    keep = "scale" in aux
    scale = aux["scale"].reshape(-1) if keep else np.empty(1, out.dtype)
    _lrn_apply(x.reshape(-1), wsum.reshape(-1), a["alpha"] / a["size"] ** 2, a["beta"],
               out.reshape(-1), scale, keep)


def lrn_within_channel_dx(ctx, saved, dout, index, out) -> None:
    a = ctx.attrs
    shape = _planes(ctx)
    x, y, s = (view(saved[k], shape) for k in ("x", "out", "scale"))
    g = view(dout, shape)
    spread = np.empty(shape, np.float64)
    _window_sum(g * y / s, a["size"], spread)
    _lrn_back(x.reshape(-1), s.reshape(-1), g.reshape(-1), spread.reshape(-1),
              a["alpha"] / a["size"] ** 2, a["beta"], out.reshape(-1))
