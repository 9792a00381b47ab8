"""Launch geometry of SSD's MultiBoxLoss kernels (the multibox section of cuda/loss.cu):
the workspace the forward keeps its matching and mining state in, and the launches of the
forward and of the two dX. The rows that name the op are in loss.py (its family's table);
this module holds what they share, so it names no op.

The forward is six launches over one workspace (its arrays in the order of `Workspace`):
one block per image for what is sequential per image (gathering its boxes, the bipartite
rounds, the mining select), one thread per prior for the rest. Each dX is two launches:
one block counts the saved labels' positives into a scale, then a grid-stride kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

from bwplan.errors import InternalError
from bwplan.kernels.cuda.limits import (LOSS_THREADS, MAX_GRID_X, WARP_SIZE, CudaCannotRun,
                                        Env, Launch, f64, flag, grid_stride, i32, i64, ptr)
from bwplan.ops.loss import NORMALIZATIONS

FORWARD_KERNELS = ("multibox_gather_gt", "multibox_overlaps", "multibox_bipartite",
                   "multibox_score", "multibox_mine")
SCALE_KERNEL = "multibox_grad_scale"
# the device arrays' alignment in the workspace (a cache line and more)
ALIGN = 256
# a block for the ground-truth gather: its rows are few, one pass of 256 covers most
GATHER_THREADS = 256


@dataclass(frozen=True, slots=True)
class Dims:
    num: int          # images N
    priors: int       # P
    classes: int      # C
    rows: int         # ground-truth rows G

    @property
    def count(self) -> int:
        return self.num * self.priors


def dims(ctx) -> Dims:
    loc, _, prior, gt = ctx.inputs
    d = Dims(loc.shape[0], prior.shape[2] // 4, ctx.attrs["num_classes"], gt.shape[2])
    if d.count * max(d.classes, 4) >= 2**31 or d.num * d.rows >= 2**31:
        raise CudaCannotRun(f"{d.num} images of {d.priors} priors and {d.classes} classes "
                            "exceed the kernels' 32-bit prior indices")
    if d.num > MAX_GRID_X:
        raise CudaCannotRun(f"{d.num} images exceed the grid")
    return d


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


# (name, bytes per element, elements as a function of Dims)
_ARRAYS = (("ov", 8, lambda d: d.count), ("bv", 8, lambda d: d.count),
           ("lsum", 8, lambda d: d.count), ("closs", 8, lambda d: d.count),
           ("partial", 8, lambda d: 3 * d.num), ("bj", 4, lambda d: d.count),
           ("argall", 4, lambda d: d.count), ("match", 4, lambda d: d.count),
           ("gidx", 4, lambda d: d.num * d.rows), ("used", 4, lambda d: d.num * d.rows),
           ("gcount", 4, lambda d: d.num + 1))


def workspace_offsets(d: Dims) -> tuple[dict[str, int], int]:
    """Each array's byte offset in the forward's workspace, and the bytes in all."""
    offsets, at = {}, 0
    for name, size, elems in _ARRAYS:
        offsets[name] = at
        at += _aligned(size * max(elems(d), 1))
    return offsets, at


def fwd_workspace(ctx, env: Env) -> int:
    return workspace_offsets(dims(ctx))[1]


def dx_workspace(ctx, env: Env) -> int:
    return 8           # the scale, one double


def _require(env: Env, need: int) -> None:
    if env.workspace_bytes < need or (need and not env.workspace):
        raise InternalError(f"the multibox kernels need {need} bytes of workspace, the step "
                            f"has {env.workspace_bytes}")


def _per_image(kernel: str, d: Dims, threads: int, *args) -> Launch:
    return Launch(kernel, (max(1, d.num), 1, 1), (threads, 1, 1), args)


def forward(ctx, inputs, params, out: int, aux, training, env: Env) -> list[Launch]:
    a, d = ctx.attrs, dims(ctx)
    offsets, need = workspace_offsets(d)
    _require(env, need)
    w = {name: ptr(env.workspace + off) for name, off in offsets.items()}
    loc, conf, priors, gt = (ptr(x) for x in inputs)
    mine = flag(a["mining_type"] == "MAX_NEGATIVE")
    rows, num, p = i32(d.rows), i32(d.num), i32(d.priors)
    background = i32(a["background_label_id"])
    return [
        _per_image("multibox_gather_gt", d, GATHER_THREADS, gt, rows, num,
                   flag(a["use_difficult_gt"]), background, w["gidx"], w["gcount"]),
        grid_stride("multibox_overlaps", d.count, env, priors, gt, w["gidx"], w["gcount"],
                    rows, num, p, w["ov"], w["bv"], w["bj"], w["argall"]),
        _per_image("multibox_bipartite", d, LOSS_THREADS, priors, gt, w["gidx"], w["gcount"],
                   rows, p, w["bv"], w["bj"], w["argall"], w["ov"], w["match"], w["used"],
                   flag(a["match_type"] == "PER_PREDICTION"), f64(a["overlap_threshold"])),
        grid_stride("multibox_score", d.count, env, loc, conf, priors, gt, w["gidx"], rows,
                    num, p, i32(d.classes), background, mine, f64(a["neg_overlap"]),
                    w["match"], w["ov"], ptr(aux.get("targets")), ptr(aux.get("labels")),
                    w["lsum"], w["closs"]),
        _per_image("multibox_mine", d, LOSS_THREADS, w["match"], w["ov"], w["lsum"],
                   w["closs"], p, mine, f64(a["neg_pos_ratio"]), f64(a["neg_overlap"]),
                   background, ptr(aux.get("labels")), w["partial"]),
        Launch("multibox_loss_fwd", (1, 1, 1), (WARP_SIZE, 1, 1),
               (w["partial"], w["gcount"], num, p,
                i32(NORMALIZATIONS.index(a["normalization"])), f64(a["loc_weight"]),
                ptr(out))),
    ]


def _scale(ctx, d: Dims, labels: int, factor: float, dout: int, env: Env) -> Launch:
    _require(env, 8)
    a = ctx.attrs
    return Launch(SCALE_KERNEL, (1, 1, 1), (LOSS_THREADS, 1, 1),
                  (ptr(labels), i32(d.num), i32(d.priors), i32(a["background_label_id"]),
                   i32(NORMALIZATIONS.index(a["normalization"])), f64(factor), ptr(dout),
                   ptr(env.workspace)))


def dx_loc(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    d = dims(ctx)
    return [_scale(ctx, d, saved["labels"], ctx.attrs["loc_weight"], dout, env),
            grid_stride("multibox_loss_dx_loc", 4 * d.count, env, ptr(saved["loc"]),
                        ptr(saved["targets"]), ptr(saved["labels"]),
                        i32(ctx.attrs["background_label_id"]), ptr(env.workspace), ptr(out),
                        i64(4 * d.count), flag(accumulate))]


def dx_conf(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    d = dims(ctx)
    return [_scale(ctx, d, saved["labels"], 1.0, dout, env),
            grid_stride("multibox_loss_dx_conf", d.count, env, ptr(saved["conf"]),
                        ptr(saved["labels"]), ptr(env.workspace), ptr(out), i64(d.count),
                        i32(d.classes), flag(accumulate))]
