"""SSD's MultiBoxLoss decisions, in NumPy: the reference of the loss op's forward
(bwplan/ops/loss.py) and what its gradients read. weiliu89/caffe's MultiBoxLossLayer, with
share_location, CENTER_SIZE codes and the variance in the prior blob:

1. ground truth: the rows [image, label, instance, xmin, ymin, xmax, ymax, difficult] of
   the annotation blob; an image of -1 is padding, a difficult box is skipped unless
   use_difficult_gt;
2. matching on the priors (use_prior_for_matching): Jaccard overlaps (normalised boxes,
   kept when above 1e-6); bipartite first (the largest overlap left, of unmatched priors
   and unmatched boxes, lowest prior then lowest box on a tie), then, for PER_PREDICTION,
   every prior still unmatched takes its best box whose overlap is at least
   overlap_threshold; each prior remembers its largest overlap with any box;
3. hard negatives (MAX_NEGATIVE): per image, of the unmatched priors whose largest overlap
   is below neg_overlap, the int(neg_pos_ratio * positives) with the largest softmax loss
   for the background class (a tie to the lower prior, where Caffe's sort leaves it open);
4. loss: loc_weight * sum of smooth L1 (x^2/2 below 1, |x| - 1/2 above) of loc - the
   encoded box over the positives, plus the softmax cross-entropy (probability clamped at
   FLT_MIN) over positives (their box's label) and negatives (background), both divided by
   Caffe's normalizer (VALID: the number of positives; at least 1).

The matching and the mining are decisions of the forward; the gradients hold them fixed.
"""
from __future__ import annotations

import numpy as np

from bwplan.errors import DataError
from bwplan.source import Span

FLT_MIN = np.float32(np.finfo(np.float32).tiny)
NO_MATCH = -1


def ground_truth(gt: np.ndarray, num: int, background: int, use_difficult: bool
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image: (labels [G], boxes [G, 4]) in the order of the rows."""
    rows = np.asarray(gt, dtype=np.float64).reshape(-1, 8)
    out = []
    for n in range(num):
        mine = rows[(rows[:, 0].astype(np.int64) == n)
                    & (use_difficult | (rows[:, 7] == 0))]
        out.append((mine[:, 1].astype(np.int64), mine[:, 3:7]))
    bad = rows[(rows[:, 0] >= num) | ((rows[:, 0] >= 0) & (rows[:, 1] == background))]
    if len(bad):
        raise DataError(Span.synthetic("batch"), f"ground-truth row {bad[0].tolist()}: its "
                        f"image is beyond the batch of {num} or its label is the background "
                        f"{background}")
    return out


def _size(b: np.ndarray) -> np.ndarray:
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    return np.where((w < 0) | (h < 0), 0.0, w * h)


def jaccard(priors: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[P, G] overlaps of normalised boxes (Caffe's JaccardOverlap)."""
    a, b = priors[:, None, :], boxes[None, :, :]
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = _size(a) + _size(b) - inter
    return np.where(inter > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match(overlaps: np.ndarray, per_prediction: bool, threshold: float
          ) -> tuple[np.ndarray, np.ndarray]:
    """(the box each prior matches or NO_MATCH, each prior's largest overlap)."""
    p, g = overlaps.shape
    kept = overlaps > 1e-6
    best = np.where(kept, overlaps, 0.0).max(axis=1, initial=0.0)
    matched = np.full(p, NO_MATCH, dtype=np.int64)
    pool = list(range(g))
    while pool:
        cand = np.where(kept[:, pool] & (matched == NO_MATCH)[:, None], overlaps[:, pool], -1.0)
        if cand.size == 0 or cand.max() <= 0:
            break
        i, k = np.unravel_index(int(np.argmax(cand)), cand.shape)
        matched[i] = pool.pop(int(k))
    if per_prediction and g:
        cand = np.where(kept & (overlaps >= threshold), overlaps, -1.0)
        take = (matched == NO_MATCH) & (cand.max(axis=1) > 0)
        matched[take] = np.argmax(cand, axis=1)[take]
    return matched, best


def encode(boxes: np.ndarray, priors: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """CENTER_SIZE codes of `boxes` against `priors`, divided by the variances."""
    pw, ph = priors[:, 2] - priors[:, 0], priors[:, 3] - priors[:, 1]
    pcx, pcy = (priors[:, 0] + priors[:, 2]) / 2, (priors[:, 1] + priors[:, 3]) / 2
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    bcx, bcy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([(bcx - pcx) / pw / variances[:, 0], (bcy - pcy) / ph / variances[:, 1],
                     np.log(bw / pw) / variances[:, 2], np.log(bh / ph) / variances[:, 3]], 1)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def decide(attrs, loc: np.ndarray, conf: np.ndarray, prior: np.ndarray, gt: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """(targets [N, P, 4]: the encoded box of each positive, 0 elsewhere; labels [N, P]:
    the class each counted prior is scored against, -1 for a prior not counted)."""
    num, c = loc.shape[0], attrs["num_classes"]
    priors = np.asarray(prior, dtype=np.float64).reshape(2, -1, 4)
    p = priors.shape[1]
    background = attrs["background_label_id"]
    z = np.asarray(conf, dtype=np.float64).reshape(num, p, c)
    targets, labels = np.zeros((num, p, 4)), np.full((num, p), -1, dtype=np.int64)
    for n, (glabels, boxes) in enumerate(ground_truth(gt, num, background,
                                                      attrs["use_difficult_gt"])):
        if not len(glabels):
            continue        # an image without ground truth counts nothing
        matched, best = match(jaccard(priors[0], boxes),
                              attrs["match_type"] == "PER_PREDICTION",
                              attrs["overlap_threshold"])
        pos = matched != NO_MATCH
        targets[n, pos] = encode(boxes[matched[pos]], priors[0][pos], priors[1][pos])
        labels[n, pos] = glabels[matched[pos]]
        if attrs["mining_type"] == "MAX_NEGATIVE":
            # the softmax loss each prior has as matched (positives) or as background
            scored = np.where(pos, labels[n], background)
            prob = np.exp(log_softmax(z[n]))[np.arange(p), scored]
            loss = -np.log(np.maximum(prob, FLT_MIN))
            cand = np.flatnonzero(~pos & (best < attrs["neg_overlap"]))
            count = min(int(pos.sum() * attrs["neg_pos_ratio"]), len(cand))
            order = cand[np.argsort(-loss[cand], kind="stable")]
            labels[n, order[:count]] = background
    return targets, labels


def normalizer_of(attrs, num: int, priors: int, labels: np.ndarray) -> float:
    from bwplan.ops.loss import normalizer
    positives = int(np.count_nonzero((labels >= 0) & (labels != attrs["background_label_id"])))
    return normalizer(attrs["normalization"], num, num * priors, positives)


def smooth_l1(d: np.ndarray) -> np.ndarray:
    a = np.abs(d)
    return np.where(a < 1, 0.5 * d * d, a - 0.5)


def smooth_l1_grad(d: np.ndarray) -> np.ndarray:
    return np.where(np.abs(d) < 1, d, np.sign(d))
