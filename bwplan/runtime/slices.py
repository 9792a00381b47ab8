"""dW of a partly frozen parameter, by rows: a rule marked `by_rows` (linear, conv) computes
the gradient of output rows [a, b) from channels [a, b) of d(out) alone, so the kernel runs
once per trainable range on that slice of d(out), with an operator context whose output
has b - a channels, into the same rows of the gradient. The frozen rows of the gradient are
zero; nothing reads them (the update skips them)."""
from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import numpy as np

from bwplan.ops.opdef import OpCtx


def _narrowed(ctx: OpCtx, channels: int) -> OpCtx:
    attrs = ctx.attrs
    if "out" in attrs:      # the op's output-width attribute (linear, conv2d)
        attrs = MappingProxyType({**attrs, "out": channels})
    shape = list(ctx.out.shape)
    shape[1] = channels
    return OpCtx(attrs, ctx.inputs, replace(ctx.out, shape=tuple(shape)))


def by_rows(kernel, rows: tuple[tuple[int, int], ...]):
    """A dW kernel (ctx, saved, dout, out) that computes only `rows` of its gradient."""
    def sliced(ctx, saved, dout, out) -> None:
        out[...] = 0
        for a, b in rows:
            part = np.ascontiguousarray(dout[:, a:b])
            kernel(_narrowed(ctx, b - a), saved, part, out[a:b])
    return sliced
