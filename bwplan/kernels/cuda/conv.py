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
    splits = split_k(m, cols, k, g, count, env)
    return 4 * splits * count if splits > 1 else 0


def dw(ctx, saved, dout, out, accumulate, env) -> list[Launch]:
    s = shape(ctx)
    m, cols, k, g, count = _dw_dims(ctx)
    splits = split_k(m, cols, k, g, count, env)
    if splits > 1 and env.workspace_bytes < 4 * splits * count:
        raise InternalError(f"conv2d dW needs {4 * splits * count} bytes of workspace, "
                            f"the runtime gave {env.workspace_bytes}")
    launches = [Launch("conv2d_dw", gemm_grid(m, cols, g * splits), (GEMM_THREADS, 1, 1),
                       (ptr(saved["x"]), ptr(dout), ptr(out), ptr(env.workspace),
                        *map(i32, s), i32(splits), flag(accumulate)))]
    if splits > 1:
        launches.append(grid_stride("conv2d_dw_reduce", count, env, ptr(env.workspace),
                                    ptr(out), i64(count), i32(splits), flag(accumulate)))
    return launches


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
