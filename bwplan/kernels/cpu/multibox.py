"""SSD's MultiBoxLoss decisions on the CPU, loop for loop: ground truth, matching,
encoding and hard-negative mining, as bwplan/ops/multibox.py states them (that module is
the reference these kernels are checked against). Sequential per image: the matching is a
greedy walk over the overlaps."""
from __future__ import annotations

import numpy as np
from numba import njit

FLT_MIN = np.float32(np.finfo(np.float32).tiny)


@njit(cache=True)
def _size(x0, y0, x1, y1):
    if x1 < x0 or y1 < y0:
        return 0.0
    return (x1 - x0) * (y1 - y0)


@njit(cache=True)
def _jaccard(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0.0 or ih <= 0.0:
        return 0.0
    inter = iw * ih
    return inter / (_size(a[0], a[1], a[2], a[3]) + _size(b[0], b[1], b[2], b[3]) - inter)


@njit(cache=True)
def _softmax_parts(conf, n, i):
    """Prior i of image n: its largest class score and the sum of exp(score - largest),
    the two parts of its softmax (shifted so that exp cannot overflow)."""
    top = conf[n, i, 0]
    for q in range(1, conf.shape[2]):
        top = max(top, conf[n, i, q])
    total = 0.0
    for q in range(conf.shape[2]):
        total += np.exp(conf[n, i, q] - top)
    return top, total


@njit(cache=True)
def check_ground_truth(rows, num, background):
    """The first row whose image is beyond the batch or whose label is the background,
    or -1."""
    for r in range(rows.shape[0]):
        item = int(rows[r, 0])
        if item >= num or (item >= 0 and int(rows[r, 1]) == background):
            return r
    return -1


@njit(cache=True)
def decide(conf, priors, variances, rows, background, use_difficult, per_prediction,
           threshold, mine, neg_pos_ratio, neg_overlap, targets, labels):
    """Fill targets [N, P, 4] (the encoded box of each positive) and labels [N, P] (the
    class each counted prior is scored against, -1 where not counted)."""
    num, p, _ = conf.shape
    targets[:] = 0.0
    labels[:] = -1.0
    for n in range(num):
        g = 0
        for r in range(rows.shape[0]):
            if int(rows[r, 0]) == n and (use_difficult or rows[r, 7] == 0):
                g += 1
        if g == 0:
            continue
        boxes = np.empty((g, 4))
        glabels = np.empty(g, dtype=np.int64)
        k = 0
        for r in range(rows.shape[0]):
            if int(rows[r, 0]) == n and (use_difficult or rows[r, 7] == 0):
                boxes[k, :] = rows[r, 3:7]
                glabels[k] = int(rows[r, 1])
                k += 1
        overlaps = np.empty((p, g))
        best = np.zeros(p)
        for i in range(p):
            for j in range(g):
                v = _jaccard(priors[i], boxes[j])
                overlaps[i, j] = v if v > 1e-6 else 0.0
                if overlaps[i, j] > best[i]:
                    best[i] = overlaps[i, j]
        matched = np.full(p, -1, dtype=np.int64)
        used = np.zeros(g, dtype=np.bool_)
        for _ in range(g):      # bipartite: the largest overlap left, first on a tie
            bi, bj, bv = -1, -1, 0.0
            for i in range(p):
                if matched[i] != -1:
                    continue
                for j in range(g):
                    if not used[j] and overlaps[i, j] > bv:
                        bi, bj, bv = i, j, overlaps[i, j]
            if bi == -1:
                break
            matched[bi] = bj
            used[bj] = True
        if per_prediction:
            for i in range(p):
                if matched[i] != -1:
                    continue
                bj, bv = -1, 0.0
                for j in range(g):
                    v = overlaps[i, j]
                    if v > 0.0 and v >= threshold and v > bv:
                        bj, bv = j, v
                matched[i] = bj
        positives = 0
        for i in range(p):
            j = matched[i]
            if j == -1:
                continue
            positives += 1
            pw, ph = priors[i, 2] - priors[i, 0], priors[i, 3] - priors[i, 1]
            pcx, pcy = (priors[i, 0] + priors[i, 2]) / 2, (priors[i, 1] + priors[i, 3]) / 2
            bw, bh = boxes[j, 2] - boxes[j, 0], boxes[j, 3] - boxes[j, 1]
            bcx, bcy = (boxes[j, 0] + boxes[j, 2]) / 2, (boxes[j, 1] + boxes[j, 3]) / 2
            targets[n, i, 0] = (bcx - pcx) / pw / variances[i, 0]
            targets[n, i, 1] = (bcy - pcy) / ph / variances[i, 1]
            targets[n, i, 2] = np.log(bw / pw) / variances[i, 2]
            targets[n, i, 3] = np.log(bh / ph) / variances[i, 3]
            labels[n, i] = glabels[j]
        if not mine:
            continue
        cand = np.empty(p, dtype=np.int64)
        loss = np.empty(p)
        m = 0
        for i in range(p):
            if matched[i] != -1 or best[i] >= neg_overlap:
                continue
            top, total = _softmax_parts(conf, n, i)
            prob = np.exp(conf[n, i, background] - top) / total
            cand[m] = i
            loss[m] = -np.log(max(prob, FLT_MIN))
            m += 1
        count = min(int(positives * neg_pos_ratio), m)
        order = np.argsort(-loss[:m], kind="mergesort")    # stable: a tie to the lower prior
        for k in range(count):
            labels[n, cand[order[k]]] = background


@njit(cache=True)
def loss_sums(loc, conf, targets, labels, background):
    """(sum of smooth L1 over the positives' offsets, sum of the clamped softmax
    cross-entropy over the counted priors, number of positives)."""
    num, p, _ = conf.shape
    loc_sum, conf_sum, positives = 0.0, 0.0, 0
    for n in range(num):
        for i in range(p):
            lab = int(labels[n, i])
            if lab < 0:
                continue
            if lab != background:
                positives += 1
                for k in range(4):
                    d = loc[n, i, k] - targets[n, i, k]
                    a = abs(d)
                    loc_sum += 0.5 * d * d if a < 1.0 else a - 0.5
            top, total = _softmax_parts(conf, n, i)
            prob = np.exp(conf[n, i, lab] - top) / total
            conf_sum -= np.log(max(prob, FLT_MIN))
    return loc_sum, conf_sum, positives


@njit(cache=True)
def loc_grad(loc, targets, labels, background, scale, out):
    num, p = labels.shape
    for n in range(num):
        for i in range(p):
            lab = int(labels[n, i])
            for k in range(4):
                if lab < 0 or lab == background:
                    out[n, i, k] = 0.0
                else:
                    d = loc[n, i, k] - targets[n, i, k]
                    out[n, i, k] = (d if abs(d) < 1.0 else np.sign(d)) * scale


@njit(cache=True)
def conf_grad(conf, labels, scale, out):
    num, p, c = conf.shape
    for n in range(num):
        for i in range(p):
            lab = int(labels[n, i])
            if lab < 0:
                for q in range(c):
                    out[n, i, q] = 0.0
                continue
            top, total = _softmax_parts(conf, n, i)
            for q in range(c):
                out[n, i, q] = (np.exp(conf[n, i, q] - top) / total - (q == lab)) * scale
