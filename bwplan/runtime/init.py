"""Initial parameter values, seeded: "xavier" (Caffe's default filler for weights: uniform
in +-sqrt(3 / fan_in)), "zeros", "ones", "constant:<value>" (Caffe's constant filler),
"identity" (a square matrix, e.g. an infogain loss's H until one is loaded)."""
from __future__ import annotations

import math

import numpy as np

from bwplan.ir.net import Net
from bwplan.runtime.backend import numpy_dtype


def initial_params(net: Net, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    params = {}
    for name, p in net.params.items():
        dtype = numpy_dtype(p.type.dtype)
        shape = p.type.shape
        if p.init == "zeros":
            value = np.zeros(shape, dtype)
        elif p.init == "ones":
            value = np.ones(shape, dtype)
        elif p.init == "identity":
            value = np.eye(shape[0], dtype=dtype).reshape(shape)
        elif p.init.startswith("constant:"):
            value = np.full(shape, float(p.init.partition(":")[2]), dtype)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else max(1, shape[0])
            bound = math.sqrt(3.0 / fan_in)
            value = rng.uniform(-bound, bound, size=shape).astype(dtype)
        params[name] = value
    return params
