"""The training loop behind `bwplan train`: epochs of `CompiledNet.step`, validation with the
net's metrics, gradual unfreezing (re-planning at each stage, reusing compiled kernels),
and the frozen-prefix cache (computing a deterministic frozen prefix once per sample).

It sits below the API: it reads a compiled net only through `Trainable`, the part of
`bwplan.api.CompiledNet` a training loop needs, and never imports bwplan.api."""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from bwplan.ir.net import Net
from bwplan.lower.program import Program
from bwplan.plan.plan import Plan
from bwplan.runtime.compiling import seconds_so_far
from bwplan.runtime.checks import check_step
from bwplan.runtime.data import Dataset
from bwplan.runtime.executor import StepResult
from bwplan.runtime.metrics import metrics_of
from bwplan.runtime.optimizer import Sgd


class Trainable(Protocol):
    """What the loop reads and calls on a compiled net (bwplan.api.CompiledNet is one)."""

    net: Net
    plan: Plan
    program: Program
    rules: list[tuple[str, str]]
    optimizer: Sgd
    grads: dict[str, np.ndarray]
    last_program: Program | None
    last_cached: bool
    steps_taken: int

    def replan(self, rules: list[tuple[str, str]]) -> None: ...

    def run_step(self, batch: Mapping[str, np.ndarray], given=None,
                 capture: tuple[str, ...] = ()) -> StepResult: ...

    def forward(self, batch: Mapping[str, np.ndarray], outputs=None,
                training: bool = False) -> dict[str, np.ndarray]: ...


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    seconds: float
    samples: int
    val_loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    rules: tuple = ()
    # (stats, program, cached) of the epoch's last full-size batch, for --profile: a
    # partial last batch would report other counts and sizes
    full_step: tuple | None = None
    compile_seconds: float = 0.0   # of `seconds`, spent compiling kernels (a first run)


@dataclass
class PrefixCache:
    """Boundary tensors of the frozen prefix, by sample index; valid while the frozen set
    (hence the prefix) stays the same."""

    layers: tuple[str, ...]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    filled: np.ndarray | None = None

    def ensure(self, size: int, values: dict[str, np.ndarray]) -> None:
        for name, v in values.items():
            if name not in self.tensors:
                self.tensors[name] = np.empty((size,) + v.shape[1:], v.dtype)
        if self.filled is None:
            self.filled = np.zeros(size, bool)


def unfreeze_units(prog: Trainable) -> list[str]:
    """The units gradual unfreezing thaws, from the top of the net down: block instances
    (layers named `<instance>/...`) and single parameterised layers, in reverse
    topological order of their last layer."""
    units: list[str] = []
    for layer in reversed(prog.net.layers):
        if not layer.params:
            continue
        unit = layer.name.split("/", 1)[0] + "/*" if "/" in layer.name else layer.name
        if unit not in units:
            units.append(unit)
    return units


def train(prog: Trainable, data: Dataset, epochs: int, batch: int, seed: int = 0,
          cache_frozen: bool = False, unfreeze_every: int = 0,
          schedule: dict[int, list[tuple[str, str]]] | None = None,
          on_batch: Callable[[int, int, int, float, float], None] | None = None,
          on_epoch: Callable[[EpochRecord], None] | None = None,
          on_stage: Callable[[int, list[tuple[str, str]]], None] | None = None
          ) -> list[EpochRecord]:
    """on_stage(epoch, new_rules) is called when gradual unfreezing or the schedule changes
    the freezing rules, before that epoch's first step."""
    rng = np.random.default_rng(seed)
    history: list[EpochRecord] = []
    thaw = [u for u in unfreeze_units(prog) if _is_frozen(prog, u)] if unfreeze_every else []
    cache: PrefixCache | None = None
    for epoch in range(1, epochs + 1):
        before = list(prog.rules)
        changed = _stage(prog, epoch, unfreeze_every, thaw, schedule or {})
        if changed and on_stage:
            on_stage(epoch, prog.rules[len(before):])
        if changed or cache is None:
            cache = PrefixCache(prog.plan.prefix.layers) if cache_frozen and \
                prog.plan.prefix.cacheable and prog.plan.prefix.layers else None
        start, compiled_before = time.perf_counter(), seconds_so_far()
        total, seen = 0.0, 0
        full_step = None
        nbatches = -(-data.size // batch)
        for k, (idx, b) in enumerate(data.batches(batch, rng)):
            given = None
            if cache is not None and cache.filled is not None and cache.filled[idx].all():
                given = {n: t[idx] for n, t in cache.tensors.items()}
                result = prog.run_step(b, given=given)
            elif cache is not None:
                result = prog.run_step(b, capture=prog.plan.prefix.boundary)
                cache.ensure(data.size, result.values)
                for n, v in result.values.items():
                    cache.tensors[n][idx] = v
                cache.filled[idx] = True
            else:
                result = prog.run_step(b)
            if len(idx) == batch or full_step is None:
                full_step = (result.stats, prog.last_program, prog.last_cached)
            check_step(result.loss, prog.grads, epoch, prog.steps_taken,
                       prog.optimizer.settings.lr)
            total += result.loss * len(idx)
            seen += len(idx)
            if on_batch:
                running = time.perf_counter() - start - (seconds_so_far() - compiled_before)
                on_batch(epoch, k + 1, nbatches, total / seen, seen / max(1e-9, running))
        record = EpochRecord(epoch, total / max(1, seen), time.perf_counter() - start, seen,
                             rules=tuple(prog.rules), full_step=full_step,
                             compile_seconds=seconds_so_far() - compiled_before)
        if data.val:
            record.val_loss, record.metrics = evaluate(prog, data.val, batch, data.whole)
        history.append(record)
        if on_epoch:
            on_epoch(record)
    return history


def evaluate(prog: Trainable, arrays: dict[str, np.ndarray], batch: int,
             whole: frozenset[str] = frozenset()) -> tuple[float, dict[str, float]]:
    """Loss and metrics over a data split, weighted by batch size, in inference mode; the
    arrays named in `whole` (unbatched inputs) go whole with every batch."""
    n = len(next(v for k, v in arrays.items() if k not in whole))
    losses = dict(prog.program.losses)
    metrics = list(prog.program.metrics)
    names = list(losses) + metrics
    sums = dict.fromkeys(losses, 0.0)
    metric_sums: dict[str, float] = {}
    for start in range(0, n, batch):
        b = {k: v if k in whole else v[start:start + batch] for k, v in arrays.items()}
        out = prog.forward(b, outputs=names)
        size = min(batch, n - start)
        for name in losses:
            sums[name] += float(out[name]) * size
        for key, v in metrics_of(metrics, out).items():
            metric_sums[key] = metric_sums.get(key, 0.0) + v * size
    loss = sum(w * sums[nm] / n for nm, w in losses.items())
    return loss, {key: total / n for key, total in metric_sums.items()}


def _is_frozen(prog: Trainable, unit: str) -> bool:
    import fnmatch
    layers = [l for l in prog.net.layers if fnmatch.fnmatchcase(l.name, unit)]
    return any(u.lr_mult == 0 and prog.net.params[u.param].learnable
               for l in layers for u in l.params)


def _stage(prog: Trainable, epoch: int, every: int, thaw: list[str],
           schedule: dict[int, list[tuple[str, str]]]) -> bool:
    """Apply this epoch's freezing changes; True when the plan changed."""
    rules = list(prog.rules)
    if every and epoch > 1 and (epoch - 1) % every == 0:
        stage = (epoch - 1) // every
        if stage <= len(thaw):
            rules.append(("unfreeze", thaw[stage - 1]))
    rules.extend(schedule.get(epoch, []))
    if rules == prog.rules:
        return False
    prog.replan(rules)
    return True
