"""The rows of elementwise ops (bwplan/ops/elementwise.py)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from .draw import rng_from, normal, distinct, draw_shape, unary_case
from .row import Case, NetUse, OpRow
from .torch_support import F, torch, undecided, winner, take


@st.composite
def relu_case(draw):
    x = normal(rng_from(draw), *draw_shape(draw))
    x = np.sign(x) * (0.05 + np.abs(x))  # never within 0.05 of the kink at 0
    return Case(dict(negative_slope=draw(st.sampled_from([0.0, 0.1]))), [x])


@st.composite
def clip_case(draw):
    lo = draw(st.sampled_from([0.0, -1.0]))
    hi = draw(st.sampled_from([6.0, 0.5]))
    x = normal(rng_from(draw), *draw_shape(draw)) * 4
    for bound in (lo, hi):  # never within 0.05 of a kink
        x = np.where(np.abs(x - bound) < 0.05, bound + 0.1, x)
    return Case(dict(min=lo, max=hi), [x])


@st.composite
def dropout_case(draw):
    p = draw(st.sampled_from([0.0, 0.3, 0.5, 0.9]))
    return Case(dict(p=p), [normal(rng_from(draw), *draw_shape(draw))])


@st.composite
def add_case(draw):
    rng = rng_from(draw)
    shape, k = draw_shape(draw), draw(st.integers(1, 3))
    coeffs = tuple(draw(st.lists(st.sampled_from([-1.0, 0.5, 2.0]), min_size=k, max_size=k))
                   ) if draw(st.booleans()) else ()
    return Case(dict(coeffs=coeffs), [normal(rng, *shape) for _ in range(k)])


@st.composite
def mul_case(draw):
    rng = rng_from(draw)
    shape = draw_shape(draw)
    return Case({}, [normal(rng, *shape), normal(rng, *shape)])


@st.composite
def maximum_case(draw):
    shape, k = draw_shape(draw), draw(st.integers(2, 3))
    values = distinct(rng_from(draw), (k,) + shape)
    return Case({}, list(values))


def relu(a, xs, p, training, hints=None):
    """Leaky with `negative_slope`; at exactly 0 the input takes the slope."""
    x = xs[0]
    keep = x.detach() > 0
    if hints is not None:
        keep = torch.where(undecided(x.detach().abs(), x), hints[0] > 0, keep)
    return torch.where(keep, x, a["negative_slope"] * x)


def clip(a, xs, p, training, hints=None):
    """ReLU6 / hardtanh: the gradient passes strictly between the bounds; near a bound the
    decision follows bwplan's own value (decisions at kinks)."""
    x, lo, hi = xs[0], a["min"], a["max"]
    v = x.detach()
    inside = (v > lo) & (v < hi)
    if hints is not None:
        near = undecided((v - lo).abs(), x) | undecided((v - hi).abs(), x)
        inside = torch.where(near, (hints[0] > lo) & (hints[0] < hi), inside)
    bound = torch.where(v <= (lo + hi) / 2, torch.full_like(v, lo), torch.full_like(v, hi))
    return torch.where(inside, x, bound)


def dropout(a, xs, p, training):
    if training and a["p"] > 0:
        raise NotImplementedError("dropout with p > 0 draws bwplan's own random masks")
    return xs[0]


def add(a, xs, p, training):
    """A term whose coefficient is 1 is not multiplied (the same value, one op fewer for the
    benchmark's peer)."""
    coeffs = tuple(a["coeffs"]) or (1.0,) * len(xs)
    terms = [x if c == 1.0 else c * x for c, x in zip(coeffs, xs)]
    out = terms[0]
    for term in terms[1:]:
        out = out + term
    return out


def maximum(a, xs, p, training, hints=None):
    """A tie goes to the earliest input (bwplan's documented rule)."""
    cells = torch.stack(xs)
    hint = None if hints is None else torch.stack(hints)
    return take(cells, 0, winner(cells, 0, hint, cells))


def _relu_peer(a, xs, p):
    slope = a["negative_slope"]
    return F.relu(xs[0]) if slope == 0 else F.leaky_relu(xs[0], slope)


ROWS = {
    "relu": OpRow(relu_case(), NetUse("relu = relu(f, negative_slope=0.1)"), relu,
                  deciding=True, peer=_relu_peer),
    "sigmoid": OpRow(unary_case(), NetUse("sigmoid = sigmoid(f)"),
                     lambda a, xs, p, t: torch.sigmoid(xs[0])),
    "tanh": OpRow(unary_case(), NetUse("tanh = tanh(f)"), lambda a, xs, p, t: torch.tanh(xs[0])),
    # with p > 0 the masks come from bwplan's generator, which torch cannot draw
    "dropout": OpRow(dropout_case(), NetUse("dropout = dropout(f, p=0)"), dropout,
                     torch_cases={"": dropout_case().filter(lambda c: c.attrs["p"] == 0.0)}),
    "add": OpRow(add_case(), NetUse("add = add(f, e, coeffs=[1.0, -0.5])"), add),
    "mul": OpRow(mul_case(), NetUse("mul = mul(f, e)"), lambda a, xs, p, t: xs[0] * xs[1]),
    "maximum": OpRow(maximum_case(), NetUse("maximum = maximum(f, e)"), maximum,
                     deciding=True),
    "clip": OpRow(clip_case(), NetUse("clip = clip(f, min=-0.5, max=0.5)"), clip,
                  deciding=True),
}
