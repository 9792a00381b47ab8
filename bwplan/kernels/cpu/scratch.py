"""Scratch buffers that live across kernel calls.

A training step calls the same kernels with the same shapes every iteration; allocating
their temporaries afresh would page-fault on every step (large NumPy allocations are fresh
mmaps). A scratch buffer is kept per (role, dtype) and per calling thread, grows to the
largest size asked for and is handed out as a view of the size needed now. Its contents
are undefined on entry, and a view is valid only until the next `buffer` call for the same
role: a kernel must not keep one across calls or use one role twice at once.

Memory held is the largest request per role, which the callers bound (conv chunks its
batch so that its column buffer stays under its chunk limit).
"""
from __future__ import annotations

import math
import threading

import numpy as np

_local = threading.local()


def buffer(role: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A C-contiguous array of `shape` and `dtype`, reused between calls for `role`."""
    pool: dict = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    flat = pool.get((role, dtype))
    if flat is None or flat.size < size:
        flat = pool[(role, dtype)] = np.empty(size, dtype)
    return flat[:size].reshape(shape)


def held_bytes() -> int:
    """Bytes the calling thread's scratch buffers hold."""
    return sum(a.nbytes for a in getattr(_local, "pool", {}).values())


def release() -> None:
    """Drop the calling thread's scratch buffers (e.g. after training, before inference)."""
    _local.pool = {}
