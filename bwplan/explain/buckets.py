"""`bwplan explain --data-parallel`: the gradient buckets a data-parallel step all-reduces,
in the order they are sent, against what sending every learnable parameter would cost (as
Caffe's multi-GPU solver does). A partly frozen parameter is listed with the rows it sends,
`fc.weight[90:100]`. A pure renderer of `bwplan.lower.buckets.BucketPlan`."""
from __future__ import annotations

from bwplan.explain.table import _wrap
from bwplan.explain.units import nbytes
from bwplan.lower.buckets import BucketEntry, BucketPlan
from bwplan.plan.plan import Plan


def learnable_bytes(plan: Plan) -> int:
    return sum(p.type.nbytes for p in plan.net.params.values() if p.learnable)


def _label(e: BucketEntry) -> str:
    if not e.rows:
        return e.param
    return f"{e.param}[{', '.join(f'{a}:{b}' for a, b in e.rows)}]"


def render_buckets(plan: Plan, buckets: BucketPlan, width: int | None = None) -> list[str]:
    """The lines under the table; wrapped at `width` as the table's summary is (None:
    however wide)."""
    everything = learnable_bytes(plan)
    n = len(buckets.buckets)
    out = [f"data-parallel      {n} bucket{'' if n == 1 else 's'} of at most "
           f"{nbytes(buckets.cap_bytes)}, {nbytes(buckets.nbytes)} all-reduced per step "
           f"(every learnable parameter: {nbytes(everything)}); sent latest layers first"]
    for b in buckets.buckets:
        out.append(f"  bucket {b.index}  {nbytes(b.nbytes).rjust(10)}  starts after backward "
                   f"step {b.ready_after}: " + ", ".join(_label(e) for e in b.entries))
    if width is None:
        return out
    return _wrap(out[0], width, 19) + [part for line in out[1:]
                                       for part in _wrap(line, width, 6)]


def buckets_to_dict(plan: Plan, buckets: BucketPlan) -> dict:
    return {"bytes": buckets.nbytes, "learnable_bytes": learnable_bytes(plan),
            "cap_bytes": buckets.cap_bytes,
            "buckets": [{"index": b.index, "dtype": b.dtype, "bytes": b.nbytes,
                         "ready_after_step": b.ready_after,
                         "params": [{"param": e.param, "bytes": e.nbytes, "offset": e.offset,
                                     "sends": e.source,
                                     "rows": [list(r) for r in e.rows]} for e in b.entries]}
                        for b in buckets.buckets]}
