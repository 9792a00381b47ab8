"""Crop, pad, deconv2d, interp, roi_pool and normalize on the CPU (bwplan/ops/spatial.py).

Crop and pad move data and compute nothing, like the shape family, so each kernel is
one NumPy copy (a strided view copied into the output buffer): a memcpy-speed pass a Numba
loop could only match. deconv2d runs conv2d's Numba kernels on the transposed problem
(`conv_view`): its forward is conv2d's dX, its dX conv2d's forward, its dW conv2d's dW
with input and output gradient swapped; its dB is conv2d's. interp is one Numba pass over
the output planes (forward) and its transpose over the same taps (dX), which adds into the
input gradient in a fixed order, so results do not depend on threads.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from bwplan.kernels.cpu import conv
from bwplan.kernels.cpu.views import flat, ncs
from bwplan.ops.spatial import conv_view, crop_window, interp_taps, pad_window, roi_bins


def crop_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    np.copyto(out, inputs[0][crop_window(ctx)])


def crop_dx(ctx, saved, dout, index, out) -> None:
    out.fill(0)
    out[crop_window(ctx)] = dout


def pad_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    out.fill(0)
    out[pad_window(ctx)] = inputs[0]


def pad_dx(ctx, saved, dout, index, out) -> None:
    np.copyto(out, dout[pad_window(ctx)])


def deconv2d_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    conv.conv2d_dx(conv_view(ctx), {"weight": params["weight"]}, inputs[0], 0, out)
    if ctx.attrs["bias"]:
        out += params["bias"].reshape(1, -1, 1, 1)


def deconv2d_dx(ctx, saved, dout, index, out) -> None:
    conv.conv2d_fwd(conv_view(ctx), [dout], {"weight": saved["weight"]}, out, {}, False, None)


def deconv2d_dw(ctx, saved, dout, out) -> None:
    conv.conv2d_dw(conv_view(ctx), {"x": dout}, saved["x"], out)


def deconv2d_db(ctx, saved, dout, out) -> None:
    conv.conv2d_db(ctx, saved, dout, out)


@njit(cache=True, nogil=True)
def _interp(x, hl, hh, hf, wl, wh, wf, out):
    for p in range(x.shape[0]):
        for i in range(out.shape[1]):
            a, b, fy = hl[i], hh[i], hf[i]
            for j in range(out.shape[2]):
                c, d, fx = wl[j], wh[j], wf[j]
                top = x[p, a, c] * (1 - fx) + x[p, a, d] * fx
                bottom = x[p, b, c] * (1 - fx) + x[p, b, d] * fx
                out[p, i, j] = top * (1 - fy) + bottom * fy


@njit(cache=True, nogil=True)
def _interp_back(dout, hl, hh, hf, wl, wh, wf, dx):
    dx[:] = 0
    for p in range(dout.shape[0]):
        for i in range(dout.shape[1]):
            a, b, fy = hl[i], hh[i], hf[i]
            for j in range(dout.shape[2]):
                c, d, fx = wl[j], wh[j], wf[j]
                g = dout[p, i, j]
                dx[p, a, c] += g * (1 - fy) * (1 - fx)
                dx[p, a, d] += g * (1 - fy) * fx
                dx[p, b, c] += g * fy * (1 - fx)
                dx[p, b, d] += g * fy * fx


def _taps(ctx):
    hl, hh, hf = interp_taps(ctx.x.shape[2], ctx.attrs["height"])
    wl, wh, wf = interp_taps(ctx.x.shape[3], ctx.attrs["width"])
    return hl, hh, hf, wl, wh, wf


def _planes(a):
    return a.reshape(-1, a.shape[2], a.shape[3])


def interp_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    _interp(_planes(inputs[0]), *_taps(ctx), _planes(out))


def interp_dx(ctx, saved, dout, index, out) -> None:
    _interp_back(_planes(dout), *_taps(ctx), _planes(out))


# ---- roi_pool: the bins of every roi are cut in Python (roi_bins, a few per roi), the
# maxima and the scatter of dX are Numba loops over them in a fixed order
def _roi_table(ctx, rois) -> np.ndarray:
    """[R, PH, PW, 5]: batch index, hstart, hend, wstart, wend of every bin."""
    ph_n, pw_n = ctx.attrs["pooled_h"], ctx.attrs["pooled_w"]
    table = np.zeros((rois.shape[0], ph_n, pw_n, 5), dtype=np.int64)
    for r in range(rois.shape[0]):
        b, rows, cols = roi_bins(ctx, rois[r])
        for i, (h0, h1) in enumerate(rows):
            for j, (w0, w1) in enumerate(cols):
                table[r, i, j] = (b, h0, h1, w0, w1)
    return table


@njit(cache=True, nogil=True)
def _roi_max(x, table, out, argmax, keep):
    r_n, ph_n, pw_n = table.shape[0], table.shape[1], table.shape[2]
    w = x.shape[3]
    for r in range(r_n):
        for c in range(x.shape[1]):
            for i in range(ph_n):
                for j in range(pw_n):
                    b, h0, h1, w0, w1 = table[r, i, j]
                    best, where = 0.0, -1
                    for hh in range(h0, h1):
                        for ww in range(w0, w1):
                            v = x[b, c, hh, ww]
                            if where < 0 or v > best:
                                best, where = v, hh * w + ww
                    out[r, c, i, j] = best
                    if keep:
                        argmax[r, c, i, j] = where


@njit(cache=True, nogil=True)
def _roi_scatter(dout, argmax, batch, dx):
    dx[:] = 0
    for r in range(argmax.shape[0]):
        b = batch[r]
        for c in range(argmax.shape[1]):
            for i in range(argmax.shape[2]):
                for j in range(argmax.shape[3]):
                    k = argmax[r, c, i, j]
                    if k >= 0:
                        dx[b, c, k] += dout[r, c, i, j]


def roi_pool_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    x, rois = inputs
    argmax = aux.get("argmax")
    keep = argmax is not None
    _roi_max(x, _roi_table(ctx, rois.reshape(-1, 5)), out,
             argmax if keep else np.empty((0, 0, 0, 0), np.int32), keep)


def roi_pool_dx(ctx, saved, dout, index, out) -> None:
    batch = saved["rois"].reshape(-1, 5)[:, 0].astype(np.int64)
    _roi_scatter(dout, saved["argmax"], batch, out.reshape(out.shape[0], out.shape[1], -1))


# ---- normalize: tensors seen as [N, C, S]; sums in float64 --------------------------------
@njit(cache=True, nogil=True)
def _l2_norms(x, across, eps, norm):
    n_, c_, s_ = x.shape
    for n in range(n_):
        if across:
            acc = 0.0
            for c in range(c_):
                for s in range(s_):
                    acc += x[n, c, s] * x[n, c, s]
            norm[n, 0] = math.sqrt(acc + eps)
        else:
            for s in range(s_):
                acc = 0.0
                for c in range(c_):
                    acc += x[n, c, s] * x[n, c, s]
                norm[n, s] = math.sqrt(acc + eps)


@njit(cache=True, nogil=True)
def _normalize(x, norm, across, weight, out):
    n_, c_, s_ = x.shape
    for n in range(n_):
        for c in range(c_):
            w = weight[0] if weight.size == 1 else weight[c]
            for s in range(s_):
                out[n, c, s] = x[n, c, s] / norm[n, 0 if across else s] * w


@njit(cache=True, nogil=True)
def _normalize_back(x, norm, across, weight, dout, dx):
    n_, c_, s_ = x.shape
    for n in range(n_):
        groups = 1 if across else s_
        for grp in range(groups):
            s0, s1 = (0, s_) if across else (grp, grp + 1)
            nv = norm[n, grp]
            dot = 0.0
            for c in range(c_):
                w = weight[0] if weight.size == 1 else weight[c]
                for s in range(s0, s1):
                    dot += dout[n, c, s] * w * x[n, c, s]
            for c in range(c_):
                w = weight[0] if weight.size == 1 else weight[c]
                for s in range(s0, s1):
                    dx[n, c, s] = dout[n, c, s] * w / nv - x[n, c, s] * dot / (nv * nv * nv)


@njit(cache=True, nogil=True)
def _normalize_dw(x, norm, across, dout, dw):
    n_, c_, s_ = x.shape
    for i in range(dw.size):
        dw[i] = 0
    for c in range(c_):
        acc = 0.0
        for n in range(n_):
            for s in range(s_):
                acc += dout[n, c, s] * x[n, c, s] / norm[n, 0 if across else s]
        dw[0 if dw.size == 1 else c] += acc


def _norm2(ctx, norm):
    return norm.reshape(norm.shape[0], -1)


def normalize_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    x = ncs(inputs[0])
    across = ctx.attrs["across_spatial"]
    norm = aux.get("norm")
    norm = np.empty((x.shape[0], 1 if across else x.shape[2]), x.dtype) if norm is None \
        else _norm2(ctx, norm)
    _l2_norms(x, across, ctx.attrs["eps"], norm)
    _normalize(x, norm, across, flat(params["weight"]), ncs(out))


def normalize_dx(ctx, saved, dout, index, out) -> None:
    _normalize_back(ncs(saved["x"]), _norm2(ctx, saved["norm"]), ctx.attrs["across_spatial"],
                    flat(saved["weight"]), ncs(dout), ncs(out))


def normalize_dw(ctx, saved, dout, out) -> None:
    _normalize_dw(ncs(saved["x"]), _norm2(ctx, saved["norm"]), ctx.attrs["across_spatial"],
                  ncs(dout), flat(out))
