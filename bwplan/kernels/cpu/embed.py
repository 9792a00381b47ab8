"""Embed on the CPU (bwplan/ops/embed.py): a row gather forward, a scatter-add dW in
index order (so the sum is the same on every run), a column sum dB."""
from __future__ import annotations

import numpy as np
from numba import njit

from bwplan.kernels.cpu.views import view
from bwplan.ops.embed import indices


@njit(cache=True, nogil=True)
def _scatter_add(idx, dout, out):
    out[:] = 0
    for m in range(idx.size):
        r = idx[m]
        for o in range(dout.shape[1]):
            out[r, o] += dout[m, o]


@njit(cache=True, nogil=True)
def _column_sum(dout, out):
    for o in range(dout.shape[1]):
        acc = 0.0
        for m in range(dout.shape[0]):
            acc += dout[m, o]
        out[o] = acc


def embed_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    a = ctx.attrs
    rows = view(out, (-1, a["num_output"]))
    np.take(params["weight"], indices(inputs[0], a["input_dim"]), axis=0, out=rows)
    if a["bias_term"]:
        rows += params["bias"]


def embed_dw(ctx, saved, dout, out) -> None:
    a = ctx.attrs
    _scatter_add(indices(saved["x"], a["input_dim"]), view(dout, (-1, a["num_output"])), out)


def embed_db(ctx, saved, dout, out) -> None:
    _column_sum(view(dout, (-1, ctx.attrs["num_output"])), out)
