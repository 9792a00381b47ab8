"""Runs a Program: the forward steps, the seeded backward steps, and nothing else.

The executor owns no parameters; it reads them from, and writes gradients to, dicts the
caller passes. Every buffer it uses comes from a BufferPool and goes back after the step
that last reads it, so the measured peak of live bytes is comparable with the plan's
static estimate. Each step also counts what it launched and the FLOPs it executed, per
component, which is how a run proves that skipped work was skipped.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from bwplan import ops as registry
from bwplan.lower.program import BufferId, Program, Step, aux as aux_id, grad, value
from bwplan.ops.needs import FWD
from bwplan.plan.components import op_ctx
from bwplan.runtime.slices import by_rows
from bwplan.runtime.backend import numpy_dtype
from bwplan.runtime.metrics import metrics_of
from bwplan.runtime.pool import BufferPool


@dataclass
class StepStats:
    """What one step executed. `launched` and `flops` are keyed by phase (fwd, dx, dw,
    update); `kernels` lists (phase, layer, component) in execution order."""

    launched: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("fwd", "dx", "dw", "update"), 0))
    flops: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("fwd", "dx", "dw", "update"), 0))
    kernels: list[tuple[str, str, str]] = field(default_factory=list)
    # (layer, component) of the components computed inside another step's pass (counted in
    # `launched` and `kernels` all the same: their gradient or output was computed, their
    # FLOPs done): bias gradients in a dX pass, epilogue ops in their producer's write
    fused: list[tuple[str, str]] = field(default_factory=list)
    peak_bytes: int = 0
    fresh_allocations: int = 0
    # wall-clock seconds of the forward, the backward and the update
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("forward", "backward", "update"), 0.0))
    # live bytes when the forward ends: the batch, the outputs and what the backward keeps
    after_forward_bytes: int = 0


@dataclass(frozen=True)
class StepResult:
    loss: float
    losses: dict[str, float]
    metrics: dict[str, float]
    stats: StepStats
    values: dict[str, np.ndarray] = field(default_factory=dict)   # captured outputs


class _Forward(NamedTuple):
    step: Step
    layer: str
    kernel: Callable
    ctx: object
    out: tuple                      # (shape, dtype) of the output
    aux: tuple                      # (name, (shape, dtype), buffer id) per aux produced
    deterministic: bool
    params: tuple[tuple[str, str], ...]   # (slot, parameter)
    pos: int
    label: tuple[str, str, str]     # StepStats.kernels' entry
    # an epilogue op (Step.applied_by) that runs nothing: its producer's kernel applied it
    applied: bool = False
    # the producer of an epilogue it applies: the epilogue layer's context, else None
    epilogue: object = None


class _Backward(NamedTuple):
    step: Step
    layer: str
    kernel: Callable
    ctx: object
    out: tuple | None               # dX: (shape, dtype) of what it writes; dW: None
    label: tuple[str, str, str]


def _shape_dtype(ttype) -> tuple[tuple[int, ...], np.dtype]:
    return tuple(ttype.shape), numpy_dtype(ttype.dtype)


class Executor:
    def __init__(self, program: Program, backend) -> None:
        self.program = program
        self.net = program.plan.net
        self.backend = backend
        self.pool = BufferPool()
        self._ctx = {l.name: op_ctx(self.net, l) for l in self.net.layers}
        self._kernels: dict[tuple[str, str], Callable] = {}
        self._scratch: dict[str, np.ndarray] = {}
        for step in program.components:
            op = self.net.layer(step.layer).op
            key = (op, step.component)
            if key not in self._kernels:
                self._kernels[key] = backend.kernel(op, step.component)
        # the bias gradients lowering paired with the dX step writing their d(out)
        # (Step.sum_of) that this backend computes in that step's pass: writer index ->
        # (its summing kernel, the parameter); and the paired dW steps, which then run nothing
        self._sums: dict[int, tuple[Callable, str]] = {}
        summing = getattr(backend, "channel_sum_kernel", None)
        for step in program.backward:
            if step.sum_of < 0 or summing is None:
                continue
            writer = program.backward[step.sum_of]
            kernel = summing(self.net.layer(writer.layer).op, writer.component)
            if kernel is not None:
                self._sums[step.sum_of] = (kernel, step.param)
        self._summed = frozenset(i for i, s in enumerate(program.backward)
                                 if s.sum_of in self._sums)
        # the epilogue steps (Step.applied_by) that this backend applies in their producer's
        # output write: producer index -> (its kernel that does, the epilogue's layer);
        # the other epilogue steps run their own kernel in place
        self._epilogues: dict[int, tuple[Callable, str]] = {}
        applying = getattr(backend, "epilogue_kernel", None)
        for step in program.forward:
            if step.applied_by < 0 or applying is None:
                continue
            producer = program.forward[step.applied_by]
            kernel = applying(self.net.layer(producer.layer).op, self.net.layer(step.layer).op)
            if kernel is not None:
                self._epilogues[step.applied_by] = (kernel, step.layer)
        self._forward = tuple(self._prepared_forward(pos, step)
                              for pos, step in enumerate(program.forward))
        self._backward_steps = tuple(self._prepared_backward(step) for step in program.backward)

    # ---- what every step needs, looked up once per program -------------------------------
    def _prepared_forward(self, pos: int, step) -> _Forward:
        layer = self.net.layer(step.layer)
        ctx = self._ctx[layer.name]
        op = registry.OPS[layer.op]
        aux = tuple((a, _shape_dtype(op.aux_spec(a).type(ctx)), aux_id(layer.name, a))
                    for a in step.aux)
        kernel, epilogue = self._kernels[layer.op, FWD], None
        if pos in self._epilogues:
            kernel, applied = self._epilogues[pos]
            epilogue = self._ctx[applied]
        return _Forward(step, layer.name, kernel, ctx,
                        _shape_dtype(layer.out), aux, op.is_deterministic(layer.attrs),
                        tuple((u.slot, u.param) for u in layer.params), pos,
                        ("fwd", layer.name, "fwd"), step.applied_by in self._epilogues,
                        epilogue)

    def _prepared_backward(self, step) -> _Backward:
        layer = self.net.layer(step.layer)
        out = None
        if step.phase == "dx":
            out = _shape_dtype(self.program.buffer(
                step.scratch if step.accumulate else step.target).type)
        return _Backward(step, layer.name, self._kernels[layer.op, step.component],
                         self._ctx[layer.name], out,
                         (step.phase, layer.name, str(step.component)))

    # ---- helpers -----------------------------------------------------------------------
    def _alloc(self, ttype) -> np.ndarray:
        return self.pool.acquire(ttype.shape, numpy_dtype(ttype.dtype))

    # ---- the step ----------------------------------------------------------------------
    def run(self, batch: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray],
            grads: dict[str, np.ndarray] | None = None,
            scaled: dict[str, np.ndarray] | None = None, training: bool = True,
            seed: int = 0, forward_only: bool = False,
            given: Mapping[str, np.ndarray] | None = None,
            skip: frozenset[str] = frozenset(), capture: tuple[str, ...] = (),
            after_step: Callable[[int], None] | None = None,
            seed_scale: Mapping[str, float] | None = None) -> StepResult:
        """One forward (and, unless forward_only, the planned backward). `grads` receives
        the gradient of each parameter that some dW step computed, summed over its uses;
        for the parameters in program.mixed_scale, `scaled` receives the sum of each use's
        lr multiplier times its gradient. `given` supplies tensors (a cached frozen prefix)
        so that the layers in `skip` are not run. `capture` names tensors to return (copied,
        since their buffers go back to the pool). `after_step(i)` is called after backward
        step i (data parallelism starts a bucket's all-reduce there); `seed_scale` multiplies
        the seed of each named loss (a rank's share of the global batch)."""
        program, pool, net = self.program, self.pool, self.net
        stats = StepStats()
        pool.live_bytes = 0
        pool.reset_peak()
        allocs0 = pool.allocations
        start = time.perf_counter()
        values: dict[BufferId, np.ndarray] = {}
        caller = set()
        for inp in net.inputs:
            values[value(inp.name)] = batch[inp.name]
            caller.add(value(inp.name))
            pool.count(batch[inp.name].nbytes)
        for name, array in (given or {}).items():
            values[value(name)] = array
            caller.add(value(name))
            pool.count(array.nbytes)
        kept_out = {value(n) for n in capture}

        acquire = pool.acquire
        for f in self._forward:
            step = f.step
            if f.layer in skip:
                continue
            if f.applied:   # its producer's kernel wrote this layer's output
                stats.fused.append((f.layer, "fwd"))
            else:
                # an epilogue op in place (Step.applied_by) overwrites its own target
                out = values[step.target] if step.applied_by >= 0 else acquire(*f.out)
                aux = {a: acquire(*spec) for a, spec, _ in f.aux} if not forward_only else {}
                rng = None if f.deterministic else np.random.default_rng([seed, f.pos])
                params_of = {slot: params[p] for slot, p in f.params}
                inputs = [values[s] for s in step.reads]
                if f.epilogue is None:
                    f.kernel(f.ctx, inputs, params_of, out, aux, training, rng)
                else:
                    f.kernel(f.ctx, inputs, params_of, out, aux, training, rng, f.epilogue)
                values[step.target] = out
                if aux:
                    for a, _, buf_id in f.aux:
                        values[buf_id] = aux[a]
            stats.launched["fwd"] += 1
            stats.flops["fwd"] += step.flops
            stats.kernels.append(f.label)
            for b in step.frees:
                if b in values and b not in caller and b not in kept_out:
                    pool.release(values.pop(b))

        stats.seconds["forward"] = time.perf_counter() - start
        stats.after_forward_bytes = pool.live_bytes
        captured = {n: values[value(n)].copy() for n in capture if value(n) in values}
        # a weighted layer that is not a loss op contributes the sum of its output
        losses = {n: float(np.sum(values[value(n)])) for n, _ in program.losses
                  if value(n) in values}
        metrics = metrics_of(program.metrics, {n: values[value(n)] for n in program.metrics
                                               if value(n) in values})
        loss = sum(w * losses[n] for n, w in program.losses if n in losses)

        if not forward_only:
            start = time.perf_counter()
            self._backward(values, params, {} if grads is None else grads,
                           {} if scaled is None else scaled, stats, caller, after_step,
                           seed_scale)
            stats.seconds["backward"] = time.perf_counter() - start
        for b in list(values):
            if b not in caller:
                pool.release(values.pop(b))
        stats.peak_bytes = pool.peak_bytes
        stats.fresh_allocations = pool.allocations - allocs0
        return StepResult(loss, losses, metrics, stats, captured)

    def _backward(self, values, params, grads, scaled, stats, caller, after_step=None,
                  seed_scale: Mapping[str, float] | None = None) -> None:
        program, pool, net = self.program, self.pool, self.net
        seed_scale = seed_scale or {}
        for seed in program.seeds:
            buf = self._alloc(net.layer(seed.layer).out)
            buf.fill(seed.weight * seed_scale.get(seed.layer, 1.0))
            values[grad(seed.layer)] = buf
        for i, b in enumerate(self._backward_steps):
            step, ctx = b.step, b.ctx
            saved = {}
            for sv in step.saved:
                if sv.param:
                    saved[sv.need] = params[sv.param]
                elif sv.variadic:
                    saved[sv.need] = [values[v] for v in sv.buffers]
                else:
                    saved[sv.need] = values[sv.buffers[0]]
            dout = values[step.dout]
            if i in self._summed:   # computed by the step that wrote its d(out)
                stats.fused.append(b.label[1:])
            elif b.out is not None:
                buf = pool.acquire(*b.out)
                if i in self._sums:
                    summing, p = self._sums[i]
                    if p not in grads:
                        grads[p] = np.empty_like(params[p])
                    summing(ctx, saved, dout, step.index, buf, grads[p])
                else:
                    b.kernel(ctx, saved, dout, step.index, buf)
                if step.accumulate:
                    values[step.target] += buf
                    pool.release(buf)
                else:
                    values[step.target] = buf
            else:
                self._dw(step, b.kernel, ctx, saved, dout, params, grads, scaled)
            stats.launched[step.phase] += 1
            stats.flops[step.phase] += step.flops
            stats.kernels.append(b.label)
            for f in step.frees:
                if f in values and f not in caller:
                    pool.release(values.pop(f))
            if after_step is not None:
                after_step(i)

    def _dw(self, step, kernel, ctx, saved, dout, params, grads, scaled) -> None:
        """Write (first use) or add (later uses) this use's gradient; for a parameter whose
        uses carry different lr multipliers, also keep the multiplier-weighted sum."""
        p = step.param
        if p not in grads:
            grads[p] = np.empty_like(params[p])
        rows = self.program.dw_rows(step)
        if rows:
            kernel = by_rows(kernel, rows)
        mixed = p in self.program.mixed_scale
        if not step.accumulate and not mixed:
            kernel(ctx, saved, dout, grads[p])
            return
        tmp = self._scratch.get(p)
        if tmp is None:
            tmp = self._scratch[p] = np.empty_like(params[p])
        kernel(ctx, saved, dout, tmp)
        if step.accumulate:
            grads[p] += tmp
        else:
            grads[p][...] = tmp
        if mixed:
            if not step.accumulate or p not in scaled:
                scaled[p] = np.multiply(tmp, step.scale, out=scaled.get(p))
            else:
                scaled[p] += step.scale * tmp
