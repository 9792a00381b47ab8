"""Launch geometry of cuda/conv.cu: conv2d forward, dX, dW (split-K) and dB.

The three products are implicit GEMMs on 64 x 64 tiles (common.cuh); their dimensions
per group, and hence the grids, are listed in conv.cu's header. dW reduces over
batch * Ho * Wo, which is long while the weight is small, so it is split over blockIdx.z
until the grid holds SPLIT_K_BLOCKS_PER_SM blocks per multiprocessor; the partial sums go
to the runtime's workspace and a second kernel adds them up in a fixed order.
"""
from __future__ import annotations

from bwplan.errors import InternalError
from bwplan.kernels.cuda.limits import (GEMM_THREADS, GEMM_TILE_K, GEMM_TILE_M, GEMM_TILE_N,
                                        SPLIT_K_BLOCKS_PER_SM, SPLIT_K_MAX_SPLITS,
                                        SPLIT_K_MAX_WORKSPACE, SPLIT_K_MIN_STEPS, Env,
                                        Launch, cdiv, check_index, flag, grid_stride,
                                        i32, i64, per_channel, ptr)
from bwplan.ops._shapes import pair
from bwplan.ops.opdef import OpCtx


def shape(ctx: OpCtx) -> tuple[int, ...]:
    """ConvShape (conv.cu): n, c, h, w, o, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, groups."""
    n, c, h, w = ctx.x.shape
    _, o, ho, wo = ctx.out.shape
    a = ctx.attrs
    kh, kw = pair(a["kernel"])
    # the GEMMs' M, N and K are int in the kernels; element addresses are 64-bit
    check_index(n * h * w, n * ho * wo, c * kh * kw, o * kh * kw)
    return (n, c, h, w, o, ho, wo, kh, kw, *pair(a["stride"]), *pair(a["pad"]),
            *pair(a["dilation"]), a["groups"])


def gemm_grid(m: int, n: int, z: int = 1) -> tuple[int, int, int]:
    return (cdiv(n, GEMM_TILE_N), cdiv(m, GEMM_TILE_M), z)


def split_k(m: int, n: int, k: int, groups: int, count: int, env: Env) -> int:
    """How many ways to split a GEMM's k range: enough blocks to fill the device, each
    split at least SPLIT_K_MIN_STEPS tile steps long, within the workspace cap."""
    tiles = cdiv(m, GEMM_TILE_M) * cdiv(n, GEMM_TILE_N) * groups
    want = cdiv(SPLIT_K_BLOCKS_PER_SM * env.sm_count, tiles)
    splits = min(want, cdiv(k, GEMM_TILE_K) // SPLIT_K_MIN_STEPS, SPLIT_K_MAX_SPLITS,
                 SPLIT_K_MAX_WORKSPACE // (4 * count), 65535 // groups)
    return max(1, splits)


def split_k_bytes(splits: int, count: int) -> int:
    """The workspace of a dW GEMM over `count` outputs split `splits` ways: one float32
    partial sum per output and split (none unsplit)."""
    return 4 * splits * count if splits > 1 else 0


def split_k_reduce(kernel: str, what: str, splits: int, count: int, out: int,
                   accumulate: bool, env: Env) -> list[Launch]:
    """The launch that sums a split dW GEMM's partial sums from the workspace into `out`
    (none unsplit), once the runtime is seen to have given the workspace it needs."""
    if splits <= 1:
        return []
    need = split_k_bytes(splits, count)
    if env.workspace_bytes < need:
        raise InternalError(f"{what} needs {need} bytes of workspace, the runtime gave "
                            f"{env.workspace_bytes}")
    return [grid_stride(kernel, count, env, ptr(env.workspace), ptr(out), i64(count),
                        i32(splits), flag(accumulate))]


def _dw_dims(ctx: OpCtx):
    n, c, h, w, o, ho, wo, kh, kw, *_, g = shape(ctx)
    m, cols, k = o // g, c // g * kh * kw, n * ho * wo
    return m, cols, k, g, o * cols


def fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    s = shape(ctx)
    n, c, _, _, o, ho, wo, kh, kw, *_, g = s
    grid = gemm_grid(o // g, n * ho * wo, g)
    return [Launch("conv2d_fwd", grid, (GEMM_THREADS, 1, 1),
                   (ptr(inputs[0]), ptr(params["weight"]), ptr(params.get("bias")), ptr(out),
                    *map(i32, s)))]


def dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    s = shape(ctx)
    n, c, h, w, *_, g = s
    grid = gemm_grid(c // g, n * h * w, g)
    return [Launch("conv2d_dx", grid, (GEMM_THREADS, 1, 1),
                   (ptr(saved["weight"]), ptr(dout), ptr(out), *map(i32, s),
                    flag(accumulate)))]


def dw_workspace(ctx, env) -> int:
    m, cols, k, g, count = _dw_dims(ctx)
    return split_k_bytes(split_k(m, cols, k, g, count, env), count)


def dw(ctx, saved, dout, out, accumulate, env) -> list[Launch]:
    s = shape(ctx)
    m, cols, k, g, count = _dw_dims(ctx)
    splits = split_k(m, cols, k, g, count, env)
    reduce = split_k_reduce("conv2d_dw_reduce", "conv2d dW", splits, count, out, accumulate,
                            env)
    return [Launch("conv2d_dw", gemm_grid(m, cols, g * splits), (GEMM_THREADS, 1, 1),
                   (ptr(saved["x"]), ptr(dout), ptr(out), ptr(env.workspace),
                    *map(i32, s), i32(splits), flag(accumulate))), *reduce]


def db(ctx, saved, dout, out, accumulate, env) -> list[Launch]:
    n, o, ho, wo = ctx.out.shape
    return [per_channel("conv2d_db", o, ptr(dout), ptr(out), i32(n), i32(o), i64(ho * wo),
                        flag(accumulate))]


LAUNCH = {
    ("conv2d", "fwd"): fwd,
    ("conv2d", "dx:x"): dx,
    ("conv2d", "dw:weight"): dw,
    ("conv2d", "dw:bias"): db,
}
ALSO = {("conv2d", "dw:weight"): ("conv2d_dw_reduce",)}
WORKSPACE = {("conv2d", "dw:weight"): dw_workspace}


# ---- a partly frozen weight: dW and dB over its trainable output channels only ---------------
def _row_splits(ctx, rows, env):
    """(row0, channels in the range, splits) of each trainable range's dW GEMM; rows of a
    grouped convolution cannot be frozen (bwplan/ir/rows.py), so groups is 1."""
    n, c, _, _, _, ho, wo, kh, kw, *_, g = shape(ctx)
    if g != 1:
        raise InternalError("rows of a grouped conv2d's weight reached the cuda lowering")
    cols = c * kh * kw
    return [(r0, r1 - r0, split_k(r1 - r0, cols, n * ho * wo, 1, (r1 - r0) * cols, env))
            for r0, r1 in rows], cols


def dw_rows_workspace(ctx, rows, env) -> int:
    ranges, cols = _row_splits(ctx, rows, env)
    return max((split_k_bytes(s, m * cols) for _, m, s in ranges), default=0)


def dw_rows(ctx, saved, dout, out, accumulate, rows, env) -> list[Launch]:
    """One conv2d_dw_rows GEMM per trainable range [r0, r1) (M = r1 - r0 over those
    channels of dY), split-K like the whole dW; the frozen rows of `out` are not written."""
    s = shape(ctx)
    ranges, cols = _row_splits(ctx, rows, env)
    launches = []
    for r0, m, splits in ranges:
        reduce = split_k_reduce("conv2d_dw_reduce", f"conv2d dW of rows {r0}:{r0 + m}", splits,
                                m * cols, out + 4 * r0 * cols, accumulate, env)
        launches.append(Launch("conv2d_dw_rows", gemm_grid(m, cols, splits),
                               (GEMM_THREADS, 1, 1),
                               (ptr(saved["x"]), ptr(dout), ptr(out), ptr(env.workspace),
                                *map(i32, s), i32(r0), i32(m), i32(splits),
                                flag(accumulate))))
        launches.extend(reduce)
    return launches


def db_rows(ctx, saved, dout, out, accumulate, rows, env) -> list[Launch]:
    """conv2d_db on each trainable range: dout offset by r0 channel planes and db by r0
    (dout keeps its channel stride O), one block per channel of the range."""
    n, o, ho, wo = ctx.out.shape
    return [per_channel("conv2d_db", r1 - r0, ptr(dout + 4 * r0 * ho * wo), ptr(out + 4 * r0),
                        i32(n), i32(o), i64(ho * wo), flag(accumulate)) for r0, r1 in rows]


# the sliced form of a `by_rows` gradient rule (bwplan/lower/program.py `Program.dw_rows`)
ROWS = {("conv2d", "dw:weight"): dw_rows, ("conv2d", "dw:bias"): db_rows}
ROWS_KERNELS = {("conv2d", "dw:weight"): ("conv2d_dw_rows", "conv2d_dw_reduce"),
                ("conv2d", "dw:bias"): ("conv2d_db",)}
ROWS_WORKSPACE = {("conv2d", "dw:weight"): dw_rows_workspace}
