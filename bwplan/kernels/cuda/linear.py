"""Launch geometry of cuda/linear.cu: linear forward, dX, dW (split-K over the batch) and
dB. The GEMM dimensions are listed in linear.cu's header; the split of dW follows the
same rule as conv2d's (bwplan/kernels/cuda/conv.py)."""
from __future__ import annotations

import math

from bwplan.kernels.cuda.conv import gemm_grid, split_k, split_k_bytes, split_k_reduce
from bwplan.kernels.cuda.limits import (GEMM_THREADS, Launch, check_index, flag, i32,
                                        per_channel, ptr)
from bwplan.ops.opdef import OpCtx


def dims(ctx: OpCtx) -> tuple[int, int, int]:
    """(B, K, O): batch, input features (flattened from dimension 1), output features."""
    b, k, o = ctx.x.shape[0], math.prod(ctx.x.shape[1:]), ctx.attrs["out"]
    check_index(b, k, o)  # the GEMM dimensions are int; addresses are 64-bit
    return b, k, o


def fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    b, k, o = dims(ctx)
    return [Launch("linear_fwd", gemm_grid(b, o), (GEMM_THREADS, 1, 1),
                   (ptr(inputs[0]), ptr(params["weight"]), ptr(params.get("bias")), ptr(out),
                    i32(b), i32(k), i32(o)))]


def dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    b, k, o = dims(ctx)
    return [Launch("linear_dx", gemm_grid(b, k), (GEMM_THREADS, 1, 1),
                   (ptr(saved["weight"]), ptr(dout), ptr(out), i32(b), i32(k), i32(o),
                    flag(accumulate)))]


def dw_workspace(ctx, env) -> int:
    b, k, o = dims(ctx)
    return split_k_bytes(split_k(o, k, b, 1, o * k, env), o * k)


def dw(ctx, saved, dout, out, accumulate, env) -> list[Launch]:
    b, k, o = dims(ctx)
    count = o * k
    splits = split_k(o, k, b, 1, count, env)
    reduce = split_k_reduce("linear_dw_reduce", "linear dW", splits, count, out, accumulate,
                            env)
    return [Launch("linear_dw", gemm_grid(o, k, splits), (GEMM_THREADS, 1, 1),
                   (ptr(saved["x"]), ptr(dout), ptr(out), ptr(env.workspace), i32(b),
                    i32(k), i32(o), i32(splits), flag(accumulate))), *reduce]


def db(ctx, saved, dout, out, accumulate, env) -> list[Launch]:
    b, _, o = dims(ctx)
    return [per_channel("linear_db", o, ptr(dout), ptr(out), i32(b), i32(o),
                        flag(accumulate))]


LAUNCH = {
    ("linear", "fwd"): fwd,
    ("linear", "dx:x"): dx,
    ("linear", "dw:weight"): dw,
    ("linear", "dw:bias"): db,
}
ALSO = {("linear", "dw:weight"): ("linear_dw_reduce",)}
WORKSPACE = {("linear", "dw:weight"): dw_workspace}


# ---- a partly frozen weight: dW and dB over its trainable rows only -------------------------
def _row_splits(ctx, rows, env):
    """(row0, rows in the range, splits) of each trainable range's dW GEMM."""
    b, k, _ = dims(ctx)
    return [(r0, r1 - r0, split_k(r1 - r0, k, b, 1, (r1 - r0) * k, env)) for r0, r1 in rows]


def dw_rows_workspace(ctx, rows, env) -> int:
    _, k, _ = dims(ctx)
    return max((split_k_bytes(s, n * k) for _, n, s in _row_splits(ctx, rows, env)),
               default=0)


def dw_rows(ctx, saved, dout, out, accumulate, rows, env) -> list[Launch]:
    """One linear_dw_rows GEMM per trainable range [r0, r1) (M = r1 - r0 over those columns
    of dY), split-K like the whole dW; the frozen rows of `out` are not written."""
    b, k, o = dims(ctx)
    launches = []
    for r0, n, splits in _row_splits(ctx, rows, env):
        reduce = split_k_reduce("linear_dw_reduce", f"linear dW of rows {r0}:{r0 + n}", splits,
                                n * k, out + 4 * r0 * k, accumulate, env)
        launches.append(Launch("linear_dw_rows", gemm_grid(n, k, splits), (GEMM_THREADS, 1, 1),
                               (ptr(saved["x"]), ptr(dout), ptr(out), ptr(env.workspace),
                                i32(b), i32(k), i32(o), i32(r0), i32(n), i32(splits),
                                flag(accumulate))))
        launches.extend(reduce)
    return launches


def db_rows(ctx, saved, dout, out, accumulate, rows, env) -> list[Launch]:
    """linear_db on each trainable range: dout and db offset by r0 (dout keeps its row
    stride O), one block per row of the range."""
    b, _, o = dims(ctx)
    return [per_channel("linear_db", r1 - r0, ptr(dout + 4 * r0), ptr(out + 4 * r0), i32(b),
                        i32(o), flag(accumulate)) for r0, r1 in rows]


# the sliced form of a `by_rows` gradient rule (bwplan/lower/program.py `Program.dw_rows`)
ROWS = {("linear", "dw:weight"): dw_rows, ("linear", "dw:bias"): db_rows}
ROWS_KERNELS = {("linear", "dw:weight"): ("linear_dw_rows", "linear_dw_reduce"),
                ("linear", "dw:bias"): ("linear_db",)}
ROWS_WORKSPACE = {("linear", "dw:weight"): dw_rows_workspace}
