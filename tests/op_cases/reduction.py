"""The rows of reductions (bwplan/ops/reduction.py)."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from .draw import rng_from, normal, distinct, draw_shape, away_from
from .row import Case, NetUse, OpRow
from .torch_support import torch


@st.composite
def reduction_case(draw):
    shape = draw_shape(draw)
    attrs = dict(operation=draw(st.sampled_from(["SUM", "ASUM", "SUMSQ", "MEAN"])),
                 axis=draw(st.integers(-len(shape), len(shape) - 1)),
                 coeff=draw(st.sampled_from([1.0, -0.5, 2.0])))
    return Case(attrs, [away_from(normal(rng_from(draw), *shape))])


@st.composite
def argmax_case(draw):
    shape = draw_shape(draw, 2, 4)
    axis = draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    dim = int(np.prod(shape[1:])) if axis is None else shape[axis]
    attrs = dict(axis=axis, top_k=draw(st.integers(1, dim)),
                 out_max_val=draw(st.booleans()))
    return Case(attrs, [distinct(rng_from(draw), shape)])


@st.composite
def silence_case(draw):
    rng = rng_from(draw)
    return Case({}, [normal(rng, *draw_shape(draw)) for _ in range(draw(st.integers(1, 2)))])


def reduction(a, xs, p, training):
    """Caffe Reduction: over every dimension from `axis` on; MEAN divides by their count."""
    x = xs[0]
    dims = tuple(range(a["axis"] % x.dim(), x.dim()))
    value = {"SUM": lambda: x, "MEAN": lambda: x, "ASUM": lambda: x.abs(),
             "SUMSQ": lambda: x * x}[a["operation"]]().sum(dim=dims)
    count = math.prod(x.shape[d] for d in dims)
    return value * (a["coeff"] / count if a["operation"] == "MEAN" else a["coeff"])


def argmax(a, xs, p, training):
    """Caffe ArgMax. A tie goes to the larger index: a stable descending sort of the row
    reversed meets the larger index first."""
    x = xs[0].detach()
    axis = 1 if a["axis"] is None else a["axis"] % x.dim()
    rows = x.reshape(x.shape[0], -1) if a["axis"] is None else x
    flipped = rows.flip(axis)
    values, order = torch.sort(flipped, dim=axis, descending=True, stable=True)
    k = a["top_k"]
    index = (rows.shape[axis] - 1 - order).narrow(axis, 0, k).to(x.dtype)
    values = values.narrow(axis, 0, k)
    if a["axis"] is not None:
        return values if a["out_max_val"] else index
    out = torch.stack([index, values], 1) if a["out_max_val"] else index.unsqueeze(1)
    return out.reshape((x.shape[0], out.shape[1], k) + (1,) * max(0, x.dim() - 3))


# argmax and silence are outside the training step: nothing that reaches a loss reads them
ROWS = {
    "reduction": OpRow(reduction_case(), NetUse(
        "reduction_sq = reduction(f, operation=SUMSQ, axis=1, coeff=0.1)\n"
        "reduction = reduction(reduction_sq, operation=MEAN) weight=0.5", head=False),
        reduction),
    "argmax": OpRow(argmax_case(), NetUse("argmax = argmax(g, top_k=2, out_max_val=true)",
                                          head=False), argmax),
    "silence": OpRow(silence_case(), NetUse("silence = silence(g)", head=False),
                     lambda a, xs, p, t: xs[0].new_empty((0,))),
}
