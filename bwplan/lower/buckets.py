"""`gradient_buckets(program)`: which gradients a data-parallel step sends, fused into
buckets, in the order the backward finishes them.

The set of gradients is the plan's all-reduce list (`Plan.allreduce`: every parameter with a
computed gradient term); this module only orders and groups it. A parameter's gradient is
final after the last dW step of the Program that writes it (a shared parameter accumulates
over its uses), so parameters are ordered by that step and packed, latest layers first, into
buckets of at most `cap_bytes` (a parameter larger than the cap gets a bucket of its own).
A bucket is ready after the backward step of its last parameter; the runtime starts its
all-reduce there, so the rest of the backward overlaps the communication.

Frozen parameters never appear (they have no computed term, even when `--no-prune` computes
their dW), and neither do decay-only parameters (trainable, no gradient): every rank applies
their decay alone. For a parameter whose uses carry different lr multipliers the update reads
the multiplier-weighted sum (`Program.mixed_scale`), so that buffer travels instead.

A partly frozen parameter (`--freeze 'fc.weight[0:90]'`) travels as its trainable rows
alone: its entry records those [start, stop) ranges of the leading axis, and its `size` and
`nbytes` count only them, packed one after another in the bucket (the frozen rows' gradient
is zero on every rank and the update never reads it, so summing it would be wasted bytes).
Each range is a contiguous run of the row-major gradient, so the runtime packs it with one
copy per range before the all-reduce and unpacks it after.

Example: the digits fine-tune, where only `head` trains (`explain --data-parallel`): the
backward's steps are the loss's dX (0) and head's dW of weight (1) and bias (2), so

    bucket 0    1.27 KiB  starts after backward step 2: head.weight, head.bias
"""
from __future__ import annotations

from dataclasses import dataclass

from bwplan.errors import InternalError
from bwplan.lower.program import Program

DEFAULT_CAP_BYTES = 256 << 10   # small enough that the benchmark nets get several buckets


@dataclass(frozen=True, slots=True)
class BucketEntry:
    param: str
    shape: tuple[int, ...]
    offset: int          # in elements, within the bucket's flat buffer
    size: int            # elements
    nbytes: int
    source: str          # "grads" (the summed gradient) or "scaled" (lr-weighted sum)
    # the trainable [start, stop) ranges of the leading axis that travel, packed in this
    # order; () when the whole parameter does
    rows: tuple[tuple[int, int], ...] = ()

    @property
    def row_size(self) -> int:
        """Elements in one row of the leading axis."""
        return self.size // sum(b - a for a, b in self.rows) if self.rows else 0


@dataclass(frozen=True, slots=True)
class Bucket:
    index: int
    dtype: str
    entries: tuple[BucketEntry, ...]
    ready_after: int     # index into Program.backward of the step that completes it

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)


@dataclass(frozen=True, slots=True)
class BucketPlan:
    buckets: tuple[Bucket, ...]
    cap_bytes: int

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buckets)

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(e.param for b in self.buckets for e in b.entries)

    def layout(self) -> tuple:
        """What every rank must agree on: bucket by bucket, its dtype and (param, shape,
        rows sent)."""
        return tuple((b.dtype, tuple((e.param, e.shape, e.rows) for e in b.entries))
                     for b in self.buckets)


def gradient_buckets(program: Program, cap_bytes: int = DEFAULT_CAP_BYTES) -> BucketPlan:
    plan = program.plan
    last_write: dict[str, int] = {}
    for i, step in enumerate(program.backward):
        if step.phase == "dw":
            last_write[step.param] = i
    sent = dict(plan.allreduce)
    missing = [p for p in sent if p not in last_write]
    if missing:
        raise InternalError(f"the plan all-reduces {', '.join(missing)} but the program "
                            "computes no gradient for it")
    order = sorted(sent, key=lambda p: last_write[p])
    rows_of = {u.param: u.rows for u in plan.updates}
    buckets: list[Bucket] = []
    entries: list[BucketEntry] = []
    dtype, filled, offset = "", 0, 0

    def close() -> None:
        nonlocal entries, filled, offset
        if entries:
            buckets.append(Bucket(len(buckets), dtype, tuple(entries),
                                  last_write[entries[-1].param]))
        entries, filled, offset = [], 0, 0

    for p in order:
        ptype = plan.net.params[p].type
        if entries and (ptype.dtype != dtype or filled + sent[p] > cap_bytes):
            close()
        dtype = ptype.dtype
        source = "scaled" if p in program.mixed_scale else "grads"
        rows = rows_of.get(p, ())
        size = ptype.numel
        if rows:
            size = size // ptype.shape[0] * sum(b - a for a, b in rows)
        entries.append(BucketEntry(p, tuple(ptype.shape), offset, size, sent[p], source, rows))
        offset += size
        filled += sent[p]
    close()
    return BucketPlan(tuple(buckets), cap_bytes)

