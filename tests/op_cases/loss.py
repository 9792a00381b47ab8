"""The rows of losses and metrics (bwplan/ops/loss.py)."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from .draw import rng_from, normal, draw_shape, away_from
from .row import Case, NetUse, OpRow
from .torch_support import F, torch


@st.composite
def labelled_case(draw, ignore=True, weighted=False):
    """Logits [N, C] or [N, C, H] and labels [N] or [N, H]; at least one label counts.
    `weighted` sometimes draws a weight per class (SegNet's class weighting)."""
    rng = rng_from(draw)
    n, c = draw(st.integers(1, 3)), draw(st.integers(2, 4))
    spatial = draw(st.sampled_from([(), (2,)]))
    label = rng.integers(0, c, (n,) + spatial).astype(np.int32)
    if ignore and draw(st.booleans()):
        label.reshape(-1)[1:] = np.where(rng.random(label.size - 1) < 0.5, -1,
                                         label.reshape(-1)[1:])
    attrs = {}
    if weighted and draw(st.booleans()):
        attrs["class_weights"] = tuple(float(w) for w in rng.uniform(0, 3, c).round(3))
    return Case(attrs, [normal(rng, n, c, *spatial), label])


@st.composite
def euclidean_case(draw):
    rng = rng_from(draw)
    n, d = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    b_shape = draw(st.sampled_from([(n, d), (n, d, 1)]))
    return Case({}, [normal(rng, n, d), normal(rng, *b_shape)])


@st.composite
def contrastive_case(draw):
    rng = rng_from(draw)
    n, d = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    a, b = normal(rng, n, d, 1, 1), normal(rng, n, d, 1, 1)
    sim = rng.integers(0, 2, (n, 1, 1, 1)).astype(np.float64)
    attrs = dict(margin=draw(st.sampled_from([0.5, 1.0, 2.0])), legacy=draw(st.booleans()))
    d2 = ((a - b) ** 2).reshape(n, -1).sum(axis=1)
    gap = attrs["margin"] - (d2 if attrs["legacy"] else np.sqrt(d2))
    assume(np.all(np.abs(gap) > 1e-3))  # away from the hinge's kink
    return Case(attrs, [a, b, sim])


@st.composite
def accuracy_case(draw):
    case = draw(labelled_case(ignore=False))
    case.attrs["top_k"] = draw(st.integers(1, case.inputs[0].shape[1]))
    return case


NORMALIZATIONS = st.sampled_from(["FULL", "VALID", "BATCH_SIZE", "NONE"])


@st.composite
def sigmoid_ce_case(draw):
    rng = rng_from(draw)
    shape = draw_shape(draw, 1, 3)
    target = rng.uniform(0, 1, shape)
    if draw(st.booleans()):
        target.reshape(-1)[1:] = np.where(rng.random(target.size - 1) < 0.3, -1,
                                          target.reshape(-1)[1:])
    attrs = dict(normalization=draw(NORMALIZATIONS), ignore_label=-1)
    return Case(attrs, [3 * normal(rng, *shape), target])


@st.composite
def hinge_case(draw):
    rng = rng_from(draw)
    n, d = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    scores = away_from(away_from(1.5 * normal(rng, n, d), 1.0), -1.0)  # off the hinges
    label = rng.integers(0, d, (n,)).astype(np.int32)
    return Case(dict(norm=draw(st.sampled_from(["L1", "L2"]))),
                [scores.reshape(draw(st.sampled_from([(n, d), (n, d, 1)]))), label])


@st.composite
def infogain_case(draw, as_input=False):
    case = draw(labelled_case())
    rng = rng_from(draw)
    c = case.inputs[0].shape[1]
    h = rng.uniform(0, 1, (c, c))
    case.attrs.update(normalization=draw(NORMALIZATIONS))
    if as_input:
        case.inputs.append(h.reshape(draw(st.sampled_from([(c, c), (1, 1, c, c)]))))
    else:
        case.params["infogain"] = h
    return case


@st.composite
def smooth_l1_case(draw, weighted=False):
    rng = rng_from(draw)
    shape = draw_shape(draw, 1, 3)
    inputs = [normal(rng, *shape), normal(rng, *shape)]
    if weighted:
        inputs += [rng.uniform(0, 2, shape), rng.uniform(0, 2, shape)]
    return Case(dict(sigma=draw(st.sampled_from([1.0, 3.0, 0.5]))), inputs)


def labels_like(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return label.reshape((logits.shape[0],) + tuple(logits.shape[2:])).long()


def softmax_cross_entropy(a, xs, p, training):
    logits, label = xs
    label = labels_like(logits, label)
    valid = int((label != a["ignore_label"]).sum())
    # torch weights each term by its class and, summed, divides by nothing: Caffe-SegNet's
    # weight_by_label_freqs then divides by the count of positions, not the sum of weights
    weight = None if not a.get("class_weights") else \
        torch.tensor(a["class_weights"], dtype=logits.dtype)
    total = F.cross_entropy(logits, label, weight=weight, ignore_index=a["ignore_label"],
                            reduction="sum")
    return total / max(1, valid)


def euclidean_loss(a, xs, p, training):
    x, y = xs
    return ((x - y.reshape(x.shape)) ** 2).sum() / (2 * x.shape[0])


def contrastive_loss(a, xs, p, training):
    x, y, sim = xs
    n = x.shape[0]
    dist_sq = ((x - y.reshape(x.shape)) ** 2).reshape(n, -1).sum(dim=1)
    similar = sim.reshape(-1).to(torch.int64) != 0      # Caffe truncates the flag
    if a["legacy"]:
        apart = torch.clamp(a["margin"] - dist_sq, min=0.0)
    else:
        apart = torch.clamp(a["margin"] - torch.sqrt(dist_sq), min=0.0) ** 2
    return torch.where(similar, dist_sq, apart).sum() / (2 * n)


def accuracy(a, xs, p, training):
    logits, label = xs
    c = logits.shape[1]
    z = torch.movedim(logits, 1, -1).reshape(-1, c)
    lab = label.reshape(-1).long()
    true = z[torch.arange(len(lab)), lab]
    ahead = (z >= true[:, None]).sum(dim=1) - 1      # a tie ranks above the true class
    return (ahead < a["top_k"]).float().mean()


def caffe_normalizer(mode: str, batch: int, count: int, valid) -> torch.Tensor | float:
    """LossParameter.normalization: FULL, VALID, BATCH_SIZE or NONE, at least 1."""
    return max(1.0, float({"FULL": count, "VALID": valid, "BATCH_SIZE": batch,
                           "NONE": 1}[mode]))


def sigmoid_cross_entropy_loss(a, xs, p, training):
    x, t = xs[0], xs[1].reshape(xs[0].shape).to(xs[0].dtype)
    keep = t != a["ignore_label"]
    per = F.binary_cross_entropy_with_logits(x, torch.where(keep, t, 0.0), reduction="none")
    norm = caffe_normalizer(a["normalization"], x.shape[0], x.numel(), int(keep.sum()))
    return (per * keep).sum() / norm


def hinge_loss(a, xs, p, training):
    x = xs[0].reshape(xs[0].shape[0], -1)
    onehot = F.one_hot(xs[1].reshape(-1).long(), x.shape[1]).to(x.dtype)
    margin = torch.clamp(1 + (1 - 2 * onehot) * x, min=0)
    return (margin if a["norm"] == "L1" else margin ** 2).sum() / x.shape[0]


def infogain_loss(a, xs, p, training):
    x, label = xs[0], xs[1].reshape(-1).long()
    axis = a["axis"] % x.dim()
    c = x.shape[axis]
    h = (xs[2] if len(xs) > 2 else p["infogain"]).reshape(c, c).to(x.dtype)
    logp = torch.movedim(torch.softmax(x, axis), axis, -1).reshape(-1, c)
    keep = label != a["ignore_label"]
    rows = h[torch.where(keep, label, 0)]
    per = -(rows * torch.log(torch.clamp(logp, min=float(np.finfo(np.float32).tiny)))).sum(1)
    norm = caffe_normalizer(a["normalization"], math.prod(x.shape[:axis]), label.numel(),
                             int(keep.sum()))
    return (per * keep).sum() / norm


def smooth_l1_loss(a, xs, p, training):
    """Fast R-CNN's: outside * huber(inside * (a - b)) with beta = 1 / sigma^2, summed over
    the batch's elements and divided by the batch."""
    x, y = xs[0], xs[1].reshape(xs[0].shape)
    d = x - y
    if len(xs) > 2:
        d = d * xs[2].reshape(x.shape)
    err = F.smooth_l1_loss(d, torch.zeros_like(d), reduction="none", beta=1 / a["sigma"] ** 2)
    if len(xs) > 2:
        err = err * xs[3].reshape(x.shape)
    return err.sum() / x.shape[0]


def _softmax_cross_entropy_peer(a, xs, p):
    """torch's mean over the counted positions is Caffe's VALID normalization; with class
    weights torch would divide by their sum, Caffe-SegNet by the count."""
    if a.get("class_weights"):
        return softmax_cross_entropy(a, xs, p, True)
    logits, label = xs
    return F.cross_entropy(logits, labels_like(logits, label), ignore_index=a["ignore_label"])


ROWS = {
    # per pixel, its classes weighted (SegNet's step)
    "softmax_cross_entropy": OpRow(labelled_case(weighted=True), NetUse(
        "sce_logits = conv2d(f, out=3, kernel=1)\n"
        "softmax_cross_entropy = softmax_cross_entropy(sce_logits, pixels, "
        "class_weights=[0.5, 1.0, 2.5]) weight=0.5", "pixels : i64[N, 6, 6]", head=False),
        softmax_cross_entropy, torch_cases={"": labelled_case(),
                                            "weighted": labelled_case(weighted=True)},
        peer=_softmax_cross_entropy_peer),
    "euclidean_loss": OpRow(euclidean_case(), NetUse(
        "euclidean_loss = euclidean_loss(g, t) weight=0.5", head=False), euclidean_loss),
    # a siamese pair: one linear used twice with lr multipliers 0.5 and 0.25 (so its decay
    # is scaled by 0.5), under both distances
    "contrastive_loss": OpRow(contrastive_case(), NetUse(
        "contrastive_a = linear(f, out=3) lr=0.5\n"
        "contrastive_b = linear(e, out=3) lr=0.25 shares contrastive_a\n"
        "contrastive_legacy = contrastive_loss(contrastive_a, contrastive_b, sim, margin=1.0, "
        "legacy=true) weight=0.2\n"
        "contrastive_loss = contrastive_loss(contrastive_a, contrastive_b, sim, margin=2.0) "
        "weight=0.3", "sim : f32[N]", head=False), contrastive_loss),
    "accuracy": OpRow(accuracy_case(), NetUse("accuracy = accuracy(g, y, top_k=2)", head=False),
                      accuracy),
    "sigmoid_cross_entropy_loss": OpRow(sigmoid_ce_case(), NetUse(
        "sigmoid_target = sigmoid(t)\n"
        "sigmoid_cross_entropy_loss = sigmoid_cross_entropy_loss(g, sigmoid_target, "
        "normalization=FULL) weight=0.1", head=False), sigmoid_cross_entropy_loss),
    "hinge_loss": OpRow(hinge_case(), NetUse("hinge_loss = hinge_loss(g, y, norm=L2) weight=0.01",
                                             head=False), hinge_loss),
    "infogain_loss": OpRow(infogain_case(), NetUse(
        "infogain_loss = infogain_loss(g, y) weight=0.2", head=False), infogain_loss),
    # the infogain matrix, a 3 x 3 corner of the first image whatever the batch
    "infogain_loss_h": OpRow(infogain_case(as_input=True), NetUse(
        "infogain_h0 = slice(x, axis=0, begin=0, end=1)\n"
        "infogain_h1 = slice(infogain_h0, axis=2, begin=0, end=1)\n"
        "infogain_h2 = slice(infogain_h1, axis=3, begin=0, end=3)\n"
        "infogain_h = absval(infogain_h2)\n"
        "infogain_loss_h = infogain_loss_h(g, y, infogain_h) weight=0.1", head=False),
        infogain_loss),
    "smooth_l1_loss": OpRow(smooth_l1_case(), NetUse(
        "smooth_l1_loss = smooth_l1_loss(g, t, sigma=2.0) weight=0.05", head=False),
        smooth_l1_loss),
    "smooth_l1_loss_weighted": OpRow(smooth_l1_case(True), NetUse(
        "smooth_l1_in = absval(w_in)\nsmooth_l1_out = absval(w_out)\n"
        "smooth_l1_loss_weighted = smooth_l1_loss_weighted(g, t, smooth_l1_in, smooth_l1_out) "
        "weight=0.1", "w_in : f32[N, 3]\nw_out : f32[N, 3]", head=False), smooth_l1_loss),
}
