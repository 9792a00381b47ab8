"""Shapes and arrays for the rows' strategies: array values come from a NumPy generator
seeded by Hypothesis, so examples stay small and fast. Everything is float64."""
from __future__ import annotations

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from bwplan import ops as registry
from bwplan.ops.reference import make_ctx

from .row import Case


def rng_from(draw) -> np.random.Generator:
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def normal(rng, *shape) -> np.ndarray:
    return rng.standard_normal(shape)


def distinct(rng, shape) -> np.ndarray:
    """Values at least 0.1 apart (a shuffled grid), so no max is ever tied and no value
    sits within a finite-difference step of another."""
    n = int(np.prod(shape))
    return (rng.permutation(n) - (n - 1) / 2).reshape(shape) * 0.1


def draw_shape(draw, rank_min=1, rank_max=4, dim_max=3) -> tuple[int, ...]:
    rank = draw(st.integers(rank_min, rank_max))
    return tuple(draw(st.integers(1, dim_max)) for _ in range(rank))


def away_from(x: np.ndarray, point: float = 0.0) -> np.ndarray:
    """x moved at least 0.05 away from `point` (a kink or a step)."""
    d = x - point
    return point + np.sign(d + (d == 0)) * (0.05 + np.abs(d))


def axis_of(draw, shape) -> tuple[int, int]:
    """(axis as written, possibly negative; axis)."""
    axis = draw(st.integers(0, len(shape) - 1))
    return (axis - len(shape) if draw(st.booleans()) else axis), axis


@st.composite
def unary_case(draw):
    return Case({}, [normal(rng_from(draw), *draw_shape(draw))])


def valid(op_name: str, case: Case) -> Case:
    """Rejects the rare drawn geometry that the shape rule refuses."""
    try:
        make_ctx(registry.OPS[op_name], case.attrs, case.inputs)
    except ValueError:
        assume(False)
    return case
