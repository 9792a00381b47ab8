"""What a cold start compiles: each kernel once per dtype (not once per layout or per
thread count), serial builds that the disk cache keeps, and pooling whose blocks of planes
on the kernel workers never change a result. bench/cold_start.py measures the time."""
from __future__ import annotations

import numpy as np
import pytest
from numba.core.caching import NullCache

from bwplan.kernels.cpu import conv, pool, threads
from bwplan.kernels.cpu.reduce import channel_sum
from bwplan.kernels.cpu.threads import parallel_from
from bwplan.runtime.compiling import process_age


def test_serial_builds_are_cached_on_disk():
    # without `cache`, a warm start compiled every small loss and reduction again (0.6 s)
    assert not isinstance(channel_sum.serial._cache, NullCache)
    assert not isinstance(channel_sum.parallel._cache, NullCache)


def test_pooling_compiles_no_parallel_build():
    kernels = [getattr(pool, name) for name in (
        "_max_fwd", "_max_fwd_arg", "_max2_fwd", "_max2_fwd_arg", "_max_back", "_ave_fwd",
        "_ave_back", "_global_max", "_global_max_arg", "_global_mean", "_global_mean_back")]
    assert not any(k.targetoptions.get("parallel") for k in kernels)
    assert all(k.targetoptions.get("nogil") for k in kernels)   # blocks run side by side


class _Ctx:
    def __init__(self, **attrs):
        self.attrs = {"stride": None, "pad": 0, "count_pad": True, **attrs}


POOLS = [
    ("max", dict(kernel=2)),                 # the 2x2 loops
    ("max", dict(kernel=3, stride=2, pad=1)),  # the general loops
    ("ave", dict(kernel=3, stride=1, pad=1)),
    ("global_max", {}),
    ("global_ave", {}),
]


def _run_pool(kind, attrs, x, dy_seed):
    ctx = _Ctx(**attrs)
    n, c, h, w = x.shape
    if kind.startswith("global"):
        shape = (n, c, 1, 1)
    else:
        k, s, p = attrs["kernel"], attrs.get("stride") or attrs["kernel"], attrs.get("pad", 0)
        shape = (n, c, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
    out = np.empty(shape, x.dtype)
    dx = np.empty_like(x)
    dy = np.random.default_rng(dy_seed).standard_normal(shape).astype(x.dtype)
    if kind in ("max", "global_max"):
        arg = np.empty(shape, np.int32)
        fwd = pool.maxpool_fwd if kind == "max" else pool.global_maxpool_fwd
        dxk = pool.maxpool_dx if kind == "max" else pool.global_maxpool_dx
        fwd(ctx, [x], {}, out, {"argmax": arg}, True, None)
        dxk(ctx, {"argmax": arg}, dy, 0, dx)
        return out, arg, dx
    fwd = pool.avgpool_fwd if kind == "ave" else pool.global_avgpool_fwd
    dxk = pool.avgpool_dx if kind == "ave" else pool.global_avgpool_dx
    fwd(ctx, [x], {}, out, {}, True, None)
    dxk(ctx, {}, dy, 0, dx)
    return out, dx


@pytest.mark.parametrize("kind,attrs", POOLS)
def test_pooling_in_blocks_of_planes_gives_the_same_bits(kind, attrs, monkeypatch):
    x = np.random.default_rng(3).standard_normal((3, 5, 6, 6)).astype(np.float32)
    whole = _run_pool(kind, attrs, x, 4)
    monkeypatch.setattr(pool, "BLOCK_ELEMENTS", 16)   # 15 planes of 36: several blocks
    before = threads.set_width(3)
    try:
        blocked = _run_pool(kind, attrs, x, 4)
    finally:
        threads.set_width(before)
    for a, b in zip(whole, blocked):
        np.testing.assert_array_equal(a, b)


def test_im2col_and_col2im_compile_once_for_both_column_layouts():
    from bwplan import ops as registry
    from bwplan.ops.reference import make_ctx
    rng = np.random.default_rng(5)
    layouts = set()
    for h in (4, 16):   # 16 output pixels: chunk-wide columns [K, nb*P]; 256: [nb, K, P]
        x = rng.standard_normal((2, 3, h, h)).astype(np.float32)
        w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
        ctx = make_ctx(registry.OPS["conv2d"], dict(out=4, kernel=3, pad=1, bias=False), [x])
        layouts.add(conv.geometry(ctx).per_sample)
        out = np.empty((2, 4, h, h), np.float32)
        conv.conv2d_fwd(ctx, [x], {"weight": w}, out, {}, True, None)
        conv.conv2d_dx(ctx, {"weight": w}, out, 0, np.empty_like(x))
    assert layouts == {True, False}
    for kernel in (conv._im2col, conv._col2im):
        f32 = [s for s in kernel.signatures if "float32" in str(s)]
        assert len(f32) == 1, f32


def test_parallel_from_keeps_the_dispatchers_cache_setting():
    from numba import njit, prange

    @parallel_from(elements=8)
    @njit(parallel=True)
    def doubled(a, out):
        for i in prange(a.size):
            out[i] = a[i] * 2
    a, out = np.arange(4, dtype=np.float64), np.empty(4)
    doubled(a, out)   # 4 elements: the serial build
    assert out.tolist() == [0, 2, 4, 6]
    assert isinstance(doubled.serial._cache, NullCache)


def test_process_age_counts_from_the_process_start():
    wall, cpu = process_age()
    assert cpu > 0
    if wall is not None:   # Linux: the interpreter and the imports came first
        assert 0 < wall < 3600
