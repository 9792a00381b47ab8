"""The launch list of one training step on the device, from a Program and a memory layout.

Every address of a step is static (the arena's offsets, the parameter buffers' offsets),
so the whole step is planned once: per forward step the op's forward launches, then the
seeds, per backward step its dX or dW launches (a dW of a parameter whose uses disagree
on their lr multipliers writes a temporary, then `grad_accumulate` adds it to the
gradient and to the scaled sum), the one SGD launch, and the step counter's advance.
The dW of a partly frozen parameter runs its kernel's sliced form over the trainable rows
(the GEMM over that slice of dY's channels) after zeroing the frozen rows of the gradient
it overwrites, as the CPU target leaves them; the SGD segments cover only the trainable
rows, so the frozen rows and their velocity are never written.
Under MPI, `data_parallel_step` cuts the same list for the gradient buckets: after which
launch each bucket is complete, and where its gradients sit on the device.
The runtime (bwplan/runtime/cuda.py) allocates the memory and replays this list; since
nothing here needs a GPU, the tests build it for every example on any machine and check
every launch against the device limits.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bwplan.errors import BwError, InternalError
from bwplan.kernels import cuda as table
from bwplan.kernels.cuda import update
from bwplan.lower.cuda_arena import Arena
from bwplan.kernels.cuda.limits import Env, Launch, CudaCannotRun, check
from bwplan.lower.program import BufferId, Program, Step, aux as aux_id, grad
from bwplan.plan.components import op_ctx
from bwplan.optim import SgdSettings


@dataclass(frozen=True)
class Layout:
    """Where everything of a step lives on the device (byte addresses; parameter offsets
    in elements of the three flat float32 buffers)."""

    arena: Arena
    arena_base: int
    param_offsets: Mapping[str, int]
    param_sizes: Mapping[str, int]
    params_base: int
    grads_base: int
    velocity_base: int
    scaled_offsets: Mapping[str, int]   # elements into the scaled-sum buffer
    scaled_base: int
    tmp: int
    workspace: int
    workspace_bytes: int
    counter: int
    segments: int
    sm_count: int

    def addr(self, buffer: BufferId) -> int:
        return self.arena_base + self.arena.buffers[buffer].offset

    def param(self, name: str) -> int:
        return self.params_base + 4 * self.param_offsets[name]

    def grad(self, name: str) -> int:
        return self.grads_base + 4 * self.param_offsets[name]

    def env(self, stream: int = 0) -> Env:
        return Env(self.sm_count, self.workspace, self.workspace_bytes, self.counter, stream)


@dataclass(frozen=True)
class Needs:
    """The scratch memory a program needs besides the arena and the parameters."""

    scaled_offsets: dict[str, int]
    scaled_elems: int
    tmp_elems: int
    workspace_bytes: int


def scratch_needs(program: Program, sizes: Mapping[str, int], sm_count: int) -> Needs:
    net = program.plan.net
    table.require_kernels(net)
    dw_params = {s.param for s in program.backward if s.phase == "dw"}
    mixed = sorted(p for p in program.mixed_scale if p in dw_params)
    offsets, total = {}, 0
    for p in mixed:
        offsets[p] = total
        total += sizes[p]
    env = Env(sm_count)
    workspace = 0
    # one workspace for every step that needs one (split-K dW, SSD's matching state), each
    # using it only during its own launches
    for step in program.components:
        layer = net.layer(step.layer)
        e = table.entry(layer.op, step.component.key)
        rows = program.dw_rows(step)
        need = e.rows_workspace if rows else e.workspace
        if need is not None:
            try:
                ctx = op_ctx(net, layer)
                workspace = max(workspace, need(ctx, rows, env) if rows else need(ctx, env))
            except CudaCannotRun as err:
                raise _cannot(layer, e, err) from None
    return Needs(offsets, total, max((sizes[p] for p in mixed), default=0), workspace)


# Symbolic bases of a layout built without a device: far apart, so any address computed
# from one stays recognisable, and aligned like real allocations.
HOST_BASE = 1 << 40


def host_layout(program: Program, param_sizes: Mapping[str, int], arena: Arena,
                sm_count: int) -> Layout:
    """A layout at symbolic addresses, to build and check a step's launches on a machine
    without a GPU (`bwplan compile --target cuda`, the tests)."""
    offsets, total = {}, 0
    for name, size in param_sizes.items():
        offsets[name] = total
        total += size
    needs = scratch_needs(program, param_sizes, sm_count)
    b = HOST_BASE
    return Layout(arena, b, offsets, dict(param_sizes), 2 * b, 3 * b, 4 * b,
                  needs.scaled_offsets, 5 * b, 6 * b, 7 * b, needs.workspace_bytes, 8 * b,
                  9 * b, sm_count)


def segment_table(program: Program, layout: Layout, settings: SgdSettings) -> np.ndarray:
    return update.update_segments(program, layout.param_offsets, layout.param_sizes,
                                  layout.scaled_offsets, settings.weight_decay)


@dataclass(frozen=True)
class Planned:
    phase: str                 # fwd, seed, dx, dw, update, counter
    layer: str
    launches: tuple[Launch, ...]


def _cannot(layer, e, err: Exception) -> BwError:
    return BwError(layer.span, f"the cuda target cannot run '{layer.name}' ({e.op} "
                   f"{e.component}): {err}")


def _launches(layer, e, *args) -> tuple[Launch, ...]:
    try:
        return tuple(table.launches(e, *args))
    except CudaCannotRun as err:
        raise _cannot(layer, e, err) from None


def _saved(layout: Layout, step: Step) -> dict:
    """Addresses of what the step's gradient rule reads, as lowering bound them."""
    saved = {}
    for s in step.saved:
        if s.param:
            saved[s.need] = layout.param(s.param)
        else:
            addrs = [layout.addr(b) for b in s.buffers]
            saved[s.need] = addrs if s.variadic else addrs[0]
    return saved


def _frozen_rows_zeroed(program: Program, layout: Layout, param: str, out: int,
                        rows: tuple[tuple[int, int], ...]) -> tuple[Launch, ...]:
    """Zero the rows of the gradient at `out` outside `rows` (the frozen ones), which the
    sliced dW does not write: what the CPU target's gradient holds there."""
    n = program.plan.net.params[param].type.shape[0]
    per_row = layout.param_sizes[param] // n
    gaps, at = [], 0
    for a, b in rows:
        if a > at:
            gaps.append((at, a))
        at = b
    if at < n:
        gaps.append((at, n))
    return tuple(update.fill(out + 4 * a * per_row, (b - a) * per_row, 0.0, layout.env())
                 for a, b in gaps)


def _dw(layer, e, ctx, saved, dout, out: int, accumulate: bool, rows, program: Program,
        layout: Layout, param: str) -> tuple[Launch, ...]:
    """A dW into `out`: the whole gradient, or only the trainable `rows` of a partly frozen
    parameter (the rest zeroed when this step overwrites `out`)."""
    env = layout.env()
    if not rows:
        return _launches(layer, e, ctx, saved, dout, out, accumulate, env)
    zeroed = () if accumulate else _frozen_rows_zeroed(program, layout, param, out, rows)
    try:
        return zeroed + tuple(table.rows_launches(e, ctx, saved, dout, out, accumulate,
                                                  rows, env))
    except CudaCannotRun as err:
        raise _cannot(layer, e, err) from None


def _backward(program: Program, layout: Layout, step: Step) -> tuple[Launch, ...]:
    net = program.plan.net
    layer = net.layer(step.layer)
    ctx = op_ctx(net, layer)
    e = table.entry(layer.op, step.component.key)
    saved, dout, env = _saved(layout, step), layout.addr(step.dout), layout.env()
    if step.phase == "dx":
        return _launches(layer, e, ctx, saved, dout, step.index, layout.addr(step.target),
                         step.accumulate, env)
    p = step.param
    rows = program.dw_rows(step)
    if p not in layout.scaled_offsets:
        return _dw(layer, e, ctx, saved, dout, layout.grad(p), step.accumulate, rows,
                   program, layout, p)
    return _dw(layer, e, ctx, saved, dout, layout.tmp, False, rows, program, layout, p) + (
        update.grad_accumulate(layout.tmp, layout.grad(p),
                               layout.scaled_base + 4 * layout.scaled_offsets[p],
                               layout.param_sizes[p], step.scale, step.accumulate, env),)


def step_launches(program: Program, layout: Layout, settings: SgdSettings,
                  segments: np.ndarray, training: bool, backward: bool,
                  seed_scale: Mapping[str, float] | None = None) -> list[Planned]:
    """The whole step, in order. Without `backward`: the forward alone (no aux buffers
    written, no update); the step counter advances either way. `seed_scale` multiplies a
    loss's seed (data parallelism: the shard's share of the global batch)."""
    seed_scale = seed_scale or {}
    net, out = program.plan.net, []
    for pos, step in enumerate(program.forward):
        layer = net.layer(step.layer)
        aux = {a: layout.addr(aux_id(layer.name, a)) for a in step.aux} if backward else {}
        params = {u.slot: layout.param(u.param) for u in layer.params}
        inputs = [layout.addr(s) for s in step.reads]
        out.append(Planned("fwd", layer.name, _launches(
            layer, table.entry(layer.op, "fwd"), op_ctx(net, layer), inputs, params,
            layout.addr(step.target), aux, training, layout.env(stream=pos))))
    if backward:
        for seed in program.seeds:
            n = net.layer(seed.layer).out.numel
            out.append(Planned("seed", seed.layer, (update.fill(
                layout.addr(grad(seed.layer)), n,
                seed.weight * seed_scale.get(seed.layer, 1.0), layout.env()),)))
        for step in program.backward:
            out.append(Planned(step.phase, step.layer, _backward(program, layout, step)))
        out.append(Planned("update", "", tuple(update.sgd_update(
            layout.params_base, layout.velocity_base, layout.grads_base, layout.scaled_base,
            layout.segments, segments, settings.lr, settings.momentum, settings.weight_decay,
            layout.env()))))
    out.append(Planned("counter", "", (update.advance_counter(layout.counter),)))
    for item in out:
        for launch in item.launches:
            check(launch)
    return out


# ---- the step of a data-parallel rank --------------------------------------------------------
@dataclass(frozen=True)
class Transfer:
    """One gradient's copy between the device and its host array in a bucket: the whole
    gradient (or the lr-weighted sum, `source` "scaled") at byte address `device`. A partly
    frozen gradient travels whole over PCIe; the host packs its trainable rows for MPI."""

    param: str
    source: str      # "grads" or "scaled", as the bucket entry says
    device: int
    elems: int


@dataclass(frozen=True)
class DataParallelStep:
    """A training step split where data parallelism needs it: `compute` (forward, seeds,
    backward; item i of it is launched in order), `ready` (after compute item i, the buckets
    whose last gradient it wrote: their copy-out starts there), each bucket's `transfers`
    (device -> host before the all-reduce, host -> device after it), and `update` (the SGD
    launch and the counter, after every bucket is back)."""

    compute: tuple[Planned, ...]
    ready: Mapping[int, tuple[int, ...]]
    transfers: tuple[tuple[Transfer, ...], ...]
    update: tuple[Planned, ...]


def bucket_transfers(buckets, layout: Layout) -> tuple[tuple[Transfer, ...], ...]:
    """Per bucket (bwplan/lower/buckets.py), where each of its gradients lives on the device."""
    out = []
    for b in buckets.buckets:
        moves = []
        for e in b.entries:
            if e.source == "scaled":
                addr = layout.scaled_base + 4 * layout.scaled_offsets[e.param]
            else:
                addr = layout.grad(e.param)
            moves.append(Transfer(e.param, e.source, addr, layout.param_sizes[e.param]))
        out.append(tuple(moves))
    return tuple(out)


def data_parallel_step(program: Program, layout: Layout, settings: SgdSettings,
                       segments: np.ndarray, buckets, training: bool,
                       seed_scale: Mapping[str, float]) -> DataParallelStep:
    """`step_launches` with a training backward, cut for the all-reduce of `buckets`."""
    planned = step_launches(program, layout, settings, segments, training, True, seed_scale)
    first = len(program.forward) + len(program.seeds)   # one item per backward step after
    cut = next(i for i, item in enumerate(planned) if item.phase in ("update", "counter"))
    if cut != first + len(program.backward):
        raise InternalError("the step's launch list does not hold one item per step")
    ready: dict[int, list[int]] = {}
    for b in buckets.buckets:
        ready.setdefault(first + b.ready_after, []).append(b.index)
    return DataParallelStep(tuple(planned[:cut]), {i: tuple(v) for i, v in ready.items()},
                            bucket_transfers(buckets, layout), tuple(planned[cut:]))
