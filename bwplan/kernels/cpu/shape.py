"""Shape ops on the CPU: flatten, reshape, concat, slice, transpose.

They move data and compute nothing, so every kernel is a NumPy copy (`np.copyto` or a
sliced assignment): a memcpy-speed pass that a Numba loop could only match. The output is
a separate buffer the runtime owns, so even a reshape copies; aliasing it to the input is
a decision for the runtime's buffer plan, not for a kernel.
"""
from __future__ import annotations

import numpy as np


def _along(axis: int, rank: int, begin: int, end: int) -> tuple[slice, ...]:
    """The index of elements begin..end-1 along `axis`."""
    where = [slice(None)] * rank
    where[axis % rank] = slice(begin, end)
    return tuple(where)


def _offsets(ctx, axis: int) -> list[int]:
    """Where each input of a concat starts along `axis`, and the total at the end."""
    starts = [0]
    for t in ctx.inputs:
        starts.append(starts[-1] + t.shape[axis])
    return starts


def reshape_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    np.copyto(out, inputs[0].reshape(out.shape))


def reshape_dx(ctx, saved, dout, index, out) -> None:
    np.copyto(out, dout.reshape(out.shape))


# flatten is a reshape with a different shape rule
flatten_fwd = reshape_fwd
flatten_dx = reshape_dx


def concat_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    axis = ctx.attrs["axis"] % out.ndim
    starts = _offsets(ctx, axis)
    for i, x in enumerate(inputs):
        out[_along(axis, out.ndim, starts[i], starts[i + 1])] = x


def concat_dx(ctx, saved, dout, index, out) -> None:
    axis = ctx.attrs["axis"] % dout.ndim
    starts = _offsets(ctx, axis)
    np.copyto(out, dout[_along(axis, dout.ndim, starts[index], starts[index + 1])])


def slice_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    x, a = inputs[0], ctx.attrs
    np.copyto(out, x[_along(a["axis"], x.ndim, a["begin"], a["end"])])


def slice_dx(ctx, saved, dout, index, out) -> None:
    a = ctx.attrs
    out.fill(0)
    out[_along(a["axis"], out.ndim, a["begin"], a["end"])] = dout


def _perm(ctx) -> tuple[int, ...]:
    perm = ctx.attrs["perm"]
    return tuple(perm) if isinstance(perm, (tuple, list)) else (perm,)


def transpose_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    np.copyto(out, np.transpose(inputs[0], _perm(ctx)))


def transpose_dx(ctx, saved, dout, index, out) -> None:
    np.copyto(out, np.transpose(dout, np.argsort(_perm(ctx))))
