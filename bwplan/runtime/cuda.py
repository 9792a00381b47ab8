"""The runtime of target "cuda": runs a Program on one GPU through PyCUDA.

What it does, in order:
- compiles the program's CUDA source (bwplan/kernels/cuda/build.py: only the kernels the
  program launches, or every kernel once for many programs) with PyCUDA's SourceModule,
  for the device's own architecture, with an on-disk cache;
- places every activation, aux buffer and activation gradient in ONE device allocation,
  at offsets planned in Python from the schedule (bwplan/lower/cuda_arena.py), so the
  device bytes of a step are the plan's peak; the parameters, their gradients and
  velocities live in one more allocation (CudaParams), and the split-K workspace, the
  scaled sums of shared parameters, the dropout counter and the optimizer's segment
  table in a last, fixed one;
- computes the whole step's launch list once (bwplan/lower/cuda_launches.py: every address
  is static), then per step copies the batch in, launches the list on one stream, and
  copies back only the losses and metrics: nothing returns to the host inside a step;
- times each step with CUDA events and counts what it ran as the CPU executor does
  (components and FLOPs per phase), plus the device launches.

- under MPI, the executor is the `DeviceSide` of bwplan/runtime/cuda_exchange.py: the
  step's launches with each gradient bucket copied out on a second stream once written,
  summed on the host, copied back before the update launch (not yet run on a GPU).

What it does not do: capture the step as a CUDA graph (PyCUDA has no stream-capture API;
the driver's would be the way), run a cached frozen prefix (`given`/`skip`), or hold more
than the parameters it was given: several executors (one per batch size) share one
CudaParams.
CUDA errors become bwplan errors only here, in `check`.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from bwplan import ops as registry
from bwplan.errors import BwError, InternalError
from bwplan.kernels.cuda import build, update
from bwplan.kernels import cuda as table
from bwplan.lower import cuda_launches as step_plan
from bwplan.lower.cuda_arena import plan_arena
from bwplan.kernels.cuda.limits import Launch
from bwplan.lower.program import Program, value
from bwplan.runtime.backend import numpy_dtype
from bwplan.runtime.executor import StepResult, StepStats
from bwplan.optim import SgdSettings
from bwplan.runtime.metrics import metrics_of
from bwplan.runtime.target import GradientStores
from bwplan.runtime.weights import load_into, save_weights
from bwplan.source import Span

NEEDS = "the cuda target needs a GPU and PyCUDA: pip install -e '.[cuda]'"


class CudaUnavailable(BwError):
    """No PyCUDA, no driver or no GPU."""

    def __init__(self, why: str) -> None:
        super().__init__(Span.synthetic("target"), f"{NEEDS} ({why})")


def check(call, what: str):
    """Run a PyCUDA call; its errors become bwplan errors here and nowhere else: running
    out of device memory is the user's (a batch too large), anything else is a bug."""
    import pycuda.driver as cuda
    try:
        return call()
    except cuda.MemoryError as err:
        raise BwError(Span.synthetic("cuda"), f"out of device memory while {what}: {err}",
                      "use a smaller batch") from None
    except cuda.Error as err:
        raise InternalError(f"CUDA failed while {what}: {err}") from None


# ---- the device ----------------------------------------------------------------------------
class Device:
    """The primary context of the process's GPU (PyCUDA's autoprimaryctx: GPU 0, or the
    one CUDA_DEVICE names), shared with PyTorch or anything else in the process, and the
    modules compiled for it, by source."""

    def __init__(self, cache_dir: str | None = None) -> None:
        try:
            import pycuda.driver as cuda
        except ImportError as err:
            raise CudaUnavailable(f"cannot import pycuda: {err}") from None
        try:
            cuda.init()
            if cuda.Device.count() == 0:
                raise CudaUnavailable("no GPU found")
            import pycuda.autoprimaryctx as primary
        except cuda.Error as err:
            raise CudaUnavailable(str(err)) from None
        self._cuda = cuda
        self.dev = primary.device
        major, minor = self.dev.compute_capability()
        self.arch = f"sm_{major}{minor}"
        self.name = self.dev.name()
        self.sm_count = self.dev.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)
        self.cache_dir = cache_dir or os.environ.get("BWPLAN_CUDA_CACHE") or os.path.join(
            os.path.expanduser("~"), ".cache", "bwplan", "cuda")
        self._modules: dict[str, KernelSet] = {}

    def kernels(self, source: str) -> KernelSet:
        key = hashlib.sha256(source.encode()).hexdigest()
        found = self._modules.get(key)
        if found is None:
            found = self._modules[key] = KernelSet(self, source)
        return found

    def alloc(self, nbytes: int, what: str):
        return check(lambda: self._cuda.mem_alloc(max(nbytes, 1)), f"allocating {what}")


_DEVICE: Device | None = None


def device() -> Device:
    """The process's device (GPU 0), created on first use."""
    global _DEVICE
    if _DEVICE is None:
        _DEVICE = Device()
    return _DEVICE


class KernelSet:
    """One compiled module; `launch` runs a Launch record on a stream."""

    def __init__(self, dev: Device, source: str) -> None:
        from pycuda.compiler import SourceModule
        from pycuda.driver import CompileError
        os.makedirs(dev.cache_dir, exist_ok=True)
        try:
            self.module = SourceModule(source, arch=dev.arch, no_extern_c=True,
                                       cache_dir=dev.cache_dir)
        except CompileError as err:
            raise InternalError("nvcc rejected the generated CUDA source",
                                f"{err}\n{getattr(err, 'stderr', '')}") from None
        self._functions: dict[str, object] = {}

    def function(self, launch: Launch):
        fn = self._functions.get(launch.kernel)
        if fn is None:
            fn = self.module.get_function(launch.kernel)
            fn.prepare(launch.arg_format)
            self._functions[launch.kernel] = fn
        return fn

    def launch(self, launch: Launch, stream=None) -> None:
        fn = self.function(launch)
        fn.prepared_async_call(launch.grid, launch.block, stream, *launch.args,
                               shared_size=launch.shared)


# ---- parameters ------------------------------------------------------------------------
class CudaParams:
    """Parameters, gradients and velocities: three flat float32 device buffers with one
    layout (element offsets per parameter name)."""

    def __init__(self, dev: Device, params: Mapping[str, np.ndarray]) -> None:
        self.dev = dev
        self.offsets: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        total = 0
        for name, value in params.items():
            if np.asarray(value).dtype != np.float32:
                raise BwError(Span.synthetic("cuda"), f"parameter '{name}' is "
                              f"{np.asarray(value).dtype}; the cuda target runs float32")
            self.offsets[name] = total
            self.shapes[name] = tuple(np.shape(value))
            total += int(np.size(value))
        self.count = total
        self.nbytes = 3 * 4 * max(total, 1)
        self.memory = dev.alloc(self.nbytes, "the parameters")
        base = int(self.memory)
        self.params_base, self.grads_base = base, base + 4 * total
        self.velocity_base = base + 8 * total
        self.upload(params)
        check(lambda: dev._cuda.memset_d32(self.velocity_base, 0, total), "zeroing velocity")

    def size(self, name: str) -> int:
        return int(np.prod(self.shapes[name], dtype=np.int64))

    def ptr(self, name: str) -> int:
        return self.params_base + 4 * self.offsets[name]

    def grad_ptr(self, name: str) -> int:
        return self.grads_base + 4 * self.offsets[name]

    def upload(self, params: Mapping[str, np.ndarray]) -> None:
        for name, value in params.items():
            host = np.ascontiguousarray(value, dtype=np.float32)
            check(lambda: self.dev._cuda.memcpy_htod(self.ptr(name), host), "uploading " + name)

    def _download(self, base: int, names) -> dict[str, np.ndarray]:
        out = {}
        for name in names:
            host = np.empty(self.shapes[name], np.float32)
            check(lambda: self.dev._cuda.memcpy_dtoh(host, base + 4 * self.offsets[name]),
                  "downloading " + name)
            out[name] = host
        return out

    def download(self) -> dict[str, np.ndarray]:
        return self._download(self.params_base, self.offsets)

    def download_grads(self, names) -> dict[str, np.ndarray]:
        return self._download(self.grads_base, names)


# ---- the executor ------------------------------------------------------------------------
@dataclass
class CudaTiming:
    """The device side of the last step: its time between CUDA events (the batch copy
    excluded), its kernel launches per phase, the arena (the plan's bytes) and the fixed
    state (parameters, gradients, velocities, workspace)."""

    ms: float = 0.0
    device_launches: int = 0
    arena_bytes: int = 0
    state_bytes: int = 0
    per_phase_launches: dict[str, int] = field(default_factory=dict)


# the phase of a planned item, for the per-phase times
_PHASE_OF = {"fwd": "forward", "seed": "backward", "dx": "backward", "dw": "backward",
             "update": "update", "counter": "update"}


class CudaExecutor:
    """Runs one Program on the device. `params` is a CudaParams (shared by the executors of
    one network) or a dict of host arrays to upload."""

    def __init__(self, program: Program, params: CudaParams | Mapping[str, np.ndarray],
                 settings: SgdSettings | None = None, dev: Device | None = None,
                 seed: int = 0, source: str = "program") -> None:
        """`source` "program" compiles only the kernels this program launches (one nvcc
        run per distinct program, cached on disk); "full" compiles every kernel once per
        process, which pays when many programs run (tests, benchmarks)."""
        self.dev = dev or device()
        self.program = program
        self.net = program.plan.net
        self.state = params if isinstance(params, CudaParams) else CudaParams(self.dev, params)
        self.settings = settings or SgdSettings()
        self._check_types()
        arena = plan_arena(program)
        self.kernels = self.dev.kernels(build.full_source() if source == "full"
                                        else build.program_source(program))
        self.arena_memory = self.dev.alloc(arena.size, "the activations")
        self.layout = self._layout(arena)
        check(lambda: self.dev._cuda.memcpy_htod(
            self.layout.counter, np.array([seed * 1_000_003], np.uint64)), "seeding")
        self.segments = step_plan.segment_table(program, self.layout, self.settings)
        self._upload_segments()
        self.stream = check(self.dev._cuda.Stream, "creating a stream")
        self._lists: dict[tuple, list[step_plan.Planned]] = {}
        self._dp_steps: dict[tuple, step_plan.DataParallelStep] = {}
        self.copy_stream = None     # made by the first data-parallel step
        self.timing = CudaTiming(arena_bytes=arena.size,
                                 state_bytes=self.state.nbytes + self.scratch_bytes)

    def _check_types(self) -> None:
        """The kernels run float32; integer tensors may only be labels or flags. An op
        without cuda kernels (MultiBoxLoss: its matching runs on the host) is refused."""
        table.require_kernels(self.net)
        for layer in self.net.layers:
            op = registry.OPS[layer.op]
            for e in layer.inputs:
                t = self.net.tensor_type(e.src)
                if t.dtype != "f32" and (op.port_for(e.index).differentiable
                                         or op.role == "layer"):
                    raise BwError(layer.span, f"'{layer.name}' reads '{e.src}' of type "
                                  f"{t.dtype}; the cuda target runs float32 tensors")

    def _layout(self, arena) -> step_plan.Layout:
        """The second allocation: scaled sums and a per-use temporary for parameters whose
        uses disagree on their multipliers, the split-K workspace, the step counter and the
        optimizer's segment table."""
        s = self.state
        sizes = {p: s.size(p) for p in s.offsets}
        needs = step_plan.scratch_needs(self.program, sizes, self.dev.sm_count)
        self._segments_room = update.SEGMENT.itemsize * max(1, len(self.program.plan.updates))
        parts = [("scaled", 4 * needs.scaled_elems), ("tmp", 4 * needs.tmp_elems),
                 ("workspace", needs.workspace_bytes), ("counter", 8),
                 ("segments", self._segments_room)]
        offsets, at = {}, 0
        for name, nbytes in parts:
            offsets[name] = at
            at += -(-nbytes // 256) * 256
        self.scratch_bytes = at
        self.scratch = self.dev.alloc(at, "the workspace")
        base = int(self.scratch)
        return step_plan.Layout(
            arena, int(self.arena_memory), s.offsets, sizes, s.params_base, s.grads_base,
            s.velocity_base, needs.scaled_offsets, base + offsets["scaled"],
            base + offsets["tmp"], base + offsets["workspace"], needs.workspace_bytes,
            base + offsets["counter"], base + offsets["segments"], self.dev.sm_count)

    def _upload_segments(self) -> None:
        if self.segments.nbytes > self._segments_room:
            raise InternalError("the optimizer's segment table outgrew its room")
        if self.segments.nbytes:
            check(lambda: self.dev._cuda.memcpy_htod(self.layout.segments, self.segments),
                  "uploading the update table")

    def set_optimizer(self, settings: SgdSettings) -> None:
        """New optimizer settings: the update launch and the segments change (a parameter
        that only decays is updated only with a weight decay)."""
        self.settings = settings
        self.segments = step_plan.segment_table(self.program, self.layout, settings)
        self._upload_segments()
        self._lists.clear()
        self._dp_steps.clear()

    # ---- running -----------------------------------------------------------------------
    def _planned(self, training: bool, backward: bool) -> list[step_plan.Planned]:
        key = (training, backward)
        if key not in self._lists:
            self._lists[key] = step_plan.step_launches(self.program, self.layout,
                                                       self.settings, self.segments,
                                                       training, backward)
        return self._lists[key]

    def _upload_batch(self, batch: Mapping[str, np.ndarray]) -> None:
        cuda = self.dev._cuda
        for inp in self.net.inputs:
            host = np.ascontiguousarray(batch[inp.name], dtype=numpy_dtype(inp.type.dtype))
            if host.nbytes != inp.type.nbytes:
                raise BwError(Span.synthetic("batch"), f"input '{inp.name}' has shape "
                              f"{list(host.shape)}, this program expects "
                              f"{list(inp.type.shape)}")
            check(lambda: cuda.memcpy_htod(self.layout.addr(value(inp.name)), host),
                  "copying the batch")

    def _replay(self, planned) -> dict:
        """Launch the step's kernels; an event after each phase for the per-phase times."""
        marks = {}
        for i, item in enumerate(planned):
            for launch in item.launches:
                check(lambda: self.kernels.launch(launch, self.stream),
                      f"launching {launch.kernel} ({item.phase} {item.layer})")
            phase = _PHASE_OF.get(item.phase)
            if i + 1 == len(planned) or _PHASE_OF.get(planned[i + 1].phase) != phase:
                marks[phase] = self.dev._cuda.Event()
                marks[phase].record(self.stream)
        return marks

    def run(self, batch: Mapping[str, np.ndarray], training: bool = True,
            forward_only: bool = False) -> StepResult:
        """One step: the forward and, unless forward_only, the planned backward and the
        parameter update, all on the device; then the losses and metrics come back."""
        cuda = self.dev._cuda
        backward = not forward_only
        planned = self._planned(training, backward)
        self._upload_batch(batch)
        start, end = cuda.Event(), cuda.Event()
        start.record(self.stream)
        marks = self._replay(planned)
        end.record(self.stream)
        check(end.synchronize, "running the step")
        values, hosts = {}, {}
        for name in [n for n, _ in self.program.losses] + list(self.program.metrics):
            # a weighted layer that is not a loss joins the objective with its sum
            host = np.empty(self.net.layer(name).out.shape, np.float32)
            check(lambda: cuda.memcpy_dtoh(host, self.layout.addr(value(name))), "reading " + name)
            values[name], hosts[name] = float(np.sum(host, dtype=np.float64)), host
        stats = self._stats(backward)
        if hasattr(stats, "seconds"):
            before = start
            for phase in ("forward", "backward", "update"):
                if phase in marks:
                    stats.seconds[phase] = 1e-3 * marks[phase].time_since(before)
                    before = marks[phase]
        per_phase: dict[str, int] = {}
        for item in planned:
            per_phase[item.phase] = per_phase.get(item.phase, 0) + len(item.launches)
        self.timing = CudaTiming(end.time_since(start), sum(per_phase.values()),
                                 self.layout.arena.size,
                                 self.state.nbytes + self.scratch_bytes, per_phase)
        losses = {n: values[n] for n, _ in self.program.losses}
        metrics = metrics_of(self.program.metrics, hosts)
        loss = sum(w * losses[n] for n, w in self.program.losses)
        # the metrics as arrays too (a vector metric whole), for a forward's outputs
        return StepResult(loss, losses, metrics, stats,
                          {n: hosts[n] for n in self.program.metrics})

    def _stats(self, backward: bool) -> StepStats:
        """What ran, counted as the CPU executor counts it: one launch per component."""
        stats = StepStats()
        steps = self.program.forward + (self.program.backward if backward else ())
        for step in steps:
            stats.launched[step.phase] += 1
            stats.flops[step.phase] += step.flops
            stats.kernels.append((step.phase, step.layer, str(step.component)))
        if backward:
            # one per parameter, as the host optimizer counts (a partly frozen one has a
            # segment per trainable range)
            stats.launched["update"] = update.updated_params(self.program,
                                                             self.settings.weight_decay)
            stats.flops["update"] = 4 * int(self.segments["size"].sum()) if len(
                self.segments) else 0
        stats.peak_bytes = self.layout.arena.size
        if hasattr(stats, "after_forward_bytes"):
            end = len(self.program.forward)
            stats.after_forward_bytes = sum(b.nbytes for b in self.layout.arena.buffers.values()
                                            if b.first <= end < b.last)
        return stats

    # ---- the device side of a data-parallel step (bwplan/runtime/cuda_exchange.py) ------
    def data_parallel_step(self, buckets, seed_scale: Mapping[str, float]):
        key = (buckets.layout(), tuple(sorted(seed_scale.items())))
        found = self._dp_steps.get(key)
        if found is None:
            found = self._dp_steps[key] = step_plan.data_parallel_step(
                self.program, self.layout, self.settings, self.segments, buckets, True,
                seed_scale)
        return found

    def upload_batch(self, batch: Mapping[str, np.ndarray]) -> None:
        self._upload_batch(batch)

    def launch(self, item: step_plan.Planned) -> None:
        for launch in item.launches:
            check(lambda: self.kernels.launch(launch, self.stream),
                  f"launching {launch.kernel} ({item.phase} {item.layer})")

    def copy_out(self, transfers, hosts):
        """Queue a bucket's device -> host copies on the copy stream, behind everything the
        compute stream holds now. The host arrays are pageable (the bucket buffers MPI
        reads), so the driver stages them and a call returns once its copy is done."""
        cuda = self.dev._cuda
        if self.copy_stream is None:
            self.copy_stream = check(cuda.Stream, "creating the copy stream")
        written = cuda.Event()
        written.record(self.stream)
        self.copy_stream.wait_for_event(written)
        for t, host in zip(transfers, hosts):
            check(lambda: cuda.memcpy_dtoh_async(host.reshape(-1)[:t.elems], t.device,
                                                 self.copy_stream),
                  f"copying the gradient of {t.param} to the host")
        done = cuda.Event()
        done.record(self.copy_stream)
        return done

    def copied(self, marker) -> bool:
        return bool(check(marker.query, "waiting for a gradient bucket"))

    def finish_compute(self) -> StepResult:
        """Wait for the backward; the losses and metrics come back."""
        check(self.stream.synchronize, "running the step")
        cuda = self.dev._cuda
        losses, hosts = {}, {}
        for name in [n for n, _ in self.program.losses] + list(self.program.metrics):
            host = np.empty(self.net.layer(name).out.shape, np.float32)
            check(lambda: cuda.memcpy_dtoh(host, self.layout.addr(value(name))), "reading " + name)
            losses[name], hosts[name] = float(np.sum(host, dtype=np.float64)), host
        loss_values = {n: losses[n] for n, _ in self.program.losses}
        loss = sum(w * loss_values[n] for n, w in self.program.losses)
        return StepResult(loss, loss_values, metrics_of(self.program.metrics, hosts),
                          self._stats(True), {n: hosts[n] for n in self.program.metrics})

    def copy_in(self, transfers, hosts) -> None:
        cuda = self.dev._cuda
        for t, host in zip(transfers, hosts):
            check(lambda: cuda.memcpy_htod_async(t.device, host.reshape(-1)[:t.elems],
                                                 self.stream),
                  f"copying the summed gradient of {t.param} to the device")

    def read_params(self, names) -> dict[str, np.ndarray]:
        check(self.stream.synchronize, "running the step")
        return self.state._download(self.state.params_base, names)

    def write_params(self, values: Mapping[str, np.ndarray]) -> None:
        self.state.upload(values)

    def synchronize(self) -> None:
        check(self.stream.synchronize, "updating the parameters")

    def grads(self) -> dict[str, np.ndarray]:
        """The gradients the last step computed, summed over uses, by parameter."""
        return self.state.download_grads(sorted({s.param for s in self.program.backward
                                                 if s.phase == "dw"}))


# ---- the target ------------------------------------------------------------------------
class CudaTarget:
    """The "cuda" target behind `CompiledNet` (runtime/target.py): the parameters live on
    the device (one CudaParams shared by the executors of every batch size); after a step
    the gradients and the updated parameters come back, so that the host view stays
    current. The update runs on the device, so the host optimizer's kernel is None and
    only its settings are read."""

    name = "cuda"
    update_kernel = None

    def __init__(self, initial, seed: int = 0) -> None:
        self.params: dict[str, np.ndarray] = initial()
        self.state = CudaParams(device(), self.params)
        self.settings = SgdSettings()
        self.seed = seed   # seeds each executor's dropout counter
        self._prepared: list[CudaExecutor] = []
        # the host side of data parallelism: arrays DataParallel points at its buckets
        self._grads: dict[str, np.ndarray] = {}
        self._scaled: dict[str, np.ndarray] = {}
        self._last_dp = None

    @classmethod
    def check_net(cls, net) -> None:
        """Every net that plans lowers (a partly frozen parameter's dW and update run over
        its trainable rows); what a kernel cannot take is refused when its launches are
        planned, with the layer's span."""

    def prepare(self, program: Program) -> CudaExecutor:
        executor = CudaExecutor(program, self.state, self.settings, seed=self.seed)
        self._prepared.append(executor)
        return executor

    def step(self, prepared: CudaExecutor, batch, optimizer, *, seed: int, given, capture,
             prefix_skip, data_parallel):
        """Forward, backward and update all run on the device (the per-step `seed` is the
        host's: the device counts its own dropout steps from the target's seed)."""
        if given or capture:
            raise BwError(Span.synthetic("cuda"), "the cuda target keeps the frozen prefix "
                          "on the device: --cache-frozen is a cpu-target option")
        if data_parallel is not None:
            return self._data_parallel_step(prepared, batch, data_parallel)
        result = prepared.run(batch)
        grads = prepared.grads()
        self.params.update(self.state.download())
        return result, grads

    def _data_parallel_step(self, prepared: CudaExecutor, batch, dp):
        """The step of bwplan/runtime/cuda_exchange.py: the buckets' gradients come to the
        host arrays `dp.begin` points at them, are summed there, and go back for the
        device's update; the host view of the parameters is current afterwards. Returns
        the summed gradients of the parameters that travel."""
        from bwplan.runtime import cuda_exchange
        hooks = dp.begin(prepared.program, self._grads, self._scaled)
        step = prepared.data_parallel_step(dp.bucket_plan(prepared.program),
                                           hooks["seed_scale"])
        self._last_dp = (prepared, step)
        result = cuda_exchange.train_step(prepared, dp, step, batch, self._grads,
                                          self._scaled, self.params)
        self.params.update(self.state.download())
        return result, self._sent(dp)

    def _empty_update(self, dp, result):
        """A rank without samples this step: its zero buckets join the all-reduce, and the
        device's update runs with the sums (the last prepared executor of this program)."""
        from bwplan.runtime import cuda_exchange
        prepared, step = self._last_dp
        result = cuda_exchange.apply_update(prepared, dp, step, self._grads, self._scaled,
                                            self.params, result)
        self.params.update(self.state.download())
        return result, update.updated_params(prepared.program, self.settings.weight_decay)

    def _sent(self, dp) -> dict[str, np.ndarray]:
        """Each travelling gradient's host array (the lr-weighted sum where that travels)."""
        return {e.param: (self._grads if e.source == "grads" else self._scaled)[e.param]
                for b in dp.bucket_plan().buckets for e in b.entries}

    def forward(self, prepared: CudaExecutor, batch, training: bool, seed: int, outputs):
        result = prepared.run(batch, training, forward_only=True)
        known = {**result.losses, **result.values}
        if outputs and set(outputs) - set(known):
            raise BwError(Span.synthetic("cuda"), "the cuda target returns losses and "
                          "metrics only; use the cpu target to read other layers")
        return {n: np.asarray(v) for n, v in known.items()}

    def set_optimizer(self, settings: SgdSettings) -> None:
        self.settings = settings
        for executor in self._prepared:
            executor.set_optimizer(settings)

    def load_weights(self, path: str, rename, skip, strict: bool) -> dict[str, str]:
        """Into the host view, then onto the device."""
        loaded = load_into(self.params, path, rename, skip, strict)
        self.state.upload(self.params)
        return loaded

    def save_weights(self, path: str) -> None:
        save_weights(path, self.params)   # the host view is current after every step

    def forget(self) -> None:
        self._prepared.clear()

    def gradient_stores(self) -> GradientStores:
        """The host arrays a data-parallel step copies the gradient buckets into (the
        device's own gradients stay on the device); the update runs on the device."""
        return GradientStores(self._grads, self._scaled, self._empty_update)
