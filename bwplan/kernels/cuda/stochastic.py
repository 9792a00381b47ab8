"""Launch geometry of cuda/stochastic.cu: grid-stride loops over the elements, 256 threads
per block (limits.grid_stride), each element reading its sample's draw; the forward passes
the runtime's random stream, as dropout's does."""
from __future__ import annotations

from bwplan.errors import InternalError
from bwplan.kernels.cuda.limits import Launch, f32, flag, grid_stride, i64, ptr, u64


def _inner(ctx) -> int:
    """Elements per sample (axis 0 is the batch)."""
    return ctx.x.numel // max(ctx.x.shape[0], 1)


def drop_path_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n = ctx.x.numel
    if training and not env.counter:
        raise InternalError("drop_path in training needs the runtime's step counter")
    return [grid_stride("drop_path_fwd", n, env, ptr(inputs[0]), ptr(out),
                        ptr(aux.get("mask")), i64(n), i64(_inner(ctx)), f32(ctx.attrs["p"]),
                        ptr(env.counter), u64(env.stream), flag(training))]


def drop_path_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    n = ctx.x.numel
    return [grid_stride("drop_path_dx", n, env, ptr(saved["mask"]), ptr(dout), ptr(out),
                        i64(n), i64(_inner(ctx)), f32(ctx.attrs["p"]), flag(accumulate))]


LAUNCH = {("drop_path", "fwd"): drop_path_fwd, ("drop_path", "dx:x"): drop_path_dx}
