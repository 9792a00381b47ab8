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

import numpy as np

from bwplan import ops as registry
from bwplan.lower.program import BufferId, Program, aux as aux_id, grad, value
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

    # ---- helpers -----------------------------------------------------------------------
    def _params_of(self, layer, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {u.slot: params[u.param] for u in layer.params}

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

        for pos, step in enumerate(program.forward):
            if step.layer in skip:
                continue
            layer = net.layer(step.layer)
            out = self._alloc(layer.out)
            ctx = self._ctx[layer.name]
            op = registry.OPS[layer.op]
            aux = {a: self._alloc(op.aux_spec(a).type(ctx)) for a in step.aux} \
                if not forward_only else {}
            rng = None if op.is_deterministic(layer.attrs) else np.random.default_rng(
                [seed, pos])
            self._kernels[layer.op, FWD](ctx, [values[s] for s in step.reads],
                                           self._params_of(layer, params), out, aux, training,
                                           rng)
            values[step.target] = out
            for a, buf in aux.items():
                values[aux_id(layer.name, a)] = buf
            stats.launched["fwd"] += 1
            stats.flops["fwd"] += step.flops
            stats.kernels.append(("fwd", layer.name, "fwd"))
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
        for i, step in enumerate(program.backward):
            layer = net.layer(step.layer)
            ctx = self._ctx[layer.name]
            saved = {}
            for s in step.saved:
                if s.param:
                    saved[s.need] = params[s.param]
                elif s.variadic:
                    saved[s.need] = [values[b] for b in s.buffers]
                else:
                    saved[s.need] = values[s.buffers[0]]
            dout = values[step.dout]
            kernel = self._kernels[layer.op, step.component]
            if step.phase == "dx":
                out_type = program.buffer(step.scratch if step.accumulate else step.target).type
                buf = self._alloc(out_type)
                kernel(ctx, saved, dout, step.index, buf)
                if step.accumulate:
                    values[step.target] += buf
                    pool.release(buf)
                else:
                    values[step.target] = buf
            else:
                self._dw(step, kernel, ctx, saved, dout, params, grads, scaled)
            stats.launched[step.phase] += 1
            stats.flops[step.phase] += step.flops
            stats.kernels.append((step.phase, layer.name, str(step.component)))
            for b in step.frees:
                if b in values and b not in caller:
                    pool.release(values.pop(b))
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
