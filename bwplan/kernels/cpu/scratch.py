"""Scratch buffers that live across kernel calls.

A training step calls the same kernels with the same shapes every iteration; allocating
their temporaries afresh would page-fault on every step (large NumPy allocations are fresh
mmaps). A scratch buffer is kept per (role, dtype) and per calling thread, grows to the
largest size asked for and is handed out as a view of the size needed now. Its contents
are undefined on entry, and a view is valid only until the next `buffer` call for the same
role: a kernel must not keep one across calls or use one role twice at once.

Memory held is the largest request per role and thread, which the callers bound (conv
chunks its batch so that its column buffer stays under its chunk limit). The kernel
workers (threads.py) hold pools of their own; `held_bytes` and `release` cover every
thread's pool.
"""
from __future__ import annotations

import math
import threading
import weakref

import numpy as np

_local = threading.local()
# every live thread's pool; a thread's pool goes when the thread does
_pools: weakref.WeakSet = weakref.WeakSet()
_pools_lock = threading.Lock()


class _Pool:
    """One thread's buffers: (role, dtype) -> flat array."""

    __slots__ = ("arrays", "__weakref__")

    def __init__(self) -> None:
        self.arrays: dict = {}


def _pool() -> dict:
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = _Pool()
        with _pools_lock:
            _pools.add(pool)
    return pool.arrays


def buffer(role: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A C-contiguous array of `shape` and `dtype`, reused between calls for `role`."""
    pool = _pool()
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    flat = pool.get((role, dtype))
    if flat is None or flat.size < size:
        flat = pool[(role, dtype)] = np.empty(size, dtype)
    return flat[:size].reshape(shape)


def held_bytes() -> int:
    """Bytes the scratch buffers of every thread hold."""
    with _pools_lock:
        pools = list(_pools)
    return sum(a.nbytes for pool in pools for a in list(pool.arrays.values()))


def release() -> None:
    """Drop every thread's scratch buffers (e.g. after training, before inference). Safe
    while no kernel runs: a view handed out before keeps its memory alive until it goes."""
    with _pools_lock:
        pools = list(_pools)
    for pool in pools:
        pool.arrays.clear()
