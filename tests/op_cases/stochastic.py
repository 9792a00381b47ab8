"""The rows of ops that draw a mask per sample (bwplan/ops/stochastic.py)."""
from __future__ import annotations

from hypothesis import strategies as st

from .draw import rng_from, normal, draw_shape
from .row import Case, NetUse, OpRow


@st.composite
def drop_path_case(draw):
    p = draw(st.sampled_from([0.0, 0.3, 0.5, 0.9]))
    return Case(dict(p=p), [normal(rng_from(draw), *draw_shape(draw))])


def drop_path(a, xs, p, training):
    if training and a["p"] > 0:
        raise NotImplementedError("drop_path with p > 0 draws bwplan's own random masks")
    return xs[0]


ROWS = {
    # with p > 0 the masks come from bwplan's generator, which torch cannot draw
    "drop_path": OpRow(drop_path_case(), NetUse("drop_path = drop_path(f, p=0)"), drop_path,
                       torch_cases={"": drop_path_case().filter(lambda c: c.attrs["p"] == 0.0)}),
}
