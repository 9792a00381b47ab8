"""A Program: the static schedule of one training step, and every buffer it uses.

The forward steps run in topological order; the backward steps hold only the dX and dW
components the plan kept (or, unpruned, every component a fully trainable net would run),
in reverse topological order; each step says which buffers die after it. The optimizer
step follows the plan's parameter updates. A Program is target-neutral: a step names its
kernel by component, and each target maps components to its own kernels.

Lowering decides, once, what every consumer reads: per backward step the buffer behind
each value its gradient rule needs (`Step.saved`), and the program's buffers with their
bytes and lifetimes (`Program.buffers`). The plan's peak figure, the CPU executor, the
CUDA arena and the CUDA launch planner read these; none of them derives them again.

Schedule positions: 0 holds the batch, 1..F the forward steps, F+1 the seeds, then one
position per backward step. A buffer is live from `first` to `last` inclusive: a step's
outputs are live at its position, and the buffers it frees die after it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Mapping, NamedTuple

from bwplan import ops as registry
from bwplan.ir.types import TensorType
from bwplan.ops.needs import Component
from bwplan.plan.plan import Plan
from bwplan.records import record


class BufferId(NamedTuple):
    """What a buffer holds: a tensor's value, a layer's aux buffer, a tensor's gradient,
    or the scratch an accumulating dX writes before adding it to the gradient. (A named
    tuple rather than a dataclass: lowering hashes tens of thousands of them per plan, and
    tuple hashing is what keeps re-planning a 1,000-layer net fast.)"""

    kind: str          # "value" | "aux" | "grad" | "scratch"
    tensor: str        # the tensor (input or layer output); aux: the layer
    part: str = ""     # aux: the aux buffer's name; scratch: the dX step writing it

    def __str__(self) -> str:
        if self.kind == "value":
            return self.tensor
        if self.kind == "aux":
            return f"{self.tensor}:{self.part}"
        if self.kind == "grad":
            return f"d:{self.tensor}"
        return f"d:{self.tensor}@{self.part}"


# lowering asks for the same ids many times per plan; the caches make that a dict lookup
@lru_cache(maxsize=None)
def value(tensor: str) -> BufferId:
    return BufferId("value", tensor)


@lru_cache(maxsize=None)
def aux(layer: str, name: str) -> BufferId:
    return BufferId("aux", layer, name)


@lru_cache(maxsize=None)
def grad(tensor: str) -> BufferId:
    return BufferId("grad", tensor)


@record
class Saved:
    """One value a backward step's gradient rule reads (`Need` bound to this net)."""

    need: str                           # the name in the rule's needs
    buffers: tuple[BufferId, ...] = ()  # forward values; several for a variadic port
    param: str = ""                     # a parameter slot: the parameter read
    variadic: bool = False              # the kernel receives a list


@record
class Buffer:
    id: BufferId
    type: TensorType
    first: int          # the first schedule position where it is live
    last: int           # the last position where it is live (inclusive)
    caller: bool = False   # the batch: the caller's memory, live for the whole step
    # an accumulating dX's temporary: needed only by a target whose dX kernels cannot add
    # to their output (the CPU's); a target that accumulates in place never allocates it
    scratch: bool = False

    @property
    def nbytes(self) -> int:
        return self.type.nbytes

    def overlaps_in_time(self, other: Buffer) -> bool:
        return self.first <= other.last and other.first <= self.last


@record
class Step:
    phase: str                 # "fwd" | "dx" | "dw"
    layer: str
    component: Component
    index: int = -1            # dX: the input position
    param: str = ""            # dW: the parameter this use writes
    scale: float = 1.0         # dW: this use's lr multiplier
    target: BufferId | None = None   # the buffer written (fwd, dX); dW writes `param`
    accumulate: bool = False   # add to a gradient an earlier step already wrote
    aux: tuple[str, ...] = ()  # fwd: aux buffers to produce (only those a backward reads)
    reads: tuple[BufferId, ...] = ()  # fwd: the inputs in order; backward: what it reads
    saved: tuple[Saved, ...] = ()     # backward: what its gradient rule receives
    dout: BufferId | None = None      # backward: the gradient of the layer's output
    scratch: BufferId | None = None   # an accumulating dX's temporary (see Buffer.scratch)
    flops: int = 0
    frees: tuple[BufferId, ...] = ()  # buffers dead after this step
    # dW of a bias (GradRule.channel_sum): the backward step that writes this layer's
    # d(out) whole, which nothing adds to later; a target whose kernel for that step can
    # sum its output per channel in the same pass computes this gradient there. -1: none
    sum_of: int = -1
    # fwd of an epilogue op (OpDef.epilogue): the forward step (its index in
    # Program.forward) that writes this layer's output buffer in place of its own, which
    # this step then transforms in place (it reads and writes its target). A target whose
    # kernel for that step can apply this op in its output write does so and runs nothing
    # here; any other runs this op in place. -1: an ordinary step
    applied_by: int = -1


@dataclass(frozen=True)
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
    kept: frozenset[BufferId]        # forward values that survive the forward
    losses: tuple[tuple[str, float], ...]   # (layer, weight) of every loss term
    metrics: tuple[str, ...]
    # parameters whose uses carry different lr multipliers need the scaled sum separately
    mixed_scale: frozenset[str]
    buffers: tuple[Buffer, ...] = ()
    positions: int = 0               # schedule positions (see the module docstring)
    _by_id: Mapping[BufferId, Buffer] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", MappingProxyType({b.id: b for b in self.buffers}))

    @property
    def components(self) -> tuple[Step, ...]:
        return self.forward + self.backward

    def buffer(self, id_: BufferId) -> Buffer:
        return self._by_id[id_]

    def flops(self, phase: str) -> int:
        return sum(s.flops for s in self.components if s.phase == phase)

    def dw_rows(self, step: Step) -> tuple[tuple[int, int], ...]:
        """The row blocks in which a target computes a dW step's gradient, one GEMM over
        dY's channels per block; () for the whole gradient in one. Only a partly frozen
        parameter whose rule splits by rows has blocks: the pruned program computes its
        trainable rows; the full program (the baseline) computes every row, cut at the same
        edges, so its trainable rows come from the same GEMMs and match the pruned run bit
        for bit. Every target's dW reads this one answer, as `Step.flops` counts it."""
        if step.phase != "dw":
            return ()
        param = self.plan.net.params[step.param]
        if not param.frozen_rows:
            return ()
        layer = self.plan.net.layer(step.layer)
        rule = registry.OPS[layer.op].grad_for(step.component.wrt)
        if rule is None or not rule.by_rows:
            return ()
        return param.trainable_rows() if self.pruned else param.row_blocks()

    def launches(self, phase: str) -> int:
        return sum(1 for s in self.components if s.phase == phase)

    def live_bytes(self, scratch: bool = True) -> list[int]:
        """Bytes live at each schedule position (without the scratch buffers: what a target
        whose dX kernels accumulate in place holds)."""
        delta = [0] * (self.positions + 1)
        for b in self.buffers:
            if scratch or not b.scratch:
                delta[b.first] += b.nbytes
                delta[b.last + 1] -= b.nbytes
        live, out = 0, []
        for d in delta[:-1]:
            live += d
            out.append(live)
        return out

    def peak_bytes(self, scratch: bool = True) -> int:
        return max(self.live_bytes(scratch), default=0)
