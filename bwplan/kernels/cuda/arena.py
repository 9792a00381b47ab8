"""Offsets of every buffer of a Program inside ONE device allocation.

The lifetimes follow the executor's schedule exactly (bwplan/runtime/executor.py): the
batch is live for the whole step; a forward step's output and aux buffers become live at
that step; the seeds after the forward; a dX that does not accumulate creates its
gradient buffer; every buffer dies after the step whose `frees` names it, or at the end
of the step. Two buffers may share bytes only if their lifetimes do not overlap.

Placement is greedy by size (largest first, each at the lowest offset that clears every
placed buffer it overlaps in time), the usual arena planner of inference runtimes; its
total is at least the peak of live bytes and, on the networks here, within a few percent
of it. Offsets are multiples of ALIGNMENT, what cudaMalloc guarantees, so every kernel
argument is as aligned as a fresh allocation would be.
"""
from __future__ import annotations

from dataclasses import dataclass

from bwplan import ops as registry
from bwplan.lower.program import Program
from bwplan.plan.components import op_ctx

ALIGNMENT = 256


@dataclass(frozen=True, slots=True)
class Buffer:
    name: str
    nbytes: int
    first: int       # the first schedule position where it is live
    last: int        # the last position where it is live (inclusive)
    offset: int = 0

    def overlaps_in_time(self, other: Buffer) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class Arena:
    buffers: dict[str, Buffer]
    size: int            # bytes of the one allocation
    peak_live: int       # the largest sum of live bytes at any position (a lower bound)
    positions: int       # schedule positions: 0 batch, forward steps, seeds, backward steps


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def lifetimes(program: Program) -> tuple[list[Buffer], int]:
    """Every buffer with its lifetime, and the number of schedule positions. Position 0
    holds the batch, 1..F the forward steps, F+1 the seeds, then the backward steps."""
    net = program.plan.net
    born: dict[str, tuple[int, int]] = {}
    died: dict[str, int] = {}
    caller = {i.name for i in net.inputs}
    for inp in net.inputs:
        born[inp.name] = (0, inp.type.nbytes)

    def free(names, pos):
        for name in names:
            if name in born and name not in died and name not in caller:
                died[name] = pos

    pos = 0
    for step in program.forward:
        pos += 1
        layer = net.layer(step.layer)
        born[layer.name] = (pos, layer.out.nbytes)
        ctx = op_ctx(net, layer)
        op = registry.OPS[layer.op]
        for a in step.aux:
            born[f"{layer.name}:{a}"] = (pos, op.aux_spec(a).nbytes(ctx))
        free(step.frees, pos)
    pos += 1
    for seed in program.seeds:
        born[f"d:{seed.layer}"] = (pos, net.layer(seed.layer).out.nbytes)
    for step in program.backward:
        pos += 1
        if step.phase == "dx" and not step.accumulate:
            src = net.layer(step.layer).inputs[step.index].src
            born[step.target] = (pos, net.tensor_type(src).nbytes)
        free(step.frees, pos)
    end = pos
    buffers = [Buffer(name, nbytes, first, died.get(name, end))
               for name, (first, nbytes) in born.items()]
    return buffers, end + 1


def plan_arena(program: Program) -> Arena:
    buffers, positions = lifetimes(program)
    placed: list[Buffer] = []
    for buf in sorted(buffers, key=lambda b: (-b.nbytes, b.first, b.name)):
        size = _align(buf.nbytes)
        offset = 0
        if size:
            for other in sorted((p for p in placed if p.nbytes and p.overlaps_in_time(buf)),
                                key=lambda p: p.offset):
                if offset + size <= other.offset:
                    break
                offset = max(offset, other.offset + _align(other.nbytes))
        placed.append(Buffer(buf.name, buf.nbytes, buf.first, buf.last, offset))
    live = [0] * positions
    for b in buffers:
        for p in range(b.first, b.last + 1):
            live[p] += b.nbytes
    total = max((b.offset + _align(b.nbytes) for b in placed), default=0)
    return Arena({b.name: b for b in placed}, total, max(live, default=0), positions)
