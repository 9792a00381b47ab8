"""A NumPy model of the cuda target's device, for running its data-parallel step on a
machine without a GPU.

What is real: `CudaTarget`, the lowering (`data_parallel_step`: the launch list, where the
buckets become ready, their transfers' device addresses, the SGD segments and launch
arguments), the step's driver (bwplan/runtime/cuda_exchange.py) and the bucket code shared
with the cpu target (bwplan/runtime/distributed.py). What is modelled: the device memory
(flat float32 arrays at the layout's symbolic addresses), the compute kernels (the
reference executor runs the same Program; a dW launch makes its parameter's gradient
appear in device memory only when that launch is issued, and every gradient starts the
step as NaN, so a copy queued too early reads NaN), the copies (a copy lands one launch
after it is queued, or
when polled a second time, so the driver must wait for it) and `sgd_update` (its segments, in
NumPy, with the launch's own lr, momentum and weight decay). PyCUDA itself is never run.
Every call is logged in `ModelExecutor.log`, in the order the driver issued it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from bwplan.kernels.cuda import limits
from bwplan.lower import cuda_launches as step_plan
from bwplan.lower.cuda_arena import plan_arena
from bwplan.runtime import cuda as cuda_runtime
from bwplan.runtime.backend import BACKENDS
from bwplan.runtime.executor import Executor, StepResult

BASE = step_plan.HOST_BASE


class ModelParams:
    """CudaParams over host arrays: parameters, gradients, velocities, one flat each."""

    def __init__(self, dev, params) -> None:
        self.offsets, self.shapes, total = {}, {}, 0
        for name, value in params.items():
            self.offsets[name] = total
            self.shapes[name] = tuple(np.shape(value))
            total += int(np.size(value))
        self.count, self.nbytes = total, 12 * max(total, 1)
        self.flat = {kind: np.zeros(max(total, 1), np.float32)
                     for kind in ("params", "grads", "velocity")}
        self.params_base, self.grads_base, self.velocity_base = 2 * BASE, 3 * BASE, 4 * BASE
        self.upload(params)

    def size(self, name: str) -> int:
        return int(np.prod(self.shapes[name], dtype=np.int64))

    def view(self, kind: str, name: str) -> np.ndarray:
        off = self.offsets[name]
        return self.flat[kind][off:off + self.size(name)].reshape(self.shapes[name])

    def upload(self, params) -> None:
        for name, value in params.items():
            self.view("params", name)[...] = value

    def _download(self, base: int, names) -> dict[str, np.ndarray]:
        kind = "params" if base == self.params_base else "grads"
        return {n: self.view(kind, n).copy() for n in names}

    def download(self) -> dict[str, np.ndarray]:
        return self._download(self.params_base, self.offsets)

    def download_grads(self, names) -> dict[str, np.ndarray]:
        return self._download(self.grads_base, names)


class ModelExecutor(cuda_runtime.CudaExecutor):
    """The executor with its device calls modelled; `data_parallel_step` and `_stats` are
    the real ones."""

    made: list = []
    shared_log: list | None = None    # one log for every executor (and a test's comm)

    def __init__(self, program, state, settings=None, dev=None, seed=0, source="program"):
        self.program, self.net, self.state = program, program.plan.net, state
        self.settings = settings or cuda_runtime.SgdSettings()
        sizes = {p: state.size(p) for p in state.offsets}
        layout = step_plan.host_layout(program, sizes, plan_arena(program),
                                       limits.DEFAULT_SM_COUNT)
        self.layout = dataclasses.replace(
            layout, param_offsets=dict(state.offsets), params_base=state.params_base,
            grads_base=state.grads_base, velocity_base=state.velocity_base)
        self.scaled = np.zeros(max(1, sum(sizes[p] for p in self.layout.scaled_offsets)),
                               np.float32)
        self.segments = step_plan.segment_table(program, self.layout, self.settings)
        self._lists, self._dp_steps, self.copy_stream = {}, {}, None
        self.reference = Executor(program, BACKENDS["reference"]())
        self.log: list[tuple] = [] if self.shared_log is None else self.shared_log
        self._landing: list[list] = []
        ModelExecutor.made.append(self)

    def set_optimizer(self, settings) -> None:
        self.settings = settings
        self.segments = step_plan.segment_table(self.program, self.layout, settings)
        self._lists.clear()
        self._dp_steps.clear()

    # ---- memory ------------------------------------------------------------------------
    def _at(self, addr: int, elems: int) -> np.ndarray:
        """The device memory at a byte address: a view of the flat array holding it."""
        regions = [(self.state.grads_base, self.state.flat["grads"]),
                   (self.state.params_base, self.state.flat["params"]),
                   (self.layout.scaled_base, self.scaled)]
        for base, flat in regions:
            if base <= addr < base + 4 * flat.size:
                assert (addr - base) % 4 == 0
                start = (addr - base) // 4
                assert start + elems <= flat.size, "a copy runs past its buffer"
                return flat[start:start + elems]
        raise AssertionError(f"address {addr:#x} is in no device buffer")

    # ---- the DeviceSide ----------------------------------------------------------------
    def upload_batch(self, batch) -> None:
        self.log.append(("upload_batch",))
        self._batch, self._result, self._scales = dict(batch), None, {}
        self.state.flat["grads"][:] = np.nan     # what a copy read before its dW would see
        self.scaled[:] = np.nan

    def launch(self, item) -> None:
        for marker in self._landing:
            marker[0] = True
        self._landing = []
        self.log.append(("launch", item.phase, item.layer))
        first = len(self.program.forward) + len(self.program.seeds)
        if item.phase == "seed":
            seed = next(s for s in self.program.seeds if s.layer == item.layer)
            fill, = item.launches
            self._scales[seed.layer] = float(fill.args[2]) / seed.weight
        elif item.phase in ("dx", "dw"):
            self._compute()
            i = next(k for k, entry in enumerate(self._dp_step_items) if entry is item)
            self._reveal(i - first)
        elif item.phase == "update":
            self._sgd(item)

    def _compute(self) -> None:
        if self._result is not None:
            return
        grads, scaled, self._written = {}, {}, {}
        program = self.program

        def after(i: int) -> None:
            step = program.backward[i]
            if step.phase == "dw":
                p = step.param
                self._written[i] = (p, grads[p].copy(),
                                    scaled[p].copy() if p in scaled else None)

        params = {n: self.state.view("params", n) for n in self.state.offsets}
        self._result = self.reference.run(self._batch, params, grads, scaled, training=True,
                                          after_step=after, seed_scale=self._scales)

    def _reveal(self, i: int) -> None:
        if i not in self._written:
            return
        p, g, s = self._written[i]
        self.state.view("grads", p)[...] = g
        if s is not None and p in self.layout.scaled_offsets:
            off = self.layout.scaled_offsets[p]
            self.scaled[off:off + s.size] = s.reshape(-1)

    def _sgd(self, item) -> None:
        """sgd_update of update.cu over the segment table, with the launch's arguments."""
        launch, = item.launches
        assert launch.kernel == "sgd_update" and launch.grid[1] == len(self.segments)
        lr, momentum, wd = (float(v) for v in launch.args[5:8])
        flat = self.state.flat
        for seg in self.segments:
            p = slice(seg["param_off"], seg["param_off"] + seg["size"])
            w = flat["params"][p]
            diff = np.float32(seg["decay"] * wd) * w
            if seg["source"] >= 0:
                src = flat["grads"] if seg["source"] == 0 else self.scaled
                q = slice(seg["source_off"], seg["source_off"] + seg["size"])
                diff = diff + np.float32(seg["grad_mult"]) * src[q]
            flat["velocity"][p] = np.float32(momentum) * flat["velocity"][p] + \
                np.float32(lr) * diff
            flat["params"][p] = w - flat["velocity"][p]

    def copy_out(self, transfers, hosts):
        self.log.append(("copy_out", tuple(t.param for t in transfers)))
        for t, host in zip(transfers, hosts):
            host.reshape(-1)[:] = self._at(t.device, t.elems)
        marker = [False]
        self._landing.append(marker)
        return marker

    def copied(self, marker) -> bool:
        landed = marker[0]
        marker[0] = True      # the device moves on: polled again, the copy has landed
        return landed

    def finish_compute(self) -> StepResult:
        self._compute()
        for marker in self._landing:
            marker[0] = True
        self.log.append(("finish_compute",))
        r = self._result
        return StepResult(r.loss, dict(r.losses), dict(r.metrics), self._stats(True))

    def copy_in(self, transfers, hosts) -> None:
        self.log.append(("copy_in", tuple(t.param for t in transfers)))
        for t, host in zip(transfers, hosts):
            self._at(t.device, t.elems)[:] = host.reshape(-1)

    def read_params(self, names):
        self.log.append(("read_params", tuple(names)))
        return self.state._download(self.state.params_base, names)

    def write_params(self, values) -> None:
        self.log.append(("write_params", tuple(values)))
        self.state.upload(values)

    def synchronize(self) -> None:
        self.log.append(("synchronize",))

    def data_parallel_step(self, buckets, seed_scale):
        step = super().data_parallel_step(buckets, seed_scale)
        self._dp_step_items = step.compute
        return step


def install(monkeypatch=None) -> None:
    """Put the model behind the cuda target (with pytest's monkeypatch, or for good in a
    subprocess)."""
    ModelExecutor.made, ModelExecutor.shared_log = [], None
    for name, value in (("device", lambda: None), ("CudaParams", ModelParams),
                        ("CudaExecutor", ModelExecutor)):
        if monkeypatch is not None:
            monkeypatch.setattr(cuda_runtime, name, value)
        else:
            setattr(cuda_runtime, name, value)
