"""The rows of the fully connected layer (bwplan/ops/linear.py)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from .draw import rng_from, normal, draw_shape
from .row import Case, NetUse, OpRow
from .torch_support import F


@st.composite
def linear_case(draw):
    rng = rng_from(draw)
    shape = draw_shape(draw, 2, 3)
    attrs = dict(out=draw(st.integers(1, 3)), bias=draw(st.booleans()))
    params = {"weight": normal(rng, attrs["out"], int(np.prod(shape[1:])))}
    if attrs["bias"]:
        params["bias"] = normal(rng, attrs["out"])
    return Case(attrs, [normal(rng, *shape)], params)


def linear(a, xs, p, training):
    return F.linear(xs[0].flatten(1), p["weight"], p.get("bias"))


ROWS = {
    "linear": OpRow(linear_case(), NetUse("linear = linear(f, out=5)"), linear),
}
