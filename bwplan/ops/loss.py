"""Losses and metrics. A loss's output is a scalar loss term; a metric's output is reported
and never differentiated. Labels (and the similarity flags of a contrastive loss) are inputs
that never receive a gradient.

The batch size N is dimension 0 of the first input; every loss here averages over it, as
Caffe does, except where a loss takes Caffe's `normalization` (sigmoid cross-entropy and
infogain: FULL, VALID, BATCH_SIZE or NONE, each with Caffe's default).
"""
from __future__ import annotations

import math

import numpy as np

from bwplan.ir.types import TensorType
from bwplan.ops import multibox as mb
from bwplan.ops.opdef import (AttrSpec, AuxSpec, GradRule, in_numel, on_every_target, OpCtx, OpDef,
                              ParamSlot, Port, REQUIRED)


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


def _sce_check(ctx: OpCtx) -> TensorType:
    weights = ctx.attrs.get("class_weights", ())
    if weights and len(weights) != ctx.x.shape[1]:
        raise ValueError(f"class_weights gives {len(weights)} weights for the "
                         f"{ctx.x.shape[1]} classes of {ctx.x}")
    return _check_label(ctx)


def _row_weights(ctx: OpCtx, lab: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each counted position's weight: its class's in `class_weights` (SegNet's
    weight_by_label_freqs), else 1; 0 where the label is ignored."""
    weights = ctx.attrs["class_weights"]
    if not weights:
        return valid.astype(np.float64)
    return np.asarray(weights, dtype=np.float64)[np.where(valid, lab, 0)] * valid


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
    loss = -(picked * _row_weights(ctx, lab, valid)).sum() / _valid_count(lab, ignore)
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
    g *= _row_weights(ctx, lab, valid)[:, None]
    g *= dout / _valid_count(lab, ignore)
    return np.moveaxis(g.reshape((prob.shape[0],) + prob.shape[2:] + (c,)), -1, 1)


SOFTMAX_CROSS_ENTROPY = OpDef(
    name="softmax_cross_entropy",
    family="loss",
    doc="Mean softmax cross-entropy over classes on dimension 1 (Caffe SoftmaxWithLoss); "
        "with `class_weights`, each position's term is weighted by its label's class "
        "(SegNet's weight_by_label_freqs), still divided by the count of positions.",
    ports=(Port("logits"), Port("label", differentiable=False, classes_of="logits")),
    attrs=(AttrSpec("ignore_label", "int", -1, doc="label value that contributes nothing"),
           AttrSpec("class_weights", "floats", (), doc="one weight per class (SegNet's "
                    "class_weighting); empty: every class weighs 1", at_least=0)),
    infer=_sce_check,
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


def accuracy_hits(ctx: OpCtx, logits: np.ndarray, label: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per position, as Caffe's AccuracyLayer decides: (counted: its label is not the
    ignore label, hit: counted and the label is among the top_k scores, the label with 0
    where it is ignored). A class tied with the true one counts as ranked above it."""
    c = logits.shape[1]
    z = np.moveaxis(logits, 1, -1).reshape(-1, c)
    lab = label.reshape(-1).astype(np.int64)
    ignore = ctx.attrs["ignore_label"]
    counted = lab != ignore if ignore is not None else np.ones(len(lab), dtype=bool)
    safe = np.where(counted, lab, 0)
    true = z[np.arange(len(lab)), safe]
    ahead = (z >= true[:, None]).sum(axis=1) - 1
    return counted, counted & (ahead < ctx.attrs["top_k"]), safe


def _accuracy_fwd(ctx, inputs, params, training, rng):
    counted, hit, _ = accuracy_hits(ctx, *inputs)
    count = int(counted.sum())
    # as Caffe: no counted position gives 0
    return np.asarray(hit.sum() / count if count else 0.0, dtype=np.float32), {}


_ACCURACY_ATTRS = (
    AttrSpec("top_k", "int", 1, at_least=1),
    AttrSpec("ignore_label", "int", None, doc="label value that is not counted; unset: "
             "every label counts"))
# both accuracies read the scores and the labels and are never differentiated
_ACCURACY_PORTS = (Port("logits", differentiable=False),
                   Port("label", differentiable=False, classes_of="logits"))

ACCURACY = OpDef(
    name="accuracy",
    family="loss",
    doc="Fraction of samples whose label is among the `top_k` highest scores (Caffe "
        "Accuracy), over the positions whose label is not `ignore_label` (0 when none "
        "is); a metric, never differentiated.",
    ports=_ACCURACY_PORTS,
    attrs=_ACCURACY_ATTRS,
    infer=_accuracy_infer,
    flops=lambda ctx: ctx.x.numel,
    role="metric",
    forward_ref=_accuracy_fwd,
    kernels=on_every_target({
        "fwd": "loss.accuracy_fwd"}),
)


# ---- Caffe's normalization of a loss (LossParameter.normalization) ------------------------
NORMALIZATIONS = ("FULL", "VALID", "BATCH_SIZE", "NONE")


def normalizer(mode: str, batch: int, count: int, valid: int) -> float:
    """What Caffe divides a summed loss by: every position (FULL), the positions whose
    label is not ignored (VALID), the batch (BATCH_SIZE) or nothing (NONE); at least 1."""
    value = {"FULL": count, "VALID": valid, "BATCH_SIZE": batch, "NONE": 1}[mode]
    return float(max(1, value))


# ---- sigmoid cross-entropy ---------------------------------------------------------------
def _same_count(ctx: OpCtx) -> TensorType:
    x, t = ctx.inputs[:2]
    if not x.shape or x.numel != t.numel:
        raise ValueError(f"inputs {x} and {t} must have the same number of elements")
    return _scalar(ctx)


def sigmoid_ce_normalizer(ctx: OpCtx, target: np.ndarray) -> float:
    valid = int(np.count_nonzero(target != ctx.attrs["ignore_label"]))
    return normalizer(ctx.attrs["normalization"], ctx.x.shape[0], ctx.x.numel, valid)


def _sigmoid_ce_fwd(ctx, inputs, params, training, rng):
    x, t = inputs[0], inputs[1].reshape(inputs[0].shape)
    # -(t log s(x) + (1 - t) log(1 - s(x))) = max(x, 0) - x t + log(1 + e^-|x|)
    per = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    per = np.where(t != ctx.attrs["ignore_label"], per, 0.0)
    return np.asarray(per.sum() / sigmoid_ce_normalizer(ctx, t), dtype=x.dtype), {}


def _sigmoid_ce_dx(ctx, saved, dout, index):
    x, t = saved["logits"], saved["target"].reshape(saved["logits"].shape)
    g = np.where(t != ctx.attrs["ignore_label"], 1.0 / (1.0 + np.exp(-x)) - t, 0.0)
    return g * (dout / sigmoid_ce_normalizer(ctx, t))


SIGMOID_CROSS_ENTROPY_LOSS = OpDef(
    name="sigmoid_cross_entropy_loss",
    family="loss",
    doc="Cross-entropy of sigmoid(logits) against targets in [0, 1], element by element, "
        "summed and divided per `normalization` (Caffe SigmoidCrossEntropyLoss; Caffe's "
        "default divides by the batch). Computed from the logits without overflow.",
    ports=(Port("logits"), Port("target", differentiable=False)),
    attrs=(AttrSpec("normalization", "choice", "BATCH_SIZE", NORMALIZATIONS),
           AttrSpec("ignore_label", "int", -1, doc="target value that contributes nothing")),
    infer=_same_count,
    flops=lambda ctx: 6 * ctx.x.numel,
    grads=(GradRule("logits", frozenset({"logits", "target"}), lambda ctx: 5 * ctx.x.numel,
                    _sigmoid_ce_dx),),
    role="loss",
    forward_ref=_sigmoid_ce_fwd,
    kernels=on_every_target({"fwd": "loss.sigmoid_cross_entropy_loss_fwd",
                             "dx:logits": "loss.sigmoid_cross_entropy_loss_dx"}),
)


# ---- hinge -------------------------------------------------------------------------------
def _hinge_infer(ctx: OpCtx) -> TensorType:
    scores, label = ctx.inputs
    if len(scores.shape) < 2 or label.numel != scores.shape[0]:
        raise ValueError(f"label {label} must hold one class per sample of {scores}")
    return _scalar(ctx)


def hinge_margins(scores: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(margins, signs) over [N, D]: max(0, 1 + sign * score) with sign -1 at the true
    class and +1 elsewhere."""
    n = scores.shape[0]
    x = scores.reshape(n, -1)
    sign = np.ones_like(x)
    sign[np.arange(n), label.reshape(-1).astype(np.int64)] = -1.0
    return np.maximum(0.0, 1.0 + sign * x), sign


def _hinge_fwd(ctx, inputs, params, training, rng):
    m, _ = hinge_margins(*inputs)
    m = m if ctx.attrs["norm"] == "L1" else m * m
    return np.asarray(m.sum() / inputs[0].shape[0], dtype=inputs[0].dtype), {}


def _hinge_dx(ctx, saved, dout, index):
    scores = saved["scores"]
    m, sign = hinge_margins(scores, saved["label"])
    g = (m > 0) * sign if ctx.attrs["norm"] == "L1" else 2 * m * sign
    return (g * (dout / scores.shape[0])).reshape(scores.shape)


HINGE_LOSS = OpDef(
    name="hinge_loss",
    family="loss",
    doc="One-versus-all hinge loss over the D scores of each sample: the sum of max(0, 1 - "
        "x_label) and max(0, 1 + x_j) for j != label, squared with `norm=L2`, divided by "
        "the batch (Caffe HingeLoss).",
    ports=(Port("scores"), Port("label", differentiable=False)),
    attrs=(AttrSpec("norm", "choice", "L1", ("L1", "L2")),),
    infer=_hinge_infer,
    flops=lambda ctx: 3 * ctx.x.numel,
    grads=(GradRule("scores", frozenset({"scores", "label"}), lambda ctx: 3 * ctx.x.numel,
                    _hinge_dx),),
    role="loss",
    forward_ref=_hinge_fwd,
    kernels=on_every_target({"fwd": "loss.hinge_loss_fwd", "dx:scores": "loss.hinge_loss_dx"}),
)


# ---- infogain ----------------------------------------------------------------------------
FLT_MIN = float(np.finfo(np.float32).tiny)  # Caffe clamps probabilities to it before log


def infogain_split(ctx: OpCtx) -> tuple[int, int, int]:
    """(outer, classes, inner) around the class axis."""
    shape = ctx.x.shape
    axis = ctx.attrs["axis"] % len(shape) if shape else 0
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def _infogain_infer(ctx: OpCtx) -> TensorType:
    logits, label = ctx.inputs[:2]
    axis = ctx.attrs["axis"]
    if not -len(logits.shape) <= axis < len(logits.shape):
        raise ValueError(f"infogain axis={axis} is out of range for {logits}")
    outer, c, inner = infogain_split(ctx)
    if label.numel != outer * inner:
        raise ValueError(f"label {label} must hold one class per position of {logits} "
                         f"({outer * inner} labels)")
    if len(ctx.inputs) > 2 and ctx.inputs[2].numel != c * c:
        raise ValueError(f"infogain {ctx.inputs[2]} must be a {c} x {c} matrix")
    return _scalar(ctx)


def _infogain_parts(ctx, logits, label):
    outer, c, inner = infogain_split(ctx)
    z = np.moveaxis(logits.reshape(outer, c, inner), 1, -1).reshape(-1, c)
    z = z - z.max(axis=1, keepdims=True)
    prob = np.exp(z)
    prob /= prob.sum(axis=1, keepdims=True)
    lab = label.reshape(-1).astype(np.int64)
    valid = lab != ctx.attrs["ignore_label"]
    norm = normalizer(ctx.attrs["normalization"], outer, outer * inner, int(valid.sum()))
    return prob, np.where(valid, lab, 0), valid, norm


def _infogain_matrix(ctx, inputs, params) -> np.ndarray:
    c = infogain_split(ctx)[1]
    h = inputs[2] if len(inputs) > 2 else params["infogain"]
    return np.asarray(h).reshape(c, c)


def _infogain_fwd(ctx, inputs, params, training, rng):
    h = _infogain_matrix(ctx, inputs, params)
    prob, lab, valid, norm = _infogain_parts(ctx, inputs[0], inputs[1])
    per = -(h[lab] * np.log(np.maximum(prob, FLT_MIN))).sum(axis=1)
    outer, c, inner = infogain_split(ctx)
    shaped = np.moveaxis(prob.reshape(outer, inner, c), -1, 1).reshape(inputs[0].shape)
    return (np.asarray((per * valid).sum() / norm, dtype=inputs[0].dtype), {"prob": shaped})


def _infogain_dx(ctx, saved, dout, index):
    """d/dz of -sum_l H[y, l] log p_l = p * sum_l H[y, l] - H[y] (as Caffe, ignoring the
    clamp at FLT_MIN)."""
    outer, c, inner = infogain_split(ctx)
    prob = np.moveaxis(saved["prob"].reshape(outer, c, inner), 1, -1).reshape(-1, c)
    h = np.asarray(saved["infogain"]).reshape(c, c)
    lab = saved["label"].reshape(-1).astype(np.int64)
    valid = lab != ctx.attrs["ignore_label"]
    lab = np.where(valid, lab, 0)
    norm = normalizer(ctx.attrs["normalization"], outer, outer * inner, int(valid.sum()))
    g = (prob * h[lab].sum(axis=1, keepdims=True) - h[lab]) * valid[:, None] * (dout / norm)
    return np.moveaxis(g.reshape(outer, inner, c), -1, 1).reshape(ctx.x.shape)


_INFOGAIN_ATTRS = (AttrSpec("axis", "int", 1, doc="the class dimension"),
                   AttrSpec("normalization", "choice", "VALID", NORMALIZATIONS),
                   AttrSpec("ignore_label", "int", -1,
                            doc="label value that contributes nothing"))


def _infogain_op(name: str, doc: str, ports, params) -> OpDef:
    return OpDef(
        name=name, family="loss", doc=doc, ports=ports, attrs=_INFOGAIN_ATTRS,
        params=params, infer=_infogain_infer,
        flops=lambda ctx: 7 * ctx.x.numel,
        grads=(GradRule("logits", frozenset({"prob", "label", "infogain"}),
                        lambda ctx: 4 * ctx.x.numel, _infogain_dx),),
        aux=(AuxSpec("prob", lambda ctx: ctx.x.shape),),
        role="loss", forward_ref=_infogain_fwd,
        kernels=on_every_target({"fwd": "loss.infogain_loss_fwd",
                                 "dx:logits": "loss.infogain_loss_dx"}))


INFOGAIN_LOSS = _infogain_op(
    "infogain_loss",
    "Softmax over `axis`, then -sum_l H[label, l] log p_l per position, normalized per "
    "`normalization` (Caffe InfogainLoss with H from its `source` file). H is the "
    "`infogain` parameter, a C x C matrix that never trains (the identity until loaded: "
    "then this is the softmax cross-entropy).",
    (Port("logits"), Port("label", differentiable=False)),
    (ParamSlot("infogain", lambda ctx: (infogain_split(ctx)[1],) * 2, learnable=False,
               init="identity"),))

INFOGAIN_LOSS_H = _infogain_op(
    "infogain_loss_h",
    "infogain_loss with H given as a third input of C x C values (Caffe InfogainLoss with "
    "three bottoms); no gradient flows into H or the label.",
    (Port("logits"), Port("label", differentiable=False),
     Port("infogain", differentiable=False)), ())


# ---- smooth L1 (Fast R-CNN) --------------------------------------------------------------
def _smooth_l1_infer(ctx: OpCtx) -> TensorType:
    out = _pair_infer(ctx)
    for w in ctx.inputs[2:]:
        if w.numel != ctx.x.numel:
            raise ValueError(f"weights {w} must have as many elements as {ctx.x}")
    return out


def _huber(d, sigma2):
    """(f(d), f'(d)): 0.5 sigma^2 d^2 inside |d| < 1 / sigma^2, |d| - 0.5 / sigma^2 out."""
    inside = np.abs(d) < 1.0 / sigma2
    return (np.where(inside, 0.5 * sigma2 * d * d, np.abs(d) - 0.5 / sigma2),
            np.where(inside, sigma2 * d, np.sign(d)))


def _smooth_l1_fwd(ctx, inputs, params, training, rng):
    a, b = inputs[0], inputs[1].reshape(inputs[0].shape)
    diff = a - b
    if len(inputs) > 2:
        diff = diff * inputs[2].reshape(a.shape)
    err, _ = _huber(diff, ctx.attrs["sigma"] ** 2)
    if len(inputs) > 3:
        err = err * inputs[3].reshape(a.shape)
    return np.asarray(err.sum() / a.shape[0], dtype=a.dtype), {"diff": diff}


def _smooth_l1_grad(sign: float, port: int):
    def grad(ctx, saved, dout, index):
        diff = saved["diff"]
        _, g = _huber(diff, ctx.attrs["sigma"] ** 2)
        for weights in ("inside", "outside"):
            if weights in saved:
                g = g * saved[weights].reshape(diff.shape)
        return (sign * dout / diff.shape[0] * g).reshape(ctx.inputs[port].shape)
    return grad


def _smooth_l1_op(name: str, doc: str, ports, needs) -> OpDef:
    return OpDef(
        name=name, family="loss", doc=doc, ports=ports,
        attrs=(AttrSpec("sigma", "float", 1.0, doc="the quadratic zone is |d| < 1/sigma^2"),),
        infer=_smooth_l1_infer,
        flops=lambda ctx: 5 * ctx.x.numel,
        grads=(GradRule("a", needs, lambda ctx: 3 * ctx.x.numel, _smooth_l1_grad(1.0, 0)),
               GradRule("b", needs, lambda ctx: 3 * ctx.x.numel, _smooth_l1_grad(-1.0, 1))),
        aux=(AuxSpec("diff", lambda ctx: ctx.x.shape),),
        role="loss", forward_ref=_smooth_l1_fwd,
        kernels={"cpu": {"fwd": "loss.smooth_l1_loss_fwd", "dx:a": "loss.smooth_l1_loss_dx_a",
                         "dx:b": "loss.smooth_l1_loss_dx_b"},
                 "cuda": {"fwd": "loss.smooth_l1_loss_fwd", "dx:a": "loss.smooth_l1_loss_dx",
                          "dx:b": "loss.smooth_l1_loss_dx"}})


SMOOTH_L1_LOSS = _smooth_l1_op(
    "smooth_l1_loss",
    "Fast R-CNN's SmoothL1Loss: sum over elements of f(a - b), f(d) = 0.5 (sigma d)^2 for "
    "|d| < 1/sigma^2 and |d| - 0.5/sigma^2 beyond, divided by the batch.",
    (Port("a"), Port("b")), frozenset({"diff"}))

SMOOTH_L1_LOSS_WEIGHTED = _smooth_l1_op(
    "smooth_l1_loss_weighted",
    "smooth_l1_loss with Fast R-CNN's inside and outside weights (its four-bottom form): "
    "sum of outside * f(inside * (a - b)), divided by the batch; the weights take no "
    "gradient.",
    (Port("a"), Port("b"), Port("inside", differentiable=False),
     Port("outside", differentiable=False)), frozenset({"diff", "inside", "outside"}))

SMOOTH_L1_LOSS_INSIDE = _smooth_l1_op(
    "smooth_l1_loss_inside",
    "smooth_l1_loss with the loss weights of the original Fast R-CNN (its three-bottom "
    "form, before the outside weights): sum of f(inside * (a - b)), divided by the batch; "
    "the weights take no gradient.",
    (Port("a"), Port("b"), Port("inside", differentiable=False)),
    frozenset({"diff", "inside"}))


# ---- per-class accuracy and segmentation scores: metrics of a vector -------------------
def _per_class_infer(ctx: OpCtx) -> TensorType:
    _accuracy_infer(ctx)
    return TensorType("f32", (ctx.x.shape[1],))


def _per_class_fwd(ctx, inputs, params, training, rng):
    counted, hit, lab = accuracy_hits(ctx, *inputs)
    classes = inputs[0].shape[1]
    seen = np.bincount(lab[counted], minlength=classes)
    hits = np.bincount(lab[hit], minlength=classes)
    # as Caffe: a class no counted position has scores 0
    out = np.where(seen > 0, hits / np.maximum(seen, 1), 0.0)
    return out.astype(np.float32), {}


ACCURACY_PER_CLASS = OpDef(
    name="accuracy_per_class",
    family="loss",
    doc="Caffe Accuracy's second top: for each class c, the fraction of the counted "
        "positions labelled c whose label is among the `top_k` highest scores (0 for a "
        "class no counted position has), a vector of the C classes; a metric, never "
        "differentiated.",
    ports=_ACCURACY_PORTS,
    attrs=_ACCURACY_ATTRS,
    infer=_per_class_infer,
    flops=lambda ctx: ctx.x.numel,
    role="metric",
    forward_ref=_per_class_fwd,
    kernels=on_every_target({
        "fwd": "loss.accuracy_per_class_fwd"}),
)

SEG_SCORES = ("pixel accuracy", "mean class accuracy", "mean IoU")


def _seg_accuracy_infer(ctx: OpCtx) -> TensorType:
    scores, label = ctx.inputs
    if len(scores.shape) != 4:
        raise ValueError(f"scores {scores} must be [N, C, H, W]")
    n, _, h, w = scores.shape
    if label.shape not in ((n, 1, h, w), (n, h, w)):
        raise ValueError(f"label {label} does not match scores {scores} (expected "
                         f"{(n, 1, h, w)})")
    return TensorType("f32", (1, 1, 1, len(SEG_SCORES)))


def seg_scores(confusion: np.ndarray) -> tuple[float, float, float]:
    """(pixel accuracy, mean class accuracy, mean IoU) of a confusion matrix (rows: the
    true class, columns: the predicted one), as the DeepLab fork's ConfusionMatrix computes
    them: pixel accuracy 0 when nothing is counted; the class accuracy averaged over the
    classes that occur (0 when none does); IoU averaged over every class, a class with an
    empty union scoring 1."""
    cm = confusion.astype(np.float64)
    total, diag = cm.sum(), np.diag(cm)
    rows, cols = cm.sum(axis=1), cm.sum(axis=0)
    pixel = diag.sum() / total if total else 0.0
    present = rows > 0
    recall = (diag[present] / rows[present]).mean() if present.any() else 0.0
    union = rows + cols - diag
    iou = np.where(union == diag, 1.0, diag / np.where(union > 0, union, 1.0)).mean()
    return float(pixel), float(recall), float(iou)


def seg_confusion(ctx: OpCtx, scores: np.ndarray, label: np.ndarray) -> np.ndarray:
    """The batch's confusion matrix: each position whose label is not one of
    `ignore_label`, counted at (its label, the class of its highest score; of tied
    scores the highest class, as the fork's sort of (score, class) pairs picks)."""
    c = scores.shape[1]
    z = np.moveaxis(scores, 1, -1).reshape(-1, c)
    pred = c - 1 - np.argmax(z[:, ::-1], axis=1)
    lab = label.reshape(-1).astype(np.int64)
    counted = ~np.isin(lab, np.asarray(ctx.attrs["ignore_label"], dtype=np.int64))
    flat = lab[counted] * c + pred[counted]
    return np.bincount(flat, minlength=c * c).reshape(c, c)


def _seg_accuracy_fwd(ctx, inputs, params, training, rng):
    scores = seg_scores(seg_confusion(ctx, *inputs))
    return np.asarray(scores, dtype=np.float32).reshape(1, 1, 1, len(SEG_SCORES)), {}


SEG_ACCURACY = OpDef(
    name="seg_accuracy",
    family="loss",
    doc="The DeepLab fork's SegAccuracy: from the batch's confusion matrix (each pixel "
        "whose label is not one of `ignore_label`, at its label and its highest-scoring "
        "class, a tie to the higher class), [pixel accuracy, mean class accuracy over the "
        "classes that occur, mean IoU over every class (an empty class scores 1)] as a "
        "[1, 1, 1, 3] tensor; a metric, never differentiated.",
    ports=(Port("scores", differentiable=False),
           Port("label", differentiable=False, classes_of="scores")),
    attrs=(AttrSpec("ignore_label", "ints", (), doc="label values that are not counted"),),
    infer=_seg_accuracy_infer,
    flops=lambda ctx: ctx.x.numel,
    role="metric",
    forward_ref=_seg_accuracy_fwd,
    kernels=on_every_target({
        "fwd": "loss.seg_accuracy_fwd"}),
)


# ---- SSD's MultiBoxLoss ------------------------------------------------------------------
def _multibox_dims(ctx: OpCtx) -> tuple[int, int, int]:
    """(N, priors P, classes C), checked against the four inputs."""
    loc, conf, prior, gt = ctx.inputs
    c = ctx.attrs["num_classes"]
    if len(prior.shape) != 3 or prior.shape[:2] != (1, 2) or prior.shape[2] % 4:
        raise ValueError(f"priors {prior} must be [1, 2, P * 4] (boxes, then variances)")
    p = prior.shape[2] // 4
    n = loc.shape[0] if loc.shape else 0
    if not loc.shape or loc.numel != n * p * 4:
        raise ValueError(f"loc {loc} must hold 4 values for each of the {p} priors per sample")
    if not conf.shape or conf.shape[0] != n or conf.numel != n * p * c:
        raise ValueError(f"conf {conf} must hold {c} scores for each of the {p} priors per "
                         f"sample of the {n}")
    if len(gt.shape) != 4 or gt.shape[:2] != (1, 1) or gt.shape[3] != 8:
        raise ValueError(f"ground truth {gt} must be [1, 1, G, 8]")
    if not 0 <= ctx.attrs["background_label_id"] < c:
        raise ValueError(f"background_label_id {ctx.attrs['background_label_id']} is not one "
                         f"of the {c} classes")
    return n, p, c


def _multibox_infer(ctx: OpCtx) -> TensorType:
    _multibox_dims(ctx)
    return _scalar(ctx)


def _multibox_fwd(ctx, inputs, params, training, rng):
    loc, conf, prior, gt = inputs
    n, p, c = _multibox_dims(ctx)
    targets, labels = mb.decide(ctx.attrs, loc, conf, prior, gt)
    norm = mb.normalizer_of(ctx.attrs, n, p, labels)
    positive = (labels >= 0) & (labels != ctx.attrs["background_label_id"])
    d = loc.reshape(n, p, 4) - targets
    loc_loss = (mb.smooth_l1(d) * positive[..., None]).sum()
    logp = mb.log_softmax(conf.reshape(n, p, c).astype(np.float64))
    counted = labels >= 0
    prob = np.exp(logp)[counted, labels[counted]]
    conf_loss = -np.log(np.maximum(prob, mb.FLT_MIN)).sum()
    loss = (ctx.attrs["loc_weight"] * loc_loss + conf_loss) / norm
    return np.asarray(loss, dtype=loc.dtype), {
        "targets": targets.astype(loc.dtype), "labels": labels.astype(loc.dtype)}


def _multibox_dloc(ctx, saved, dout, index):
    loc, targets, labels = saved["loc"], saved["targets"], saved["labels"]
    n, p = labels.shape
    positive = (labels >= 0) & (labels != ctx.attrs["background_label_id"])
    d = loc.reshape(n, p, 4) - targets
    scale = ctx.attrs["loc_weight"] * dout / mb.normalizer_of(ctx.attrs, n, p, labels)
    return (mb.smooth_l1_grad(d) * positive[..., None] * scale).reshape(loc.shape)


def _multibox_dconf(ctx, saved, dout, index):
    conf, labels = saved["conf"], saved["labels"]
    n, p = labels.shape
    c = ctx.attrs["num_classes"]
    g = np.exp(mb.log_softmax(conf.reshape(n, p, c).astype(np.float64)))
    counted = labels >= 0
    lab = labels.astype(np.int64)
    g[counted, lab[counted]] -= 1.0
    g *= counted[..., None] * (dout / mb.normalizer_of(ctx.attrs, n, p, labels))
    return g.reshape(conf.shape)


def _multibox_aux(ctx: OpCtx) -> tuple[int, ...]:
    n, p, _ = _multibox_dims(ctx)
    return (n, p)


MULTIBOX_LOSS = OpDef(
    name="multibox_loss",
    family="loss",
    doc="SSD's MultiBoxLoss (share_location, CENTER_SIZE codes, variances in the priors): "
        "priors matched to the ground-truth boxes (bipartite, then per prediction above "
        "`overlap_threshold`), hard negatives mined (MAX_NEGATIVE: `neg_pos_ratio` per "
        "positive, below `neg_overlap`), then `loc_weight` * smooth L1 of the positives' "
        "offsets plus the softmax cross-entropy of positives and negatives, divided per "
        "`normalization`. The matching and the mining are decisions of the forward; "
        "gradients reach loc and conf only.",
    ports=(Port("loc"), Port("conf"), Port("priors", differentiable=False),
           Port("ground_truth", differentiable=False)),
    attrs=(AttrSpec("num_classes", "int", REQUIRED, at_least=1),
           AttrSpec("overlap_threshold", "float", 0.5, at_least=0, at_most=1),
           AttrSpec("background_label_id", "int", 0, at_least=0),
           AttrSpec("use_difficult_gt", "bool", True),
           AttrSpec("neg_pos_ratio", "float", 3.0, at_least=0),
           AttrSpec("neg_overlap", "float", 0.5, at_least=0, at_most=1),
           AttrSpec("loc_weight", "float", 1.0),
           AttrSpec("match_type", "choice", "PER_PREDICTION",
                    choices=("BIPARTITE", "PER_PREDICTION")),
           AttrSpec("mining_type", "choice", "MAX_NEGATIVE", choices=("NONE", "MAX_NEGATIVE"),
                    doc="NONE: the positives alone"),
           AttrSpec("normalization", "choice", "VALID", choices=NORMALIZATIONS,
                    doc="VALID divides by the number of positives")),
    infer=_multibox_infer,
    flops=lambda ctx: 8 * ctx.inputs[1].numel + 20 * ctx.x.numel,
    grads=(GradRule("loc", frozenset({"loc", "targets", "labels"}),
                    lambda ctx: 3 * ctx.x.numel, _multibox_dloc),
           GradRule("conf", frozenset({"conf", "labels"}),
                    lambda ctx: 4 * ctx.inputs[1].numel, _multibox_dconf)),
    aux=(AuxSpec("targets", lambda ctx: _multibox_aux(ctx) + (4,)),
         AuxSpec("labels", _multibox_aux)),
    role="loss",
    forward_ref=_multibox_fwd,
    kernels=on_every_target({"fwd": "loss.multibox_loss_fwd",
                             "dx:loc": "loss.multibox_loss_dx_loc",
                             "dx:conf": "loss.multibox_loss_dx_conf"}),
)


OPS = (SOFTMAX_CROSS_ENTROPY, EUCLIDEAN_LOSS, CONTRASTIVE_LOSS, ACCURACY,
       SIGMOID_CROSS_ENTROPY_LOSS, HINGE_LOSS, INFOGAIN_LOSS, INFOGAIN_LOSS_H, SMOOTH_L1_LOSS,
       SMOOTH_L1_LOSS_WEIGHTED, ACCURACY_PER_CLASS, SEG_ACCURACY, MULTIBOX_LOSS,
       SMOOTH_L1_LOSS_INSIDE)
