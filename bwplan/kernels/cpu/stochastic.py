"""drop_path on the CPU: one mask byte per sample, applied to the sample's elements.

The tensors are seen as [N, inner] (views.view: one compilation for every rank, and never
a copy, so the writes reach `out`). The mask is drawn as the reference draws it (float64
uniforms, one per sample, kept where >= p), so one generator state gives one mask whether
or not the backward keeps it.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from bwplan.kernels.cpu.views import view


@njit(cache=True, nogil=True)
def _apply(x, keep, scale, out):
    for n in range(x.shape[0]):
        s = scale if keep[n] else 0.0
        for j in range(x.shape[1]):
            out[n, j] = x[n, j] * s


def _rows(a: np.ndarray) -> np.ndarray:
    return view(a, (a.shape[0], a.size // max(a.shape[0], 1)))


def drop_path_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    """At inference a copy of the input; a mask buffer, if given, is left untouched."""
    x = inputs[0]
    if not training:
        np.copyto(out, x)
        return
    if rng is None:
        raise ValueError("drop_path needs a random generator in training mode")
    p = ctx.attrs["p"]
    keep = (rng.random(x.shape[0]) >= p).astype(np.uint8)
    if "mask" in aux:
        aux["mask"][...] = keep
    _apply(_rows(x), keep, 1.0 / (1.0 - p), _rows(out))


def drop_path_dx(ctx, saved, dout, index, out) -> None:
    _apply(_rows(dout), saved["mask"], 1.0 / (1.0 - ctx.attrs["p"]), _rows(out))
