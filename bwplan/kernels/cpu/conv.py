"""conv2d on the CPU: im2col in Numba loops, the multiply in BLAS.

The batch is split into chunks of samples that run as tasks on the kernel workers
(`threads.for_each`), each with single-threaded BLAS and serial Numba loops on its own
scratch buffers, so that a chunk's columns are written, multiplied and consumed by one core.
A sample's input is unfolded into columns cols_n[K, P] (K = C*kh*kw rows in weight order,
one column per output pixel, P pixels per sample), and

    forward  out_n[O, P]  = W[O, K] @ cols_n          one GEMM per sample, into the output
    dX       dcols_n[K, P] = W^T @ dY_n[O, P]         one GEMM per sample, from dY, then
                                                      folded back (col2im) into dX_n
    dW       dW^T[K, O]   = sum_n cols_n @ dY_n^T     one GEMM per sample, from dY

One GEMM per sample reads and writes the NCHW tensors where they lie, and single-threaded
OpenBLAS runs it about as fast per FLOP as one GEMM over the chunk while a sample has
enough pixels. Below PER_SAMPLE_PIXELS it does not ([256, 1152] @ [1152, 16] ran at 60% of
the chunk-wide rate), so small images multiply the whole chunk at once, with the columns
laid out [K, nb*P]: Y[O, nb*P] = W @ cols, scattered (+ bias) into the output; dcols = W^T
@ dY[O, nb*P], dY gathered first; dW^T = cols @ dY^T. The scatter and gather move O*P
numbers per sample, little next to the K-times-larger GEMM. dW also takes the chunk-wide
form where O > P, so that its per-sample parts [nb, K, O] never outgrow the columns, and
where the columns have DW_WIDE_ROWS rows or more, where one long-inner-dimension GEMM beats
nb short ones and their sum; per sample, with few rows, it needs no gather of dY (0.6x the
time on cnn_small's conv1: K = 27, P = 1024).
A 1x1 convolution with stride 1 and no padding needs no unfolding: its columns are the
input itself, and its dX comes straight out of the GEMM. Stride-1 3x3 layers with
WINOGRAD_MIN_CHANNELS or more input and output channels take none of this: they run as
Winograd F(2x2, 3x3) (winograd.py), 2.25x fewer multiplies, chunked the same way; on
cnn_small's and resnet_mini's 3x3 layers of 32-128 channels the forward ran 0.6-0.75x,
dX 0.65-0.9x and dW 0.75-0.95x the im2col path's time (paired CPU time, one thread).
Stride-1 5x5 layers with WINOGRAD5_MIN_CHANNELS or more channels (and padding at most 4)
run as Winograd F(2x2, 5x5) (winograd5.py), 2.78x fewer multiplies: on cifar10_quick's
conv2 (32 -> 32 channels, 16x16, batch 100) the forward, dX and dW ran 0.64x, 0.66x and
0.54x the im2col path's time, on conv3 (32 -> 64, 8x8) the forward 0.78-0.82x and dX
0.96-0.99x, while dW ran 1.15x and stays on im2col there (WINOGRAD5_DW_MIN_WIDTH).

Results do not depend on the number of threads: a sample's output and dX come from its
own GEMMs whichever thread runs them, and dW adds its per-chunk parts in chunk order
(chunks depend on the shapes and CHUNK_BYTES only). Groups are slices of rows of the columns
and of W, so every GEMM is on 2-D operands with unit inner stride. The bias gradient is its
own kernel (a per-channel sum of dY).

`conv2d_fwd_relu` is the forward with a relu after it (Step.applied_by) applied where the
chunk's output is written (the bias add, the scatter, the Winograd output transform), while
it is in the cache: the relu's own pass over the whole output, and the buffer between the
two, are gone. It does the float32 additions of the plain forward and then the relu's
comparison and product, so its output is the two kernels' bit for bit.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from bwplan.kernels.cpu import scratch, threads, winograd, winograd5
from bwplan.kernels.cpu.reduce import channel_sum
from bwplan.kernels.cpu.views import view
from bwplan.ops._shapes import pair

# Upper bound on one chunk's column buffer: a batch makes several tasks for the workers, few
# enough that the Python calls per chunk do not show, and memory stays bounded for any
# batch. On cnn_small's and resnet_mini's convolutions 2-4 MiB ran fastest, within a few
# percent of 1 and 8 MiB (narrower chunks slow the chunk-wide GEMMs); with the cores and
# the last-level cache shared with other busy processes, 2 MiB ran cnn_small's first
# convolution's forward 1.08-1.1x faster than 4 MiB (paired CPU time) and the others
# within noise, and 512 KiB slowed dW. Tests shrink it to cross chunk boundaries.
CHUNK_BYTES = 2 << 20
# Samples with fewer output pixels than this take the chunk-wide GEMM (see above).
PER_SAMPLE_PIXELS = 128
# Columns with at least this many rows (K) take the chunk-wide dW GEMM (Geometry.per_sample_dw).
DW_WIDE_ROWS = 64
# Stride-1 3x3 layers with at least this many input and output channels run as Winograd
# F(2x2, 3x3) (winograd.py, Geometry.winograd). Tests lower it to reach tiny layers.
WINOGRAD_MIN_CHANNELS = 16
# Stride-1 5x5 layers with at least this many input and output channels run as Winograd
# F(2x2, 5x5) (winograd5.py, Geometry.winograd5); cifar10_quick's 3-channel first layer
# stays on im2col (its forward's GEMMs would have an inner dimension of 3).
WINOGRAD5_MIN_CHANNELS = 16
# ... and their dW only from this output width: its GEMMs, [O, T] @ [T, C], multiply the
# tile rows' padding too (winograd5.PITCH_EXTRA), 1.5x the tiles at width 8, and on
# cifar10_quick's conv3 (8x8) it ran 1.15x im2col's time, on conv2 (16x16) 0.54x.
WINOGRAD5_DW_MIN_WIDTH = 16


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
    def per_sample(self) -> bool:
        """Whether the forward and dX multiply sample by sample (see the module doc)."""
        return self.p >= PER_SAMPLE_PIXELS

    @property
    def per_sample_dw(self) -> bool:
        """Whether dW multiplies sample by sample: [K, O] parts, one per sample, summed per
        chunk; no larger than the chunk's columns [nb, K, P] when O <= P. Only for columns
        of few rows (K < DW_WIDE_ROWS): there the chunk-wide GEMM, K x O over a long inner
        dimension, ran at half the per-sample rate (cnn_small's conv1, K = 27), while with
        more rows it ran 1.2-1.4x faster (K = 288, 576; the GEMMs alone), and its parts
        need no summing."""
        return self.per_sample and self.o <= self.p and self.k < DW_WIDE_ROWS

    @property
    def winograd(self) -> bool:
        """Whether forward, dX and dW run as Winograd F(2x2, 3x3): 3x3, stride 1, no
        dilation, one group, and enough channels that the 16 GEMMs over the tiles, with C
        (forward, dW) or O (dX) as their inner dimension, outweigh the transforms."""
        return (self.kh, self.kw, self.sh, self.sw, self.dh, self.dw, self.groups) == \
            (3, 3, 1, 1, 1, 1, 1) and min(self.c, self.o) >= WINOGRAD_MIN_CHANNELS

    @property
    def winograd5(self) -> bool:
        """Whether forward, dX and dW run as Winograd F(2x2, 5x5): 5x5, stride 1, no
        dilation, one group, padding at most 4 (dX runs as a forward convolution padded
        by 4 - pad), and enough channels (as `winograd`, with 36 GEMMs)."""
        return (self.kh, self.kw, self.sh, self.sw, self.dh, self.dw, self.groups) == \
            (5, 5, 1, 1, 1, 1, 1) and max(self.ph, self.pw) <= 4 and \
            min(self.c, self.o) >= WINOGRAD5_MIN_CHANNELS

    @property
    def winograd5_dw(self) -> bool:
        """Whether dW runs as Winograd F(2x2, 5x5) too (see WINOGRAD5_DW_MIN_WIDTH)."""
        return self.winograd5 and self.wo >= WINOGRAD5_DW_MIN_WIDTH

    @property
    def tiled(self):
        """The Winograd module the forward and dX run as (winograd, winograd5), or None."""
        return winograd if self.winograd else winograd5 if self.winograd5 else None

    @property
    def tiled_dw(self):
        """The Winograd module dW runs as, or None."""
        return winograd if self.winograd else winograd5 if self.winograd5_dw else None

    @property
    def identity(self) -> bool:
        """Whether the columns are the input itself: 1x1, stride 1, no padding."""
        return (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw) == (1, 1, 1, 1, 0, 0)

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


def chunks(g: Geometry, itemsize: int, dw: bool = False) -> list[tuple[int, int]]:
    """(first sample, samples) of each chunk of the batch (for the dW kernel: `dw`)."""
    wino = g.tiled_dw if dw else g.tiled
    if wino is not None:
        return wino.chunks(g.n, g.c, g.o, g.ho, g.wo, itemsize,
                           wino.DW_CHUNK_BYTES if dw else wino.CHUNK_BYTES, dw)
    per_sample = max(g.k, g.o) * g.p * itemsize
    nb = max(1, min(g.n, CHUNK_BYTES // per_sample))
    return [(n0, min(nb, g.n - n0)) for n0 in range(0, g.n, nb)]


# A call site's geometry and chunk list, computed at its first call (about 15 us of Python
# that every later step would repeat, three kernels per convolution). Keyed by the context's
# identity: the entry holds the context, so its id cannot be reused while cached, and by the
# chunk sizes and the Winograd threshold, which tests change. Bounded: cleared when full.
_SETUPS: dict[tuple[int, ...], tuple[object, Geometry, list[tuple[int, int]]]] = {}
_SETUPS_MAX = 4096


def _setup(ctx, itemsize: int, dw: bool = False) -> tuple[Geometry, list[tuple[int, int]]]:
    key = (id(ctx), itemsize, dw, CHUNK_BYTES, winograd.CHUNK_BYTES, winograd.DW_CHUNK_BYTES,
           WINOGRAD_MIN_CHANNELS, winograd5.CHUNK_BYTES, winograd5.DW_CHUNK_BYTES,
           WINOGRAD5_MIN_CHANNELS, WINOGRAD5_DW_MIN_WIDTH)
    hit = _SETUPS.get(key)
    if hit is not None and hit[0] is ctx:
        return hit[1], hit[2]
    g = geometry(ctx)
    parts = chunks(g, itemsize, dw)
    if len(_SETUPS) >= _SETUPS_MAX:
        _SETUPS.clear()
    _SETUPS[key] = (ctx, g, parts)
    return g, parts


# ---- Numba loops ---------------------------------------------------------------------------
# Serial and `nogil`: the workers run them side by side, one chunk each. The loops index
# flat arrays with unsigned integers: Numba adds a negative-index wraparound to every signed
# index, which keeps LLVM from vectorising the copies; unsigned, they run twice as fast.
# Every index here is non-negative by construction.
#
# The columns of sample n, row r (= (c*kh + i)*kw + j) and pixel q sit at n*ns + r*rs + q:
# ns = K*P, rs = P for the per-sample layout [nb, K, P]; ns = P, rs = nb*P for the
# chunk-wide layout [K, nb*P]. im2col and col2im go through one zero-padded copy of a
# (sample, channel) plane, so that every window lies inside it: the copies have no padding
# branches, and measured 1.3-3x faster than clipping each row to the image (the most on
# small planes, where the branches cost the most per element).
@njit(cache=True, nogil=True)
def _im2col(x, n0, nb, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols, ns, rs):
    """cols[n, (c*kh + i)*kw + j, oh*wo + ow] = x[n0 + n, c, ih, iw] (0 in padding)."""
    c_n, h, w = x.shape[1], x.shape[2], x.shape[3]
    wp = w + 2 * pw
    padded = np.zeros((h + 2 * ph) * wp, x.dtype)  # the border stays 0
    xf, cf = x.reshape(-1), cols.reshape(-1)
    for n in range(nb):
        for c in range(c_n):
            plane = ((n0 + n) * c_n + c) * h * w
            for ih in range(h):
                s, d = plane + ih * w, (ih + ph) * wp + pw
                for iw in range(w):
                    padded[np.uint64(d + iw)] = xf[np.uint64(s + iw)]
            for i in range(kh):
                for j in range(kw):
                    row = n * ns + ((c * kh + i) * kw + j) * rs
                    for oh in range(ho):
                        d, s = row + oh * wo, (oh * sh + i * dh) * wp + j * dw
                        if sw == 1:
                            for ow in range(wo):
                                cf[np.uint64(d + ow)] = padded[np.uint64(s + ow)]
                        else:
                            for ow in range(wo):
                                cf[np.uint64(d + ow)] = padded[np.uint64(s + ow * sw)]


@njit(cache=True, nogil=True)
def _col2im(dcols, n0, nb, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, dx, ns, rs):
    """dx[n0 + n, c] = the sum of the dcols entries that im2col copied from it, added in
    (i, j) order into a padded plane whose interior is then copied out."""
    c_n, h, w = dx.shape[1], dx.shape[2], dx.shape[3]
    wp = w + 2 * pw
    padded = np.empty((h + 2 * ph) * wp, dx.dtype)
    gf, xf = dcols.reshape(-1), dx.reshape(-1)
    for n in range(nb):
        for c in range(c_n):
            padded[:] = 0
            for i in range(kh):
                for j in range(kw):
                    row = n * ns + ((c * kh + i) * kw + j) * rs
                    for oh in range(ho):
                        s, d = row + oh * wo, (oh * sh + i * dh) * wp + j * dw
                        if sw == 1:
                            for ow in range(wo):
                                padded[np.uint64(d + ow)] += gf[np.uint64(s + ow)]
                        else:
                            for ow in range(wo):
                                padded[np.uint64(d + ow * sw)] += gf[np.uint64(s + ow)]
            plane = ((n0 + n) * c_n + c) * h * w
            for ih in range(h):
                s, d = (ih + ph) * wp + pw, plane + ih * w
                for iw in range(w):
                    xf[np.uint64(d + iw)] = padded[np.uint64(s + iw)]


@njit(cache=True, nogil=True)
def _add_bias(out, bias):
    """out[n, o, :] += bias[o], on a chunk [nb, O, P] that a worker has just written."""
    for n in range(out.shape[0]):
        for o in range(out.shape[1]):
            b = bias[o]
            for q in range(out.shape[2]):
                out[n, o, q] += b


@njit(cache=True, nogil=True)
def _add_bias_leaky(out, bias, slope):
    """_add_bias, then v if v > 0 else v * slope on each sum: a relu's forward in the same
    pass (relu's own loop does the same float ops, elementwise.py)."""
    for n in range(out.shape[0]):
        for o in range(out.shape[1]):
            b = bias[o]
            for q in range(out.shape[2]):
                v = out[n, o, q] + b
                out[n, o, q] = v if v > 0 else v * slope


@njit(cache=True, nogil=True)
def _leaky(out, slope):
    """v if v > 0 else v * slope, in place on a chunk [nb, O, P] just written (no bias)."""
    for n in range(out.shape[0]):
        for o in range(out.shape[1]):
            for q in range(out.shape[2]):
                v = out[n, o, q]
                out[n, o, q] = v if v > 0 else v * slope


@njit(cache=True, nogil=True)
def _scatter_out_leaky(y, n0, nb, bias, slope, out):
    """_scatter_out, then a relu's v if v > 0 else v * slope on each value it writes."""
    o_n, p, m = out.shape[1], out.shape[2], y.shape[1]
    yf, of = y.reshape(-1), out.reshape(-1)
    for n in range(nb):
        for o in range(o_n):
            b = bias[o]
            src, dst = o * m + n * p, ((n0 + n) * o_n + o) * p
            for q in range(p):
                v = yf[np.uint64(src + q)] + b
                of[np.uint64(dst + q)] = v if v > 0 else v * slope


@njit(cache=True, nogil=True)
def _scatter_out(y, n0, nb, bias, out):
    """out[n0 + n, o, :] = y[o, n*P:(n+1)*P] + bias[o]."""
    o_n, p, m = out.shape[1], out.shape[2], y.shape[1]
    yf, of = y.reshape(-1), out.reshape(-1)
    for n in range(nb):
        for o in range(o_n):
            b = bias[o]
            src, dst = o * m + n * p, ((n0 + n) * o_n + o) * p
            for q in range(p):
                of[np.uint64(dst + q)] = yf[np.uint64(src + q)] + b


@njit(cache=True, nogil=True)
def _gather(a, n0, nb, out):
    """out[o, n*P:(n+1)*P] = a[n0 + n, o, :]: dY in the layout of the chunk-wide GEMMs."""
    o_n, p, m = a.shape[1], a.shape[2], out.shape[1]
    af, of = a.reshape(-1), out.reshape(-1)
    for n in range(nb):
        for o in range(o_n):
            src, dst = ((n0 + n) * o_n + o) * p, o * m + n * p
            for q in range(p):
                of[np.uint64(dst + q)] = af[np.uint64(src + q)]


@njit(cache=True, nogil=True)
def _sum_transposed(parts, dw):
    """dw[g, o, k] = the sum over t of parts[t, g, k, o], added in t order. Reading rows of
    parts and writing columns of dw keeps one cache line per o live, so no blocking is
    needed; NumPy's sum into a transposed view took several times as long."""
    for gi in range(parts.shape[1]):
        for k in range(parts.shape[2]):
            for o in range(parts.shape[3]):
                acc = parts[0, gi, k, o]
                for t in range(1, parts.shape[0]):
                    acc += parts[t, gi, k, o]
                dw[gi, o, k] = acc


# ---- kernels ------------------------------------------------------------------------------
def _weights(g: Geometry, weight: np.ndarray) -> np.ndarray:
    """[groups, O/groups, K/groups] view of the weight."""
    return view(weight, (g.groups, g.o // g.groups, g.k // g.groups))


def _unfold(x: np.ndarray, g: Geometry, n0: int, nb: int, per_sample: bool) -> np.ndarray:
    """The chunk's columns, [nb, K, P] or [K, nb*P], in the calling thread's scratch."""
    # the loops see the columns flat, whichever layout: one specialisation for both
    if per_sample:
        cols = scratch.buffer("conv.cols", (nb, g.k, g.p), x.dtype)
        _im2col(x, n0, nb, *g.window, cols.reshape(-1), g.k * g.p, g.p)
    else:
        cols = scratch.buffer("conv.cols", (g.k, nb * g.p), x.dtype)
        _im2col(x, n0, nb, *g.window, cols.reshape(-1), g.p, nb * g.p)
    return cols


def _gathered(a3: np.ndarray, n0: int, nb: int) -> np.ndarray:
    out = scratch.buffer("conv.gathered", (a3.shape[1], nb * a3.shape[2]), a3.dtype)
    _gather(a3, n0, nb, out)
    return out


def conv2d_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    _forward(ctx, inputs[0], params, out, None)


def conv2d_fwd_relu(ctx, inputs, params, out, aux, training, rng, epilogue) -> None:
    """conv2d_fwd with the relu of context `epilogue` (its negative_slope) applied in the
    output write (kernels/cpu `with_epilogue`)."""
    _forward(ctx, inputs[0], params, out, float(epilogue.attrs["negative_slope"]))


def _forward(ctx, x, params, out, slope: float | None) -> None:
    """The forward; where `slope` is given, each output value v is written as v if v > 0
    else v * slope."""
    g, parts = _setup(ctx, x.itemsize)
    wg = _weights(g, params["weight"])
    og, kg = wg.shape[1], wg.shape[2]
    bias = params["bias"] if ctx.attrs["bias"] else None
    if g.winograd:
        _winograd_fwd(g, parts, x, params["weight"], bias, out, slope)
        return
    if g.winograd5:
        _winograd5_fwd(g, parts, x, params["weight"], bias, out, slope)
        return
    x3, out3 = view(x, (g.n, g.c, g.h * g.w)), view(out, (g.n, g.o, g.p))

    def chunk(t: int) -> None:
        n0, nb = parts[t]
        if not g.per_sample:
            cols = _unfold(x, g, n0, nb, False)
            y = scratch.buffer("conv.y", (g.o, nb * g.p), x.dtype)
            for gi in range(g.groups):
                np.dot(wg[gi], cols[gi * kg:(gi + 1) * kg], out=y[gi * og:(gi + 1) * og])
            # no bias adds zeros: one branch-free loop, and O zeros cost nothing
            b = np.zeros(g.o, x.dtype) if bias is None else bias
            if slope is None:
                _scatter_out(y, n0, nb, b, out3)
            else:
                _scatter_out_leaky(y, n0, nb, b, slope, out3)
            return
        cols = x3[n0:n0 + nb] if g.identity else _unfold(x, g, n0, nb, True)
        for gi in range(g.groups):
            np.matmul(wg[gi], cols[:, gi * kg:(gi + 1) * kg],
                      out=out3[n0:n0 + nb, gi * og:(gi + 1) * og])
        if slope is not None:
            if bias is None:
                _leaky(out3[n0:n0 + nb], slope)
            else:
                _add_bias_leaky(out3[n0:n0 + nb], bias, slope)
        elif bias is not None:
            _add_bias(out3[n0:n0 + nb], bias)

    threads.for_each(len(parts), chunk)


def conv2d_dx(ctx, saved, dout, index, out) -> None:
    g, parts = _setup(ctx, dout.itemsize)
    if g.winograd:
        _winograd_dx(g, parts, saved["weight"], dout, out)
        return
    if g.winograd5:
        _winograd5_dx(g, parts, saved["weight"], dout, out)
        return
    wg = _weights(g, saved["weight"])
    og, kg = wg.shape[1], wg.shape[2]
    dout3, out3 = view(dout, (g.n, g.o, g.p)), view(out, (g.n, g.c, g.h * g.w))

    def chunk(t: int) -> None:
        n0, nb = parts[t]
        if not g.per_sample:
            dy = _gathered(dout3, n0, nb)
            dcols = scratch.buffer("conv.cols", (g.k, nb * g.p), dout.dtype)
            for gi in range(g.groups):
                np.dot(wg[gi].T, dy[gi * og:(gi + 1) * og], out=dcols[gi * kg:(gi + 1) * kg])
            _col2im(dcols.reshape(-1), n0, nb, *g.window, out, g.p, nb * g.p)
            return
        dcols = out3[n0:n0 + nb] if g.identity else \
            scratch.buffer("conv.cols", (nb, g.k, g.p), dout.dtype)
        for gi in range(g.groups):
            np.matmul(wg[gi].T, dout3[n0:n0 + nb, gi * og:(gi + 1) * og],
                      out=dcols[:, gi * kg:(gi + 1) * kg])
        if not g.identity:
            _col2im(dcols.reshape(-1), n0, nb, *g.window, out, g.k * g.p, g.p)

    threads.for_each(len(parts), chunk)


def conv2d_dw(ctx, saved, dout, out) -> None:
    g, parts = _setup(ctx, dout.itemsize, dw=True)
    dw = _weights(g, out)
    og, kg = dw.shape[1], dw.shape[2]
    x, dout3 = saved["x"], view(dout, (g.n, g.o, g.p))
    x3 = view(x, (g.n, g.c, g.h * g.w))
    if not parts:  # an empty batch
        out[...] = 0
        return
    if g.winograd:
        _winograd_dw(g, parts, x, dout, out)
        return
    if g.winograd5_dw:
        _winograd5_dw(g, parts, x, dout, out)
        return
    # one dW^T part per chunk, in the calling thread's scratch, summed in chunk order below
    sums = scratch.buffer("conv.dw", (len(parts), g.groups, kg, og), dout.dtype)

    def chunk(t: int) -> None:
        n0, nb = parts[t]
        if g.per_sample_dw:
            cols = x3[n0:n0 + nb] if g.identity else _unfold(x, g, n0, nb, True)
            each = scratch.buffer("conv.dw_n", (nb, kg, og), dout.dtype)
            for gi in range(g.groups):
                np.matmul(cols[:, gi * kg:(gi + 1) * kg],
                          dout3[n0:n0 + nb, gi * og:(gi + 1) * og].transpose(0, 2, 1), out=each)
                np.sum(each, axis=0, out=sums[t, gi])
            return
        cols = _unfold(x, g, n0, nb, False)
        dy = _gathered(dout3, n0, nb)
        for gi in range(g.groups):
            # dW^T = cols @ dY^T, then transposed: OpenBLAS runs this 10-20% faster than
            # dY @ cols^T on these long-inner-dimension shapes
            np.dot(cols[gi * kg:(gi + 1) * kg], dy[gi * og:(gi + 1) * og].T, out=sums[t, gi])

    threads.for_each(len(parts), chunk)
    _sum_transposed(sums, dw)


# ---- Winograd F(2x2, 3x3) (winograd.py): 16 GEMMs per chunk over its tiles ---------------
# The planes of a transformed tensor lie PLANE_SKEW elements further apart than their
# size: the transforms write (or read) all of them for each tile, and planes a power of two
# apart map to one cache set (an 8-way L1 cannot hold 16 such lines): skewed, the
# gradient's transform ran 9x faster on cnn_small's conv2.
PLANE_SKEW = 16


def _flat_planes(role: str, leading: tuple[int, ...], planes: int, rows: int, cols: int,
                 dtype) -> tuple[np.ndarray, np.ndarray]:
    """A scratch [*leading, planes, rows, cols] whose planes are skewed (see PLANE_SKEW),
    each plane C-contiguous, as a GEMM operand must be; and the C-contiguous buffer under
    it, [*leading, planes, rows*cols + PLANE_SKEW]."""
    size = rows * cols
    flat = scratch.buffer(role, leading + (planes, size + PLANE_SKEW), dtype)
    return flat[..., :size].reshape(leading + (planes, rows, cols)), flat


def _planes(role: str, leading: tuple[int, ...], rows: int, cols: int, dtype) -> np.ndarray:
    """A scratch [*leading, 16, rows, cols] of skewed planes (_flat_planes)."""
    return _flat_planes(role, leading, 16, rows, cols, dtype)[0]


def _weight_tiles(g: Geometry, weight: np.ndarray) -> np.ndarray:
    """[16, O, C]: the transformed weights, in the calling thread's scratch (every chunk
    reads them)."""
    u = _planes("conv.wino_u", (), g.o, g.c, weight.dtype)
    winograd.weight_tiles(weight, u)
    return u


def _winograd_fwd(g: Geometry, parts, x, weight, bias, out, slope=None) -> None:
    th, tw = winograd.tiles(g.ho, g.wo)
    u = _weight_tiles(g, weight)
    bias = np.zeros(g.o, x.dtype) if bias is None else bias  # one branch-free loop

    def chunk(t: int) -> None:
        n0, nb = parts[t]
        v = _planes("conv.wino_v", (), g.c, nb * th * tw, x.dtype)
        winograd.input_tiles(x, n0, nb, g.ph, g.pw, th, tw, v)
        m = _planes("conv.wino_m", (), g.o, nb * th * tw, x.dtype)
        np.matmul(u, v, out=m)
        if slope is None:
            winograd.output_tiles(m, n0, nb, th, tw, bias, out)
        else:
            winograd.output_tiles(m, n0, nb, th, tw, bias, out, True, slope)

    threads.for_each(len(parts), chunk)


def _winograd_dx(g: Geometry, parts, weight, dout, out) -> None:
    th, tw = winograd.tiles(g.ho, g.wo)
    ut = _weight_tiles(g, weight).transpose(0, 2, 1)

    def chunk(t: int) -> None:
        n0, nb = parts[t]
        m = _planes("conv.wino_m", (), g.o, nb * th * tw, dout.dtype)
        winograd.output_grad_tiles(dout, n0, nb, th, tw, m)
        dv = _planes("conv.wino_v", (), g.c, nb * th * tw, dout.dtype)
        np.matmul(ut, m, out=dv)
        winograd.input_grad(dv, n0, nb, g.ph, g.pw, th, tw, out)

    threads.for_each(len(parts), chunk)


def _winograd_dw(g: Geometry, parts, x, dout, out) -> None:
    th, tw = winograd.tiles(g.ho, g.wo)
    # one [16, O, C] part per chunk, in the calling thread's scratch, summed in chunk order
    sums = _planes("conv.wino_dw", (len(parts),), g.o, g.c, dout.dtype)

    def chunk(t: int) -> None:
        n0, nb = parts[t]
        m = _planes("conv.wino_m", (), g.o, nb * th * tw, dout.dtype)
        winograd.output_grad_tiles(dout, n0, nb, th, tw, m)
        v = _planes("conv.wino_v", (), g.c, nb * th * tw, dout.dtype)
        winograd.input_tiles(x, n0, nb, g.ph, g.pw, th, tw, v)
        np.matmul(m, v.transpose(0, 2, 1), out=sums[t])

    threads.for_each(len(parts), chunk)
    for t in range(1, len(parts)):  # in chunk order, whichever thread ran which chunk
        np.add(sums[0], sums[t], out=sums[0])
    winograd.weight_grad(sums[0], out)


# ---- Winograd F(2x2, 5x5) (winograd5.py): 36 GEMMs per chunk over its tiles ---------------
# The transforms take the planes' flat buffer (winograd5.py says why). dX is the forward
# convolution of dY, padded by 4 - pad, with the weights flipped and transposed
# (W'[c, o, i, j] = W[o, c, 4 - i, 4 - j]): the forward's transforms, and no overlapping
# tile sums, which ran 0.3x the forward's transform speed.
def _tiled_conv(x, n0, nb, pads, tiles_hw, u, bias, out, slope=None) -> None:
    """out[n0:n0 + nb] = the 5x5 convolution of x[n0:n0 + nb] (padding `pads`) as
    F(2x2, 5x5), with u [36, out channels, in channels] the transformed weights; with
    `slope`, a relu of that slope in the output write."""
    (th, tw), (o, c) = tiles_hw, u.shape[1:]
    tiles_n = nb * th * winograd5.pitch(tw)
    v, vf = _flat_planes("conv.wino_v", (), 36, c, tiles_n, x.dtype)
    winograd5.input_tiles(x, n0, nb, pads[0], pads[1], th, tw, vf, tiles_n)
    m, mf = _flat_planes("conv.wino_m", (), 36, o, tiles_n, x.dtype)
    np.matmul(u, v, out=m)
    if slope is None:
        winograd5.output_tiles(mf, n0, nb, th, tw, bias, out, tiles_n)
    else:
        winograd5.output_tiles(mf, n0, nb, th, tw, bias, out, tiles_n, True, slope)


def _winograd5_fwd(g: Geometry, parts, x, weight, bias, out, slope=None) -> None:
    tiles_hw = winograd5.tiles(g.ho, g.wo)
    u = _flat_planes("conv.wino_u", (), 36, g.o, g.c, weight.dtype)[0]
    winograd5.weight_tiles(weight, u)
    bias = np.zeros(g.o, x.dtype) if bias is None else bias  # one branch-free loop
    threads.for_each(len(parts), lambda t: _tiled_conv(x, *parts[t], (g.ph, g.pw),
                                                       tiles_hw, u, bias, out, slope))


def _winograd5_dx(g: Geometry, parts, weight, dout, out) -> None:
    tiles_hw = winograd5.tiles(g.h, g.w)
    flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    u = _flat_planes("conv.wino_u", (), 36, g.c, g.o, weight.dtype)[0]
    winograd5.weight_tiles(flipped, u)
    zeros = np.zeros(g.c, dout.dtype)
    threads.for_each(len(parts), lambda t: _tiled_conv(dout, *parts[t], (4 - g.ph, 4 - g.pw),
                                                       tiles_hw, u, zeros, out))


def _winograd5_dw(g: Geometry, parts, x, dout, out) -> None:
    th, tw = winograd5.tiles(g.ho, g.wo)
    # one [36, O, C] part per chunk, in the calling thread's scratch, summed in chunk order
    sums = _flat_planes("conv.wino_dw", (len(parts),), 36, g.o, g.c, dout.dtype)[0]

    def chunk(t: int) -> None:
        n0, nb = parts[t]
        tiles_n = nb * th * winograd5.pitch(tw)
        m, mf = _flat_planes("conv.wino_m", (), 36, g.o, tiles_n, dout.dtype)
        winograd5.output_grad_tiles(dout, n0, nb, th, tw, mf, tiles_n)
        v, vf = _flat_planes("conv.wino_v", (), 36, g.c, tiles_n, dout.dtype)
        winograd5.input_tiles(x, n0, nb, g.ph, g.pw, th, tw, vf, tiles_n)
        np.matmul(m, v.transpose(0, 2, 1), out=sums[t])

    threads.for_each(len(parts), chunk)
    for t in range(1, len(parts)):  # in chunk order, whichever thread ran which chunk
        np.add(sums[0], sums[t], out=sums[0])
    winograd5.weight_grad(sums[0], out)


def conv2d_db(ctx, saved, dout, out) -> None:
    channel_sum(view(dout, (dout.shape[0], dout.shape[1], -1)), out)
