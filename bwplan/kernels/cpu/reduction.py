"""Reduction, ArgMax and Silence on the CPU (bwplan/ops/reduction.py).

Reduction sees its input as [num, dim] rows and sums each row in float64, as the
per-channel reductions do. ArgMax picks its top k by k scans of each row (k is small in
practice: 1 or 5), each taking the largest (value, index) pair below the previous pick,
which orders ties as Caffe does (the larger index first) without sorting the row.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from bwplan.kernels.cpu.views import flat, view
from bwplan.ops.reduction import OPERATIONS, argmax_geometry, reduced_coeff, reduced_rows

_SUM, _ASUM, _SUMSQ, _MEAN = (OPERATIONS.index(n) for n in ("SUM", "ASUM", "SUMSQ", "MEAN"))


# ---- Reduction -------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _reduce_rows(x, op, coeff, out):
    for r in range(x.shape[0]):
        acc = 0.0
        for j in range(x.shape[1]):
            v = x[r, j]
            if op == 1:      # ASUM
                acc += abs(v)
            elif op == 2:    # SUMSQ
                acc += v * v
            else:            # SUM, MEAN (whose coefficient is already divided)
                acc += v
        out[r] = acc * coeff


@njit(cache=True, nogil=True)
def _reduce_back(x, dout, op, coeff, out):
    for r in range(out.shape[0]):
        g = dout[r] * coeff
        for j in range(out.shape[1]):
            if op == 1:
                v = x[r, j]
                out[r, j] = g if v > 0 else (-g if v < 0 else 0.0)
            elif op == 2:
                out[r, j] = 2 * g * x[r, j]
            else:
                out[r, j] = g


def reduction_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    num, dim = reduced_rows(ctx)
    op = OPERATIONS.index(ctx.attrs["operation"])
    _reduce_rows(view(inputs[0], (num, dim)), op, reduced_coeff(ctx), flat(out))


def reduction_dx(ctx, saved, dout, index, out) -> None:
    num, dim = reduced_rows(ctx)
    op = OPERATIONS.index(ctx.attrs["operation"])
    # SUM and MEAN read no x (the rule keeps none): any array of the right shape will do
    x = view(saved["x"], (num, dim)) if "x" in saved else view(out, (num, dim))
    _reduce_back(x, flat(dout), op, reduced_coeff(ctx), view(out, (num, dim)))


# ---- ArgMax ----------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _top_k(x, k, values_only, with_values, out):
    """x: [outer, dim, stride]; out: [outer, 1 or 2, k, stride]."""
    for o in range(x.shape[0]):
        for s in range(x.shape[2]):
            prev_v, prev_j = np.inf, x.shape[1]
            for t in range(k):
                best_v, best_j = -np.inf, -1
                for j in range(x.shape[1]):
                    v = x[o, j, s]
                    below = v < prev_v or (v == prev_v and j < prev_j)
                    if below and (best_j < 0 or v > best_v or (v == best_v and j > best_j)):
                        best_v, best_j = v, j
                prev_v, prev_j = best_v, best_j
                if values_only:
                    out[o, 0, t, s] = best_v
                else:
                    out[o, 0, t, s] = best_j
                    if with_values:
                        out[o, 1, t, s] = best_v


def argmax_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    a = ctx.attrs
    num, dim, stride = argmax_geometry(ctx)
    with_axis = a["axis"] is not None
    pairs = 2 if a["out_max_val"] and not with_axis else 1
    outer = num // stride
    _top_k(view(inputs[0], (outer, dim, stride)), a["top_k"], a["out_max_val"] and with_axis,
           a["out_max_val"] and not with_axis, view(out, (outer, pairs, a["top_k"], stride)))


# ---- Silence ---------------------------------------------------------------------------
def silence_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    """Nothing to compute: Silence only consumes its inputs; `out` has no elements."""
