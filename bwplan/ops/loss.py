"""Losses and metrics. A loss's output is a scalar loss term; a metric's output is reported
and never differentiated. Labels (and the similarity flags of a contrastive loss) are inputs
that never receive a gradient.

The batch size N is dimension 0 of the first input; every loss here averages over it, as
Caffe does.
"""
from __future__ import annotations

import numpy as np

from bwplan.ir.types import TensorType
from bwplan.ops.opdef import (AttrSpec, AuxSpec, GradRule, in_numel, on_every_target, OpCtx, OpDef,
                              Port)


def _scalar(ctx: OpCtx) -> TensorType:
    return TensorType(ctx.x.dtype, ())


def _check_label(ctx: OpCtx) -> TensorType:
    logits, label = ctx.inputs
    expected = (logits.shape[0],) + logits.shape[2:]
    if tuple(d for d in label.shape if d != 1) != tuple(d for d in expected if d != 1):
        raise ValueError(f"label {label} does not match logits {logits} (expected {expected})")
    return _scalar(ctx)


def _valid_count(label: np.ndarray, ignore: int) -> int:
    return max(1, int(np.count_nonzero(label != ignore)))


def _sce_fwd(ctx, inputs, params, training, rng):
    logits, label = inputs
    n, c = logits.shape[0], logits.shape[1]
    z = np.moveaxis(logits, 1, -1).reshape(-1, c)
    lab = label.reshape(-1).astype(np.int64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    ignore = ctx.attrs["ignore_label"]
    valid = lab != ignore
    picked = logp[np.arange(len(lab)), np.where(valid, lab, 0)]
    loss = -(picked * valid).sum() / _valid_count(lab, ignore)
    prob = np.moveaxis(np.exp(logp).reshape((n,) + logits.shape[2:] + (c,)), -1, 1)
    return np.asarray(loss, dtype=logits.dtype), {"prob": prob}


def _sce_dx(ctx, saved, dout, index):
    prob, label = saved["prob"], saved["label"]
    c = prob.shape[1]
    g = np.moveaxis(prob, 1, -1).reshape(-1, c).copy()
    lab = label.reshape(-1).astype(np.int64)
    ignore = ctx.attrs["ignore_label"]
    valid = lab != ignore
    g[np.arange(len(lab)), np.where(valid, lab, 0)] -= 1.0
    g *= valid[:, None]
    g *= dout / _valid_count(lab, ignore)
    return np.moveaxis(g.reshape((prob.shape[0],) + prob.shape[2:] + (c,)), -1, 1)


SOFTMAX_CROSS_ENTROPY = OpDef(
    name="softmax_cross_entropy",
    family="loss",
    doc="Mean softmax cross-entropy over classes on dimension 1 (Caffe SoftmaxWithLoss).",
    ports=(Port("logits"), Port("label", differentiable=False, classes_of="logits")),
    attrs=(AttrSpec("ignore_label", "int", -1, doc="label value that contributes nothing"),),
    infer=_check_label,
    flops=lambda ctx: 5 * ctx.inputs[0].numel,
    grads=(GradRule("logits", frozenset({"prob", "label"}),
                    lambda ctx: 2 * ctx.inputs[0].numel, _sce_dx),),
    aux=(AuxSpec("prob", lambda ctx: ctx.inputs[0].shape),),
    role="loss",
    forward_ref=_sce_fwd,
    kernels=on_every_target({
        "fwd": "loss.softmax_cross_entropy_fwd",
        "dx:logits": "loss.softmax_cross_entropy_dx"}),
)


# ---- Euclidean ---------------------------------------------------------------------------
def _pair_infer(ctx: OpCtx) -> TensorType:
    a, b = ctx.inputs[:2]
    if not a.shape or not b.shape or a.shape[0] != b.shape[0] or a.numel != b.numel:
        raise ValueError(f"inputs {a} and {b} must have the same batch size (dimension 0) "
                         "and the same number of elements")
    if a.dtype != b.dtype:
        raise ValueError(f"inputs {a} and {b} must have the same element type")
    return _scalar(ctx)


def _euclid_fwd(ctx, inputs, params, training, rng):
    a, b = inputs
    diff = a - b.reshape(a.shape)
    loss = (diff * diff).sum() / (2 * a.shape[0])
    return np.asarray(loss, dtype=a.dtype), {"diff": diff}


def _euclid_grad(sign: float, port: int):
    """d loss / d a = diff / N and d loss / d b = -diff / N: both read only `diff`."""
    def grad(ctx, saved, dout, index):
        n = ctx.inputs[0].shape[0]
        return (sign * dout / n * saved["diff"]).reshape(ctx.inputs[port].shape)
    return grad


EUCLIDEAN_LOSS = OpDef(
    name="euclidean_loss",
    family="loss",
    doc="sum((a - b)^2) / (2N) over a batch of N (Caffe EuclideanLoss).",
    ports=(Port("a"), Port("b")),
    infer=_pair_infer,
    flops=lambda ctx: 3 * ctx.x.numel,
    grads=(
        GradRule("a", frozenset({"diff"}), in_numel, _euclid_grad(1.0, 0)),
        GradRule("b", frozenset({"diff"}), in_numel, _euclid_grad(-1.0, 1)),
    ),
    aux=(AuxSpec("diff", lambda ctx: ctx.x.shape),),
    role="loss",
    forward_ref=_euclid_fwd,
    kernels={"cpu": {
        "fwd": "loss.euclidean_loss_fwd", "dx:a": "loss.euclidean_loss_dx_a",
        "dx:b": "loss.euclidean_loss_dx_b"},
        "cuda": {
        "fwd": "loss.euclidean_loss_fwd", "dx:a": "loss.euclidean_loss_dx",
        "dx:b": "loss.euclidean_loss_dx"}},
)


# ---- contrastive -------------------------------------------------------------------------
def _contrastive_infer(ctx: OpCtx) -> TensorType:
    out = _pair_infer(ctx)
    a, sim = ctx.inputs[0], ctx.inputs[2]
    if not sim.shape or sim.shape[0] != a.shape[0] or sim.numel != a.shape[0]:
        raise ValueError(f"sim {sim} must hold one flag per sample of {a}")
    return out


def _similar(sim: np.ndarray) -> np.ndarray:
    # Caffe truncates the flag to an int: anything in (-1, 1) means "dissimilar".
    return sim.reshape(-1).astype(np.int64) != 0


def _contrastive_fwd(ctx, inputs, params, training, rng):
    a, b, sim = inputs
    n = a.shape[0]
    diff = a - b.reshape(a.shape)
    dist_sq = (diff * diff).reshape(n, -1).sum(axis=1)
    margin = ctx.attrs["margin"]
    if ctx.attrs["legacy"]:
        apart = np.maximum(margin - dist_sq, 0.0)
    else:
        apart = np.maximum(margin - np.sqrt(dist_sq), 0.0) ** 2
    loss = np.where(_similar(sim), dist_sq, apart).sum() / (2 * n)
    return np.asarray(loss, dtype=a.dtype), {"diff": diff, "dist_sq": dist_sq}


def _contrastive_grad(sign: float, port: int):
    """Similar pairs pull with diff / N; dissimilar pairs inside the margin push. Caffe adds
    1e-4 to the distance in the non-legacy push; this is the exact derivative instead, and
    0 where the distance is 0 (the loss has no gradient there)."""
    def grad(ctx, saved, dout, index):
        diff, dist_sq = saved["diff"], saved["dist_sq"]
        n = diff.shape[0]
        margin = ctx.attrs["margin"]
        if ctx.attrs["legacy"]:
            push = -(margin - dist_sq > 0).astype(diff.dtype)
        else:
            dist = np.sqrt(dist_sq)
            mdist = np.maximum(margin - dist, 0.0)
            push = -np.divide(mdist, dist, out=np.zeros_like(dist), where=dist > 0)
        coef = np.where(_similar(saved["sim"]), 1.0, push) * (sign * dout / n)
        g = diff * coef.reshape((n,) + (1,) * (diff.ndim - 1))
        return g.reshape(ctx.inputs[port].shape)
    return grad


_CONTRASTIVE_NEEDS = frozenset({"diff", "dist_sq", "sim"})

CONTRASTIVE_LOSS = OpDef(
    name="contrastive_loss",
    family="loss",
    doc="Caffe ContrastiveLoss over feature pairs (a_i, b_i) with flags sim_i: "
        "1/(2N) sum_i sim_i d_i^2 + (1 - sim_i) max(margin - d_i, 0)^2, d_i = |a_i - b_i|; "
        "`legacy` uses max(margin - d_i^2, 0) for dissimilar pairs.",
    ports=(Port("a"), Port("b"), Port("sim", differentiable=False)),
    attrs=(AttrSpec("margin", "float", 1.0, doc="distance dissimilar pairs are pushed to"),
           AttrSpec("legacy", "bool", False, doc="Caffe's legacy_version formula")),
    infer=_contrastive_infer,
    flops=lambda ctx: 3 * ctx.x.numel + 6 * ctx.x.shape[0],
    grads=(
        GradRule("a", _CONTRASTIVE_NEEDS, lambda ctx: 2 * ctx.x.numel,
                 _contrastive_grad(1.0, 0)),
        GradRule("b", _CONTRASTIVE_NEEDS, lambda ctx: 2 * ctx.x.numel,
                 _contrastive_grad(-1.0, 1)),
    ),
    aux=(AuxSpec("diff", lambda ctx: ctx.x.shape),
         AuxSpec("dist_sq", lambda ctx: (ctx.x.shape[0],))),
    role="loss",
    forward_ref=_contrastive_fwd,
    kernels={"cpu": {
        "fwd": "loss.contrastive_loss_fwd", "dx:a": "loss.contrastive_loss_dx_a",
        "dx:b": "loss.contrastive_loss_dx_b"},
        "cuda": {
        "fwd": "loss.contrastive_loss_fwd", "dx:a": "loss.contrastive_loss_dx",
        "dx:b": "loss.contrastive_loss_dx"}},
)


# ---- accuracy ----------------------------------------------------------------------------
def _accuracy_infer(ctx: OpCtx) -> TensorType:
    _check_label(ctx)
    top_k, classes = ctx.attrs["top_k"], ctx.x.shape[1]
    if not 1 <= top_k <= classes:
        raise ValueError(f"top_k={top_k} must be between 1 and the {classes} classes")
    return TensorType("f32", ())


def _accuracy_fwd(ctx, inputs, params, training, rng):
    logits, label = inputs
    c = logits.shape[1]
    z = np.moveaxis(logits, 1, -1).reshape(-1, c)
    lab = label.reshape(-1).astype(np.int64)
    true = z[np.arange(len(lab)), lab]
    # As Caffe: a class tied with the true one counts as ranked above it.
    ahead = (z >= true[:, None]).sum(axis=1) - 1
    return np.asarray((ahead < ctx.attrs["top_k"]).mean(), dtype=np.float32), {}


ACCURACY = OpDef(
    name="accuracy",
    family="loss",
    doc="Fraction of samples whose label is among the `top_k` highest scores (Caffe "
        "Accuracy); a metric, never differentiated.",
    ports=(Port("logits", differentiable=False),
           Port("label", differentiable=False, classes_of="logits")),
    attrs=(AttrSpec("top_k", "int", 1, at_least=1),),
    infer=_accuracy_infer,
    flops=lambda ctx: ctx.x.numel,
    role="metric",
    forward_ref=_accuracy_fwd,
    kernels=on_every_target({
        "fwd": "loss.accuracy_fwd"}),
)

OPS = (SOFTMAX_CROSS_ENTROPY, EUCLIDEAN_LOSS, CONTRASTIVE_LOSS, ACCURACY)
