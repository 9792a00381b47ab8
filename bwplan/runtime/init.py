"""Initial parameter values, seeded: "xavier" (Caffe's default filler for weights: uniform
in +-sqrt(3 / fan_in)), "zeros", "ones", "constant:<value>" (Caffe's constant filler),
"identity" (a square matrix, e.g. an infogain loss's H until one is loaded), "bilinear"
(Caffe's BilinearFiller, chosen with `weight.init="bilinear"`)."""
from __future__ import annotations

import math
import os

import numpy as np

from bwplan.errors import BwError
from bwplan.ir.net import Net
from bwplan.runtime.backend import numpy_dtype


# Uniform values are drawn in float64 this many at a time and stored in the parameter's
# own type, so initialising never needs the float64 copy of a whole parameter. Drawing in
# chunks gives exactly the values of one draw of the whole shape.
_CHUNK = 1 << 20


def initial_params(net: Net, seed: int = 0) -> dict[str, np.ndarray]:
    _check_memory(net)
    rng = np.random.default_rng(seed)
    params = {}
    for name, p in net.params.items():
        dtype = numpy_dtype(p.type.dtype)
        shape = p.type.shape
        try:
            if p.init == "zeros":
                value = np.zeros(shape, dtype)
            elif p.init == "ones":
                value = np.ones(shape, dtype)
            elif p.init == "identity":
                value = np.eye(shape[0], dtype=dtype).reshape(shape)
            elif p.init.startswith("constant:"):
                value = np.full(shape, float(p.init.partition(":")[2]), dtype)
            elif p.init == "bilinear":
                value = bilinear(shape, dtype)
            else:
                fan_in = math.prod(shape[1:]) if len(shape) > 1 else max(1, shape[0])
                bound = math.sqrt(3.0 / fan_in)
                value = np.empty(shape, dtype)
                flat = value.reshape(-1)
                for start in range(0, flat.size, _CHUNK):
                    stop = min(flat.size, start + _CHUNK)
                    flat[start:stop] = rng.uniform(-bound, bound, size=stop - start)
        except MemoryError:
            raise BwError(p.span, f"not enough memory for parameter '{name}' ({p.type}, "
                          f"{_gib(p.type.nbytes)})") from None
        params[name] = value
    return params


def bilinear(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Caffe's BilinearFiller: every [K, K] kernel of a [.., .., K, K] weight interpolates
    bilinearly, (1 - |x / f - c|) (1 - |y / f - c|) with f = ceil(K / 2), c = (K - 1) / 2f;
    a deconvolution with stride f and group = channels then upsamples each channel."""
    k = shape[-1]
    f = math.ceil(k / 2)
    c = (k - 1) / (2.0 * f)
    line = 1 - np.abs(np.arange(k) / f - c)
    return np.broadcast_to(np.outer(line, line), shape).astype(dtype)


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def _check_memory(net: Net) -> None:
    """Refuse at once, with the sizes, a net whose parameters exceed the machine's memory."""
    total = sum(p.type.nbytes for p in net.params.values())
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if total > memory:
        biggest = max(net.params.values(), key=lambda p: p.type.nbytes)
        raise BwError(biggest.span, f"the parameters need {_gib(total)}, more than this "
                      f"machine's {_gib(memory)} of memory ('{biggest.name}' alone is "
                      f"{biggest.type}, {_gib(biggest.type.nbytes)})")
