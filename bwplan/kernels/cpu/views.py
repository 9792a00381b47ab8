"""Fixed-rank views of the arrays kernels receive.

Numba compiles one specialisation per (dtype, rank, layout) of each argument, so kernels
see every tensor as one of a few ranks: flat, or [N, C, S] with S the product of the
dimensions after the channel. The views never copy: writing through a view of `out` must
reach `out`, so a layout that cannot be viewed raises instead of silently copying.
"""
from __future__ import annotations

import math

import numpy as np


def view(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`a` reshaped without a copy; ValueError if its memory layout does not allow it."""
    v = a.reshape(shape)
    if v.size and not np.may_share_memory(v, a):
        raise ValueError(f"a {a.shape} array with strides {a.strides} cannot be viewed as "
                         f"{tuple(shape)} without a copy; kernels take C-contiguous arrays")
    return v


def flat(a: np.ndarray) -> np.ndarray:
    return view(a, (a.size,))


def ncs(a: np.ndarray) -> np.ndarray:
    """[N, C, ...] as [N, C, S]; a 2-D [N, C] has S = 1."""
    return view(a, (a.shape[0], a.shape[1], math.prod(a.shape[2:])))


def scalar(a) -> float:
    """The value of a 0-d array (a loss weight) or a number."""
    return float(np.asarray(a).reshape(()))
