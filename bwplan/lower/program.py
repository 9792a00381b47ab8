"""A Program: the static schedule of one training step.

The forward steps run in topological order; the backward steps hold only the dX and dW
components the plan kept (or, unpruned, every component a fully trainable net would run),
in reverse topological order; each step says which buffers die after it. The optimizer
step follows the plan's parameter updates. A Program is target-neutral: a step names its
kernel by component, and each target maps components to its own kernels.

Buffer names: a tensor's name for activations, "<layer>:<aux>" for aux buffers,
"d:<tensor>" for the gradient of a tensor.
"""
from __future__ import annotations

from dataclasses import dataclass

from bwplan.plan.plan import Plan


@dataclass(frozen=True, slots=True)
class Step:
    phase: str                 # "fwd" | "dx" | "dw"
    layer: str
    component: str             # "fwd", "dx:<port>", "dw:<slot>"
    index: int = -1            # dX: the input position
    param: str = ""            # dW: the parameter this use writes
    scale: float = 1.0         # dW: this use's lr multiplier
    target: str = ""           # the buffer written ("<layer>", "d:<src>", or a param name)
    accumulate: bool = False   # add to a gradient an earlier step already wrote
    aux: tuple[str, ...] = ()  # fwd: aux buffers to produce (only those a backward reads)
    reads: tuple[str, ...] = ()  # buffers read: forward values, and "d:<layer>" for dX/dW
    flops: int = 0
    frees: tuple[str, ...] = ()  # buffers dead after this step


@dataclass(frozen=True, slots=True)
class Seed:
    """Where the backward starts: d(loss)/d(layer output) = weight."""

    layer: str
    weight: float


@dataclass(frozen=True)
class Program:
    plan: Plan
    pruned: bool
    forward: tuple[Step, ...]
    backward: tuple[Step, ...]
    seeds: tuple[Seed, ...]
    kept: frozenset[str]             # forward values that survive the forward
    losses: tuple[tuple[str, float], ...]   # (layer, weight) of every loss term
    metrics: tuple[str, ...]
    # parameters whose uses carry different lr multipliers need the scaled sum separately
    mixed_scale: frozenset[str]

    @property
    def components(self) -> tuple[Step, ...]:
        return self.forward + self.backward

    def flops(self, phase: str) -> int:
        return sum(s.flops for s in self.components if s.phase == phase)

    def launches(self, phase: str) -> int:
        return sum(1 for s in self.components if s.phase == phase)
