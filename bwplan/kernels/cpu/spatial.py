"""Crop and permute on the CPU (bwplan/ops/spatial.py).

Like the shape family they move data and compute nothing, so each kernel is one NumPy copy
(a strided view copied into the output buffer): a memcpy-speed pass a Numba loop could only
match.
"""
from __future__ import annotations

import numpy as np

from bwplan.ops.spatial import crop_window, permute_order


def crop_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    np.copyto(out, inputs[0][crop_window(ctx)])


def crop_dx(ctx, saved, dout, index, out) -> None:
    out.fill(0)
    out[crop_window(ctx)] = dout


def permute_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    np.copyto(out, np.transpose(inputs[0], permute_order(ctx)))


def permute_dx(ctx, saved, dout, index, out) -> None:
    np.copyto(out, np.transpose(dout, np.argsort(permute_order(ctx))))
