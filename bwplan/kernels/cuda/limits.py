"""Device limits of the CUDA target and the launch record every geometry function returns.

The numbers are those of compute capability 9.0 (H100, H200); `check` holds every launch
to them before it reaches the driver, so a geometry bug shows up as an InternalError with
the kernel's name instead of a launch failure inside a captured step. Nothing here
imports PyCUDA: the geometry of a program can be computed and checked on any machine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bwplan.errors import InternalError

# ---- compute capability 9.0 -----------------------------------------------------------
MAX_THREADS_PER_BLOCK = 1024
MAX_THREADS_PER_SM = 2048
WARP_SIZE = 32
MAX_GRID_X = 2**31 - 1
MAX_GRID_YZ = 65535
# Static shared memory a block may declare; more needs cudaFuncSetAttribute (up to
# 227 KB on sm_90), which no kernel here asks for.
MAX_SHARED_PER_BLOCK = 48 * 1024
MAX_SHARED_OPTIN_SM90 = 227 * 1024
MAX_REGISTERS_PER_SM = 65536
# The multiprocessors of an H100 SXM, used when no device is at hand (nvcc-only checks);
# a runtime reads the real count from its device.
DEFAULT_SM_COUNT = 132
# GEMM dimensions and per-plane indices are 32-bit in the kernels (common.cuh).
INT32_INDEX_LIMIT = 2**31 - 1

# ---- choices of this target -----------------------------------------------------------
THREADS = 256            # BW_THREADS in common.cuh
GEMM_THREADS = 256       # BW_GEMM_THREADS
GEMM_TILE_M = 64         # BW_BM
GEMM_TILE_N = 64         # BW_BN
GEMM_TILE_K = 16         # BW_BK
LOSS_THREADS = 1024      # LOSS_THREADS in loss.cu
# A grid-stride kernel gets at most this many waves of resident blocks; beyond that a block
# loops instead of a new block being scheduled.
GRID_STRIDE_WAVES = 2
# Split-K: aim for this many blocks per SM, with at least this many k steps per split,
# and never more workspace than this for one GEMM.
SPLIT_K_BLOCKS_PER_SM = 2
SPLIT_K_MIN_STEPS = 8
SPLIT_K_MAX_SPLITS = 64
SPLIT_K_MAX_WORKSPACE = 64 * 2**20


class CudaCannotRun(ValueError):
    """A layer the CUDA kernels cannot run (too large for 32-bit indices, a dtype they do
    not handle). The caller turns it into a BwError at the layer's span."""


@dataclass(frozen=True, slots=True)
class Env:
    """What a geometry function needs besides the layer: the device's multiprocessor count,
    the dW workspace (split-K partial sums), the step counter dropout draws from, and a
    per-layer random stream."""

    sm_count: int = DEFAULT_SM_COUNT
    workspace: int = 0
    workspace_bytes: int = 0
    counter: int = 0
    stream: int = 0


@dataclass(frozen=True, slots=True)
class Launch:
    """One kernel launch: its arguments are NumPy scalars in the kernel's parameter order
    (np.uintp for pointers), so their dtype characters are the PyCUDA argument format."""

    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: tuple
    shared: int = 0

    @property
    def arg_format(self) -> str:
        return "".join(a.dtype.char for a in self.args)

    @property
    def threads(self) -> int:
        return math.prod(self.block)


# ---- argument helpers -----------------------------------------------------------------
def ptr(address: int | None) -> np.uintp:
    """A device pointer argument; None (an optional buffer left out) is the null pointer."""
    return np.uintp(address or 0)


def i32(value: int) -> np.int32:
    if not -2**31 <= value < 2**31:
        raise CudaCannotRun(f"{value} does not fit the kernels' 32-bit index")
    return np.int32(value)


def i64(value: int) -> np.int64:
    return np.int64(value)


def f32(value: float) -> np.float32:
    return np.float32(value)


def f64(value: float) -> np.float64:
    """A double argument: a threshold compared with double overlaps as the cpu compares it."""
    return np.float64(value)


def u64(value: int) -> np.uint64:
    return np.uint64(value)


def flag(value: bool) -> np.int32:
    return np.int32(1 if value else 0)


# ---- geometry helpers -----------------------------------------------------------------
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def grid_stride_blocks(n: int, env: Env, threads: int = THREADS) -> int:
    """Blocks for a grid-stride loop over n elements: one per `threads` elements, capped
    at GRID_STRIDE_WAVES waves of resident blocks (at least 1, for an empty tensor)."""
    resident = env.sm_count * (MAX_THREADS_PER_SM // threads)
    return max(1, min(cdiv(n, threads), GRID_STRIDE_WAVES * resident))


def grid_stride(kernel: str, n: int, env: Env, *args) -> Launch:
    return Launch(kernel, (grid_stride_blocks(n, env), 1, 1), (THREADS, 1, 1), args)


def warp_rows(kernel: str, rows: int, *args) -> Launch:
    """One warp per row, THREADS // 32 rows per block."""
    per_block = THREADS // WARP_SIZE
    return Launch(kernel, (max(1, cdiv(rows, per_block)), 1, 1), (THREADS, 1, 1), args)


def per_channel(kernel: str, channels: int, *args) -> Launch:
    """One block per channel (per-channel reductions)."""
    if channels > MAX_GRID_X:
        raise CudaCannotRun(f"{channels} channels exceed the grid")
    return Launch(kernel, (max(1, channels), 1, 1), (THREADS, 1, 1), args)


def check_index(*sizes: int) -> None:
    """Precondition of the kernels with 32-bit indices (the GEMMs, pooling planes)."""
    for size in sizes:
        if size > INT32_INDEX_LIMIT:
            raise CudaCannotRun(f"an index range of {size} exceeds the kernels' 32-bit "
                              f"indices ({INT32_INDEX_LIMIT})")


def check(launch: Launch) -> Launch:
    """The launch, if it is within the device limits; InternalError (a bug in the
    geometry) if not."""
    threads = launch.threads
    problems = []
    if not 0 < threads <= MAX_THREADS_PER_BLOCK or threads % WARP_SIZE:
        problems.append(f"{threads} threads per block (a multiple of {WARP_SIZE} up to "
                        f"{MAX_THREADS_PER_BLOCK})")
    gx, gy, gz = launch.grid
    if not (0 < gx <= MAX_GRID_X and 0 < gy <= MAX_GRID_YZ and 0 < gz <= MAX_GRID_YZ):
        problems.append(f"grid {launch.grid}")
    if not 0 <= launch.shared <= MAX_SHARED_PER_BLOCK:
        problems.append(f"{launch.shared} bytes of dynamic shared memory")
    if problems:
        raise InternalError(f"launch of {launch.kernel} outside the device limits: "
                            + "; ".join(problems))
    return launch
