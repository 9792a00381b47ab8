"""Launch geometry of cuda/update.cu, and the segment table of the one-launch SGD step.

`update_segments` decides, parameter by parameter, what bwplan/runtime/optimizer.py's
`Sgd.step` would do with the gradients the program computes: skip the parameter, update
it from its gradient times the common lr multiplier, from the multiplier-weighted sum
(shared parameters whose uses disagree), or from weight decay alone.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bwplan.kernels.cuda.limits import (GRID_STRIDE_WAVES, MAX_GRID_YZ, MAX_THREADS_PER_SM,
                                        THREADS, Env, Launch, CudaCannotRun, cdiv, f32, flag,
                                        grid_stride, i64, ptr)
from bwplan.lower.program import Program

# struct SgdSegment in update.cu: C alignment gives 3 x 8 + 2 x 4 + 2 x 4 = 40 bytes.
SEGMENT = np.dtype([("param_off", "<i8"), ("source_off", "<i8"), ("size", "<i8"),
                    ("grad_mult", "<f4"), ("decay", "<f4"), ("source", "<i4"),
                    ("pad", "<i4")], align=True)
SOURCE_GRADS, SOURCE_SCALED, SOURCE_NONE = 0, 1, -1


def _updates(program: Program, weight_decay: float):
    """(update, gradient source, lr multiplier, decay) of each parameter the step changes."""
    computed_here = {s.param for s in program.backward if s.phase == "dw"}
    for u in program.plan.updates:
        if u.kind == "none":
            continue
        computed = [t for t in u.terms if t.computed]
        if u.param in computed_here and u.param in program.mixed_scale:
            source, mult = SOURCE_SCALED, 1.0
        elif u.param in computed_here and computed:
            source, mult = SOURCE_GRADS, computed[0].lr_mult
        else:
            source, mult = SOURCE_NONE, 0.0
        decay = u.decay_lr_mult * u.decay_mult
        if source == SOURCE_NONE and decay * weight_decay == 0:
            continue  # no gradient and no decay: Sgd.step leaves it (and its velocity) alone
        yield u, source, mult, decay


def update_segments(program: Program, offsets: Mapping[str, int], sizes: Mapping[str, int],
                    scaled_offsets: Mapping[str, int], weight_decay: float) -> np.ndarray:
    """One row per parameter the step changes (element offsets into the flat buffers); a
    partly frozen parameter gets one row per trainable range of its leading axis, so the
    one SGD launch never writes its frozen rows or their velocity."""
    rows = []
    for u, source, mult, decay in _updates(program, weight_decay):
        base = scaled_offsets[u.param] if source == SOURCE_SCALED else \
            offsets[u.param] if source == SOURCE_GRADS else 0
        if not u.rows:
            rows.append((offsets[u.param], base, sizes[u.param], mult, decay, source, 0))
            continue
        per_row = sizes[u.param] // program.plan.net.params[u.param].type.shape[0]
        for a, b in u.rows:
            at = a * per_row
            rows.append((offsets[u.param] + at, base + at if source != SOURCE_NONE else 0,
                         (b - a) * per_row, mult, decay, source, 0))
    return np.array(rows, dtype=SEGMENT)


def updated_params(program: Program, weight_decay: float) -> int:
    """How many parameters the step's update changes (the host optimizer's kernel count:
    one per parameter, however many segments it takes)."""
    return sum(1 for _ in _updates(program, weight_decay))


def sgd_update(params: int, velocity: int, grads: int, scaled: int, segments: int,
               table: np.ndarray, lr: float, momentum: float, weight_decay: float,
               env: Env) -> list[Launch]:
    if len(table) == 0:
        return []
    if len(table) > MAX_GRID_YZ:
        raise CudaCannotRun(f"{len(table)} parameters exceed one update launch")
    # x blocks per segment: enough for the largest, but about GRID_STRIDE_WAVES waves in
    # all, since a small segment's blocks past its end exit at once
    resident = env.sm_count * (MAX_THREADS_PER_SM // THREADS)
    blocks = min(cdiv(int(table["size"].max()), THREADS),
                 cdiv(GRID_STRIDE_WAVES * resident, len(table)))
    return [Launch("sgd_update", (max(1, blocks), len(table), 1), (THREADS, 1, 1),
                   (ptr(params), ptr(velocity), ptr(grads), ptr(scaled), ptr(segments),
                    f32(lr), f32(momentum), f32(weight_decay)))]


def grad_accumulate(tmp: int, grad: int, scaled: int, n: int, lr_mult: float,
                    accumulate: bool, env: Env) -> Launch:
    return grid_stride("grad_accumulate", n, env, ptr(tmp), ptr(grad), ptr(scaled), i64(n),
                       f32(lr_mult), flag(accumulate))


def fill(dst: int, n: int, value: float, env: Env) -> Launch:
    return grid_stride("fill", n, env, ptr(dst), i64(n), f32(value))


def advance_counter(counter: int) -> Launch:
    return Launch("advance_counter", (1, 1, 1), (32, 1, 1), (ptr(counter),))


# the runtime's kernels, all in update.cu
KERNELS = ("sgd_update", "grad_accumulate", "fill", "advance_counter")
