"""A buffer pool with live-byte accounting.

Activations, aux buffers and gradients come from here and go back after their last use, so
that a second training step reuses the first step's memory instead of asking the allocator
(and the kernel, page by page) again. The pool measures the peak of live bytes, which is the
figure the plan's static estimate predicts.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np


class BufferPool:
    def __init__(self) -> None:
        self._free: dict[tuple, list[np.ndarray]] = defaultdict(list)
        self.live_bytes = 0
        self.peak_bytes = 0
        self.allocations = 0       # fresh allocations (not reuses) since creation

    def acquire(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        key = (tuple(shape), np.dtype(dtype).str)
        free = self._free[key]
        if free:
            buf = free.pop()
        else:
            buf = np.empty(shape, dtype=dtype)
            self.allocations += 1
        self.count(buf.nbytes)
        return buf

    def release(self, buf: np.ndarray) -> None:
        self._free[(buf.shape, buf.dtype.str)].append(buf)
        self.live_bytes -= buf.nbytes

    def count(self, nbytes: int) -> None:
        """Count bytes that are live but not pooled (the caller's batch)."""
        self.live_bytes += nbytes
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes = self.live_bytes

    def reset_peak(self) -> None:
        self.peak_bytes = self.live_bytes
