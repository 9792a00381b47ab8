"""The kernel table checks what an entry's launch functions return: a kernel the entry
does not list is a bug in the family module, reported for the whole and the sliced form."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bwplan import ops as registry
from bwplan.errors import InternalError
from bwplan.kernels import cuda as cuda_table
from bwplan.kernels.cuda import limits
from bwplan.ops.reference import make_ctx


def _stray(*_args):
    return [limits.Launch("not_a_listed_kernel", (1, 1, 1), (32, 1, 1), ())]


def test_a_launch_of_an_unlisted_kernel_is_an_internal_error():
    ctx = make_ctx(registry.OPS["linear"], {"out": 4}, [np.zeros((2, 3), np.float32)])
    env = limits.Env(sm_count=8, workspace=1 << 20, workspace_bytes=1 << 30)
    e = cuda_table.entry("linear", "dw:weight")
    whole = cuda_table.launches(e, ctx, {"x": 4096}, 8192, 1 << 20, False, env)
    assert whole and {l.kernel for l in whole} <= set(e.kernels)
    with pytest.raises(InternalError, match="linear dw:weight launches not_a_listed_kernel"):
        cuda_table.launches(replace(e, launch=_stray), ctx, {"x": 4096}, 8192, 1 << 20,
                            False, env)
    with pytest.raises(InternalError,
                       match=r"linear dw:weight \(rows\) launches not_a_listed_kernel"):
        cuda_table.rows_launches(replace(e, rows=_stray), ctx, {"x": 4096}, 8192, 1 << 20,
                                 False, ((0, 2),), env)
