"""Winograd F(2x2, 3x3) for conv2d's stride-1 3x3 layers (conv.py decides which).

Each 2x2 tile of output pixels comes from a 4x4 tile of input, and the 3x3 correlation of
the two becomes 16 products in a transformed space (Lavin and Gray, 2016):

    Y = A^T [ (G w G^T) . (B^T d B) ] A

with the constant matrices below. Summed over input channels, each of the 16 positions k
is one GEMM over the batch's tiles: M[k] = U[k] @ V[k], U[k] = [O, C] (the transformed
weights), V[k] = [C, T] (the transformed input tiles, T tiles per chunk). That is 16
multiply-adds per 4 output pixels and channel pair instead of 36, so 2.25x fewer FLOPs
in the GEMMs; the transforms are additions (and halves, in G) over the tiles.

The backward is the transpose of the same linear maps. With dM[k] = A dY_tile A^T (the
2x2 output-gradient tiles, transformed):

    dX:  dV[k] = U[k]^T @ dM[k],  then each 4x4 tile B dV B^T added back into dX
    dW:  dU[k] = dM[k] @ V[k]^T  (summed over chunks in chunk order),  dW = G^T dU G

Rounding: B, A and G hold 0, +-1 and +-1/2 only, so a transformed input or output-
gradient tile entry is a sum of at most 4 terms, a transformed weight of at most 9, and
the output transform adds at most 9 of the 16 channel sums: the error bound is the direct
sum's times a small constant factor (no multiplier in the transforms exceeds 1). Measured
against a float64 convolution on 3x3 layers of 32-192 channels (unit-variance inputs,
weights scaled by 1/sqrt(9C)), the largest error over the largest |result| was 2.8e-7 to
6.9e-7 for the output, dX and dW, against 2.1e-7 to 8.2e-7 for the im2col path; the
kernel tests hold both to 2e-4 absolute plus 2e-4 relative (tests/test_kernels_cpu.py).
They differ from the im2col path's in the last bits, so a layer always takes the same path
(the choice depends on its shapes only), and pruned and unpruned programs agree bitwise.

Tiles cover the output with ceil(Ho/2) x ceil(Wo/2) of them: an odd edge computes one
row or column more than it stores, and reads zeros past the padded input. Every loop is
serial and `nogil` (the kernel workers run one chunk each); each (sample, channel) plane
goes through one zero-padded copy, so the tile loops have no bounds checks.
"""
from __future__ import annotations

import numpy as np
from numba import njit


def tiles(ho: int, wo: int) -> tuple[int, int]:
    """Tile rows and columns covering an ho x wo output."""
    return (ho + 1) // 2, (wo + 1) // 2


# ---- the 1-D transforms, applied to columns and then to rows of a tile ----------------------
@njit(cache=True, nogil=True, inline="always")
def _bt(d0, d1, d2, d3):
    """B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@njit(cache=True, nogil=True, inline="always")
def _b(x0, x1, x2, x3):
    """B, the transpose of B^T."""
    return x0, x1 - x2 + x3, x1 + x2 - x0, -x3


@njit(cache=True, nogil=True, inline="always")
def _at(m0, m1, m2, m3):
    """A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]."""
    return m0 + m1 + m2, m1 - m2 - m3


@njit(cache=True, nogil=True, inline="always")
def _a(p0, p1):
    """A, the transpose of A^T."""
    return p0, p0 + p1, p0 - p1, -p1


@njit(cache=True, nogil=True, inline="always")
def _g(g0, g1, g2):
    """G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]."""
    return g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2


@njit(cache=True, nogil=True, inline="always")
def _gt(x0, x1, x2, x3):
    """G^T, the transpose of G."""
    return x0 + 0.5 * (x1 + x2), 0.5 * (x1 - x2), 0.5 * (x1 + x2) + x3


# ---- weights ----------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def weight_tiles(w, u):
    """u[4*i + j, o, c] = (G w[o, c] G^T)[i, j]."""
    for o in range(w.shape[0]):
        for c in range(w.shape[1]):
            # columns of w through G: a[i][col]
            a00, a10, a20, a30 = _g(w[o, c, 0, 0], w[o, c, 1, 0], w[o, c, 2, 0])
            a01, a11, a21, a31 = _g(w[o, c, 0, 1], w[o, c, 1, 1], w[o, c, 2, 1])
            a02, a12, a22, a32 = _g(w[o, c, 0, 2], w[o, c, 1, 2], w[o, c, 2, 2])
            u[0, o, c], u[1, o, c], u[2, o, c], u[3, o, c] = _g(a00, a01, a02)
            u[4, o, c], u[5, o, c], u[6, o, c], u[7, o, c] = _g(a10, a11, a12)
            u[8, o, c], u[9, o, c], u[10, o, c], u[11, o, c] = _g(a20, a21, a22)
            u[12, o, c], u[13, o, c], u[14, o, c], u[15, o, c] = _g(a30, a31, a32)


@njit(cache=True, nogil=True)
def weight_grad(du, dw):
    """dw[o, c] = G^T du[:, o, c] G, du[4*i + j] the (i, j) entry of each 4x4."""
    for o in range(dw.shape[0]):
        for c in range(dw.shape[1]):
            # columns through G^T: b[i][col], i < 3
            b00, b10, b20 = _gt(du[0, o, c], du[4, o, c], du[8, o, c], du[12, o, c])
            b01, b11, b21 = _gt(du[1, o, c], du[5, o, c], du[9, o, c], du[13, o, c])
            b02, b12, b22 = _gt(du[2, o, c], du[6, o, c], du[10, o, c], du[14, o, c])
            b03, b13, b23 = _gt(du[3, o, c], du[7, o, c], du[11, o, c], du[15, o, c])
            dw[o, c, 0, 0], dw[o, c, 0, 1], dw[o, c, 0, 2] = _gt(b00, b01, b02, b03)
            dw[o, c, 1, 0], dw[o, c, 1, 1], dw[o, c, 1, 2] = _gt(b10, b11, b12, b13)
            dw[o, c, 2, 0], dw[o, c, 2, 1], dw[o, c, 2, 2] = _gt(b20, b21, b22, b23)


# ---- input tiles ------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def input_tiles(x, n0, nb, ph, pw, th, tw, v):
    """v[4*i + j, c, (n*th + a)*tw + b] = (B^T d B)[i, j], d the 4x4 input tile of sample
    n0 + n, channel c at rows 2a - ph.., columns 2b - pw.. (0 outside the image)."""
    c_n, h, w = x.shape[1], x.shape[2], x.shape[3]
    wp = 2 * tw + 2
    padded = np.zeros((2 * th + 2) * wp, x.dtype)  # what lies outside the image stays 0
    for n in range(nb):
        for c in range(c_n):
            for ih in range(h):
                d = (ih + ph) * wp + pw
                for iw in range(w):
                    padded[np.uint64(d + iw)] = x[n0 + n, c, ih, iw]
            for a in range(th):
                t0 = (n * th + a) * tw
                for b in range(tw):
                    r = np.uint64(2 * a * wp + 2 * b)
                    q = np.uint64(wp)
                    # columns through B^T (rows 0-3 of the tile combined), then rows
                    c00, c10, c20, c30 = _bt(padded[r], padded[r + q], padded[r + 2 * q],
                                             padded[r + 3 * q])
                    c01, c11, c21, c31 = _bt(padded[r + 1], padded[r + q + 1],
                                             padded[r + 2 * q + 1], padded[r + 3 * q + 1])
                    c02, c12, c22, c32 = _bt(padded[r + 2], padded[r + q + 2],
                                             padded[r + 2 * q + 2], padded[r + 3 * q + 2])
                    c03, c13, c23, c33 = _bt(padded[r + 3], padded[r + q + 3],
                                             padded[r + 2 * q + 3], padded[r + 3 * q + 3])
                    t = t0 + b
                    v[0, c, t], v[1, c, t], v[2, c, t], v[3, c, t] = _bt(c00, c01, c02, c03)
                    v[4, c, t], v[5, c, t], v[6, c, t], v[7, c, t] = _bt(c10, c11, c12, c13)
                    v[8, c, t], v[9, c, t], v[10, c, t], v[11, c, t] = _bt(c20, c21, c22, c23)
                    v[12, c, t], v[13, c, t], v[14, c, t], v[15, c, t] = _bt(c30, c31, c32,
                                                                             c33)


@njit(cache=True, nogil=True)
def input_grad(dv, n0, nb, ph, pw, th, tw, dx):
    """dx[n0 + n, c] = the sum of the tiles B dV B^T, each added at the input tile it came
    from (tiles overlap by two rows and columns), in tile order."""
    c_n, h, w = dx.shape[1], dx.shape[2], dx.shape[3]
    wp = 2 * tw + 2
    padded = np.empty((2 * th + 2) * wp, dx.dtype)
    for n in range(nb):
        for c in range(c_n):
            padded[:] = 0
            for a in range(th):
                t0 = (n * th + a) * tw
                for b in range(tw):
                    t = t0 + b
                    # columns through B, then rows; e[i][j] is added at (2a + i, 2b + j)
                    e00, e10, e20, e30 = _b(dv[0, c, t], dv[4, c, t], dv[8, c, t],
                                            dv[12, c, t])
                    e01, e11, e21, e31 = _b(dv[1, c, t], dv[5, c, t], dv[9, c, t],
                                            dv[13, c, t])
                    e02, e12, e22, e32 = _b(dv[2, c, t], dv[6, c, t], dv[10, c, t],
                                            dv[14, c, t])
                    e03, e13, e23, e33 = _b(dv[3, c, t], dv[7, c, t], dv[11, c, t],
                                            dv[15, c, t])
                    q = np.uint64(wp)
                    r = np.uint64(2 * a * wp + 2 * b)
                    f0, f1, f2, f3 = _b(e00, e01, e02, e03)
                    padded[r] += f0
                    padded[r + 1] += f1
                    padded[r + 2] += f2
                    padded[r + 3] += f3
                    r += q
                    f0, f1, f2, f3 = _b(e10, e11, e12, e13)
                    padded[r] += f0
                    padded[r + 1] += f1
                    padded[r + 2] += f2
                    padded[r + 3] += f3
                    r += q
                    f0, f1, f2, f3 = _b(e20, e21, e22, e23)
                    padded[r] += f0
                    padded[r + 1] += f1
                    padded[r + 2] += f2
                    padded[r + 3] += f3
                    r += q
                    f0, f1, f2, f3 = _b(e30, e31, e32, e33)
                    padded[r] += f0
                    padded[r + 1] += f1
                    padded[r + 2] += f2
                    padded[r + 3] += f3
            for ih in range(h):
                s = (ih + ph) * wp + pw
                for iw in range(w):
                    dx[n0 + n, c, ih, iw] = padded[np.uint64(s + iw)]


# ---- output tiles -----------------------------------------------------------------------------
@njit(cache=True, nogil=True, inline="always")
def _leaky(v, leaky, slope):
    """v, or with `leaky` a relu's v if v > 0 else v * slope (the float ops of its loop)."""
    return v if not leaky or v > 0 else v * slope


@njit(cache=True, nogil=True)
def output_tiles(m, n0, nb, th, tw, bias, out, leaky=False, slope=0.0):
    """out[n0 + n, o, 2a + i, 2b + j] = (A^T m A)[i, j] + bias[o], for the pixels inside
    the output; m[k, o, t] as input_tiles lays out v. With `leaky`, each value v is
    written as v if v > 0 else v * slope: a relu after the convolution, in its write."""
    o_n, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    for n in range(nb):
        for o in range(o_n):
            bo = bias[o]
            for a in range(th):
                t0 = (n * th + a) * tw
                for b in range(tw):
                    t = t0 + b
                    s00, s10 = _at(m[0, o, t], m[4, o, t], m[8, o, t], m[12, o, t])
                    s01, s11 = _at(m[1, o, t], m[5, o, t], m[9, o, t], m[13, o, t])
                    s02, s12 = _at(m[2, o, t], m[6, o, t], m[10, o, t], m[14, o, t])
                    s03, s13 = _at(m[3, o, t], m[7, o, t], m[11, o, t], m[15, o, t])
                    y00, y01 = _at(s00, s01, s02, s03)
                    y10, y11 = _at(s10, s11, s12, s13)
                    oh, ow = 2 * a, 2 * b
                    if oh + 1 < ho and ow + 1 < wo:
                        out[n0 + n, o, oh, ow] = _leaky(y00 + bo, leaky, slope)
                        out[n0 + n, o, oh, ow + 1] = _leaky(y01 + bo, leaky, slope)
                        out[n0 + n, o, oh + 1, ow] = _leaky(y10 + bo, leaky, slope)
                        out[n0 + n, o, oh + 1, ow + 1] = _leaky(y11 + bo, leaky, slope)
                    else:  # an odd edge: store what lies inside
                        out[n0 + n, o, oh, ow] = _leaky(y00 + bo, leaky, slope)
                        if ow + 1 < wo:
                            out[n0 + n, o, oh, ow + 1] = _leaky(y01 + bo, leaky, slope)
                        if oh + 1 < ho:
                            out[n0 + n, o, oh + 1, ow] = _leaky(y10 + bo, leaky, slope)


@njit(cache=True, nogil=True)
def output_grad_tiles(dy, n0, nb, th, tw, m):
    """m[4*i + j, o, t] = (A p A^T)[i, j], p the 2x2 tile t of dy[n0 + n, o] (0 past an odd
    edge)."""
    o_n, ho, wo = dy.shape[1], dy.shape[2], dy.shape[3]
    wp = 2 * tw
    padded = np.zeros(2 * th * wp, dy.dtype)  # an odd edge's extra row or column stays 0
    for n in range(nb):
        for o in range(o_n):
            for oh in range(ho):
                d = oh * wp
                for ow in range(wo):
                    padded[np.uint64(d + ow)] = dy[n0 + n, o, oh, ow]
            for a in range(th):
                t0 = (n * th + a) * tw
                for b in range(tw):
                    r = np.uint64(2 * a * wp + 2 * b)
                    q = np.uint64(wp)
                    # columns through A, then rows
                    g00, g10, g20, g30 = _a(padded[r], padded[r + q])
                    g01, g11, g21, g31 = _a(padded[r + 1], padded[r + q + 1])
                    t = t0 + b
                    m[0, o, t], m[1, o, t], m[2, o, t], m[3, o, t] = _a(g00, g01)
                    m[4, o, t], m[5, o, t], m[6, o, t], m[7, o, t] = _a(g10, g11)
                    m[8, o, t], m[9, o, t], m[10, o, t], m[11, o, t] = _a(g20, g21)
                    m[12, o, t], m[13, o, t], m[14, o, t], m[15, o, t] = _a(g30, g31)


# ---- kernels ------------------------------------------------------------------------------
# Upper bound on one chunk's transformed tiles (16 planes of max(C, O) rows), so that the
# GEMMs' operands stay in the cache the transforms wrote them to. Measured on cnn_small's and
# resnet_mini's layers (paired CPU time, batch 64 and 32): 512 KiB ran the forward and dX
# up to 1.2x faster than 1 MiB, and dW up to 1.08x slower (its GEMMs, [O, T] @ [T, C],
# produce only O x C per chunk and gain from a longer T), so dW takes 1 MiB.
CHUNK_BYTES = 1 << 19
DW_CHUNK_BYTES = 1 << 20
# dW keeps one [16, O, C] part per chunk until all are summed in chunk order; wide layers
# take fewer, larger chunks so that the parts together stay under this.
DW_PARTS_BYTES = 32 << 20


def chunks(n: int, c: int, o: int, ho: int, wo: int, itemsize: int, limit: int,
           dw: bool = False) -> list[tuple[int, int]]:
    """(first sample, samples) of each chunk of the batch, under `limit` bytes a chunk (dW:
    and no more chunks than DW_PARTS_BYTES holds parts of)."""
    th, tw = tiles(ho, wo)
    per_sample = 16 * max(c, o) * th * tw * itemsize
    nb = max(1, min(n, limit // per_sample))
    if dw:
        most = max(1, DW_PARTS_BYTES // (16 * o * c * itemsize))
        nb = max(nb, -(-n // most))
    return [(n0, min(nb, n - n0)) for n0 in range(0, n, nb)]
