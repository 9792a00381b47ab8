"""The cuda target under `mpiexec -n 2` on a real GPU (both ranks share it): skipped as a
whole without PyCUDA, a GPU, or mpi4py and mpiexec. The host-side tests of the same step,
against a model of the device, are tests/test_cuda_mpi.py.

Two ranks on the device give the parameters of one process of the reference target over
the same global batches, within test_mpi's bound (|w_2 - w_1| <= 1e-6 + 1e-5 |w_1|, here
loosened to 1e-4 for the device's float32 GEMMs, as tests/test_cuda_gpu.py), with only the
plan's buckets sent; `--profile` reports the bytes per step and the wait.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("pycuda.driver")

from bwplan.runtime.cuda import CudaUnavailable, device  # noqa: E402

try:
    device()
except CudaUnavailable as err:  # no driver or no GPU
    pytest.skip(str(err), allow_module_level=True)

from test_mpi import (NET, ROWS_FREEZE, ROWS_NET, _net_and_data, _run,  # noqa: E402
                      _train, needs_mpi)

TOL = 1e-4


@needs_mpi
@pytest.mark.parametrize("case", ["shared", "rows"])
def test_two_ranks_on_the_gpu_match_one_process(tmp_path, case):
    if case == "rows":
        net, data, tmp = _net_and_data(tmp_path, "rows", ROWS_NET, 10, 2)
        extra = [a for rule in ROWS_FREEZE for a in ("--freeze", rule)]
    else:
        net, data, tmp = _net_and_data(tmp_path, "net", NET, 4, 1)
        extra = []
    one = _train(net, data, tmp / "one.npz", 0, *extra)
    assert one.returncode == 0, one.stderr
    argv = [sys.executable, "-m", "bwplan", "train", str(net), "--data", str(data), "--out",
            str(tmp / "two.npz"), "--target", "cuda", "--batch", "8", "--epochs", "2",
            "--lr", "0.1", "--weight-decay", "0.01", "--profile", *extra]
    two = _run(argv, 2)
    assert two.returncode == 0, two.stderr
    print(two.stdout[-2000:], two.stderr[-2000:])   # the profile: what a device measured
    assert "data-parallel: 2 processes" in two.stderr
    w1, w2 = np.load(tmp / "one.npz"), np.load(tmp / "two.npz")
    for k in w1.files:
        np.testing.assert_allclose(w2[k], w1[k], rtol=TOL, atol=TOL, err_msg=k)
