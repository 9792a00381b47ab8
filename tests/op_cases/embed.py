"""The rows of the embedding lookup (bwplan/ops/embed.py)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from .draw import rng_from, normal, draw_shape
from .row import Case, NetUse, OpRow
from .torch_support import F


@st.composite
def embed_case(draw):
    """Indices as floats, as Caffe's data layers give them (integer indices, whose output
    is float32 whatever the weights, are checked in test_kernels_cpu.py)."""
    rng = rng_from(draw)
    k, n = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    attrs = dict(num_output=n, input_dim=k, bias_term=draw(st.booleans()))
    x = rng.integers(0, k, draw_shape(draw, 1, 3)).astype(np.float64)
    params = {"weight": normal(rng, k, n)}
    if attrs["bias_term"]:
        params["bias"] = normal(rng, n)
    return Case(attrs, [x], params)


ROWS = {
    "embed": OpRow(embed_case(), NetUse("embed = embed(tok, num_output=3, input_dim=5)",
                                        "tok : i32[N, 2]"),
                   lambda a, xs, p, t: F.embedding(xs[0].long(), p["weight"]) + (
                       p["bias"] if a["bias_term"] else 0.0)),
}
