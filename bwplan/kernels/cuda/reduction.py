"""Launch geometry of cuda/reduction.cu: Reduction's forward takes one block per output
element and its dX passes the row length; ArgMax takes one thread per row. Silence takes
the default launch (default.py)."""
from __future__ import annotations

from bwplan.kernels.cuda.limits import (Launch, check_index, f32, flag, grid_stride, i32, i64,
                                        per_channel, ptr)
from bwplan.ops.reduction import OPERATIONS, argmax_geometry, reduced_coeff, reduced_rows


def reduction_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    num, dim = reduced_rows(ctx)
    return [per_channel("reduction_fwd", num, ptr(inputs[0]), ptr(out), i64(dim),
                        i32(OPERATIONS.index(ctx.attrs["operation"])),
                        f32(reduced_coeff(ctx)))]


def reduction_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    num, dim = reduced_rows(ctx)
    n = ctx.x.numel
    return [grid_stride("reduction_dx", n, env, ptr(saved.get("x")), ptr(dout), ptr(out),
                        i64(n), i64(dim), i32(OPERATIONS.index(ctx.attrs["operation"])),
                        f32(reduced_coeff(ctx)), flag(accumulate))]


def argmax_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    a = ctx.attrs
    num, dim, stride = argmax_geometry(ctx)
    check_index(dim)
    with_axis = a["axis"] is not None
    return [grid_stride("argmax_fwd", num, env, ptr(inputs[0]), ptr(out), i64(num), i32(dim),
                        i64(stride), i32(a["top_k"]), flag(a["out_max_val"] and with_axis),
                        flag(a["out_max_val"] and not with_axis))]


LAUNCH = {
    ("reduction", "fwd"): reduction_fwd, ("reduction", "dx:x"): reduction_dx,
    ("argmax", "fwd"): argmax_fwd,
}
