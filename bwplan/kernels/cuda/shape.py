"""Launch geometry of cuda/shape.cu: grid-stride copies. Concat and slice see tensors as
[outer, inner] around their axis (shape.cu's header); concat's forward is one launch per
input, each writing its own column range of the output."""
from __future__ import annotations

import math

from bwplan.kernels.cuda.limits import Launch, flag, grid_stride, i64, ptr


def _copy_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n = ctx.x.numel
    return [grid_stride("tensor_copy", n, env, ptr(inputs[0]), ptr(out), i64(n), flag(False))]


def _copy_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    n = ctx.x.numel
    return [grid_stride("tensor_copy", n, env, ptr(dout), ptr(out), i64(n), flag(accumulate))]


def _split(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    """(outer, inner, rest): the dimensions before the axis, the axis and after it, and
    after it alone."""
    axis %= len(shape)
    rest = math.prod(shape[axis + 1:])
    return math.prod(shape[:axis]), shape[axis] * rest, rest


def concat_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    axis = ctx.attrs["axis"]
    outer, out_inner, rest = _split(ctx.out.shape, axis)
    launches, offset = [], 0
    for t, x in zip(ctx.inputs, inputs):
        _, inner, _ = _split(t.shape, axis)
        launches.append(grid_stride("slab_put", outer * inner, env, ptr(x), ptr(out),
                                    i64(outer), i64(inner), i64(out_inner), i64(offset)))
        offset += inner
    return launches


def concat_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    axis = ctx.attrs["axis"]
    outer, out_inner, _ = _split(ctx.out.shape, axis)
    offset = sum(_split(t.shape, axis)[1] for t in ctx.inputs[:index])
    _, inner, _ = _split(ctx.inputs[index].shape, axis)
    return [grid_stride("slab_take", outer * inner, env, ptr(dout), ptr(out), i64(outer),
                        i64(inner), i64(out_inner), i64(offset), flag(accumulate))]


def slice_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    axis = ctx.attrs["axis"]
    outer, x_inner, rest = _split(ctx.x.shape, axis)
    _, out_inner, _ = _split(ctx.out.shape, axis)
    return [grid_stride("slab_take", outer * out_inner, env, ptr(inputs[0]), ptr(out),
                        i64(outer), i64(out_inner), i64(x_inner),
                        i64(ctx.attrs["begin"] * rest), flag(False))]


def slice_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    axis = ctx.attrs["axis"]
    outer, x_inner, rest = _split(ctx.x.shape, axis)
    _, d_inner, _ = _split(ctx.out.shape, axis)
    return [grid_stride("slice_dx", outer * x_inner, env, ptr(dout), ptr(out), i64(outer),
                        i64(x_inner), i64(d_inner), i64(ctx.attrs["begin"] * rest),
                        flag(accumulate))]


def _permute(src_shape: tuple[int, ...], perm: tuple[int, ...]) -> list:
    """PermShape (shape.cu): the output dims and the source strides they read, padded in
    front to 6 entries with dims 1 (and strides 0)."""
    from bwplan.ops.shape import MAX_TRANSPOSE_RANK
    strides = [math.prod(src_shape[k + 1:]) for k in range(len(src_shape))]
    pad = MAX_TRANSPOSE_RANK - len(perm)
    dims = [1] * pad + [src_shape[p] for p in perm]
    reads = [0] * pad + [strides[p] for p in perm]
    return [i64(d) for d in dims] + [i64(r) for r in reads]


def _perm(ctx) -> tuple[int, ...]:
    perm = ctx.attrs["perm"]
    return tuple(perm) if isinstance(perm, (tuple, list)) else (perm,)


def transpose_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n = ctx.x.numel
    return [grid_stride("permute", n, env, ptr(inputs[0]), ptr(out), i64(n),
                        *_permute(ctx.x.shape, _perm(ctx)), flag(False))]


def transpose_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    perm = _perm(ctx)
    inverse = tuple(perm.index(k) for k in range(len(perm)))
    n = ctx.x.numel
    return [grid_stride("permute", n, env, ptr(dout), ptr(out), i64(n),
                        *_permute(ctx.out.shape, inverse), flag(accumulate))]


LAUNCH = {
    ("flatten", "fwd"): _copy_fwd, ("flatten", "dx:x"): _copy_dx,
    ("reshape", "fwd"): _copy_fwd, ("reshape", "dx:x"): _copy_dx,
    ("concat", "fwd"): concat_fwd, ("concat", "dx:xs"): concat_dx,
    ("slice", "fwd"): slice_fwd, ("slice", "dx:x"): slice_dx,
    ("transpose", "fwd"): transpose_fwd, ("transpose", "dx:x"): transpose_dx,
}
