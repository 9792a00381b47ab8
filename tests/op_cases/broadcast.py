"""The rows of broadcasting ops (bwplan/ops/broadcast.py)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from .draw import rng_from, normal, draw_shape, axis_of
from .row import Case, NetUse, OpRow
from .torch_support import torch


@st.composite
def bias_case(draw):
    rng = rng_from(draw)
    shape = draw_shape(draw)
    written, axis = axis_of(draw, shape)
    count = draw(st.integers(0, len(shape) - axis))
    num_axes = -1 if count == len(shape) - axis and draw(st.booleans()) else count
    return Case(dict(axis=written, num_axes=num_axes), [normal(rng, *shape)],
                {"bias": normal(rng, *(shape[axis:axis + count] or (1,)))})


@st.composite
def bias_add_case(draw):
    rng = rng_from(draw)
    shape = draw_shape(draw)
    written, axis = axis_of(draw, shape)
    count = draw(st.integers(0, len(shape) - axis))
    b = np.asarray(normal(rng, *shape[axis:axis + count]))
    return Case(dict(axis=written), [normal(rng, *shape), b])


@st.composite
def tile_case(draw):
    shape = draw_shape(draw)
    written, _ = axis_of(draw, shape)
    return Case(dict(axis=written, tiles=draw(st.integers(1, 3))),
                [normal(rng_from(draw), *shape)])


def broadcast_bias(x: torch.Tensor, b: torch.Tensor, axis: int, scale: bool = False
                   ) -> torch.Tensor:
    """Caffe Bias (or, with scale, Scale with two inputs): b covers x's dimensions from
    axis on, as many as b has; a scalar b covers everything."""
    axis %= x.dim()
    b = b.reshape((1,) * axis + tuple(b.shape) + (1,) * (x.dim() - axis - b.dim()))
    return x * b if scale else x + b


def tile(a, xs, p, training):
    x = xs[0]
    reps = [1] * x.dim()
    reps[a["axis"] % x.dim()] = a["tiles"]
    return x.repeat(*reps)


ROWS = {
    "bias": OpRow(bias_case(), NetUse("bias = bias(f, axis=2, num_axes=-1)"),
                  lambda a, xs, p, t: broadcast_bias(xs[0], p["bias"], a["axis"])),
    # a per-sample mean added along the batch axis
    "bias_add": OpRow(bias_add_case(), NetUse(
        "bias_add_mean = reduction(f, axis=1, operation=MEAN)\n"
        "bias_add = bias_add(f, bias_add_mean, axis=0)"),
        lambda a, xs, p, t: broadcast_bias(xs[0], xs[1], a["axis"])),
    "tile": OpRow(tile_case(), NetUse("tile = tile(f, axis=1, tiles=2)"), tile),
    # a per-sample mean as the factor along the batch axis; the same shapes as bias_add's
    # cases, a factor where bias_add adds
    "scale_mul": OpRow(bias_add_case(), NetUse(
        "scale_mul_mean = reduction(f, axis=1, operation=MEAN)\n"
        "scale_mul = scale_mul(f, scale_mul_mean, axis=0)"),
        lambda a, xs, p, t: broadcast_bias(xs[0], xs[1], a["axis"], scale=True)),
}
