"""One interface for every target: what `CompiledNet` (bwplan/api.py) asks of the machine
that runs a lowered Program. The API derives the programs (source -> Net -> Plan ->
Program); a target prepares them and runs them against the parameters it holds.

    target = target_class("cpu")(initial, seed)       # the parameters: made on first read
    prepared = target.prepare(program)              # kernels bound, buffers planned
    result, grads = target.step(prepared, batch, optimizer, seed=..., ...)
    target.forward(prepared, batch, training, seed, outputs)
    target.params                                   # host arrays, current after a step
    target.load_weights(path, rename, skip, strict); target.save_weights(path)
    target.set_optimizer(settings); target.forget()   # forget: the plan changed
    target.gradient_stores()                        # host gradient arrays, or None

`HostTarget` is the "cpu" (Numba kernels) and "reference" (NumPy references) targets: the
parameters are host arrays updated in place by the host optimizer. The "cuda" target
(`bwplan.runtime.cuda.CudaTarget`) keeps parameters, gradients and the update on the
device and copies them back after each step (under MPI its gradient buckets visit the
host for the all-reduce: bwplan/runtime/cuda_exchange.py); it is imported only when asked
for, so the other targets never import PyCUDA. This module does not plan or lower anything, and it
knows no op.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import NamedTuple, Protocol

import numpy as np

from bwplan.errors import BwError
from bwplan.ir.net import Net
from bwplan.lower.program import Program
from bwplan.runtime.backend import BACKENDS
from bwplan.runtime.executor import Executor, StepResult
from bwplan.optim import SgdSettings
from bwplan.runtime.optimizer import Sgd
from bwplan.runtime.weights import load_into, save_weights
from bwplan.source import Span

InitialParams = Callable[[], dict]


class GradientStores(NamedTuple):
    """The host arrays a training step writes its gradients into, by parameter: the
    gradients, and the multiplier-scaled sums of shared parameters (runtime/executor.py).
    Data parallelism (runtime/distributed.py) points entries at its bucket buffers."""

    grads: dict[str, np.ndarray]
    scaled: dict[str, np.ndarray]
    # a target whose update runs elsewhere (cuda: on the device) takes the summed buckets
    # here, `device_update(dp, result) -> (result, launched)`; None: the host optimizer
    device_update: Callable | None = None


class Target(Protocol):
    """What every target provides; `prepare` returns an object with a `.program`."""

    name: str
    update_kernel: Callable | None   # the host optimizer's kernel (None: NumPy or none)
    params: dict[str, np.ndarray]

    @classmethod
    def check_net(cls, net: Net) -> None: ...

    def prepare(self, program: Program): ...

    def step(self, prepared, batch: Mapping[str, np.ndarray], optimizer: Sgd, *, seed: int,
             given, capture: tuple[str, ...], prefix_skip: Callable,
             data_parallel) -> tuple[StepResult, dict[str, np.ndarray]]: ...

    def forward(self, prepared, batch: Mapping[str, np.ndarray], training: bool, seed: int,
                outputs: tuple[str, ...] | None) -> dict[str, np.ndarray]: ...

    def set_optimizer(self, settings: SgdSettings) -> None: ...

    def load_weights(self, path: str, rename, skip, strict: bool) -> dict[str, str]: ...

    def save_weights(self, path: str) -> None: ...

    def forget(self) -> None: ...

    def gradient_stores(self) -> GradientStores | None:
        """Where a step writes its gradients on the host; None when they stay on the
        device (such a target cannot be data-parallel: the all-reduce runs on the host)."""


class HostTarget:
    """Runs programs on the host with a kernel table (runtime/backend.py); the gradients
    land in `grad_store` (and the multiplier-scaled sums of shared parameters in `scaled`),
    which data parallelism (runtime/distributed.py) points at its bucket buffers."""

    def __init__(self, name: str, initial: InitialParams) -> None:
        # the host seeds every step itself (CompiledNet passes the step's seed)
        self.name = name
        self.backend = BACKENDS[name]()
        self.update_kernel = getattr(self.backend, "update_kernel", None)
        self._initial = initial
        self._params: dict[str, np.ndarray] | None = None   # made when first read
        self.grad_store: dict[str, np.ndarray] = {}
        self.scaled: dict[str, np.ndarray] = {}

    @property
    def params(self) -> dict[str, np.ndarray]:
        if self._params is None:
            self._params = self._initial()
        return self._params

    @params.setter
    def params(self, value: dict[str, np.ndarray]) -> None:
        self._params = value

    @classmethod
    def check_net(cls, net: Net) -> None:
        """The host kernels run every net that plans."""

    def prepare(self, program: Program) -> Executor:
        return Executor(program, self.backend)

    def step(self, prepared: Executor, batch, optimizer: Sgd, *, seed: int, given,
             capture, prefix_skip, data_parallel):
        skip = frozenset()
        if given:
            skip = prefix_skip(given)
        dp = data_parallel
        program = prepared.program
        hooks = dp.begin(program, self.grad_store, self.scaled) if dp else {}
        result = prepared.run(batch, self.params, self.grad_store, self.scaled,
                              training=True, seed=seed, given=given, skip=skip,
                              capture=capture, **hooks)
        computed = {s.param for s in program.backward if s.phase == "dw"}
        grads = {p: self.grad_store[p] for p in computed}
        scaled = {p: self.scaled[p] for p in computed if p in program.mixed_scale}
        start = time.perf_counter()
        if dp is not None:   # the update waits for each gradient bucket's all-reduce
            result, launched = dp.update(result, optimizer, self.params, grads, scaled)
        else:
            launched = optimizer.step(program.plan.updates, self.params, grads, scaled)
        result.stats.seconds["update"] = time.perf_counter() - start
        result.stats.launched["update"] = launched
        result.stats.flops["update"] = sum(
            4 * _touched(u, self.params[u.param]) for u in program.plan.updates
            if u.kind != "none")
        return result, grads

    def forward(self, prepared: Executor, batch, training: bool, seed: int, outputs):
        program = prepared.program
        wanted = outputs or tuple(s.layer for s in program.forward
                                  if not prepared.net.consumers(s.layer)
                                  or s.layer in dict(program.losses) or s.layer in
                                  program.metrics)
        result = prepared.run(batch, self.params, training=training, forward_only=True,
                              seed=seed, capture=wanted)
        return result.values

    def set_optimizer(self, settings: SgdSettings) -> None:
        """The host optimizer reads its settings at each update: nothing to do."""

    def load_weights(self, path: str, rename, skip, strict: bool) -> dict[str, str]:
        """Into the host arrays the kernels read."""
        return load_into(self.params, path, rename, skip, strict)

    def save_weights(self, path: str) -> None:
        save_weights(path, self.params)

    def forget(self) -> None:
        """Executors hold nothing beyond their program: nothing to drop."""

    def gradient_stores(self) -> GradientStores:
        return GradientStores(self.grad_store, self.scaled)


class CpuTarget(HostTarget):
    """The Numba kernels."""

    name = "cpu"

    def __init__(self, initial: InitialParams, seed: int = 0) -> None:
        super().__init__("cpu", initial)


class ReferenceTarget(HostTarget):
    """The ops' NumPy references: slow and obvious, the oracle."""

    name = "reference"

    def __init__(self, initial: InitialParams, seed: int = 0) -> None:
        super().__init__("reference", initial)


def _cuda() -> type:
    from bwplan.runtime.cuda import CudaTarget
    return CudaTarget


# name -> the target's class, found when asked for; the order is the one errors list
TARGETS: dict[str, Callable[[], type]] = {
    "cpu": lambda: CpuTarget,
    "reference": lambda: ReferenceTarget,
    "cuda": _cuda,
}


def target_class(name: str) -> type:
    """The class of the target called `name`, checked before anything is built: its
    `check_net(net)` refuses what it cannot run, and `cls(initial, seed)` makes the target,
    holding the parameters `initial()` returns."""
    if name not in TARGETS:
        raise BwError(Span.synthetic("target"), f"unknown target '{name}'",
                      "targets: " + ", ".join(TARGETS))
    return TARGETS[name]()


def _touched(update, w: np.ndarray) -> int:
    """Elements an update writes: a partly frozen parameter's trainable rows only."""
    if not update.rows:
        return w.size
    return w.size // w.shape[0] * sum(b - a for a, b in update.rows)
