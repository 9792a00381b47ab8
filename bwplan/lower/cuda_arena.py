"""Offsets of every buffer of a Program inside ONE device allocation.

The buffers and their lifetimes are the Program's (`Program.buffers`, decided by
lowering and followed by every runtime); this module only places them. The scratch
buffers of accumulating dX steps are left out: the CUDA dX kernels add to their output in
place. Two buffers may share bytes only if their lifetimes do not overlap.

Placement is greedy by size (largest first, each at the lowest offset that clears every
placed buffer it overlaps in time), the usual arena planner of inference runtimes; its
total is at least the peak of live bytes and, on the networks here, within a few percent
of it. Offsets are multiples of ALIGNMENT, what cudaMalloc guarantees, so every kernel
argument is as aligned as a fresh allocation would be.
"""
from __future__ import annotations

from dataclasses import dataclass

from bwplan.lower.program import BufferId, Program

ALIGNMENT = 256


@dataclass(frozen=True, slots=True)
class PlacedBuffer:
    """A Program buffer's bytes and lifetime (lower/program.py `Buffer`), and where it
    lies in the arena."""

    id: BufferId
    nbytes: int
    first: int       # the first schedule position where it is live
    last: int        # the last position where it is live (inclusive)
    offset: int = 0

    def overlaps_in_time(self, other: PlacedBuffer) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class Arena:
    buffers: dict[BufferId, PlacedBuffer]
    size: int            # bytes of the one allocation
    peak_live: int       # the largest sum of live bytes at any position (a lower bound)
    positions: int       # schedule positions: 0 batch, forward steps, seeds, backward steps


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def lifetimes(program: Program) -> tuple[list[PlacedBuffer], int]:
    """The program's device buffers with their lifetimes, and its schedule positions."""
    return ([PlacedBuffer(b.id, b.nbytes, b.first, b.last) for b in program.buffers
             if not b.scratch], program.positions)


def plan_arena(program: Program) -> Arena:
    buffers, positions = lifetimes(program)
    placed: list[PlacedBuffer] = []
    for buf in sorted(buffers, key=lambda b: (-b.nbytes, b.first, str(b.id))):
        size = _align(buf.nbytes)
        offset = 0
        if size:
            for other in sorted((p for p in placed if p.nbytes and p.overlaps_in_time(buf)),
                                key=lambda p: p.offset):
                if offset + size <= other.offset:
                    break
                offset = max(offset, other.offset + _align(other.nbytes))
        placed.append(PlacedBuffer(buf.id, buf.nbytes, buf.first, buf.last, offset))
    total = max((b.offset + _align(b.nbytes) for b in placed), default=0)
    return Arena({b.id: b for b in placed}, total, program.peak_bytes(scratch=False),
                 positions)
