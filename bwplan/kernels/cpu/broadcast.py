"""Bias, scale_mul and Tile on the CPU (bwplan/ops/broadcast.py).

Tensors are seen as [outer, dim, inner] (Bias, scale_mul) or [outer, tiles, inner] (Tile);
the repeats are NumPy broadcasts into `out` and the gradient sums are Numba loops that add
in float64, one pass over the output gradient.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from bwplan.kernels.cpu.reduce import channel_sum
from bwplan.kernels.cpu.views import flat, view
from bwplan.ops.broadcast import bias_split, tile_split


# ---- Bias ------------------------------------------------------------------------------
def _add(ctx, x, b, out) -> None:
    outer, dim, inner = bias_split(ctx)
    np.add(view(x, (outer, dim, inner)), b.reshape(1, dim, 1),
           out=view(out, (outer, dim, inner)))


def _bias_grad(ctx, dout, out) -> None:
    channel_sum(view(dout, bias_split(ctx)), flat(out))


def bias_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    _add(ctx, inputs[0], params["bias"], out)


def bias_add_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    _add(ctx, inputs[0], inputs[1], out)


def bias_dx(ctx, saved, dout, index, out) -> None:
    np.copyto(out, dout)


def bias_dw(ctx, saved, dout, out) -> None:
    _bias_grad(ctx, dout, out)


def bias_add_db(ctx, saved, dout, index, out) -> None:
    _bias_grad(ctx, dout, out)


# ---- scale_mul -------------------------------------------------------------------------
def _times(ctx, x, s, out) -> None:
    outer, dim, inner = bias_split(ctx)
    np.multiply(view(x, (outer, dim, inner)), s.reshape(1, dim, 1),
                out=view(out, (outer, dim, inner)))


@njit(cache=True, nogil=True)
def _dot_outer_inner(d, x, out):
    """out[j] = sum of d[:, j, :] * x[:, j, :]."""
    for j in range(d.shape[1]):
        acc = 0.0
        for o in range(d.shape[0]):
            for s in range(d.shape[2]):
                acc += d[o, j, s] * x[o, j, s]
        out[j] = acc


def scale_mul_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    _times(ctx, inputs[0], inputs[1], out)


def scale_mul_dx(ctx, saved, dout, index, out) -> None:
    _times(ctx, dout, saved["s"], out)


def scale_mul_ds(ctx, saved, dout, index, out) -> None:
    split = bias_split(ctx)
    _dot_outer_inner(view(dout, split), view(saved["x"], split), flat(out))


# ---- Tile ------------------------------------------------------------------------------
def tile_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    outer, inner = tile_split(ctx)
    tiles = ctx.attrs["tiles"]
    np.copyto(view(out, (outer, tiles, inner)), view(inputs[0], (outer, 1, inner)))


@njit(cache=True, nogil=True)
def _sum_tiles(d, out):
    """out[o, s] = sum over t of d[o, t, s]."""
    for o in range(d.shape[0]):
        for s in range(d.shape[2]):
            acc = 0.0
            for t in range(d.shape[1]):
                acc += d[o, t, s]
            out[o, s] = acc


def tile_dx(ctx, saved, dout, index, out) -> None:
    outer, inner = tile_split(ctx)
    _sum_tiles(view(dout, (outer, ctx.attrs["tiles"], inner)), view(out, (outer, inner)))
