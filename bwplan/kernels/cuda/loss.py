"""Launch geometry of cuda/loss.cu: the scalar forwards are one block of LOSS_THREADS (a
fixed-order reduction, loss.cu's header says why); the dX kernels are grid-stride loops.
Labels and flags are passed with their dtype code (BW_* in common.cuh). SSD's
MultiBoxLoss is several launches over a workspace: its geometry is in multibox.py."""
from __future__ import annotations

import math

from bwplan.kernels.cuda.limits import (LOSS_THREADS, Launch, CudaCannotRun, f32, flag,
                                        grid_stride, i32, i64, ptr)
from bwplan.kernels.cuda import multibox
from bwplan.ops.loss import NORMALIZATIONS, infogain_split

DTYPE_CODES = {"f32": 0, "f64": 1, "i32": 2, "i64": 3, "u8": 4, "bool": 4}


def dtype_code(dtype: str) -> int:
    if dtype not in DTYPE_CODES:
        raise CudaCannotRun(f"labels of type {dtype} are not supported by the cuda target")
    return DTYPE_CODES[dtype]


def _one_block(kernel: str, *args) -> Launch:
    return Launch(kernel, (1, 1, 1), (LOSS_THREADS, 1, 1), args)


def _classes(ctx) -> tuple[int, int, int]:
    shape = ctx.inputs[0].shape
    return shape[0], shape[1], math.prod(shape[2:])


# ClassWeights (loss.cu): the most classes softmax_cross_entropy's class_weights may have
MAX_WEIGHTED_CLASSES = 128


def _class_weights(ctx) -> tuple:
    """(weighted flag, ClassWeights passed by value: one float per slot)."""
    weights = ctx.attrs.get("class_weights", ())
    if not weights:
        return (i32(0),) + (f32(0.0),) * MAX_WEIGHTED_CLASSES
    if len(weights) > MAX_WEIGHTED_CLASSES:
        raise CudaCannotRun(f"class_weights for {len(weights)} classes; the CUDA kernels "
                          f"weight at most {MAX_WEIGHTED_CLASSES}")
    padded = tuple(weights) + (0.0,) * (MAX_WEIGHTED_CLASSES - len(weights))
    return (i32(1),) + tuple(map(f32, padded))


def sce_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n, c, s = _classes(ctx)
    return [_one_block("softmax_cross_entropy_fwd", ptr(inputs[0]), ptr(inputs[1]),
                       i32(dtype_code(ctx.inputs[1].dtype)), ptr(out), ptr(aux.get("prob")),
                       i32(n), i32(c), i64(s), i64(ctx.attrs["ignore_label"]),
                       *_class_weights(ctx))]


def sce_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    n, c, s = _classes(ctx)
    return [grid_stride("softmax_cross_entropy_dx", n * c * s, env, ptr(saved["prob"]),
                        ptr(saved["label"]), i32(dtype_code(ctx.inputs[1].dtype)), ptr(dout),
                        ptr(out), i32(n), i32(c), i64(s), i64(ctx.attrs["ignore_label"]),
                        *_class_weights(ctx), flag(accumulate))]


def euclidean_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    return [_one_block("euclidean_loss_fwd", ptr(inputs[0]), ptr(inputs[1]), ptr(out),
                       ptr(aux.get("diff")), i32(ctx.x.shape[0]), i64(ctx.x.numel))]


def _euclidean_dx(sign: float):
    def dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
        total = ctx.x.numel
        return [grid_stride("euclidean_loss_dx", total, env, ptr(saved["diff"]), ptr(dout),
                            ptr(out), i32(ctx.x.shape[0]), i64(total), f32(sign),
                            flag(accumulate))]
    return dx


def contrastive_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n = ctx.x.shape[0]
    return [_one_block("contrastive_loss_fwd", ptr(inputs[0]), ptr(inputs[1]), ptr(inputs[2]),
                       i32(dtype_code(ctx.inputs[2].dtype)), ptr(out), ptr(aux.get("diff")),
                       ptr(aux.get("dist_sq")), i32(n), i64(ctx.x.numel // n),
                       f32(ctx.attrs["margin"]), flag(ctx.attrs["legacy"]))]


def _contrastive_dx(sign: float):
    def dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
        n = ctx.x.shape[0]
        return [grid_stride("contrastive_loss_dx", ctx.x.numel, env, ptr(saved["diff"]),
                            ptr(saved["dist_sq"]), ptr(saved["sim"]),
                            i32(dtype_code(ctx.inputs[2].dtype)), ptr(dout), ptr(out), i32(n),
                            i64(ctx.x.numel // n), f32(ctx.attrs["margin"]),
                            flag(ctx.attrs["legacy"]), f32(sign), flag(accumulate))]
    return dx


def _ignore(ctx) -> tuple:
    ignore = ctx.attrs["ignore_label"]
    return flag(ignore is not None), i64(0 if ignore is None else ignore)


def accuracy_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n, c, s = _classes(ctx)
    return [_one_block("accuracy_fwd", ptr(inputs[0]), ptr(inputs[1]),
                       i32(dtype_code(ctx.inputs[1].dtype)), ptr(out), i32(n), i32(c), i64(s),
                       i32(ctx.attrs["top_k"]), *_ignore(ctx))]


# the shared-memory counts of loss.cu (BW_MAX_PER_CLASS, BW_MAX_SEG_CLASSES) and the most
# ignore labels seg_accuracy_fwd takes
MAX_PER_CLASS = 4096
MAX_SEG_CLASSES = 96
MAX_SEG_IGNORED = 4


def accuracy_per_class_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n, c, s = _classes(ctx)
    if c > MAX_PER_CLASS:
        raise CudaCannotRun(f"per-class accuracy of {c} classes; the CUDA kernel counts at "
                          f"most {MAX_PER_CLASS}")
    return [_one_block("accuracy_per_class_fwd", ptr(inputs[0]), ptr(inputs[1]),
                       i32(dtype_code(ctx.inputs[1].dtype)), ptr(out), i32(n), i32(c), i64(s),
                       i32(ctx.attrs["top_k"]), *_ignore(ctx))]


def seg_accuracy_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n, c, s = _classes(ctx)
    ignored = tuple(ctx.attrs["ignore_label"])
    if c > MAX_SEG_CLASSES:
        raise CudaCannotRun(f"seg_accuracy of {c} classes; the CUDA kernel's confusion matrix "
                          f"holds at most {MAX_SEG_CLASSES}")
    if len(ignored) > MAX_SEG_IGNORED:
        raise CudaCannotRun(f"{len(ignored)} ignore labels; the CUDA kernel takes at most "
                          f"{MAX_SEG_IGNORED}")
    slots = ignored + (0,) * (MAX_SEG_IGNORED - len(ignored))
    return [_one_block("seg_accuracy_fwd", ptr(inputs[0]), ptr(inputs[1]),
                       i32(dtype_code(ctx.inputs[1].dtype)), ptr(out), i32(n), i32(c), i64(s),
                       i32(len(ignored)), *map(i64, slots))]


# ---- Caffe's further losses ---------------------------------------------------------------
def _norm_code(ctx) -> int:
    return NORMALIZATIONS.index(ctx.attrs["normalization"])


def sigmoid_ce_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    a = ctx.attrs
    return [_one_block("sigmoid_cross_entropy_loss_fwd", ptr(inputs[0]), ptr(inputs[1]),
                       ptr(out), i64(ctx.x.numel), i32(ctx.x.shape[0]), i32(_norm_code(ctx)),
                       f32(a["ignore_label"]))]


def sigmoid_ce_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    n = ctx.x.numel
    return [grid_stride("sigmoid_cross_entropy_loss_dx", n, env, ptr(saved["logits"]),
                        ptr(saved["target"]), ptr(dout), ptr(out), i64(n),
                        i32(ctx.x.shape[0]), i32(_norm_code(ctx)),
                        f32(ctx.attrs["ignore_label"]), flag(accumulate))]


def _hinge_dims(ctx) -> tuple[int, int]:
    n = ctx.x.shape[0]
    return n, ctx.x.numel // n


def hinge_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n, d = _hinge_dims(ctx)
    return [_one_block("hinge_loss_fwd", ptr(inputs[0]), ptr(inputs[1]),
                       i32(dtype_code(ctx.inputs[1].dtype)), ptr(out), i32(n), i64(d),
                       flag(ctx.attrs["norm"] == "L2"))]


def hinge_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    n, d = _hinge_dims(ctx)
    return [grid_stride("hinge_loss_dx", n * d, env, ptr(saved["scores"]), ptr(saved["label"]),
                        i32(dtype_code(ctx.inputs[1].dtype)), ptr(dout), ptr(out), i32(n),
                        i64(d), flag(ctx.attrs["norm"] == "L2"), flag(accumulate))]


def _infogain_args(ctx):
    outer, c, inner = infogain_split(ctx)
    return (i32(outer), i32(c), i64(inner), i32(_norm_code(ctx)),
            i64(ctx.attrs["ignore_label"])), outer * c * inner


def infogain_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    args, _ = _infogain_args(ctx)
    h = inputs[2] if len(inputs) > 2 else params["infogain"]
    return [_one_block("infogain_loss_fwd", ptr(inputs[0]), ptr(inputs[1]),
                       i32(dtype_code(ctx.inputs[1].dtype)), ptr(h), ptr(out),
                       ptr(aux.get("prob")), *args)]


def infogain_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    args, total = _infogain_args(ctx)
    return [grid_stride("infogain_loss_dx", total, env, ptr(saved["prob"]), ptr(saved["label"]),
                        i32(dtype_code(ctx.inputs[1].dtype)), ptr(saved["infogain"]),
                        ptr(dout), ptr(out), *args, flag(accumulate))]


def smooth_l1_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    w_in, w_out = (inputs[k] if len(inputs) > k else None for k in (2, 3))
    return [_one_block("smooth_l1_loss_fwd", ptr(inputs[0]), ptr(inputs[1]), ptr(w_in),
                       ptr(w_out), ptr(out), ptr(aux.get("diff")), i32(ctx.x.shape[0]),
                       i64(ctx.x.numel), f32(ctx.attrs["sigma"] ** 2))]


def _smooth_l1_dx(sign: float):
    def dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
        n = ctx.x.numel
        return [grid_stride("smooth_l1_loss_dx", n, env, ptr(saved["diff"]),
                            ptr(saved.get("inside")), ptr(saved.get("outside")), ptr(dout),
                            ptr(out), i32(ctx.x.shape[0]), i64(n),
                            f32(ctx.attrs["sigma"] ** 2), f32(sign), flag(accumulate))]
    return dx


LAUNCH = {
    ("softmax_cross_entropy", "fwd"): sce_fwd,
    ("softmax_cross_entropy", "dx:logits"): sce_dx,
    ("euclidean_loss", "fwd"): euclidean_fwd,
    ("euclidean_loss", "dx:a"): _euclidean_dx(1.0),
    ("euclidean_loss", "dx:b"): _euclidean_dx(-1.0),
    ("contrastive_loss", "fwd"): contrastive_fwd,
    ("contrastive_loss", "dx:a"): _contrastive_dx(1.0),
    ("contrastive_loss", "dx:b"): _contrastive_dx(-1.0),
    ("accuracy", "fwd"): accuracy_fwd,
    ("accuracy_per_class", "fwd"): accuracy_per_class_fwd,
    ("seg_accuracy", "fwd"): seg_accuracy_fwd,
    ("sigmoid_cross_entropy_loss", "fwd"): sigmoid_ce_fwd,
    ("sigmoid_cross_entropy_loss", "dx:logits"): sigmoid_ce_dx,
    ("hinge_loss", "fwd"): hinge_fwd, ("hinge_loss", "dx:scores"): hinge_dx,
    ("infogain_loss", "fwd"): infogain_fwd, ("infogain_loss", "dx:logits"): infogain_dx,
    ("infogain_loss_h", "fwd"): infogain_fwd, ("infogain_loss_h", "dx:logits"): infogain_dx,
    ("smooth_l1_loss", "fwd"): smooth_l1_fwd,
    ("smooth_l1_loss", "dx:a"): _smooth_l1_dx(1.0),
    ("smooth_l1_loss", "dx:b"): _smooth_l1_dx(-1.0),
    ("smooth_l1_loss_weighted", "fwd"): smooth_l1_fwd,
    ("smooth_l1_loss_weighted", "dx:a"): _smooth_l1_dx(1.0),
    ("smooth_l1_loss_weighted", "dx:b"): _smooth_l1_dx(-1.0),
    ("smooth_l1_loss_inside", "fwd"): smooth_l1_fwd,
    ("smooth_l1_loss_inside", "dx:a"): _smooth_l1_dx(1.0),
    ("smooth_l1_loss_inside", "dx:b"): _smooth_l1_dx(-1.0),
    ("multibox_loss", "fwd"): multibox.forward,
    ("multibox_loss", "dx:loc"): multibox.dx_loc,
    ("multibox_loss", "dx:conf"): multibox.dx_conf,
}
# SSD's MultiBoxLoss: the forward's other launches and each dX's scale (multibox.py)
ALSO = {("multibox_loss", "fwd"): multibox.FORWARD_KERNELS,
        ("multibox_loss", "dx:loc"): (multibox.SCALE_KERNEL,),
        ("multibox_loss", "dx:conf"): (multibox.SCALE_KERNEL,)}
WORKSPACE = {("multibox_loss", "fwd"): multibox.fwd_workspace,
             ("multibox_loss", "dx:loc"): multibox.dx_workspace,
             ("multibox_loss", "dx:conf"): multibox.dx_workspace}
