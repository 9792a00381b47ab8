"""One data-parallel training step of the cuda target: the device computes, the gradient
buckets visit the host for MPI, the device updates.

MPI here is not assumed to be CUDA-aware (the mpich wheel is not): every bucket is copied
to the host, summed there by the same bucket code as the cpu target's
(`DataParallel.bucket_ready` / `DataParallel.finish`, bwplan/runtime/distributed.py), and
copied back. The order, for a `DataParallelStep` (bwplan/lower/cuda_launches.py):

1. the compute launches (forward, seeds scaled by the shard's share, backward) go onto
   the device's compute stream; right after the launch that writes a bucket's last
   gradient, that bucket's copy-out (device -> host, into the arrays `DataParallel.begin`
   pointed at the bucket's buffer) is queued behind it on a copy stream;
2. as each copy lands (checked after every launch, then waited for in backward order) the
   bucket's `Iallreduce` starts, so the network overlaps the rest of the backward;
3. the losses come back; `finish` waits for each bucket's sum and copies it in (host ->
   device, on the compute stream); then the one SGD launch (its segments cover every
   parameter, so it waits for every bucket) and the step counter;
4. the running statistics (BatchNorm) are read from the device before `finish`, averaged
   there, and written back after it.

This module never imports PyCUDA: it talks to a `DeviceSide` (the cuda executor on a
GPU; tests/cuda_model.py's NumPy model of it on the host), so every step but the device
itself runs in the tests.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from bwplan.lower.cuda_launches import DataParallelStep, Planned, Transfer
from bwplan.runtime.executor import StepResult


class DeviceSide(Protocol):
    """What a data-parallel step asks of the device; every call but `finish_compute`,
    `read_params` and `synchronize` only queues work."""

    def upload_batch(self, batch: Mapping[str, np.ndarray]) -> None: ...

    def launch(self, item: Planned) -> None: ...

    def copy_out(self, transfers: tuple[Transfer, ...], hosts: list[np.ndarray]): ...

    def copied(self, marker) -> bool: ...

    def finish_compute(self) -> StepResult: ...

    def copy_in(self, transfers: tuple[Transfer, ...], hosts: list[np.ndarray]) -> None: ...

    def read_params(self, names) -> dict[str, np.ndarray]: ...

    def write_params(self, values: Mapping[str, np.ndarray]) -> None: ...

    def synchronize(self) -> None: ...


def _hosts(transfers: tuple[Transfer, ...], grads: dict, scaled: dict) -> list[np.ndarray]:
    return [(grads if t.source == "grads" else scaled)[t.param] for t in transfers]


def train_step(side: DeviceSide, dp, step: DataParallelStep, batch, grads: dict,
               scaled: dict, params: dict) -> StepResult:
    """Steps 1-4 above; `grads`/`scaled` are the host arrays `dp.begin` pointed at the
    buckets, `params` the host view of the parameters. Returns the global result."""
    side.upload_batch(batch)
    queued: list[tuple[int, object]] = []    # (bucket, its copy's marker), backward order
    for i, item in enumerate(step.compute):
        side.launch(item)
        for b in step.ready.get(i, ()):
            queued.append((b, side.copy_out(step.transfers[b], _hosts(step.transfers[b],
                                                                      grads, scaled))))
        while queued and side.copied(queued[0][1]):
            dp.bucket_ready(queued.pop(0)[0])
    for b, marker in queued:
        while not side.copied(marker):
            dp.progress()
        dp.bucket_ready(b)
    result = side.finish_compute()
    return apply_update(side, dp, step, grads, scaled, params, result)


def apply_update(side: DeviceSide, dp, step: DataParallelStep, grads: dict, scaled: dict,
                 params: dict, result: StepResult) -> StepResult:
    """Steps 3-4: also what a rank without samples runs, its buckets zero."""
    statistics = dp.statistics
    if statistics:
        params.update(side.read_params(statistics))

    def copy_in(b: int) -> int:
        side.copy_in(step.transfers[b], _hosts(step.transfers[b], grads, scaled))
        return 0

    result, _ = dp.finish(result, params, lambda: 0, copy_in)
    for item in step.update:
        side.launch(item)
    side.synchronize()
    if statistics:
        side.write_params({n: params[n] for n in statistics})
    return result
