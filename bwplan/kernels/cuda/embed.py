"""Launch geometry of cuda/embed.cu: grid-stride over the output (forward) and over the
weight (dW, a scan per weight element: embed.cu's header says why); one block per output
feature for dB. The indices are passed with their dtype code."""
from __future__ import annotations

from bwplan.kernels.cuda.limits import (Launch, check_index, flag, grid_stride, i32, i64,
                                        per_channel, ptr)
from bwplan.kernels.cuda.loss import dtype_code


def _sizes(ctx) -> tuple[int, int, int]:
    a = ctx.attrs
    check_index(a["input_dim"], a["num_output"])
    return ctx.x.numel, a["input_dim"], a["num_output"]


def embed_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    rows, k, n = _sizes(ctx)
    total = ctx.out.numel
    return [grid_stride("embed_fwd", total, env, ptr(inputs[0]), i32(dtype_code(ctx.x.dtype)),
                        ptr(params["weight"]), ptr(params.get("bias")), ptr(out), i64(total),
                        i32(k), i32(n))]


def embed_dw(ctx, saved, dout, out, accumulate, env) -> list[Launch]:
    rows, k, n = _sizes(ctx)
    return [grid_stride("embed_dw", k * n, env, ptr(saved["x"]), i32(dtype_code(ctx.x.dtype)),
                        ptr(dout), ptr(out), i64(rows), i32(k), i32(n), flag(accumulate))]


def embed_db(ctx, saved, dout, out, accumulate, env) -> list[Launch]:
    rows, k, n = _sizes(ctx)
    return [per_channel("embed_db", n, ptr(dout), ptr(out), i64(rows), i32(n),
                        flag(accumulate))]


LAUNCH = {
    ("embed", "fwd"): embed_fwd, ("embed", "dw:weight"): embed_dw,
    ("embed", "dw:bias"): embed_db,
}
