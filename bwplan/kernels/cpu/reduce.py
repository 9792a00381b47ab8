"""Per-channel reductions over [N, C, S] tensors, shared by conv, batchnorm and scale.

Each channel's sum accumulates in float64, so a float32 tensor of millions of elements
sums to float32 accuracy. `fastmath={"reassoc"}` lets LLVM reorder the additions into
SIMD lanes (4x faster, measured); the lanes are float64, so the reordering costs nothing
that matters. Parallel over channels: every channel is one independent task.
"""
from __future__ import annotations

from numba import njit, prange

from bwplan.kernels.cpu.threads import parallel_from


@parallel_from()
@njit(cache=True, parallel=True, fastmath={"reassoc"})
def channel_sum(a, out):
    """out[c] = sum of a[:, c, :]."""
    for c in prange(a.shape[1]):
        acc = 0.0
        for n in range(a.shape[0]):
            for s in range(a.shape[2]):
                acc += a[n, c, s]
        out[c] = acc


@parallel_from()
@njit(cache=True, parallel=True, fastmath={"reassoc"})
def channel_dot(a, b, out):
    """out[c] = sum of a[:, c, :] * b[:, c, :]."""
    for c in prange(a.shape[1]):
        acc = 0.0
        for n in range(a.shape[0]):
            for s in range(a.shape[2]):
                acc += a[n, c, s] * b[n, c, s]
        out[c] = acc
