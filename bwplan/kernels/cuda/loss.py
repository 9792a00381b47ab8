"""Launch geometry of cuda/loss.cu: the scalar forwards are one block of LOSS_THREADS (a
fixed-order reduction, loss.cu's header says why); the dX kernels are grid-stride loops.
Labels and flags are passed with their dtype code (BW_* in common.cuh)."""
from __future__ import annotations

import math

from bwplan.kernels.cuda.limits import (LOSS_THREADS, Launch, Unsupported, f32, flag,
                                        grid_stride, i32, i64, ptr)

DTYPE_CODES = {"f32": 0, "f64": 1, "i32": 2, "i64": 3, "u8": 4, "bool": 4}


def dtype_code(dtype: str) -> int:
    if dtype not in DTYPE_CODES:
        raise Unsupported(f"labels of type {dtype} are not supported by the cuda target")
    return DTYPE_CODES[dtype]


def _one_block(kernel: str, *args) -> Launch:
    return Launch(kernel, (1, 1, 1), (LOSS_THREADS, 1, 1), args)


def _classes(ctx) -> tuple[int, int, int]:
    shape = ctx.inputs[0].shape
    return shape[0], shape[1], math.prod(shape[2:])


def sce_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n, c, s = _classes(ctx)
    return [_one_block("softmax_cross_entropy_fwd", ptr(inputs[0]), ptr(inputs[1]),
                       i32(dtype_code(ctx.inputs[1].dtype)), ptr(out), ptr(aux.get("prob")),
                       i32(n), i32(c), i64(s), i64(ctx.attrs["ignore_label"]))]


def sce_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    n, c, s = _classes(ctx)
    return [grid_stride("softmax_cross_entropy_dx", n * c * s, env, ptr(saved["prob"]),
                        ptr(saved["label"]), i32(dtype_code(ctx.inputs[1].dtype)), ptr(dout),
                        ptr(out), i32(n), i32(c), i64(s), i64(ctx.attrs["ignore_label"]),
                        flag(accumulate))]


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


def accuracy_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n, c, s = _classes(ctx)
    return [_one_block("accuracy_fwd", ptr(inputs[0]), ptr(inputs[1]),
                       i32(dtype_code(ctx.inputs[1].dtype)), ptr(out), i32(n), i32(c), i64(s),
                       i32(ctx.attrs["top_k"]))]


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
}
