"""linear on the CPU: every component is one BLAS call on 2-D views, so there is no Numba
loop here except the bias gradient's column sum.

    forward  Y[N, O] = X[N, K] @ W^T + b
    dX       dX[N, K] = dY @ W
    dW       dW[O, K] = dY^T @ X
"""
from __future__ import annotations

import numpy as np
from numba import njit

from bwplan.kernels.cpu.views import view


def _rows(a: np.ndarray) -> np.ndarray:
    """[N, ...] as [N, K]."""
    return view(a, (a.shape[0], a.size // max(a.shape[0], 1)))


@njit(cache=True)
def _sum_rows(dout, out):
    """out[o] = sum of dout[:, o], accumulated in float64 row by row (contiguous reads).
    Serial: [N, O] is small next to the GEMMs, a thread start would cost more."""
    acc = np.zeros(dout.shape[1])
    for n in range(dout.shape[0]):
        for o in range(dout.shape[1]):
            acc[o] += dout[n, o]
    out[:] = acc


def linear_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    np.dot(_rows(inputs[0]), params["weight"].T, out=out)
    if ctx.attrs["bias"]:
        out += params["bias"]  # a broadcast add in place: a ufunc is as fast as a loop


def linear_dx(ctx, saved, dout, index, out) -> None:
    np.dot(dout, saved["weight"], out=_rows(out))


def linear_dw(ctx, saved, dout, out) -> None:
    np.dot(dout.T, _rows(saved["x"]), out=out)


def linear_db(ctx, saved, dout, out) -> None:
    _sum_rows(dout, out)
