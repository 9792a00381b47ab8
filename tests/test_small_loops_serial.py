"""Numba parallel loops over few elements run a serial build (threads.parallel_from): a
fork-join for a [128, 2] loss cost ten times its work on a shared machine."""
from __future__ import annotations

import numpy as np

from bwplan.kernels.cpu import threads
from bwplan.kernels.cpu.reduce import channel_sum


def test_small_calls_take_the_serial_build_and_large_ones_the_parallel():
    small = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32)
    large = np.random.default_rng(1).standard_normal(
        (8, 4, threads.PARALLEL_MIN_ELEMENTS // 32 + 1)).astype(np.float32)
    assert small.size < threads.PARALLEL_MIN_ELEMENTS <= large.size
    for a, build in ((small, channel_sum.serial), (large, channel_sum.parallel)):
        out = np.empty(a.shape[1], np.float32)
        compiled = len(build.signatures)
        channel_sum(a, out)
        np.testing.assert_allclose(out, a.sum(axis=(0, 2), dtype=np.float64), rtol=1e-6)
        assert len(build.signatures) >= max(compiled, 1)
    # the serial build is its own function, so Numba's disk cache keeps the two apart
    assert channel_sum.serial.py_func.__qualname__ == "channel_sum_serial"
    assert "parallel" not in channel_sum.serial.targetoptions


def test_the_serial_build_gives_the_parallel_builds_result():
    a = np.random.default_rng(2).standard_normal((3, 7, 11)).astype(np.float32)
    got, want = np.empty(7, np.float32), np.empty(7, np.float32)
    channel_sum.serial(a, got)
    channel_sum.parallel(a, want)
    np.testing.assert_array_equal(got, want)   # per channel, the same serial sum
