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
from bwplan.lower.program import Program, Step
from bwplan.plan.components import op_ctx
from bwplan.runtime.backend import numpy_dtype
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
        self._saved_spec = {id(s): self._spec(s) for s in program.backward}
        self._scratch: dict[str, np.ndarray] = {}
        for step in program.components:
            op = self.net.layer(step.layer).op
            key = (op, step.component)
            if key not in self._kernels:
                self._kernels[key] = backend.kernel(op, step.component)

    # ---- helpers -----------------------------------------------------------------------
    def _spec(self, step: Step) -> list[tuple[str, str, object]]:
        """How to assemble a backward kernel's `saved` dict: (need, kind, source)."""
        layer = self.net.layer(step.layer)
        op = registry.OPS[layer.op]
        wrt = step.component.split(":", 1)[1]
        rule = op.grad_for(wrt)
        spec = []
        for need in rule.needs_for(layer.attrs):
            if need == "out":
                spec.append((need, "value", layer.name))
            elif need in op.port_names:
                port = next(p for p in op.ports if p.name == need)
                srcs = [e.src for e in layer.inputs if op.port_for(e.index).name == need]
                spec.append((need, "values" if port.variadic else "value",
                             srcs if port.variadic else srcs[0]))
            elif need in op.slot_names:
                use = layer.param_use(need)
                spec.append((need, "param", use.param))
            else:
                spec.append((need, "value", f"{layer.name}:{need}"))
        return spec

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
        values: dict[str, np.ndarray] = {}
        caller = set()
        for inp in net.inputs:
            values[inp.name] = batch[inp.name]
            caller.add(inp.name)
            pool.count(values[inp.name].nbytes)
        for name, value in (given or {}).items():
            values[name] = value
            caller.add(name)
            pool.count(value.nbytes)

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
            self._kernels[layer.op, "fwd"](ctx, [values[s] for s in step.reads],
                                           self._params_of(layer, params), out, aux, training,
                                           rng)
            values[layer.name] = out
            for a, buf in aux.items():
                values[f"{layer.name}:{a}"] = buf
            stats.launched["fwd"] += 1
            stats.flops["fwd"] += step.flops
            stats.kernels.append(("fwd", layer.name, "fwd"))
            for name in step.frees:
                if name in values and name not in caller and name not in capture:
                    pool.release(values.pop(name))

        stats.seconds["forward"] = time.perf_counter() - start
        stats.after_forward_bytes = pool.live_bytes
        captured = {n: values[n].copy() for n in capture if n in values}
        # a weighted layer that is not a loss op contributes the sum of its output
        losses = {n: float(np.sum(values[n])) for n, _ in program.losses if n in values}
        metrics = {n: float(values[n]) for n in program.metrics if n in values}
        loss = sum(w * losses[n] for n, w in program.losses if n in losses)

        if not forward_only:
            start = time.perf_counter()
            self._backward(values, params, {} if grads is None else grads,
                           {} if scaled is None else scaled, stats, caller, after_step,
                           seed_scale)
            stats.seconds["backward"] = time.perf_counter() - start
        for name in list(values):
            if name not in caller:
                pool.release(values.pop(name))
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
            values[f"d:{seed.layer}"] = buf
        for i, step in enumerate(program.backward):
            layer = net.layer(step.layer)
            ctx = self._ctx[layer.name]
            saved = {}
            for need, kind, source in self._saved_spec[id(step)]:
                if kind == "value":
                    saved[need] = values[source]
                elif kind == "values":
                    saved[need] = [values[s] for s in source]
                else:
                    saved[need] = params[source]
            dout = values[f"d:{layer.name}"]
            kernel = self._kernels[layer.op, step.component]
            if step.phase == "dx":
                src = layer.inputs[step.index].src
                if step.accumulate:
                    tmp = self._alloc(net.tensor_type(src))
                    kernel(ctx, saved, dout, step.index, tmp)
                    values[step.target] += tmp
                    pool.release(tmp)
                else:
                    buf = self._alloc(net.tensor_type(src))
                    kernel(ctx, saved, dout, step.index, buf)
                    values[step.target] = buf
            else:
                self._dw(step, kernel, ctx, saved, dout, params, grads, scaled)
            stats.launched[step.phase] += 1
            stats.flops[step.phase] += step.flops
            stats.kernels.append((step.phase, layer.name, step.component))
            for name in step.frees:
                if name in values and name not in caller:
                    pool.release(values.pop(name))
            if after_step is not None:
                after_step(i)

    def _dw(self, step, kernel, ctx, saved, dout, params, grads, scaled) -> None:
        """Write (first use) or add (later uses) this use's gradient; for a parameter whose
        uses carry different lr multipliers, also keep the multiplier-weighted sum."""
        p = step.param
        if p not in grads:
            grads[p] = np.empty_like(params[p])
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
