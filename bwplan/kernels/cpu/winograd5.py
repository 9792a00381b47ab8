"""Winograd F(2x2, 5x5) for conv2d's stride-1 5x5 layers (conv.py decides which).

The same scheme as winograd.py's F(2x2, 3x3), with 6x6 input tiles: each 2x2 tile of output
pixels comes from a 6x6 tile of input, and

    Y = A^T [ (G w G^T) . (B^T d B) ] A

is 36 products per 4 output pixels and channel pair instead of 100 (2.78x fewer FLOPs in
the GEMMs). The matrices are Toom-Cook's at the points 0, 1, -1, 2, -2 and infinity
(derived by solving the bilinear identity exactly; the tests check the 1-D identity in
float64):

    B^T = [[4,  0, -5,  0, 1, 0],      G = [[ 1/4,     0,    0,     0,    0],
           [0, -4, -4,  1, 1, 0],           [-1/6,  -1/6, -1/6,  -1/6, -1/6],
           [0,  4, -4, -1, 1, 0],           [-1/6,   1/6, -1/6,   1/6, -1/6],
           [0, -2, -1,  2, 1, 0],           [1/24,  1/12,  1/6,   1/3,  2/3],
           [0,  2, -1, -2, 1, 0],           [1/24, -1/12,  1/6,  -1/3,  2/3],
           [0,  4,  0, -5, 0, 1]]           [   0,     0,    0,     0,    1]]

    A^T = [[1, 1,  1, 1,  1, 0],
           [0, 1, -1, 2, -2, 1]]

dW is the transpose, as in winograd.py: dM[k] = A dY_tile A^T, dW = G^T (the sum over
chunks of dM[k] @ V[k]^T) G. dX is the forward of the same module on dY with the weights
flipped and transposed (conv.py), so no transform here adds overlapping tiles.

Rounding: B^T and A^T hold integers up to 5 in magnitude (F(2x2, 3x3)'s hold only 0 and
+-1), so a transformed input tile entry can be up to 10x the largest input (a row of B^T
sums to 10 in absolute value), and the output transform weights its terms up to 2x: the
rounding of the GEMMs' sums is carried over at that scale. Measured against a float64
convolution (unit-variance inputs, weights scaled by 1/sqrt(25C), 16-64 channels, 8x8 to
16x16 images, pad 0, 2 and 4), the largest error over the largest |result| was 1.6e-6 to
1.2e-5 (the largest for dW) against 1.1e-7 to 8.9e-7 for the im2col path;
tests/test_kernels_cpu.py holds it to WINOGRAD5_ERROR = 5e-5 (float32), and the kernel
tests to 2e-4 absolute plus 2e-4 relative, as every kernel. As in winograd.py, the result
differs from im2col's in the last bits, so the path is chosen from the layer's shapes only
and pruned and unpruned programs agree bitwise.

Multiplying by the integer coefficients is written as additions (x + x, ...): exact, and it
keeps float32 arithmetic in float32 (a Python integer or float constant would promote it
to float64). Only the weight transforms use 1/6 and 1/24, once per call.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from bwplan.kernels.cpu.winograd import _leaky  # the relu in the write, as F(2x2, 3x3) has it

# transformed planes of a tile: 6 x 6
PLANES = 36


def tiles(ho: int, wo: int) -> tuple[int, int]:
    """Tile rows and columns covering an ho x wo output."""
    return (ho + 1) // 2, (wo + 1) // 2


# ---- the 1-D transforms ------------------------------------------------------------------
@njit(cache=True, nogil=True, inline="always")
def _bt(d0, d1, d2, d3, d4, d5):
    """B^T applied to (d0 .. d5)."""
    t1 = d4 - (d2 + d2) - (d2 + d2)         # d4 - 4 d2
    t2 = d3 - (d1 + d1) - (d1 + d1)         # d3 - 4 d1
    t3 = d4 - d2
    t4 = (d3 - d1) + (d3 - d1)              # 2 (d3 - d1)
    e0 = d0 - d2
    e5 = d1 - d3
    return ((e0 + e0) + (e0 + e0) + t3, t1 + t2, t1 - t2, t3 + t4, t3 - t4,
            (e5 + e5) + (e5 + e5) + (d5 - d3))


@njit(cache=True, nogil=True, inline="always")
def _b(x0, x1, x2, x3, x4, x5):
    """B, the transpose of B^T."""
    s4 = x1 + x2 + x3 + x4
    f0 = (x0 + x0) + (x0 + x0)
    p = (x2 - x1) + x5                      # 4 x2 - 4 x1 + 4 x5 - 2 x3 + 2 x4
    q = x4 - x3
    r = (x1 - x2) + (x3 - x4) + (x3 - x4)   # x1 - x2 + 2 x3 - 2 x4
    m = x1 + x2
    return (f0, (p + p) + (p + p) + (q + q),
            -(x0 + x0) - (x0 + x0) - x0 - (m + m) - (m + m) - x3 - x4,
            r - (x5 + x5) - (x5 + x5) - x5, x0 + s4, x5)


@njit(cache=True, nogil=True, inline="always")
def _at(m0, m1, m2, m3, m4, m5):
    """A^T applied to (m0 .. m5)."""
    return m0 + m1 + m2 + m3 + m4, (m1 - m2) + (m3 - m4) + (m3 - m4) + m5


@njit(cache=True, nogil=True, inline="always")
def _a(p0, p1):
    """A, the transpose of A^T."""
    return p0, p0 + p1, p0 - p1, p0 + (p1 + p1), p0 - (p1 + p1), p1


@njit(cache=True, nogil=True, inline="always")
def _g(g0, g1, g2, g3, g4):
    """G applied to (g0 .. g4)."""
    e, o = g0 + g2 + g4, g1 + g3
    e4, o4 = g0 + 4.0 * g2 + 16.0 * g4, 2.0 * g1 + 8.0 * g3
    return 0.25 * g0, -(e + o) / 6.0, -(e - o) / 6.0, (e4 + o4) / 24.0, (e4 - o4) / 24.0, g4


@njit(cache=True, nogil=True, inline="always")
def _gt(x0, x1, x2, x3, x4, x5):
    """G^T, the transpose of G."""
    s, d = x1 + x2, x2 - x1
    s2, d2 = x3 + x4, x3 - x4
    return (0.25 * x0 - s / 6.0 + s2 / 24.0, d / 6.0 + d2 / 12.0, (s2 - s) / 6.0,
            d / 6.0 + d2 / 3.0, -s / 6.0 + s2 * (2.0 / 3.0) + x5)


# ---- weights -----------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def weight_tiles(w, u):
    """u[6*i + j, o, c] = (G w[o, c] G^T)[i, j]."""
    a = np.empty((6, 5))
    for o in range(w.shape[0]):
        for c in range(w.shape[1]):
            for col in range(5):   # columns of w through G: a[i, col]
                a[0, col], a[1, col], a[2, col], a[3, col], a[4, col], a[5, col] = _g(
                    w[o, c, 0, col], w[o, c, 1, col], w[o, c, 2, col], w[o, c, 3, col],
                    w[o, c, 4, col])
            for i in range(6):     # then the rows
                k = 6 * i
                u[k, o, c], u[k + 1, o, c], u[k + 2, o, c], u[k + 3, o, c], \
                    u[k + 4, o, c], u[k + 5, o, c] = _g(a[i, 0], a[i, 1], a[i, 2], a[i, 3],
                                                        a[i, 4])


@njit(cache=True, nogil=True)
def weight_grad(du, dw):
    """dw[o, c] = G^T du[:, o, c] G, du[6*i + j] the (i, j) entry of each 6x6."""
    b = np.empty((5, 6))
    for o in range(dw.shape[0]):
        for c in range(dw.shape[1]):
            for col in range(6):   # columns through G^T: b[i, col], i < 5
                b[0, col], b[1, col], b[2, col], b[3, col], b[4, col] = _gt(
                    du[col, o, c], du[6 + col, o, c], du[12 + col, o, c],
                    du[18 + col, o, c], du[24 + col, o, c], du[30 + col, o, c])
            for i in range(5):
                dw[o, c, i, 0], dw[o, c, i, 1], dw[o, c, i, 2], dw[o, c, i, 3], \
                    dw[o, c, i, 4] = _gt(b[i, 0], b[i, 1], b[i, 2], b[i, 3], b[i, 4], b[i, 5])


# ---- tile layout -------------------------------------------------------------------------
# The transforms must run as long loops over contiguous memory: with short loops (a tile row
# of tw tiles, 4-8 here) over six planes at once, LLVM's vectorised loops spent their time
# in run-time alias checks and remainders, and the transforms took longer than the GEMMs.
# So every plane of a sample is split by the parity of its rows and columns (a tile at
# (2a, 2b) of a parity plane starts at row a, column b), the tile rows are laid out with a
# pitch of tw + 2 tiles (PITCH_EXTRA) so that "the tile right of this one" is always the next
# element, and every pass is one loop over a sample's tiles. The last PITCH_EXTRA tiles of
# each tile row are padding: the GEMMs multiply them (1.25x the tiles at tw = 8, 1.5x at 4)
# and output_tiles stores none of them; output_grad_tiles makes them 0, so that they add
# nothing to dW.
PITCH_EXTRA = 2


def pitch(tw: int) -> int:
    """Tiles per tile row in the transformed planes, padding included."""
    return tw + PITCH_EXTRA


# The transformed planes are passed as their flat buffer vf[k, c*tiles_n + t] (C-contiguous;
# the skewed planes' padding lies at the end of each row), not as the [36, C, T] view the
# GEMMs take: with a view's strides unknown, LLVM vectorises none of the loops.
@njit(cache=True, nogil=True)
def input_tiles(x, n0, nb, ph, pw, th, tw, vf, tiles_n):
    """vf[6*i + j, c*tiles_n + (n*th + a)*(tw + 2) + b] = (B^T d B)[i, j], d the 6x6 input
    tile of sample n0 + n, channel c at rows 2a - ph.., columns 2b - pw.. (0 outside the
    image), for b < tw (b = tw, tw + 1: padding). First the rows of the parity planes
    through B^T, then their columns; the final pass writes six planes 6 apart, which ran
    5x faster than six adjacent ones (the other order)."""
    c_n, h, w = x.shape[1], x.shape[2], x.shape[3]
    wh = tw + 2
    st, sp = th * wh, (th + 2) * wh
    # par[2*rp + cp, yy*wh + u] = the padded plane at (2yy + rp, 2u + cp); 0 outside
    par = np.zeros((4, sp + 2), x.dtype)
    # row[6*rp + j, yy*wh + b]: the even (rp = 0) and odd rows through B^T
    row = np.empty((12, sp), x.dtype)
    xf = x.reshape(-1)
    for n in range(nb):
        for c in range(c_n):
            plane = ((n0 + n) * c_n + c) * h * w
            for ih in range(h):
                y = ih + ph
                r, s = 2 * (y % 2), (y // 2) * wh
                for cp in range(2):   # the even, then the odd padded columns
                    iw0 = (cp - pw) % 2
                    d, e = s + (iw0 + pw) // 2, plane + ih * w + iw0
                    for u in range((w - iw0 + 1) // 2):
                        par[r + cp, np.uint64(d + u)] = xf[np.uint64(e + 2 * u)]
            for rp in range(2):
                q, ev, od = 6 * rp, 2 * rp, 2 * rp + 1
                for f in range(sp):
                    f0, f1, f2 = np.uint64(f), np.uint64(f + 1), np.uint64(f + 2)
                    row[q, f], row[q + 1, f], row[q + 2, f], row[q + 3, f], row[q + 4, f], \
                        row[q + 5, f] = _bt(par[ev, f0], par[od, f0], par[ev, f1],
                                            par[od, f1], par[ev, f2], par[od, f2])
            t0 = c * tiles_n + n * st
            for j in range(6):
                for f in range(st):
                    t, f0, f1, f2 = np.uint64(t0 + f), np.uint64(f), np.uint64(f + wh), \
                        np.uint64(f + 2 * wh)
                    vf[j, t], vf[6 + j, t], vf[12 + j, t], vf[18 + j, t], vf[24 + j, t], \
                        vf[30 + j, t] = _bt(row[j, f0], row[6 + j, f0], row[j, f1],
                                            row[6 + j, f1], row[j, f2], row[6 + j, f2])


# ---- output tiles ------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def output_tiles(mf, n0, nb, th, tw, bias, out, tiles_n, leaky=False, slope=0.0):
    """out[n0 + n, o, 2a + i, 2b + j] = (A^T m A)[i, j] + bias[o], for the pixels inside
    the output; mf[k, o*tiles_n + t] as input_tiles lays out vf. With `leaky`, each value v
    is written as v if v > 0 else v * slope: a relu after the convolution, in its write."""
    o_n, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    wh = tw + 2
    st = th * wh
    s = np.empty((12, st), out.dtype)      # s[6*i + j, f]: columns through A^T
    y = np.empty((4, st), out.dtype)       # y[2*i + j, a*wh + b]: output pixel (2a+i, 2b+j)
    of = out.reshape(-1)
    for n in range(nb):
        for o in range(o_n):
            bo = bias[o]
            t0 = o * tiles_n + n * st
            for j in range(6):
                for f in range(st):
                    t = np.uint64(t0 + f)
                    s[j, f], s[6 + j, f] = _at(mf[j, t], mf[6 + j, t], mf[12 + j, t],
                                               mf[18 + j, t], mf[24 + j, t], mf[30 + j, t])
            for i in range(2):
                k = 6 * i
                for f in range(st):
                    y0, y1 = _at(s[k, f], s[k + 1, f], s[k + 2, f], s[k + 3, f],
                                 s[k + 4, f], s[k + 5, f])
                    y[2 * i, f] = _leaky(y0 + bo, leaky, slope)
                    y[2 * i + 1, f] = _leaky(y1 + bo, leaky, slope)
            plane = ((n0 + n) * o_n + o) * ho * wo
            for oh in range(ho):
                r, q, d = 2 * (oh % 2), (oh // 2) * wh, plane + oh * wo
                for ow in range(wo // 2):
                    of[np.uint64(d + 2 * ow)] = y[r, np.uint64(q + ow)]
                    of[np.uint64(d + 2 * ow + 1)] = y[r + 1, np.uint64(q + ow)]
                if wo % 2:
                    of[np.uint64(d + wo - 1)] = y[r, np.uint64(q + wo // 2)]


@njit(cache=True, nogil=True)
def output_grad_tiles(dy, n0, nb, th, tw, mf, tiles_n):
    """mf[6*i + j, o*tiles_n + t] = (A p A^T)[i, j], p the 2x2 tile t of dy[n0 + n, o] (0
    past an odd edge, and 0 for the padding tiles)."""
    o_n, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    wh = tw + 2
    st = th * wh
    par = np.zeros((4, st), dy.dtype)      # par[2*rp + cp, a*wh + b] = dy[2a + rp, 2b + cp]
    g = np.empty((12, st), dy.dtype)       # g[6*rp + j, f]: rows through A
    dyf = dy.reshape(-1)
    for n in range(nb):
        for o in range(o_n):
            plane = ((n0 + n) * o_n + o) * ho * wo
            for oh in range(ho):
                r, q, d = 2 * (oh % 2), (oh // 2) * wh, plane + oh * wo
                for ow in range(wo // 2):
                    par[r, np.uint64(q + ow)] = dyf[np.uint64(d + 2 * ow)]
                    par[r + 1, np.uint64(q + ow)] = dyf[np.uint64(d + 2 * ow + 1)]
                if wo % 2:
                    par[r, np.uint64(q + wo // 2)] = dyf[np.uint64(d + wo - 1)]
            for rp in range(2):
                q = 6 * rp
                for f in range(st):
                    g[q, f], g[q + 1, f], g[q + 2, f], g[q + 3, f], g[q + 4, f], \
                        g[q + 5, f] = _a(par[2 * rp, f], par[2 * rp + 1, f])
            t0 = o * tiles_n + n * st
            # then the columns, writing six planes 6 apart (see input_tiles)
            for j in range(6):
                for f in range(st):
                    t = np.uint64(t0 + f)
                    mf[j, t], mf[6 + j, t], mf[12 + j, t], mf[18 + j, t], mf[24 + j, t], \
                        mf[30 + j, t] = _a(g[j, f], g[6 + j, f])


# ---- chunks ------------------------------------------------------------------------------
# Upper bound on one chunk's transformed tiles (36 planes of max(C, O) rows, padding tiles
# included). Measured on cifar10_quick's conv2 and conv3 (batch 100, one thread, median
# CPU time): the forward and dX ran within 5% of each other at 512 KiB, 1 MiB and 2 MiB;
# dW, whose GEMMs produce only O x C per chunk, ran 1.25x (conv2) faster at 2 MiB than
# at 512 KiB.
CHUNK_BYTES = 1 << 21
DW_CHUNK_BYTES = 1 << 21
# dW keeps one [36, O, C] part per chunk until all are summed in chunk order.
DW_PARTS_BYTES = 32 << 20


def chunks(n: int, c: int, o: int, ho: int, wo: int, itemsize: int, limit: int,
           dw: bool = False) -> list[tuple[int, int]]:
    """(first sample, samples) of each chunk of the batch, under `limit` bytes a chunk (dW:
    and no more chunks than DW_PARTS_BYTES holds parts of)."""
    th, tw = tiles(ho, wo)
    per_sample = PLANES * max(c, o) * th * pitch(tw) * itemsize
    nb = max(1, min(n, limit // per_sample))
    if dw:
        most = max(1, DW_PARTS_BYTES // (PLANES * o * c * itemsize))
        nb = max(nb, -(-n // most))
    return [(n0, min(nb, n - n0)) for n0 in range(0, n, nb)]
