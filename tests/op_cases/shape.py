"""The rows of shape ops (bwplan/ops/shape.py)."""
from __future__ import annotations

from hypothesis import strategies as st

from .draw import rng_from, normal, draw_shape
from .row import Case, NetUse, OpRow
from .torch_support import torch


@st.composite
def flatten_case(draw):
    shape = draw_shape(draw, 1, 4)
    rank = len(shape)
    axis = draw(st.integers(0, rank - 1))
    end = draw(st.integers(axis, rank - 1))
    attrs = dict(axis=axis - rank if draw(st.booleans()) else axis,
                 end_axis=end - rank if draw(st.booleans()) else end)
    return Case(attrs, [normal(rng_from(draw), *shape)])


@st.composite
def reshape_case(draw):
    shape = draw_shape(draw, 2, 4)
    flipped = tuple(reversed(shape))
    hole = draw(st.integers(0, len(shape) - 1))
    target = draw(st.sampled_from([(0, -1), (-1,), flipped,
                                   flipped[:hole] + (-1,) + flipped[hole + 1:]]))
    return Case(dict(shape=target), [normal(rng_from(draw), *shape)])


@st.composite
def concat_case(draw):
    rng = rng_from(draw)
    shape = draw_shape(draw, 1, 3)
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    inputs = []
    for _ in range(draw(st.integers(1, 3))):
        s = list(shape)
        s[axis] = draw(st.integers(1, 3))
        inputs.append(normal(rng, *s))
    return Case(dict(axis=axis), inputs)


@st.composite
def slice_case(draw):
    shape = draw_shape(draw, 1, 3, dim_max=4)
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    begin = draw(st.integers(0, shape[axis] - 1))
    end = draw(st.integers(begin + 1, shape[axis]))
    return Case(dict(axis=axis, begin=begin, end=end), [normal(rng_from(draw), *shape)])


@st.composite
def transpose_case(draw):
    shape = draw_shape(draw, 1, 4)
    perm = tuple(draw(st.permutations(range(len(shape)))))
    return Case(dict(perm=perm), [normal(rng_from(draw), *shape)])


def reshape(a, xs, p, training):
    x = xs[0]
    spec = a["shape"] if isinstance(a["shape"], (tuple, list)) else (a["shape"],)
    return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(spec)])


def slice_(a, xs, p, training):
    return xs[0].narrow(a["axis"], a["begin"], a["end"] - a["begin"])


ROWS = {
    "flatten": OpRow(flatten_case(), NetUse("flatten = flatten(f)"),
                     lambda a, xs, p, t: torch.flatten(xs[0], a["axis"], a["end_axis"])),
    "reshape": OpRow(reshape_case(), NetUse("reshape = reshape(f, shape=[0, 8, 18])"), reshape),
    "concat": OpRow(concat_case(), NetUse("concat = concat(f, e)"),
                    lambda a, xs, p, t: torch.cat(xs, dim=a["axis"])),
    "slice": OpRow(slice_case(), NetUse("slice = slice(f, axis=1, begin=1, end=3)"), slice_),
    "transpose": OpRow(transpose_case(), NetUse("transpose = transpose(f, perm=[0, 1, 3, 2])"),
                       lambda a, xs, p, t: xs[0].permute(*a["perm"])),
}
