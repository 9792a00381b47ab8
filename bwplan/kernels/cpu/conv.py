"""conv2d on the CPU: im2col in parallel Numba loops, the multiply in BLAS.

For a chunk of `nb` samples the input is unfolded into a column matrix cols [K, nb*P]
(K = C*kh*kw rows in weight order, one column per output pixel, sample-major), so that
one GEMM per group covers the whole chunk:

    forward  Y[O, nb*P]  = W[O, K] @ cols          then scattered to [nb, O, P] (+ bias)
    dX       dcols       = W^T @ dY[O, nb*P]       then folded back (col2im) into dX
    dW       dW^T[K, O] += cols @ dY^T           summed over chunks

One big GEMM beats one small GEMM per sample (late layers have P = 64 pixels or fewer),
and the [O, nb*P] layout makes dW a single long-inner-dimension GEMM per chunk; the price
is a scatter/gather of dY or Y, O*P per sample, cheap next to the K-times-larger GEMM.

The chunk is chosen so that cols stays under CHUNK_BYTES: memory stays bounded for any
batch. Buffers come from `scratch`, so a training step reuses them. Groups are slices of
rows of cols and of W, each a contiguous block, so every GEMM is on contiguous 2-D arrays.
The bias gradient is its own kernel (a per-channel sum of dY).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from bwplan.kernels.cpu import scratch
from bwplan.kernels.cpu.reduce import channel_sum
from bwplan.kernels.cpu.views import view
from bwplan.ops._shapes import pair

# Upper bound on one chunk's column buffer (and its [O, nb*P] output buffer). 32 MiB keeps
# cnn_small's convolutions at batch 64 in a single chunk; tests shrink it to cross chunks.
CHUNK_BYTES = 32 << 20


class Geometry(NamedTuple):
    """conv2d's static sizes: input [n, c, h, w], output [n, o, ho, wo], kernel, stride,
    pad and dilation as (h, w) pairs, and the group count."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    ho: int
    wo: int
    groups: int

    @property
    def k(self) -> int:
        """Rows of cols: C * kh * kw."""
        return self.c * self.kh * self.kw

    @property
    def p(self) -> int:
        """Output pixels per sample."""
        return self.ho * self.wo

    @property
    def window(self) -> tuple[int, ...]:
        return (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw, self.dh, self.dw,
                self.ho, self.wo)


def geometry(ctx) -> Geometry:
    n, c, h, w = ctx.x.shape
    kh, kw = pair(ctx.attrs["kernel"])
    sh, sw = pair(ctx.attrs["stride"])
    ph, pw = pair(ctx.attrs["pad"])
    dh, dw = pair(ctx.attrs["dilation"])
    _, o, ho, wo = ctx.out.shape
    return Geometry(n, c, h, w, o, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo,
                    ctx.attrs["groups"])


def chunks(g: Geometry, itemsize: int):
    """(first sample, samples) of each chunk of the batch."""
    per_sample = max(g.k, g.o) * g.p * itemsize
    nb = max(1, min(g.n, CHUNK_BYTES // per_sample))
    for n0 in range(0, g.n, nb):
        yield n0, min(nb, g.n - n0)


# ---- Numba loops ---------------------------------------------------------------------------
# The loops index flat arrays with unsigned integers: Numba adds a negative-index wraparound
# to every signed index, which keeps LLVM from vectorising the copies; unsigned, im2col runs
# twice as fast. Every index here is non-negative by construction.
@njit(cache=True, inline="always")
def _valid_cols(j, sw, pw, dw, w, wo):
    """The output columns [lo, hi) whose kernel column j lands inside the input row, and
    the input column of output column 0 (off); outside [lo, hi) it reads padding."""
    off = j * dw - pw
    lo = 0 if off >= 0 else (-off + sw - 1) // sw
    hi = (w - off + sw - 1) // sw if w > off else 0
    hi = min(hi, wo)
    return min(lo, hi), hi, off


@njit(cache=True, parallel=True)
def _im2col(x, n0, nb, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols):
    """cols[(c*kh + i)*kw + j, n*P + oh*wo + ow] = x[n0 + n, c, ih, iw] (0 in padding).
    One task per (sample, channel) plane: it reads one small plane (cache-resident) and
    writes its kh*kw rows."""
    c_n, h, w = x.shape[1], x.shape[2], x.shape[3]
    p, m = ho * wo, cols.shape[1]
    xf, cf = x.reshape(-1), cols.reshape(-1)
    for t in prange(nb * c_n):
        n = t // c_n
        c = t - n * c_n
        plane = ((n0 + n) * c_n + c) * h * w
        for i in range(kh):
            for j in range(kw):
                lo, hi, off = _valid_cols(j, sw, pw, dw, w, wo)
                row = ((c * kh + i) * kw + j) * m + n * p
                for oh in range(ho):
                    ih = oh * sh - ph + i * dh
                    d = row + oh * wo
                    if ih < 0 or ih >= h:
                        lo_, hi_ = wo, wo
                    else:
                        lo_, hi_ = lo, hi
                    for ow in range(lo_):
                        cf[np.uint64(d + ow)] = 0
                    s = plane + ih * w + off
                    if sw == 1:
                        for ow in range(lo_, hi_):
                            cf[np.uint64(d + ow)] = xf[np.uint64(s + ow)]
                    else:
                        for ow in range(lo_, hi_):
                            cf[np.uint64(d + ow)] = xf[np.uint64(s + ow * sw)]
                    for ow in range(hi_, wo):
                        cf[np.uint64(d + ow)] = 0


@njit(cache=True, parallel=True)
def _col2im(dcols, n0, nb, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, dx):
    """dx[n0 + n, c] = the sum of the dcols entries that im2col copied from it. One task
    per (sample, channel) plane: a plane is written by its own rows only, so no races."""
    c_n, h, w = dx.shape[1], dx.shape[2], dx.shape[3]
    p, m = ho * wo, dcols.shape[1]
    gf, xf = dcols.reshape(-1), dx.reshape(-1)
    for t in prange(nb * c_n):
        n = t // c_n
        c = t - n * c_n
        plane = ((n0 + n) * c_n + c) * h * w
        for q in range(h * w):
            xf[np.uint64(plane + q)] = 0
        for i in range(kh):
            for j in range(kw):
                lo, hi, off = _valid_cols(j, sw, pw, dw, w, wo)
                row = ((c * kh + i) * kw + j) * m + n * p
                for oh in range(ho):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= h:
                        continue
                    src = row + oh * wo
                    d = plane + ih * w + off
                    for ow in range(lo, hi):
                        xf[np.uint64(d + ow * sw)] += gf[np.uint64(src + ow)]


@njit(cache=True, parallel=True)
def _scatter_out(y, n0, nb, bias, out):
    """out[n0 + n, o, :] = y[o, n*P:(n+1)*P] + bias[o]."""
    o_n, p, m = out.shape[1], out.shape[2], y.shape[1]
    yf, of = y.reshape(-1), out.reshape(-1)
    for t in prange(nb * o_n):
        n = t // o_n
        o = t - n * o_n
        b = bias[o]
        src, dst = o * m + n * p, ((n0 + n) * o_n + o) * p
        for q in range(p):
            of[np.uint64(dst + q)] = yf[np.uint64(src + q)] + b


@njit(cache=True, parallel=True)
def _gather_dy(dout, n0, nb, dy):
    """dy[o, n*P:(n+1)*P] = dout[n0 + n, o, :]: dY in the layout of the GEMMs."""
    o_n, p, m = dout.shape[1], dout.shape[2], dy.shape[1]
    gf, df = dout.reshape(-1), dy.reshape(-1)
    for t in prange(nb * o_n):
        n = t // o_n
        o = t - n * o_n
        src, dst = ((n0 + n) * o_n + o) * p, o * m + n * p
        for q in range(p):
            df[np.uint64(dst + q)] = gf[np.uint64(src + q)]


# ---- kernels ------------------------------------------------------------------------------
def _weights(g: Geometry, weight: np.ndarray) -> np.ndarray:
    """[groups, O/groups, K/groups] view of the weight."""
    return view(weight, (g.groups, g.o // g.groups, g.k // g.groups))


def _unfold(x: np.ndarray, g: Geometry, n0: int, nb: int) -> np.ndarray:
    cols = scratch.buffer("conv.cols", (g.k, nb * g.p), x.dtype)
    _im2col(x, n0, nb, *g.window, cols)
    return cols


def _gathered(dout3: np.ndarray, g: Geometry, n0: int, nb: int) -> np.ndarray:
    dy = scratch.buffer("conv.dy", (g.o, nb * g.p), dout3.dtype)
    _gather_dy(dout3, n0, nb, dy)
    return dy


def conv2d_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    x = inputs[0]
    g = geometry(ctx)
    wg = _weights(g, params["weight"])
    og, kg = wg.shape[1], wg.shape[2]
    # no bias adds zeros: one branch-free loop, and O zeros cost nothing
    bias = params["bias"] if ctx.attrs["bias"] else np.zeros(g.o, x.dtype)
    out3 = view(out, (g.n, g.o, g.p))
    for n0, nb in chunks(g, x.itemsize):
        cols = _unfold(x, g, n0, nb)
        y = scratch.buffer("conv.y", (g.o, nb * g.p), x.dtype)
        for gi in range(g.groups):
            np.dot(wg[gi], cols[gi * kg:(gi + 1) * kg], out=y[gi * og:(gi + 1) * og])
        _scatter_out(y, n0, nb, bias, out3)


def conv2d_dx(ctx, saved, dout, index, out) -> None:
    g = geometry(ctx)
    wg = _weights(g, saved["weight"])
    og, kg = wg.shape[1], wg.shape[2]
    dout3 = view(dout, (g.n, g.o, g.p))
    for n0, nb in chunks(g, dout.itemsize):
        dy = _gathered(dout3, g, n0, nb)
        dcols = scratch.buffer("conv.cols", (g.k, nb * g.p), dout.dtype)
        for gi in range(g.groups):
            np.dot(wg[gi].T, dy[gi * og:(gi + 1) * og], out=dcols[gi * kg:(gi + 1) * kg])
        _col2im(dcols, n0, nb, *g.window, out)


def conv2d_dw(ctx, saved, dout, out) -> None:
    g = geometry(ctx)
    dw = _weights(g, out)
    og, kg = dw.shape[1], dw.shape[2]
    dout3 = view(dout, (g.n, g.o, g.p))
    for n0, nb in chunks(g, dout.itemsize):
        cols = _unfold(saved["x"], g, n0, nb)
        dy = _gathered(dout3, g, n0, nb)
        for gi in range(g.groups):
            # dW^T = cols @ dY^T, then transposed: OpenBLAS runs this 10-20% faster than
            # dY @ cols^T on these long-inner-dimension shapes. NumPy exposes no GEMM
            # with beta = 1, so later chunks multiply into scratch and add.
            part = scratch.buffer("conv.dw", (kg, og), dout.dtype)
            np.dot(cols[gi * kg:(gi + 1) * kg], dy[gi * og:(gi + 1) * og].T, out=part)
            if n0 == 0:
                dw[gi] = part.T
            else:
                dw[gi] += part.T


def conv2d_db(ctx, saved, dout, out) -> None:
    channel_sum(view(dout, (dout.shape[0], dout.shape[1], -1)), out)
