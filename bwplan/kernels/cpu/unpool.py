"""Max unpooling and the max-pooling mask on the CPU (semantics: bwplan/ops/unpool.py).

The mask is maxpool's argmax, computed by the same loops (kernels/cpu/pool.py), written as
floats. Every loop runs in parallel over the N*C planes: max_unpool's forward writes only
into its own plane, in row-major order within it, so the later of two values sent to one
position lands, as in the reference; its dX is a gather, one writer per element.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from bwplan.kernels.cpu.pool import _max_fwd_arg, _planes, _window
from bwplan.kernels.cpu.views import view


def maxpool_mask_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    arg = np.empty(out.shape, dtype=np.int32)
    _max_fwd_arg(_planes(inputs[0]), *_window(ctx), np.empty_like(_planes(out)), _planes(arg))
    out[...] = arg


@njit(cache=True, parallel=True)
def _scatter(x, mask, out):
    plane = out.shape[1]
    for t in prange(x.shape[0]):
        out[t] = 0
        for q in range(x.shape[1]):
            at = int(mask[t, q])
            if 0 <= at < plane:
                out[t, at] = x[t, q]


@njit(cache=True, parallel=True)
def _gather(dout, mask, dx):
    plane = dout.shape[1]
    for t in prange(dx.shape[0]):
        for q in range(dx.shape[1]):
            at = int(mask[t, q])
            dx[t, q] = dout[t, at] if 0 <= at < plane else 0.0


def _flat(a: np.ndarray) -> np.ndarray:
    return view(a, (a.shape[0] * a.shape[1], -1))


def max_unpool_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    _scatter(_flat(inputs[0]), _flat(inputs[1]), _flat(out))


def max_unpool_dx(ctx, saved, dout, index, out) -> None:
    _gather(_flat(dout), _flat(saved["mask"]), _flat(out))
