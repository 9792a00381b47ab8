"""Losses and metrics on the CPU: softmax cross-entropy, Euclidean, contrastive, accuracy,
and Caffe's sigmoid cross-entropy, hinge, infogain and (Fast R-CNN's) smooth L1.

Logits are seen as [N, C, S] (classes on dimension 1, S spatial positions) and labels as
N*S values in the same sample-major order. A loss's forward writes its scalar into the 0-d
`out`; its dX reads the loss weight from the 0-d `dout`. Sums accumulate in float64.

A label outside [0, C) that is not the ignore label makes the reference fail (or, when
negative, silently wrap around); here it raises DataError instead of reading past the row.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from bwplan.errors import DataError
from bwplan.kernels.cpu import multibox as mbk
from bwplan.kernels.cpu.threads import parallel_from
from bwplan.kernels.cpu.views import flat, ncs, scalar, view
from bwplan.ops.loss import FLT_MIN, infogain_split, normalizer, seg_scores
from bwplan.source import Span


def _bad_label(where: int, label: np.ndarray, classes: int) -> DataError:
    return DataError(Span.synthetic("batch"), f"label {label.reshape(-1)[where]} at position "
                     f"{where} is outside the {classes} classes")


# ---- softmax cross-entropy -----------------------------------------------------------------
@njit(cache=True)
def _check_labels(label, classes, ignore):
    """The first position of a label outside [0, classes) and not `ignore`, or -1."""
    for i in range(label.size):
        lab = int(label[i])
        if lab != ignore and (lab < 0 or lab >= classes):
            return i
    return -1


def _class_weights(ctx) -> np.ndarray:
    """The per-class weights, or an empty array when the classes are not weighted."""
    return np.asarray(ctx.attrs.get("class_weights", ()), dtype=np.float64)


@parallel_from()
@njit(cache=True, parallel=True)
def _sce_fwd(z, label, ignore, prob, keep_prob, weights):
    """Sum of -log softmax(z)[label] over the counted positions (times the label's class
    weight when `weights` is not empty), and their number; the probabilities too when
    kept. Parallel over samples, reduced by Numba."""
    c_n, s_n = z.shape[1], z.shape[2]
    loss = 0.0
    count = 0
    for n in prange(z.shape[0]):
        for s in range(s_n):
            top = z[n, 0, s]
            for c in range(1, c_n):
                top = max(top, z[n, c, s])
            total = 0.0
            for c in range(c_n):
                total += np.exp(z[n, c, s] - top)
            log_total = np.log(total)
            lab = int(label[n * s_n + s])
            if lab != ignore:
                term = top + log_total - z[n, lab, s]
                loss += term * weights[lab] if weights.size else term
                count += 1
            if keep_prob:
                for c in range(c_n):
                    prob[n, c, s] = np.exp(z[n, c, s] - top - log_total)
    return loss, count


@parallel_from()
@njit(cache=True, parallel=True)
def _sce_back(prob, label, ignore, scale, weights, out):
    """(prob - onehot(label)) * scale (times the label's class weight when `weights` is not
    empty) at counted positions, 0 at ignored ones."""
    c_n, s_n = prob.shape[1], prob.shape[2]
    for n in prange(prob.shape[0]):
        for s in range(s_n):
            lab = int(label[n * s_n + s])
            if lab == ignore:
                for c in range(c_n):
                    out[n, c, s] = 0
                continue
            weight = scale * weights[lab] if weights.size else scale
            for c in range(c_n):
                out[n, c, s] = prob[n, c, s] * weight
            out[n, lab, s] -= weight


def _counted(label: np.ndarray, ignore: int) -> int:
    """The positions whose label is not `ignore` (at least 1). NumPy, not a Numba loop:
    one pass over N labels, where compiling a loop cost 0.1 s of a cold start."""
    return max(int(np.count_nonzero(label.astype(np.int64, copy=False) != ignore)), 1)


def softmax_cross_entropy_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    z, label = ncs(inputs[0]), flat(inputs[1])
    ignore = ctx.attrs["ignore_label"]
    bad = _check_labels(label, z.shape[1], ignore)
    if bad >= 0:
        raise _bad_label(bad, label, z.shape[1])
    keep = "prob" in aux
    prob = ncs(aux["prob"]) if keep else z  # never written when not kept
    loss, count = _sce_fwd(z, label, ignore, prob, keep, _class_weights(ctx))
    out[()] = loss / max(count, 1)


def softmax_cross_entropy_dx(ctx, saved, dout, index, out) -> None:
    prob, label = ncs(saved["prob"]), flat(saved["label"])
    ignore = ctx.attrs["ignore_label"]
    scale = scalar(dout) / _counted(label, ignore)
    _sce_back(prob, label, ignore, scale, _class_weights(ctx), ncs(out))


# ---- Euclidean -----------------------------------------------------------------------------
@njit(cache=True)
def _euclid(a, b, diff, keep_diff):
    """Sum of (a - b)^2; diff = a - b when kept. Serial: one pass over two vectors."""
    acc = 0.0
    for i in range(a.size):
        d = a[i] - b[i]
        acc += d * d
        if keep_diff:
            diff[i] = d
    return acc


@njit(cache=True)
def _scaled(src, coef, out):
    for i in range(src.size):
        out[i] = src[i] * coef


def euclidean_loss_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    a, b = flat(inputs[0]), flat(inputs[1])
    keep = "diff" in aux
    total = _euclid(a, b, flat(aux["diff"]) if keep else a, keep)
    out[()] = total / (2 * inputs[0].shape[0])


def _euclid_dx(sign: float):
    """d/da = diff * w / N, d/db = -diff * w / N: both read only the saved diff."""
    def dx(ctx, saved, dout, index, out) -> None:
        coef = sign * scalar(dout) / ctx.inputs[0].shape[0]
        _scaled(flat(saved["diff"]), coef, flat(out))
    return dx


euclidean_loss_dx_a = _euclid_dx(1.0)
euclidean_loss_dx_b = _euclid_dx(-1.0)


# ---- contrastive ---------------------------------------------------------------------------
@njit(cache=True)
def _contrastive(a, b, sim, margin, legacy, diff, dist_sq, keep_diff, keep_dist):
    """Sum over samples of d^2 (similar) or the margin hinge (dissimilar). a and b are
    [N, D]; Caffe truncates the flag to an int, so anything in (-1, 1) is dissimilar."""
    total = 0.0
    for n in range(a.shape[0]):
        acc = 0.0
        for j in range(a.shape[1]):
            d = a[n, j] - b[n, j]
            acc += d * d
            if keep_diff:
                diff[n, j] = d
        if keep_dist:
            dist_sq[n] = acc
        if int(sim[n]) != 0:
            total += acc
        elif legacy:
            total += max(margin - acc, 0.0)
        else:
            total += max(margin - np.sqrt(acc), 0.0) ** 2
    return total


@njit(cache=True)
def _contrastive_back(diff, dist_sq, sim, margin, legacy, coef, out):
    """Similar pairs pull with diff; dissimilar pairs inside the margin push (the exact
    derivative; 0 at distance 0, where the loss has none)."""
    for n in range(diff.shape[0]):
        d2 = dist_sq[n]
        if int(sim[n]) != 0:
            k = 1.0
        elif legacy:
            k = -1.0 if margin - d2 > 0 else 0.0
        else:
            dist = np.sqrt(d2)
            k = -max(margin - dist, 0.0) / dist if dist > 0 else 0.0
        for j in range(diff.shape[1]):
            out[n, j] = diff[n, j] * (k * coef)


def _rows(a: np.ndarray) -> np.ndarray:
    return view(a, (a.shape[0], -1))


def contrastive_loss_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    a = _rows(inputs[0])
    b = view(inputs[1], a.shape)
    keep_diff, keep_dist = "diff" in aux, "dist_sq" in aux
    diff = _rows(aux["diff"]) if keep_diff else a
    dist_sq = aux["dist_sq"] if keep_dist else np.empty(0, a.dtype)
    total = _contrastive(a, b, flat(inputs[2]), ctx.attrs["margin"], ctx.attrs["legacy"],
                         diff, dist_sq, keep_diff, keep_dist)
    out[()] = total / (2 * a.shape[0])


def _contrastive_dx(sign: float):
    def dx(ctx, saved, dout, index, out) -> None:
        diff = _rows(saved["diff"])
        coef = sign * scalar(dout) / diff.shape[0]
        _contrastive_back(diff, saved["dist_sq"], flat(saved["sim"]), ctx.attrs["margin"],
                          ctx.attrs["legacy"], coef, view(out, diff.shape))
    return dx


contrastive_loss_dx_a = _contrastive_dx(1.0)
contrastive_loss_dx_b = _contrastive_dx(-1.0)


# ---- accuracy ------------------------------------------------------------------------------
@njit(cache=True)
def _top_k_hits(z, label, top_k, has_ignore, ignore, seen, hits):
    """Count the positions whose label is not ignored into seen[label], and those whose
    label is among the top_k scores into hits[label]; a score tied with the label's counts
    as ranked above it, as in Caffe."""
    c_n, s_n = z.shape[1], z.shape[2]
    for n in range(z.shape[0]):
        for s in range(s_n):
            lab = int(label[n * s_n + s])
            if has_ignore and lab == ignore:
                continue
            seen[lab] += 1
            true = z[n, lab, s]
            ahead = -1
            for c in range(c_n):
                if z[n, c, s] >= true:
                    ahead += 1
            if ahead < top_k:
                hits[lab] += 1


def _accuracy_counts(ctx, inputs) -> tuple[np.ndarray, np.ndarray]:
    """(counted positions per class, hits per class)."""
    z, label = ncs(inputs[0]), flat(inputs[1])
    ignore = ctx.attrs["ignore_label"]
    # 0 is always a valid class, so passing it as the ignore label ignores nothing
    bad = _check_labels(label, z.shape[1], 0 if ignore is None else ignore)
    if bad >= 0:
        raise _bad_label(bad, label, z.shape[1])
    seen = np.zeros(z.shape[1], dtype=np.int64)
    hits = np.zeros(z.shape[1], dtype=np.int64)
    _top_k_hits(z, label, ctx.attrs["top_k"], ignore is not None,
                0 if ignore is None else ignore, seen, hits)
    return seen, hits


def accuracy_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    seen, hits = _accuracy_counts(ctx, inputs)
    count = int(seen.sum())
    out[()] = hits.sum() / count if count else 0.0


def accuracy_per_class_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    seen, hits = _accuracy_counts(ctx, inputs)
    out[:] = np.where(seen > 0, hits / np.maximum(seen, 1), 0.0)


@njit(cache=True)
def _confusion(z, label, ignored, out):
    """Count each position whose label is not in `ignored` at (label, the class of its
    highest score, the highest class among tied scores)."""
    c_n, s_n = z.shape[1], z.shape[2]
    for n in range(z.shape[0]):
        for s in range(s_n):
            lab = int(label[n * s_n + s])
            skip = False
            for k in range(ignored.size):
                if lab == ignored[k]:
                    skip = True
            if skip:
                continue
            best = 0
            for c in range(1, c_n):
                if z[n, c, s] >= z[n, best, s]:
                    best = c
            out[lab, best] += 1


def seg_accuracy_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    z, label = ncs(inputs[0]), flat(inputs[1])
    ignored = np.asarray(ctx.attrs["ignore_label"], dtype=np.int64)
    lab = label.astype(np.int64)
    bad = ~np.isin(lab, ignored) & ((lab < 0) | (lab >= z.shape[1]))
    if bad.any():
        raise _bad_label(int(np.argmax(bad)), label, z.shape[1])
    confusion = np.zeros((z.shape[1], z.shape[1]), dtype=np.int64)
    _confusion(z, label, ignored, confusion)
    out.reshape(-1)[:] = seg_scores(confusion)


# ---- sigmoid cross-entropy ---------------------------------------------------------------
@njit(cache=True)
def _sigmoid_ce(x, t, ignore):
    """(sum of the per-element losses over the counted elements, their number)."""
    loss, valid = 0.0, 0
    for i in range(x.size):
        if t[i] != ignore:
            v = x[i]
            loss += max(v, 0.0) - v * t[i] + np.log1p(np.exp(-abs(v)))
            valid += 1
    return loss, valid


@njit(cache=True)
def _sigmoid_ce_back(x, t, ignore, coef, out):
    for i in range(x.size):
        out[i] = (1.0 / (1.0 + np.exp(-x[i])) - t[i]) * coef if t[i] != ignore else 0.0


def _sigmoid_ce_norm(ctx, valid: int) -> float:
    return normalizer(ctx.attrs["normalization"], ctx.x.shape[0], ctx.x.numel, valid)


def sigmoid_cross_entropy_loss_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    loss, valid = _sigmoid_ce(flat(inputs[0]), flat(inputs[1]), ctx.attrs["ignore_label"])
    out[...] = loss / _sigmoid_ce_norm(ctx, valid)


def sigmoid_cross_entropy_loss_dx(ctx, saved, dout, index, out) -> None:
    t = flat(saved["target"])
    valid = int(np.count_nonzero(t != ctx.attrs["ignore_label"]))
    _sigmoid_ce_back(flat(saved["logits"]), t, ctx.attrs["ignore_label"],
                     scalar(dout) / _sigmoid_ce_norm(ctx, valid), flat(out))


# ---- hinge -------------------------------------------------------------------------------
@njit(cache=True)
def _hinge(x, label, squared, coef, grad, want_grad):
    """Sum over [N, D] of max(0, 1 + sign x) (squared), sign -1 at the label; with
    want_grad, grad = its derivative times coef instead."""
    loss = 0.0
    for n in range(x.shape[0]):
        lab = int(label[n])
        for d in range(x.shape[1]):
            sign = -1.0 if d == lab else 1.0
            m = max(0.0, 1.0 + sign * x[n, d])
            loss += m * m if squared else m
            if want_grad:
                grad[n, d] = sign * coef * (2.0 * m if squared else (1.0 if m > 0 else 0.0))
    return loss


_NO_IGNORE = -(2**62)  # the hinge loss ignores no label


def _hinge_label(label, classes: int) -> np.ndarray:
    lab = flat(label)
    bad = _check_labels(lab, classes, _NO_IGNORE)
    if bad >= 0:
        raise _bad_label(bad, lab, classes)
    return lab


def hinge_loss_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    n = ctx.x.shape[0]
    x = view(inputs[0], (n, ctx.x.numel // n))
    unused = np.empty((1, 1), x.dtype)
    loss = _hinge(x, _hinge_label(inputs[1], x.shape[1]), ctx.attrs["norm"] == "L2", 0.0,
                  unused, False)
    out[...] = loss / n


def hinge_loss_dx(ctx, saved, dout, index, out) -> None:
    n = ctx.x.shape[0]
    x = view(saved["scores"], (n, ctx.x.numel // n))
    _hinge(x, _hinge_label(saved["label"], x.shape[1]), ctx.attrs["norm"] == "L2",
           scalar(dout) / n, view(out, x.shape), True)


# ---- infogain ----------------------------------------------------------------------------
@njit(cache=True)
def _infogain(z, label, h, ignore, floor, prob, keep_prob):
    """z: [outer, C, inner]. Softmax over C, then the sum over counted positions of
    -sum_l H[label, l] log max(p_l, floor), and the number of counted positions."""
    loss, valid = 0.0, 0
    c_n = z.shape[1]
    p = np.empty(c_n)
    for o in range(z.shape[0]):
        for s in range(z.shape[2]):
            top = z[o, 0, s]
            for c in range(1, c_n):
                top = max(top, z[o, c, s])
            total = 0.0
            for c in range(c_n):
                p[c] = np.exp(z[o, c, s] - top)
                total += p[c]
            for c in range(c_n):
                p[c] /= total
                if keep_prob:
                    prob[o, c, s] = p[c]
            lab = int(label[o * z.shape[2] + s])
            if lab != ignore:
                valid += 1
                for c in range(c_n):
                    loss -= h[lab, c] * np.log(max(p[c], floor))
    return loss, valid


@njit(cache=True)
def _infogain_back(prob, label, h, ignore, coef, out):
    for o in range(prob.shape[0]):
        for s in range(prob.shape[2]):
            lab = int(label[o * prob.shape[2] + s])
            if lab == ignore:
                for c in range(prob.shape[1]):
                    out[o, c, s] = 0.0
                continue
            row = 0.0
            for c in range(prob.shape[1]):
                row += h[lab, c]
            for c in range(prob.shape[1]):
                out[o, c, s] = (prob[o, c, s] * row - h[lab, c]) * coef


def _infogain_setup(ctx, label):
    outer, c, inner = infogain_split(ctx)
    lab = flat(label)
    bad = _check_labels(lab, c, ctx.attrs["ignore_label"])
    if bad >= 0:
        raise _bad_label(bad, lab, c)
    return (outer, c, inner), lab


def _infogain_norm(ctx, outer: int, count: int, valid: int) -> float:
    return normalizer(ctx.attrs["normalization"], outer, count, valid)


def infogain_loss_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    shape, lab = _infogain_setup(ctx, inputs[1])
    h = inputs[2] if len(inputs) > 2 else params["infogain"]
    keep = "prob" in aux
    prob = view(aux["prob"], shape) if keep else np.empty((1, 1, 1), inputs[0].dtype)
    loss, valid = _infogain(view(inputs[0], shape), lab, view(h, shape[1:2] * 2),
                            ctx.attrs["ignore_label"], FLT_MIN, prob, keep)
    out[...] = loss / _infogain_norm(ctx, shape[0], shape[0] * shape[2], valid)


def infogain_loss_dx(ctx, saved, dout, index, out) -> None:
    shape, lab = _infogain_setup(ctx, saved["label"])
    valid = int(np.count_nonzero(lab != ctx.attrs["ignore_label"]))
    coef = scalar(dout) / _infogain_norm(ctx, shape[0], shape[0] * shape[2], valid)
    _infogain_back(view(saved["prob"], shape), lab, view(saved["infogain"], shape[1:2] * 2),
                   ctx.attrs["ignore_label"], coef, view(out, shape))


# ---- smooth L1 ---------------------------------------------------------------------------
@njit(cache=True)
def _smooth_l1(a, b, inside, outside, has_in, has_out, sigma2, diff, keep_diff):
    loss = 0.0
    for i in range(a.size):
        d = a[i] - b[i]
        if has_in:
            d *= inside[i]
        if keep_diff:
            diff[i] = d
        err = 0.5 * sigma2 * d * d if abs(d) < 1.0 / sigma2 else abs(d) - 0.5 / sigma2
        loss += err * outside[i] if has_out else err
    return loss


@njit(cache=True)
def _smooth_l1_back(diff, inside, outside, has_in, has_out, sigma2, coef, out):
    for i in range(diff.size):
        d = diff[i]
        g = sigma2 * d if abs(d) < 1.0 / sigma2 else (1.0 if d > 0 else (-1.0 if d < 0 else 0.0))
        if has_in:
            g *= inside[i]
        if has_out:
            g *= outside[i]
        out[i] = g * coef


def smooth_l1_loss_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    # inputs: a, b, and the inside and outside weights when the op has them (the
    # three-input form has inside weights only); a stands in for a missing one
    a = flat(inputs[0])
    w_in, w_out = (flat(w) if w is not None else a
                   for w in (inputs[2] if len(inputs) > 2 else None,
                             inputs[3] if len(inputs) > 3 else None))
    keep = "diff" in aux
    diff = flat(aux["diff"]) if keep else np.empty(1, a.dtype)
    loss = _smooth_l1(a, flat(inputs[1]), w_in, w_out, len(inputs) > 2, len(inputs) > 3,
                      ctx.attrs["sigma"] ** 2, diff, keep)
    out[...] = loss / ctx.x.shape[0]


def _smooth_l1_dx(sign: float):
    def dx(ctx, saved, dout, index, out) -> None:
        diff = flat(saved["diff"])
        w_in, w_out = (flat(saved[k]) if k in saved else diff for k in ("inside", "outside"))
        _smooth_l1_back(diff, w_in, w_out, "inside" in saved, "outside" in saved,
                        ctx.attrs["sigma"] ** 2, sign * scalar(dout) / ctx.x.shape[0],
                        flat(out))
    return dx


smooth_l1_loss_dx_a = _smooth_l1_dx(1.0)
smooth_l1_loss_dx_b = _smooth_l1_dx(-1.0)


# ---- SSD's MultiBoxLoss ------------------------------------------------------------------
def _multibox_shape(ctx) -> tuple[int, int, int]:
    n = ctx.inputs[0].shape[0]
    p = ctx.inputs[2].shape[2] // 4
    return n, p, ctx.attrs["num_classes"]


def _multibox_norm(ctx, positives: int) -> float:
    n, p, _ = _multibox_shape(ctx)
    return normalizer(ctx.attrs["normalization"], n, n * p, positives)


def multibox_loss_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    a = ctx.attrs
    n, p, c = _multibox_shape(ctx)
    loc = np.asarray(inputs[0], dtype=np.float64).reshape(n, p, 4)
    conf = np.asarray(inputs[1], dtype=np.float64).reshape(n, p, c)
    priors = np.asarray(inputs[2], dtype=np.float64).reshape(2, p, 4)
    rows = np.asarray(inputs[3], dtype=np.float64).reshape(-1, 8)
    bad = mbk.check_ground_truth(rows, n, a["background_label_id"])
    if bad >= 0:
        raise DataError(Span.synthetic("batch"), f"ground-truth row {rows[bad].tolist()}: "
                        f"its image is beyond the batch of {n} or its label is the "
                        f"background {a['background_label_id']}")
    targets, labels = np.empty((n, p, 4)), np.empty((n, p))
    mbk.decide(conf, priors[0], priors[1], rows, a["background_label_id"],
               a["use_difficult_gt"], a["match_type"] == "PER_PREDICTION",
               a["overlap_threshold"], a["mining_type"] == "MAX_NEGATIVE",
               a["neg_pos_ratio"], a["neg_overlap"], targets, labels)
    loc_sum, conf_sum, positives = mbk.loss_sums(loc, conf, targets, labels,
                                                 a["background_label_id"])
    out[()] = (a["loc_weight"] * loc_sum + conf_sum) / _multibox_norm(ctx, positives)
    if "targets" in aux:
        aux["targets"][...] = targets
    if "labels" in aux:
        aux["labels"][...] = labels


def _positives(ctx, labels: np.ndarray) -> int:
    return int(np.count_nonzero((labels >= 0) & (labels != ctx.attrs["background_label_id"])))


def multibox_loss_dx_loc(ctx, saved, dout, index, out) -> None:
    n, p, _ = _multibox_shape(ctx)
    labels = np.asarray(saved["labels"], dtype=np.float64).reshape(n, p)
    scale = ctx.attrs["loc_weight"] * scalar(dout) / _multibox_norm(ctx, _positives(ctx, labels))
    grad = np.empty((n, p, 4))
    mbk.loc_grad(np.asarray(saved["loc"], dtype=np.float64).reshape(n, p, 4),
                 np.asarray(saved["targets"], dtype=np.float64).reshape(n, p, 4), labels,
                 ctx.attrs["background_label_id"], scale, grad)
    out.reshape(-1)[:] = grad.reshape(-1)


def multibox_loss_dx_conf(ctx, saved, dout, index, out) -> None:
    n, p, c = _multibox_shape(ctx)
    labels = np.asarray(saved["labels"], dtype=np.float64).reshape(n, p)
    scale = scalar(dout) / _multibox_norm(ctx, _positives(ctx, labels))
    grad = np.empty((n, p, c))
    mbk.conf_grad(np.asarray(saved["conf"], dtype=np.float64).reshape(n, p, c), labels, scale,
                  grad)
    out.reshape(-1)[:] = grad.reshape(-1)
