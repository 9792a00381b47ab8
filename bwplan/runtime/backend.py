"""Targets as kernel tables: a backend maps a component of an op (`Component`: fwd, dX
into a port, dW of a slot) to a callable with the kernel calling convention:

    fwd(ctx, inputs, params, out, aux, training, rng)   fills out (and the aux given)
    dx(ctx, saved, dout, index, out)                     writes d(input index) into out
    dw(ctx, saved, dout, out)                            writes d(param slot) into out

`ReferenceBackend` runs the ops' NumPy references through that convention (slow, obvious,
the oracle); `CpuBackend` runs the Numba kernels.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bwplan import ops as registry
from bwplan.errors import InternalError
from bwplan.ops.needs import Component


class ReferenceBackend:
    name = "reference"
    update_kernel = None

    def kernel(self, op_name: str, component: Component) -> Callable:
        op = registry.OPS[op_name]
        if component.kind == "fwd":
            def fwd(ctx, inputs, params, out, aux, training, rng):
                # a reference refuses values its op cannot take (an embed index out of
                # range, a ground-truth box naming no image of the batch) with a DataError,
                # as the cpu kernels do
                value, produced = op.forward_ref(ctx, list(inputs), dict(params), training,
                                                 rng)
                if training and op.state_update_ref is not None:
                    op.state_update_ref(ctx, list(inputs), params)
                out[...] = value
                for name, buf in aux.items():
                    buf[...] = produced[name]
            return fwd
        rule = op.grad_for(component.wrt)
        if component.kind == "dx":
            def dx(ctx, saved, dout, index, out):
                out[...] = rule.reference(ctx, saved, dout, index)
            return dx

        def dw(ctx, saved, dout, out):
            out[...] = rule.reference(ctx, saved, dout, 0)
        return dw


class CpuBackend:
    name = "cpu"

    def __init__(self) -> None:
        from bwplan.kernels import cpu
        from bwplan.kernels.cpu import threads
        self._cpu = cpu
        _configure_once(threads)
        from bwplan.kernels.cpu.update import sgd_update
        self.update_kernel = sgd_update

    def kernel(self, op_name: str, component: Component) -> Callable:
        names = registry.OPS[op_name].kernels.get("cpu", {})
        if component.key not in names:
            raise InternalError(f"no cpu kernel for {op_name} {component}")
        return self._cpu.get(names[component.key])

    def channel_sum_kernel(self, op_name: str, component: Component) -> Callable | None:
        """The dX kernel that also sums its output per channel (Step.sum_of), or None."""
        names = registry.OPS[op_name].kernels.get("cpu", {})
        return self._cpu.with_channel_sum(names[component.key])

    def epilogue_kernel(self, op_name: str, epilogue_op: str) -> Callable | None:
        """The forward kernel of `op_name` that also applies the epilogue op `epilogue_op`
        in its output write (Step.applied_by), or None."""
        names = registry.OPS[op_name].kernels.get("cpu", {})
        return self._cpu.with_epilogue(names["fwd"],
                                       registry.OPS[epilogue_op].kernels["cpu"]["fwd"])


def _configure_once(threads) -> None:
    """Thread pools are set up once per process, before the first kernel runs
    (BWPLAN_THREADS overrides the default of every core this process may use). A count
    chosen earlier with `threads.configure` stands: resetting it to every core made a
    one-thread benchmark run bwplan on two."""
    if threads.configured() is None:
        import os
        import sys
        import warnings
        if "torch" in sys.modules and os.environ.get("OMP_WAIT_POLICY", "").upper() != \
                "PASSIVE":
            warnings.warn("torch was loaded before bwplan's CPU kernels, so the OpenMP "
                          "runtime they share lets idle workers spin, which can make "
                          "either side many times slower; set OMP_WAIT_POLICY=PASSIVE in "
                          "the environment before importing torch", RuntimeWarning,
                          stacklevel=4)
        wanted = os.environ.get("BWPLAN_THREADS")
        threads.configure(int(wanted) if wanted else None)


BACKENDS = {"reference": ReferenceBackend, "cpu": CpuBackend}


def numpy_dtype(dtype: str) -> np.dtype:
    return np.dtype({"f16": np.float16, "f32": np.float32, "f64": np.float64,
                     "i32": np.int32, "i64": np.int64, "u8": np.uint8,
                     "bool": np.bool_, "bf16": np.float32}[dtype])
