"""The SGD-with-momentum update as one pass over a parameter, instead of NumPy's four
(scale, add decay, momentum, subtract), each with a temporary. Same arithmetic as
bwplan.runtime.optimizer, in the parameter's own precision: the coefficients come in an
array of the parameter's dtype so that float32 stays float32."""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _sgd(w, v, g, coef, has_grad):
    # coef: gradient scale, decay coefficient, learning rate, momentum
    scale, decay, lr, momentum = coef[0], coef[1], coef[2], coef[3]
    for i in range(w.size):
        diff = decay * w[i]
        if has_grad:
            diff = scale * g[i] + diff
        v[i] = momentum * v[i] + lr * diff
        w[i] -= v[i]


def sgd_update(w: np.ndarray, v: np.ndarray, g: np.ndarray | None, scale: float,
               decay: float, lr: float, momentum: float) -> None:
    """v = momentum*v + lr*(scale*g + decay*w); w -= v, in place (g may be None)."""
    coef = np.array([scale, decay, lr, momentum], dtype=w.dtype)
    flat_w = w.reshape(-1)
    _sgd(flat_w, v.reshape(-1), flat_w if g is None else g.reshape(-1), coef, g is not None)
