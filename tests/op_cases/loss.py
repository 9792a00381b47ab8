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
    """Sometimes with labels -1 and `ignore_label: -1` (Caffe Accuracy's ignore_label)."""
    ignore = draw(st.booleans())
    case = draw(labelled_case(ignore=ignore))
    case.attrs["top_k"] = draw(st.integers(1, case.inputs[0].shape[1]))
    if ignore:
        case.attrs["ignore_label"] = -1
    return case


@st.composite
def seg_accuracy_case(draw):
    """Scores [N, C, H, W] (sometimes with tied rows), labels [N, 1, H, W], some 255 when
    255 is ignored, and sometimes a class that is also ignored."""
    rng = rng_from(draw)
    n, c = draw(st.integers(1, 2)), draw(st.integers(2, 4))
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    scores = normal(rng, n, c, h, w)
    if draw(st.booleans()):
        scores = scores.round(0)        # ties: the higher class wins them
    label = rng.integers(0, c, (n, 1, h, w))
    ignored = draw(st.sampled_from([(), (255,), (255, 0)]))
    if ignored:
        label = np.where(rng.random(label.shape) < 0.3, 255, label)
    attrs = {"ignore_label": ignored} if ignored else {}
    return Case(attrs, [scores, label.astype(np.int64)])


def prior_grid(side: int) -> np.ndarray:
    """SSD's prior blob for a side x side grid of 0.4-wide boxes: [1, 2, P * 4]."""
    c = (np.arange(side) + 0.5) / side
    cx, cy = (a.ravel() for a in np.meshgrid(c, c))
    boxes = np.stack([cx - 0.2, cy - 0.2, cx + 0.2, cy + 0.2], 1)
    return np.stack([boxes.ravel(), np.tile([0.1, 0.1, 0.2, 0.2], side * side)]
                    ).reshape(1, 2, -1)


@st.composite
def multibox_case(draw):
    """Priors on a grid, a few ground-truth boxes (a padding row, a difficult box), loc and
    conf drawn so that the decisions hold under a finite-difference step: the offsets
    stay away from smooth L1's kink, the mining losses apart."""
    from bwplan import ops as registry
    from bwplan.ops import multibox as mb
    rng = rng_from(draw)
    n, side, c = draw(st.integers(1, 2)), draw(st.integers(2, 3)), draw(st.integers(2, 4))
    p = side * side
    prior = prior_grid(side)
    rows = []
    for item in range(n):
        for _ in range(draw(st.integers(0, 2))):
            lo = rng.uniform(0.0, 0.5, 2)
            hi = lo + rng.uniform(0.2, 0.5, 2)
            rows.append([item, rng.integers(1, c), 0, *lo, *np.minimum(hi, 1.0),
                         float(rng.random() < 0.2)])
    rows.append([-1] * 8)       # padding, as SSD's data layer writes it
    gt = np.array(rows, dtype=np.float64).reshape(1, 1, -1, 8)
    attrs = dict(num_classes=c,
                 match_type=draw(st.sampled_from(["PER_PREDICTION", "BIPARTITE"])),
                 mining_type=draw(st.sampled_from(["MAX_NEGATIVE", "NONE"])),
                 normalization=draw(st.sampled_from(["VALID", "BATCH_SIZE", "FULL"])),
                 neg_pos_ratio=draw(st.sampled_from([1.0, 3.0])),
                 loc_weight=draw(st.sampled_from([1.0, 2.0])),
                 use_difficult_gt=draw(st.booleans()))
    loc = normal(rng, n, p * 4)
    conf = normal(rng, n, p * c)
    full = {**{a.name: a.default for a in registry.OPS["multibox_loss"].attrs}, **attrs}
    targets, labels = mb.decide(full, loc, conf, prior, gt)
    d = loc.reshape(n, p, 4) - targets
    assume(np.all(np.abs(np.abs(d) - 1) > 1e-3))
    z = mb.log_softmax(conf.reshape(n, p, c))[..., 0]
    for img in z:
        gaps = np.diff(np.sort(img))
        assume(np.all(gaps > 1e-4))
    return Case(attrs, [loc, conf, prior, gt])


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
def smooth_l1_case(draw, weights=0):
    rng = rng_from(draw)
    shape = draw_shape(draw, 1, 3)
    inputs = [normal(rng, *shape), normal(rng, *shape)]
    inputs += [rng.uniform(0, 2, shape) for _ in range(weights)]
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


def _accuracy_rows(a, logits, label):
    """(counted, hit, label with 0 where ignored, classes) per position, as Caffe's
    AccuracyLayer: a tie with the true class ranks above it."""
    c = logits.shape[1]
    z = torch.movedim(logits, 1, -1).reshape(-1, c)
    lab = label.reshape(-1).long()
    ignore = a.get("ignore_label")
    counted = lab != ignore if ignore is not None else torch.ones_like(lab, dtype=torch.bool)
    safe = torch.where(counted, lab, torch.zeros_like(lab))
    true = z[torch.arange(len(lab)), safe]
    ahead = (z >= true[:, None]).sum(dim=1) - 1
    return counted, counted & (ahead < a["top_k"]), safe, c


def accuracy(a, xs, p, training):
    counted, hit, _, _ = _accuracy_rows(a, *xs)
    count = int(counted.sum())
    # the op's output is f32, whatever its inputs
    return (hit.sum().double() / count if count else torch.zeros((), dtype=torch.float64)).float()


def accuracy_per_class(a, xs, p, training):
    counted, hit, lab, c = _accuracy_rows(a, *xs)
    seen = torch.bincount(lab[counted], minlength=c).double()
    hits = torch.bincount(lab[hit], minlength=c).double()
    return torch.where(seen > 0, hits / seen.clamp(min=1), torch.zeros_like(seen)).float()


def multibox_loss(a, xs, p, training, hints=None):
    """SSD's MultiBoxLoss: the matching and mining decisions are the NumPy reference's
    (bwplan/ops/multibox.py: not differentiable, checked by hand there), made on bwplan's
    own values of the inputs when `hints` gives them (the mining ranks float losses), and
    the loss on them is torch's smooth L1 and cross-entropy."""
    from bwplan.ops import multibox as mb
    loc, conf, prior, gt = xs
    n, c = loc.shape[0], a["num_classes"]
    seen = [t.detach().numpy() for t in (hints if hints is not None else xs)]
    targets, labels = mb.decide(a, *seen)
    p_ = labels.shape[1]
    labels = torch.from_numpy(labels)
    positive = (labels >= 0) & (labels != a["background_label_id"])
    norm = mb.normalizer_of(a, n, p_, labels.numpy())
    loc_loss = F.smooth_l1_loss(loc.reshape(n, p_, 4)[positive],
                                torch.from_numpy(targets).to(loc.dtype)[positive],
                                reduction="sum", beta=1.0)
    counted = labels >= 0
    logp = torch.log_softmax(conf.reshape(n, p_, c), dim=-1)[counted]
    picked = logp.gather(1, labels[counted].long()[:, None])[:, 0]
    floor = float(np.log(np.finfo(np.float32).tiny))
    conf_loss = -torch.clamp(picked, min=floor).sum()
    return (a["loc_weight"] * loc_loss + conf_loss) / norm


def seg_accuracy(a, xs, p, training):
    """DeepLab's SegAccuracy: a confusion matrix (true, predicted; a tie to the higher
    class), then its pixel accuracy, mean recall over present classes, mean Jaccard."""
    scores, label = xs
    c = scores.shape[1]
    z = torch.movedim(scores, 1, -1).reshape(-1, c)
    classes = torch.arange(c).expand(z.shape[0], c)
    is_max = z >= z.max(dim=1, keepdim=True).values
    pred = torch.where(is_max, classes, torch.full_like(classes, -1)).max(dim=1).values
    lab = label.reshape(-1).long()
    keep = torch.ones_like(lab, dtype=torch.bool)
    for v in a["ignore_label"]:
        keep &= lab != v
    cm = torch.zeros((c, c), dtype=torch.float64)
    cm.index_put_((lab[keep], pred[keep]), torch.ones(int(keep.sum()), dtype=torch.float64),
                  accumulate=True)
    diag, rows, cols = torch.diagonal(cm), cm.sum(1), cm.sum(0)
    total = cm.sum()
    pixel = diag.sum() / total if total > 0 else torch.zeros((), dtype=torch.float64)
    present = rows > 0
    recall = (diag[present] / rows[present]).mean() if present.any() else torch.zeros(())
    union = rows + cols - diag
    iou = torch.where(union == diag, torch.ones_like(diag), diag / union.clamp(min=1)).mean()
    return torch.stack([pixel, recall.double(), iou]).reshape(1, 1, 1, 3).float()


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
    if len(xs) > 3:
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
    # the per-class and segmentation metrics of a map: f's 4 channels scored against labels
    # per position, the first sample's labels (all 1) ignored
    "accuracy_per_class": OpRow(accuracy_case(), NetUse(
        "accuracy_per_class = accuracy_per_class(f, seg_y, ignore_label=1)",
        "seg_y : i64[N, 1, 6, 6]", head=False), accuracy_per_class),
    "seg_accuracy": OpRow(seg_accuracy_case(), NetUse(
        "seg_accuracy = seg_accuracy(f, seg_y, ignore_label=[1, 7])",
        "seg_y : i64[N, 1, 6, 6]", head=False), seg_accuracy),
    # SSD's loss with one prior per position of f (loc and conf laid out as SSD's Permute
    # and Flatten do); its priors and boxes have 1 on dimension 0, which the runtime takes
    # as the batch, so it trains in a net of its own at batch 1 (nets.py)
    "multibox_loss": OpRow(multibox_case(), NetUse(
        "multibox_lc = conv2d(f, out=4, kernel=1)\n"
        "multibox_lt = transpose(multibox_lc, perm=[0, 2, 3, 1])\n"
        "multibox_loc = flatten(multibox_lt)\n"
        "multibox_cf = conv2d(f, out=3, kernel=1)\n"
        "multibox_ct = transpose(multibox_cf, perm=[0, 2, 3, 1])\n"
        "multibox_conf = flatten(multibox_ct)\n"
        "multibox_loss = multibox_loss(multibox_loc, multibox_conf, priors, boxes, "
        "num_classes=3)", "priors : f32[1, 2, 144]\nboxes : f32[1, 1, 2, 8]", head=False,
        batch=1), multibox_loss, deciding=True),
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
    "smooth_l1_loss_weighted": OpRow(smooth_l1_case(2), NetUse(
        "smooth_l1_in = absval(w_in)\nsmooth_l1_out = absval(w_out)\n"
        "smooth_l1_loss_weighted = smooth_l1_loss_weighted(g, t, smooth_l1_in, smooth_l1_out) "
        "weight=0.1", "w_in : f32[N, 3]\nw_out : f32[N, 3]", head=False), smooth_l1_loss),
    "smooth_l1_loss_inside": OpRow(smooth_l1_case(1), NetUse(
        "smooth_l1_w = absval(w_in)\n"
        "smooth_l1_loss_inside = smooth_l1_loss_inside(g, t, smooth_l1_w) weight=0.1",
        "w_in : f32[N, 3]", head=False), smooth_l1_loss),
}
