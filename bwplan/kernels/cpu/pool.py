"""Pooling on the CPU: max and average windows with Caffe's geometry, and the global forms.

Every loop runs over a range of the N*C planes: a plane is independent in the forward and
in the backward (a window never crosses planes), so a large tensor's planes are cut into
blocks that run on the kernel workers (threads.py), and no two threads write one element.
The loops are serial `nogil` Numba code, not `parallel=True`: a parallel loop took about
five times as long to compile (0.5-1.2 s each, most of a cold start's pooling), needed a
serial twin for small tensors besides (two compilations per loop), and a fork-join whose
second worker is descheduled made small pools many times slower on a shared machine.
Blocks never change a result: each plane is computed alike in any block. The price: the
parfors build ran the 2x2 forward up to 1.6x faster per call (it marks its arrays noalias,
so LLVM vectorises it), 0.04 ms on [64, 64, 8, 8] (bench/RESULTS.md, cold start).

Windows follow the reference: a window starts at o*stride - pad; a max window is clipped
to the image (padding never wins), an average divides by the window clipped to the padded
image [-pad, size + pad) (or, with count_pad false, by its real cells) and sums only the real
cells. The argmax is the flat position
h * W + w within the plane; the first maximum in row-major window order wins ties.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from bwplan.kernels.cpu import threads
from bwplan.kernels.cpu.views import view
from bwplan.ops._shapes import pair

# A tensor is cut into one block of planes per this many elements of its largest array (at
# most one block per kernel worker): about 0.1 ms of pooling per block, where a hand-off to
# a worker costs about 0.07 ms.
BLOCK_ELEMENTS = 1 << 19


def _by_planes(planes: int, elements: int, run) -> None:
    """run(lo, hi) over planes [0, planes), in one call or in blocks on the kernel workers."""
    count = max(1, min(threads.width(), elements // BLOCK_ELEMENTS, planes))
    if count == 1:
        run(0, planes)
        return
    edges = [planes * i // count for i in range(count + 1)]
    threads.for_each(count, lambda t: run(edges[t], edges[t + 1]))


def _planes(a: np.ndarray) -> np.ndarray:
    """[N, C, H, W] as [N*C, H, W]."""
    return view(a, (a.shape[0] * a.shape[1], a.shape[2], a.shape[3]))


def _window(ctx) -> tuple[int, ...]:
    """(kh, kw, sh, sw, ph, pw): stride defaults to the kernel."""
    kh, kw = pair(ctx.attrs["kernel"])
    stride = ctx.attrs["stride"]
    sh, sw = (kh, kw) if stride is None else pair(stride)
    ph, pw = pair(ctx.attrs["pad"])
    return kh, kw, sh, sw, ph, pw


# ---- max -----------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _max_fwd(x, kh, kw, sh, sw, ph, pw, out):
    """The forward without an argmax: a plain max, nothing else stored."""
    h, w = x.shape[1], x.shape[2]
    for t in range(x.shape[0]):
        for oh in range(out.shape[1]):
            h0 = max(oh * sh - ph, 0)
            h1 = min(oh * sh - ph + kh, h)
            for ow in range(out.shape[2]):
                w0 = max(ow * sw - pw, 0)
                w1 = min(ow * sw - pw + kw, w)
                best = x[t, h0, w0]
                for i in range(h0, h1):
                    for j in range(w0, w1):
                        best = max(best, x[t, i, j])
                out[t, oh, ow] = best


@njit(cache=True, nogil=True)
def _max_fwd_arg(x, kh, kw, sh, sw, ph, pw, out, arg):
    h, w = x.shape[1], x.shape[2]
    for t in range(x.shape[0]):
        for oh in range(out.shape[1]):
            h0 = max(oh * sh - ph, 0)
            h1 = min(oh * sh - ph + kh, h)
            for ow in range(out.shape[2]):
                w0 = max(ow * sw - pw, 0)
                w1 = min(ow * sw - pw + kw, w)
                best = x[t, h0, w0]
                where = h0 * w + w0
                for i in range(h0, h1):
                    for j in range(w0, w1):
                        if x[t, i, j] > best:
                            best = x[t, i, j]
                            where = i * w + j
                out[t, oh, ow] = best
                arg[t, oh, ow] = where


# 2x2 windows with stride 2 and no padding, the common case, get loops of their own: four
# fixed loads per output instead of two loops of run-time length and their bounds. 3-6x
# faster than the general loops on cnn_small's pools. They compare in the general loops'
# order, so they give the same maxima and the same argmax.
@njit(cache=True, nogil=True)
def _max2_fwd(x, out):
    for t in range(x.shape[0]):
        for oh in range(out.shape[1]):
            for ow in range(out.shape[2]):
                top = max(x[t, 2 * oh, 2 * ow], x[t, 2 * oh, 2 * ow + 1])
                out[t, oh, ow] = max(max(top, x[t, 2 * oh + 1, 2 * ow]),
                                     x[t, 2 * oh + 1, 2 * ow + 1])


@njit(cache=True, nogil=True)
def _max2_fwd_arg(x, out, arg):
    w = x.shape[2]
    for t in range(x.shape[0]):
        for oh in range(out.shape[1]):
            for ow in range(out.shape[2]):
                where = 2 * oh * w + 2 * ow
                best = x[t, 2 * oh, 2 * ow]
                at = where
                v = x[t, 2 * oh, 2 * ow + 1]
                if v > best:
                    best, at = v, where + 1
                v = x[t, 2 * oh + 1, 2 * ow]
                if v > best:
                    best, at = v, where + w
                v = x[t, 2 * oh + 1, 2 * ow + 1]
                if v > best:
                    best, at = v, where + w + 1
                out[t, oh, ow] = best
                arg[t, oh, ow] = at


# 3x3 windows with stride 2 and no padding (cifar10_quick's and AlexNet's pools) also get
# their own loops: nine fixed loads per whole window, each kept with a select, not a
# branch; the windows the ceil-mode output clips at the bottom and right edges take the
# general loop's body. 4x faster than the general loop on cifar10_quick's pool1, with the
# same comparisons in the same order, so the same maxima and argmax.
@njit(cache=True, inline="always")
def _pick(v, at, best, where):
    gt = v > best
    return (v if gt else best), (at if gt else where)


@njit(cache=True, inline="always")
def _max_window_arg(x, t, oh, ow, kh, kw, sh, sw, ph, pw):
    """(max, flat argmax) of one window, clipped to the image, as _max_fwd_arg finds them."""
    h, w = x.shape[1], x.shape[2]
    h0, h1 = max(oh * sh - ph, 0), min(oh * sh - ph + kh, h)
    w0, w1 = max(ow * sw - pw, 0), min(ow * sw - pw + kw, w)
    best, where = x[t, h0, w0], h0 * w + w0
    for i in range(h0, h1):
        for j in range(w0, w1):
            if x[t, i, j] > best:
                best, where = x[t, i, j], i * w + j
    return best, where


@njit(cache=True, nogil=True)
def _max3s2_fwd_arg(x, out, arg):
    h, w = x.shape[1], x.shape[2]
    oh_n, ow_n = out.shape[1], out.shape[2]
    whole_h, whole_w = min(oh_n, (h - 1) // 2), min(ow_n, (w - 1) // 2)  # 2*o + 2 < size
    for t in range(x.shape[0]):
        for oh in range(whole_h):
            r = 2 * oh
            for ow in range(whole_w):
                c = 2 * ow
                p = r * w + c
                best, where = x[t, r, c], p
                best, where = _pick(x[t, r, c + 1], p + 1, best, where)
                best, where = _pick(x[t, r, c + 2], p + 2, best, where)
                best, where = _pick(x[t, r + 1, c], p + w, best, where)
                best, where = _pick(x[t, r + 1, c + 1], p + w + 1, best, where)
                best, where = _pick(x[t, r + 1, c + 2], p + w + 2, best, where)
                best, where = _pick(x[t, r + 2, c], p + 2 * w, best, where)
                best, where = _pick(x[t, r + 2, c + 1], p + 2 * w + 1, best, where)
                best, where = _pick(x[t, r + 2, c + 2], p + 2 * w + 2, best, where)
                out[t, oh, ow] = best
                arg[t, oh, ow] = where
            for ow in range(whole_w, ow_n):
                out[t, oh, ow], arg[t, oh, ow] = _max_window_arg(x, t, oh, ow, 3, 3, 2, 2,
                                                                 0, 0)
        for oh in range(whole_h, oh_n):
            for ow in range(ow_n):
                out[t, oh, ow], arg[t, oh, ow] = _max_window_arg(x, t, oh, ow, 3, 3, 2, 2,
                                                                 0, 0)


@njit(cache=True, nogil=True)
def _max_back(arg, dout, dx):
    """dx[plane][arg] += dout: overlapping windows may pick the same cell."""
    for t in range(dx.shape[0]):
        dx[t] = 0
        for q in range(dout.shape[1]):
            dx[t, arg[t, q]] += dout[t, q]


def maxpool_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    x, y, window = _planes(inputs[0]), _planes(out), _window(ctx)
    arg = _planes(aux["argmax"]) if "argmax" in aux else None
    if window == (2, 2, 2, 2, 0, 0) and 2 * out.shape[2] <= x.shape[1] \
            and 2 * out.shape[3] <= x.shape[2]:  # every window whole: no ceil overhang
        if arg is not None:
            def run(lo, hi):
                _max2_fwd_arg(x[lo:hi], y[lo:hi], arg[lo:hi])
        else:
            def run(lo, hi):
                _max2_fwd(x[lo:hi], y[lo:hi])
    elif window == (3, 3, 2, 2, 0, 0) and arg is not None:
        def run(lo, hi):
            _max3s2_fwd_arg(x[lo:hi], y[lo:hi], arg[lo:hi])
    elif arg is not None:
        def run(lo, hi):
            _max_fwd_arg(x[lo:hi], *window, y[lo:hi], arg[lo:hi])
    else:
        def run(lo, hi):
            _max_fwd(x[lo:hi], *window, y[lo:hi])
    _by_planes(x.shape[0], x.size, run)


def _scatter_max(saved, dout, out) -> None:
    nc = out.shape[0] * out.shape[1]
    arg, dy, dx = (view(a, (nc, -1)) for a in (saved["argmax"], dout, out))
    _by_planes(nc, dx.size, lambda lo, hi: _max_back(arg[lo:hi], dy[lo:hi], dx[lo:hi]))


def maxpool_dx(ctx, saved, dout, index, out) -> None:
    _scatter_max(saved, dout, out)


# ---- average -------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _ave_extent(o, k, s, p, size, count_pad):
    """(first real cell, one past the last, divisor) of window o along one axis."""
    start = o * s - p
    end = min(start + k, size + p)
    lo, hi = max(start, 0), min(end, size)
    return lo, hi, (end - start) if count_pad else (hi - lo)


@njit(cache=True, nogil=True)
def _ave_fwd(x, kh, kw, sh, sw, ph, pw, count_pad, out):
    h, w = x.shape[1], x.shape[2]
    for t in range(x.shape[0]):
        for oh in range(out.shape[1]):
            h0, h1, dh = _ave_extent(oh, kh, sh, ph, h, count_pad)
            for ow in range(out.shape[2]):
                w0, w1, dw = _ave_extent(ow, kw, sw, pw, w, count_pad)
                acc = 0.0
                for i in range(h0, h1):
                    for j in range(w0, w1):
                        acc += x[t, i, j]
                out[t, oh, ow] = acc / (dh * dw)


@njit(cache=True, nogil=True)
def _ave_back(dout, kh, kw, sh, sw, ph, pw, count_pad, dx):
    h, w = dx.shape[1], dx.shape[2]
    for t in range(dx.shape[0]):
        dx[t] = 0
        for oh in range(dout.shape[1]):
            h0, h1, dh = _ave_extent(oh, kh, sh, ph, h, count_pad)
            for ow in range(dout.shape[2]):
                w0, w1, dw = _ave_extent(ow, kw, sw, pw, w, count_pad)
                g = dout[t, oh, ow] / (dh * dw)
                for i in range(h0, h1):
                    for j in range(w0, w1):
                        dx[t, i, j] += g


def avgpool_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    x, y, window = _planes(inputs[0]), _planes(out), _window(ctx)
    count_pad = ctx.attrs["count_pad"]
    _by_planes(x.shape[0], x.size,
               lambda lo, hi: _ave_fwd(x[lo:hi], *window, count_pad, y[lo:hi]))


def avgpool_dx(ctx, saved, dout, index, out) -> None:
    dy, dx, window = _planes(dout), _planes(out), _window(ctx)
    count_pad = ctx.attrs["count_pad"]
    _by_planes(dx.shape[0], dx.size,
               lambda lo, hi: _ave_back(dy[lo:hi], *window, count_pad, dx[lo:hi]))


# ---- global --------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _global_max(x, out):
    for t in range(x.shape[0]):
        best = x[t, 0]
        for q in range(1, x.shape[1]):
            best = max(best, x[t, q])
        out[t] = best


@njit(cache=True, nogil=True)
def _global_max_arg(x, out, arg):
    for t in range(x.shape[0]):
        best = x[t, 0]
        where = 0
        for q in range(1, x.shape[1]):
            if x[t, q] > best:
                best = x[t, q]
                where = q
        out[t] = best
        arg[t] = where


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _global_mean(x, out):
    for t in range(x.shape[0]):
        acc = 0.0
        for q in range(x.shape[1]):
            acc += x[t, q]
        out[t] = acc / x.shape[1]


@njit(cache=True, nogil=True)
def _global_mean_back(dout, dx):
    for t in range(dx.shape[0]):
        dx[t] = dout[t] / dx.shape[1]


def _flat_planes(a: np.ndarray) -> np.ndarray:
    """[N, C, H, W] as [N*C, H*W]."""
    return view(a, (a.shape[0] * a.shape[1], -1))


def _per_plane(a: np.ndarray) -> np.ndarray:
    """[N, C, 1, 1] as [N*C]."""
    return view(a, (a.size,))


def global_maxpool_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    x, y = _flat_planes(inputs[0]), _per_plane(out)
    if "argmax" in aux:
        arg = _per_plane(aux["argmax"])
        _by_planes(x.shape[0], x.size,
                   lambda lo, hi: _global_max_arg(x[lo:hi], y[lo:hi], arg[lo:hi]))
    else:
        _by_planes(x.shape[0], x.size, lambda lo, hi: _global_max(x[lo:hi], y[lo:hi]))


def global_maxpool_dx(ctx, saved, dout, index, out) -> None:
    _scatter_max(saved, dout, out)


def global_avgpool_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    x, y = _flat_planes(inputs[0]), _per_plane(out)
    _by_planes(x.shape[0], x.size, lambda lo, hi: _global_mean(x[lo:hi], y[lo:hi]))


def global_avgpool_dx(ctx, saved, dout, index, out) -> None:
    dy, dx = _per_plane(dout), _flat_planes(out)
    _by_planes(dx.shape[0], dx.size, lambda lo, hi: _global_mean_back(dy[lo:hi], dx[lo:hi]))
