"""An outside oracle for training runs: a bwplan `Net` computed by PyTorch.

Every op is written here again in torch, from the semantics the docs give it (Caffe's,
mostly), without reading bwplan's NumPy references or kernels; torch's autograd then plays
the role of bwplan's planned backward. The training settings map onto plain autograd:

* a parameter is a torch leaf; one whose every use has lr multiplier 0 (frozen) does not
  require a gradient, and running statistics never do;
* each use of a trainable parameter reads a view `w * 1` whose gradient hook records that
  use's raw gradient and returns it scaled by the use's lr multiplier, so the leaf's `.grad`
  is sum over uses of (lr_mult * gradient), the quantity Caffe's update is built from; a use
  with lr multiplier 0 reads `w.detach()`;
* a stop_gradient edge reads `value.detach()`; shared parameters are the same leaf;
* the objective is the sum of each weighted layer's output times its weight;
* a batchnorm with batch statistics updates its running mean and (unbiased) variance in
  the forward, as torch does, with torch's momentum = 1 - the layer's `momentum`.

The oracle computes in float64 by default, so that a comparison with a float32 run sees
bwplan's rounding and not the oracle's. At a kink (a ReLU's sign test, a max's winner) the
two may still decide differently where float32 cannot tell; the caller can pass bwplan's
own values to settle exactly those decisions (see "decisions at kinks").

The update is `torch.optim.SGD` with one group per parameter: Caffe's
`v = momentum*v + lr*diff; w -= v` is torch's momentum SGD for a constant learning rate,
with the parameter's decay (weight_decay * decay_mult * its largest lr multiplier) as the
group's weight_decay. A trainable parameter that got no gradient is given a zero one, so
that it still decays. A partly frozen parameter (frozen rows of its leading axis) is what
PyTorch users write by hand: its gradient masked on those rows (raw gradients too), and
since torch's decay and momentum would still move them, the rows and their momentum
buffer are put back after each step.

Not covered: dropout with p > 0 (its masks come from bwplan's generator) and gradients with
respect to inputs.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

# Loading torch starts the OpenMP runtime that the cpu target's Numba kernels then share,
# and the runtime reads OMP_WAIT_POLICY only then: left to spin, its idle workers made the
# cpu target 20x slower on 2 cores in everything that ran after this import. The cpu
# target asks for a passive policy itself (bwplan/kernels/cpu/threads.py), too late here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from bwplan.runtime.metrics import metric_entries  # noqa: E402
import torch.nn.functional as F  # noqa: E402

LOSS_OPS = frozenset({"softmax_cross_entropy", "euclidean_loss", "contrastive_loss",
                      "sigmoid_cross_entropy_loss", "hinge_loss", "infogain_loss",
                      "infogain_loss_h", "smooth_l1_loss", "smooth_l1_loss_weighted",
                      "multibox_loss"})
METRIC_OPS = frozenset({"accuracy", "accuracy_per_class", "seg_accuracy"})


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def _channel_view(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.reshape((1, -1) + (1,) * (ndim - 2))


# ---- decisions at kinks ------------------------------------------------------------------
# A ReLU's sign test and the max ops' choice of winner are discontinuous. Where the oracle's
# float64 value lies within float32 rounding of such a kink, bwplan's float32 run may decide
# either way, and one flipped decision moves a gradient by ~1e-3 of its norm (five steps of
# cnn_small at batch 2 meet one for some seeds). So the ops below accept `hints`: bwplan's
# own values of the layer's inputs. A decision whose margin is positive but below UNDECIDED
# times the largest magnitude of the tensor follows them; every other decision, exact ties
# included, is the oracle's own.
UNDECIDED = 1e-5

# ops whose functions take `hints`
DECIDING_OPS = frozenset({"relu", "clip", "maxpool", "global_maxpool", "maximum",
                          "maxpool_mask", "multibox_loss"})


def _undecided(margin: torch.Tensor, scale_of: torch.Tensor) -> torch.Tensor:
    limit = UNDECIDED * float(scale_of.detach().abs().max())
    return (margin > 0) & (margin <= limit)


def _argmax(values: torch.Tensor, dim: int, hint: torch.Tensor | None,
            scale_of: torch.Tensor) -> torch.Tensor:
    """The first maximum along `dim`; where the first maximum of `hint` (laid out like
    `values`) is another element, short of the best by an undecided margin, that one."""
    values = values.detach()
    pick = values.argmax(dim)
    if hint is None:
        return pick
    theirs = hint.argmax(dim)
    margin = _take(values, dim, pick) - _take(values, dim, theirs)
    return torch.where(_undecided(margin, scale_of), theirs, pick)


def _take(values: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """The element `index` picks along `dim`; the gradient flows to it alone."""
    return values.gather(dim, index.unsqueeze(dim)).squeeze(dim)


# ---- pooling with Caffe's geometry -------------------------------------------------------
def caffe_pool_len(size: int, k: int, s: int, p: int, ceil: bool, any_pad: bool) -> int:
    """Caffe PoolingLayer::Reshape: floor or ceil of (size + 2p - k) / s, plus one; with
    any padding, a last window that starts at or past size + p (in the padding) is dropped."""
    span = size + 2 * p - k
    out = (-(-span // s) if ceil else span // s) + 1
    if any_pad and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool_geometry(a, x: torch.Tensor):
    kh, kw = _pair(a["kernel"])
    sh, sw = _pair(a["kernel"] if a["stride"] is None else a["stride"])
    ph, pw = _pair(a["pad"])
    h, w = x.shape[2:]
    any_pad = bool(ph or pw)
    ho = caffe_pool_len(h, kh, sh, ph, a["ceil"], any_pad)
    wo = caffe_pool_len(w, kw, sw, pw, a["ceil"], any_pad)
    return (kh, kw), (sh, sw), (ph, pw), (ho, wo)


def _padded_for_windows(x, value, kernel, stride, pad, out_hw):
    """x padded by `pad` on the left and as far right as the last window reaches."""
    h, w = x.shape[2:]
    right_h = max(0, (out_hw[0] - 1) * stride[0] + kernel[0] - pad[0] - h)
    right_w = max(0, (out_hw[1] - 1) * stride[1] + kernel[1] - pad[1] - w)
    return F.pad(x, (pad[1], right_w, pad[0], right_h), value=value)


def _pool_windows(x, fill, kernel, stride, pad, out_hw) -> torch.Tensor:
    """[N, C, kh*kw, Ho, Wo]: the cells of every window, in row-major order."""
    xp = _padded_for_windows(x, fill, kernel, stride, pad, out_hw)
    rows = (xp.shape[2] - kernel[0]) // stride[0] + 1
    cols = (xp.shape[3] - kernel[1]) // stride[1] + 1
    cells = F.unfold(xp, kernel, stride=stride)
    cells = cells.reshape(x.shape[0], x.shape[1], kernel[0] * kernel[1], rows, cols)
    return cells[..., :out_hw[0], :out_hw[1]]


def maxpool(a, xs, p, training, hints=None):
    """Padding is -inf, so it never wins; the first maximum of a window wins a tie."""
    x = xs[0]
    kernel, stride, pad, out_hw = _pool_geometry(a, x)
    cells = _pool_windows(x, float("-inf"), kernel, stride, pad, out_hw)
    hint = None if hints is None else _pool_windows(hints[0], float("-inf"), kernel, stride,
                                                    pad, out_hw)
    return _take(cells, 2, _argmax(cells, 2, hint, x))



def maxpool_mask(a, xs, p, training, hints=None):
    """Caffe's pooling mask: the flat position h * W + w of maxpool's winner, as floats."""
    x = xs[0].detach()
    kernel, stride, pad, out_hw = _pool_geometry(a, x)
    cells = _pool_windows(x, float("-inf"), kernel, stride, pad, out_hw)
    hint = None if hints is None else _pool_windows(hints[0], float("-inf"), kernel, stride,
                                                    pad, out_hw)
    k = _argmax(cells, 2, hint, x)
    rows = torch.arange(out_hw[0])[:, None] * stride[0] - pad[0] + k // kernel[1]
    cols = torch.arange(out_hw[1])[None, :] * stride[1] - pad[1] + k % kernel[1]
    return (rows * x.shape[3] + cols).to(x.dtype)


def max_unpool(a, xs, p, training):
    """torch's max_unpool2d; a stride-1 window of (out - in + 1) makes its default output
    size the wanted one, whatever the scale."""
    x, mask = xs
    h, w = x.shape[2:]
    if a["size"] is not None:
        ho, wo = _pair(a["size"])
    else:
        ho, wo = h * _pair(a["scale"])[0], w * _pair(a["scale"])[1]
    return F.max_unpool2d(x, mask.detach().long(), (ho - h + 1, wo - w + 1), stride=1,
                          output_size=(ho, wo))

def _avg_divisors(size: int, out: int, k: int, s: int, p: int, count_pad: bool = True
                  ) -> list[int]:
    """Caffe AVE: each window's extent clipped to the padded image [-p, size + p); without
    count_pad (ONNX's default), clipped to the image [0, size)."""
    if not count_pad:
        return [min(o * s - p + k, size) - max(o * s - p, 0) for o in range(out)]
    return [min(o * s - p + k, size + p) - (o * s - p) for o in range(out)]


def avgpool(a, xs, p, training):
    x = xs[0]
    kernel, stride, pad, (ho, wo) = _pool_geometry(a, x)
    xp = _padded_for_windows(x, 0.0, kernel, stride, pad, (ho, wo))
    sums = F.avg_pool2d(xp, kernel, stride, divisor_override=1)[:, :, :ho, :wo]
    count_pad = a.get("count_pad", True)
    dh = torch.tensor(_avg_divisors(x.shape[2], ho, kernel[0], stride[0], pad[0], count_pad),
                      dtype=x.dtype)
    dw = torch.tensor(_avg_divisors(x.shape[3], wo, kernel[1], stride[1], pad[1], count_pad),
                      dtype=x.dtype)
    return sums / (dh[:, None] * dw[None, :])


def global_maxpool(a, xs, p, training, hints=None):
    x = xs[0]
    cells = x.flatten(2)
    hint = None if hints is None else hints[0].flatten(2)
    return _take(cells, 2, _argmax(cells, 2, hint, x))[:, :, None, None]


def global_avgpool(a, xs, p, training):
    return xs[0].mean(dim=(2, 3), keepdim=True)


# ---- layers with parameters --------------------------------------------------------------
def conv2d(a, xs, p, training):
    return F.conv2d(xs[0], p["weight"], p.get("bias"), _pair(a["stride"]), _pair(a["pad"]),
                    _pair(a["dilation"]), a["groups"])


def linear(a, xs, p, training):
    return F.linear(xs[0].flatten(1), p["weight"], p.get("bias"))


def scale(a, xs, p, training):
    x = xs[0]
    out = x * _channel_view(p["weight"], x.dim())
    return out + _channel_view(p["bias"], x.dim()) if a["bias"] else out


def batchnorm(a, xs, p, training):
    """Batch statistics in training unless global_stats; torch updates the running mean and
    the unbiased running variance in place with its momentum = 1 - Caffe's fraction."""
    batch_stats = training and not a["global_stats"]
    weight = p["weight"] if a["affine"] else None
    bias = p["bias"] if a["affine"] else None
    return F.batch_norm(xs[0], p["mean"], p["var"], weight, bias, training=batch_stats,
                        momentum=1.0 - a["momentum"], eps=a["eps"])


# ---- elementwise -------------------------------------------------------------------------
def relu(a, xs, p, training, hints=None):
    """Leaky with `negative_slope`; at exactly 0 the input takes the slope."""
    x = xs[0]
    keep = x.detach() > 0
    if hints is not None:
        keep = torch.where(_undecided(x.detach().abs(), x), hints[0] > 0, keep)
    return torch.where(keep, x, a["negative_slope"] * x)


def clip(a, xs, p, training, hints=None):
    """ReLU6 / hardtanh: the gradient passes strictly between the bounds; near a bound the
    decision follows bwplan's own value (decisions at kinks)."""
    x, lo, hi = xs[0], a["min"], a["max"]
    v = x.detach()
    inside = (v > lo) & (v < hi)
    if hints is not None:
        near = _undecided((v - lo).abs(), x) | _undecided((v - hi).abs(), x)
        inside = torch.where(near, (hints[0] > lo) & (hints[0] < hi), inside)
    bound = torch.where(v <= (lo + hi) / 2, torch.full_like(v, lo), torch.full_like(v, hi))
    return torch.where(inside, x, bound)


def dropout(a, xs, p, training):
    if training and a["p"] > 0:
        raise NotImplementedError("dropout with p > 0 draws bwplan's own random masks")
    return xs[0]


def add(a, xs, p, training):
    coeffs = tuple(a["coeffs"]) or (1.0,) * len(xs)
    out = coeffs[0] * xs[0]
    for c, x in zip(coeffs[1:], xs[1:]):
        out = out + c * x
    return out


def maximum(a, xs, p, training, hints=None):
    """A tie goes to the earliest input (bwplan's documented rule)."""
    cells = torch.stack(xs)
    hint = None if hints is None else torch.stack(hints)
    return _take(cells, 0, _argmax(cells, 0, hint, cells))


# ---- shape -------------------------------------------------------------------------------
def reshape(a, xs, p, training):
    x = xs[0]
    spec = a["shape"] if isinstance(a["shape"], (tuple, list)) else (a["shape"],)
    return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(spec)])


def slice_(a, xs, p, training):
    return xs[0].narrow(a["axis"], a["begin"], a["end"] - a["begin"])


# ---- normalisation -----------------------------------------------------------------------
def lrn(a, xs, p, training):
    x = xs[0]
    flat = x.dim() == 2
    out = F.local_response_norm(x[..., None] if flat else x, a["size"], a["alpha"], a["beta"],
                                a["k"])
    return out[..., 0] if flat else out


# ---- losses and metrics ------------------------------------------------------------------
def _labels_like(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return label.reshape((logits.shape[0],) + tuple(logits.shape[2:])).long()


def softmax_cross_entropy(a, xs, p, training):
    logits, label = xs
    label = _labels_like(logits, label)
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


# ---- Caffe's further neuron layers (caffe.proto's parameter names and defaults) -----------
def _base(a) -> float:
    """Exp and Log: base -1 means e."""
    return math.e if a["base"] == -1 else a["base"]


def power(a, xs, p, training):
    return (a["shift"] + a["scale"] * xs[0]) ** a["power"]


def prelu(a, xs, p, training):
    """torch's prelu takes one slope for every channel or one per channel of dimension 1,
    as Caffe's channel_shared does."""
    return F.prelu(xs[0], p["weight"])


def threshold(a, xs, p, training):
    return (xs[0] > a["threshold"]).to(xs[0].dtype)   # a step: no gradient flows


def reduction(a, xs, p, training):
    """Caffe Reduction: over every dimension from `axis` on; MEAN divides by their count."""
    x = xs[0]
    dims = tuple(range(a["axis"] % x.dim(), x.dim()))
    value = {"SUM": lambda: x, "MEAN": lambda: x, "ASUM": lambda: x.abs(),
             "SUMSQ": lambda: x * x}[a["operation"]]().sum(dim=dims)
    count = math.prod(x.shape[d] for d in dims)
    return value * (a["coeff"] / count if a["operation"] == "MEAN" else a["coeff"])


def argmax(a, xs, p, training):
    """Caffe ArgMax. A tie goes to the larger index: a stable descending sort of the row
    reversed meets the larger index first."""
    x = xs[0].detach()
    axis = 1 if a["axis"] is None else a["axis"] % x.dim()
    rows = x.reshape(x.shape[0], -1) if a["axis"] is None else x
    flipped = rows.flip(axis)
    values, order = torch.sort(flipped, dim=axis, descending=True, stable=True)
    k = a["top_k"]
    index = (rows.shape[axis] - 1 - order).narrow(axis, 0, k).to(x.dtype)
    values = values.narrow(axis, 0, k)
    if a["axis"] is not None:
        return values if a["out_max_val"] else index
    out = torch.stack([index, values], 1) if a["out_max_val"] else index.unsqueeze(1)
    return out.reshape((x.shape[0], out.shape[1], k) + (1,) * max(0, x.dim() - 3))


def _broadcast_bias(x: torch.Tensor, b: torch.Tensor, axis: int, scale: bool = False
                    ) -> torch.Tensor:
    """Caffe Bias (or, with scale, Scale with two inputs): b covers x's dimensions from
    axis on, as many as b has; a scalar b covers everything."""
    axis %= x.dim()
    b = b.reshape((1,) * axis + tuple(b.shape) + (1,) * (x.dim() - axis - b.dim()))
    return x * b if scale else x + b


def tile(a, xs, p, training):
    x = xs[0]
    reps = [1] * x.dim()
    reps[a["axis"] % x.dim()] = a["tiles"]
    return x.repeat(*reps)


# ---- Caffe's further losses ---------------------------------------------------------------
def _caffe_normalizer(mode: str, batch: int, count: int, valid) -> torch.Tensor | float:
    """LossParameter.normalization: FULL, VALID, BATCH_SIZE or NONE, at least 1."""
    return max(1.0, float({"FULL": count, "VALID": valid, "BATCH_SIZE": batch,
                           "NONE": 1}[mode]))


def sigmoid_cross_entropy_loss(a, xs, p, training):
    x, t = xs[0], xs[1].reshape(xs[0].shape).to(xs[0].dtype)
    keep = t != a["ignore_label"]
    per = F.binary_cross_entropy_with_logits(x, torch.where(keep, t, 0.0), reduction="none")
    norm = _caffe_normalizer(a["normalization"], x.shape[0], x.numel(), int(keep.sum()))
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
    norm = _caffe_normalizer(a["normalization"], math.prod(x.shape[:axis]), label.numel(),
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


def mvn(a, xs, p, training):
    """Caffe MVN: per sample (across_channels) or per channel of a sample, subtract the
    mean and divide by the biased standard deviation plus eps."""
    x = xs[0]
    rows = x.reshape(x.shape[0] if a["across_channels"] else x.shape[0] * x.shape[1], -1)
    c = rows - rows.mean(dim=1, keepdim=True)
    if a["normalize_variance"]:
        c = c / (torch.sqrt((c * c).mean(dim=1, keepdim=True)) + a["eps"])
    return c.reshape(x.shape)


def lrn_within_channel(a, xs, p, training):
    """Caffe LRN WITHIN_CHANNEL: an average pool of x^2 that counts the zero padding."""
    x, size = xs[0], a["size"]
    pooled = F.avg_pool2d(x * x, size, 1, (size - 1) // 2, count_include_pad=True)
    return x * (1 + a["alpha"] * pooled) ** -a["beta"]


# op(attrs, inputs, params by slot, training) -> output; DECIDING_OPS also take `hints`
OpFn = Callable[..., torch.Tensor]

# ---- the spatial family: crop, deconv2d, interp, roi_pool, normalize -----------
def crop(a, xs, p, training):
    x, like = xs
    axis, offsets = a["axis"] % x.dim(), list(a["offset"])
    index = []
    for i in range(x.dim()):
        if i < axis:
            index.append(slice(None))
            continue
        o = offsets[0] if len(offsets) == 1 else (offsets[i - axis] if offsets else 0)
        index.append(slice(o, o + like.shape[i]))
    return x[tuple(index)]


def deconv2d(a, xs, p, training):
    return F.conv_transpose2d(xs[0], p["weight"], p.get("bias"), stride=_pair(a["stride"]),
                              padding=_pair(a["pad"]), groups=a["groups"],
                              dilation=_pair(a["dilation"]))


def interp(a, xs, p, training):
    return F.interpolate(xs[0], size=(a["height"], a["width"]), mode="bilinear",
                         align_corners=True)


def roi_pool(a, xs, p, training):
    """Fast R-CNN's ROIPoolingLayer: rounded corners, floor / ceil bin edges, 0 when empty."""
    x, rois = xs
    _, c, h, w = x.shape
    ph_n, pw_n, scale = a["pooled_h"], a["pooled_w"], a["spatial_scale"]
    outs = []
    for roi in rois.detach().tolist():
        x1, y1, x2, y2 = (int(math.copysign(math.floor(abs(v * scale) + 0.5), v))
                          for v in roi[1:])
        bh, bw = max(y2 - y1 + 1, 1) / ph_n, max(x2 - x1 + 1, 1) / pw_n
        plane = x[int(roi[0])]
        bins = []
        for i in range(ph_n):
            for j in range(pw_n):
                h0 = min(max(math.floor(i * bh) + y1, 0), h)
                h1 = min(max(math.ceil((i + 1) * bh) + y1, 0), h)
                w0 = min(max(math.floor(j * bw) + x1, 0), w)
                w1 = min(max(math.ceil((j + 1) * bw) + x1, 0), w)
                bins.append(plane.new_zeros(c) if h1 <= h0 or w1 <= w0
                            else plane[:, h0:h1, w0:w1].amax(dim=(1, 2)))
        outs.append(torch.stack(bins, dim=1).reshape(c, ph_n, pw_n))
    return torch.stack(outs)


def normalize(a, xs, p, training):
    x = xs[0]
    dims = tuple(range(1, x.dim())) if a["across_spatial"] else (1,)
    norm = torch.sqrt((x * x).sum(dim=dims, keepdim=True) + a["eps"])
    return x / norm * _channel_view(p["weight"], x.dim())


OPS: dict[str, OpFn] = {
    "conv2d": conv2d,
    "linear": linear,
    "relu": relu,
    "transpose": lambda a, xs, p, t: xs[0].permute(*a["perm"]),
    "clip": clip,
    "sigmoid": lambda a, xs, p, t: torch.sigmoid(xs[0]),
    "tanh": lambda a, xs, p, t: torch.tanh(xs[0]),
    "dropout": dropout,
    "add": add,
    "mul": lambda a, xs, p, t: xs[0] * xs[1],
    "maximum": maximum,
    "maxpool": maxpool,
    "avgpool": avgpool,
    "global_maxpool": global_maxpool,
    "global_avgpool": global_avgpool,
    "flatten": lambda a, xs, p, t: torch.flatten(xs[0], a["axis"], a["end_axis"]),
    "reshape": reshape,
    "concat": lambda a, xs, p, t: torch.cat(xs, dim=a["axis"]),
    "slice": slice_,
    "pad": lambda a, xs, p, t: F.pad(xs[0], (_pair(a["begin"])[1], _pair(a["end"])[1],
                                             _pair(a["begin"])[0], _pair(a["end"])[0])),
    "batchnorm": batchnorm,
    "scale": scale,
    "lrn": lrn,
    "softmax": lambda a, xs, p, t: torch.softmax(xs[0], dim=a["axis"]),
    "softmax_cross_entropy": softmax_cross_entropy,
    "euclidean_loss": euclidean_loss,
    "contrastive_loss": contrastive_loss,
    "accuracy": accuracy, "accuracy_per_class": accuracy_per_class,
    "seg_accuracy": seg_accuracy, "multibox_loss": multibox_loss,
    "elu": lambda a, xs, p, t: F.elu(xs[0], a["alpha"]),
    "power": power,
    "absval": lambda a, xs, p, t: torch.abs(xs[0]),
    "erf": lambda a, xs, p, t: torch.erf(xs[0]),
    "bnll": lambda a, xs, p, t: torch.logaddexp(xs[0], torch.zeros_like(xs[0])),
    "exp": lambda a, xs, p, t: _base(a) ** (a["shift"] + a["scale"] * xs[0]),
    "log": lambda a, xs, p, t: torch.log(a["shift"] + a["scale"] * xs[0]) / math.log(_base(a)),
    "prelu": prelu,
    "threshold": threshold,
    "reduction": reduction,
    "argmax": argmax,
    "silence": lambda a, xs, p, t: xs[0].new_empty((0,)),
    "bias": lambda a, xs, p, t: _broadcast_bias(xs[0], p["bias"], a["axis"]),
    "bias_add": lambda a, xs, p, t: _broadcast_bias(xs[0], xs[1], a["axis"]),
    "scale_mul": lambda a, xs, p, t: _broadcast_bias(xs[0], xs[1], a["axis"], scale=True),
    "tile": tile,
    "embed": lambda a, xs, p, t: F.embedding(xs[0].long(), p["weight"]) + (
        p["bias"] if a["bias_term"] else 0.0),
    "sigmoid_cross_entropy_loss": sigmoid_cross_entropy_loss,
    "hinge_loss": hinge_loss,
    "infogain_loss": infogain_loss,
    "infogain_loss_h": infogain_loss,
    "smooth_l1_loss": smooth_l1_loss,
    "smooth_l1_loss_weighted": smooth_l1_loss,
    "mvn": mvn,
    "lrn_within_channel": lrn_within_channel,
    "crop": crop, "deconv2d": deconv2d, "interp": interp,
    "roi_pool": roi_pool, "normalize": normalize,
    "maxpool_mask": maxpool_mask, "max_unpool": max_unpool,
}


# ---- a whole net -------------------------------------------------------------------------
@dataclass
class TorchStep:
    loss: float                                 # the objective: weighted sum of loss terms
    losses: dict[str, float]                    # every loss term, unweighted (summed)
    metrics: dict[str, float]
    raw_grads: dict[str, np.ndarray]            # per parameter: sum over uses that train
    scaled_grads: dict[str, np.ndarray]         # per parameter: sum of lr_mult * gradient


class TorchNet:
    """A bwplan Net with its parameters (copied), trained by torch in `dtype`."""

    def __init__(self, net, params: Mapping[str, np.ndarray],
                 dtype: torch.dtype = torch.float64) -> None:
        self.net = net
        self.dtype = dtype
        self.params: dict[str, torch.Tensor] = {}
        for name in net.params:
            t = torch.tensor(params[name])
            if t.is_floating_point():
                t = t.to(dtype)
            t.requires_grad_(self.trains(name))
            self.params[name] = t
        self.optimizer: torch.optim.SGD | None = None
        self._use_grads: dict[tuple[str, str], torch.Tensor] = {}
        # partly frozen parameters: True on the rows that train
        self.row_masks: dict[str, torch.Tensor] = {}
        for name, p in net.params.items():
            if p.frozen_rows:
                mask = torch.ones(p.type.shape[0], dtype=torch.bool)
                for a, b in p.frozen_rows:
                    mask[a:b] = False
                self.row_masks[name] = mask

    def trains(self, name: str) -> bool:
        """Whether the parameter ever changes: learnable, with some use's lr_mult > 0."""
        return self.net.params[name].learnable and any(
            u.lr_mult > 0 for _, u in self.net.uses_of(name))

    def set_optimizer(self, lr: float, momentum: float, weight_decay: float) -> None:
        groups = []
        for name, t in self.params.items():
            if not t.requires_grad:
                continue
            uses = [u for _, u in self.net.uses_of(name)]
            decay = weight_decay * uses[0].decay_mult * max(u.lr_mult for u in uses)
            groups.append({"params": [t], "lr": lr, "momentum": momentum,
                           "weight_decay": decay})
        self.optimizer = torch.optim.SGD(groups, lr=lr) if groups else None

    # ---- forward ---------------------------------------------------------------------
    def _use(self, layer: str, use) -> torch.Tensor:
        w = self.params[use.param]
        if not w.requires_grad or not torch.is_grad_enabled():
            return w
        if use.lr_mult == 0:
            return w.detach()
        view = w * 1
        key, mult = (layer, use.param), use.lr_mult

        def hook(g: torch.Tensor) -> torch.Tensor:
            self._use_grads[key] = g.detach().clone()
            return g * mult

        view.register_hook(hook)
        return view

    def _tensor(self, value: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(value))
        return t.to(self.dtype) if t.is_floating_point() else t

    def run(self, batch: Mapping[str, np.ndarray], training: bool = True,
            hints: Mapping[str, np.ndarray] | None = None
            ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every layer's output and the objective. `hints`: bwplan's values of the same
        step by tensor name, to settle the decisions float32 leaves open."""
        values = {name: self._tensor(v) for name, v in batch.items()}
        objective = torch.zeros((), dtype=self.dtype)
        for layer in self.net.layers:
            inputs = [values[e.src].detach() if e.stop_gradient else values[e.src]
                      for e in layer.inputs]
            params = {u.slot: self._use(layer.name, u) for u in layer.params}
            extra = {}
            if layer.op in DECIDING_OPS and hints is not None:
                extra["hints"] = [self._tensor(hints[e.src]) for e in layer.inputs]
            with torch.set_grad_enabled(torch.is_grad_enabled() and layer.op not in METRIC_OPS):
                out = OPS[layer.op](layer.attrs, inputs, params, training, **extra)
            values[layer.name] = out
            if layer.loss_weight != 0:
                objective = objective + layer.loss_weight * out.sum()
        return values, objective

    def forward(self, batch, outputs, training: bool = False, hints=None
                ) -> dict[str, np.ndarray]:
        """The named outputs, without gradients (in training mode a batchnorm still
        updates its running statistics)."""
        with torch.no_grad():
            values, _ = self.run(batch, training, hints)
        return {n: values[n].numpy().copy() for n in outputs}

    # ---- one training step -----------------------------------------------------------
    def step(self, batch: Mapping[str, np.ndarray],
             hints: Mapping[str, np.ndarray] | None = None) -> TorchStep:
        """Forward, backward and (when an optimizer is set) the update."""
        self._use_grads.clear()
        for t in self.params.values():
            t.grad = None
        values, objective = self.run(batch, True, hints)
        if objective.requires_grad:
            objective.backward()
        raw: dict[str, np.ndarray] = {}
        for (_, param), g in self._use_grads.items():
            raw[param] = raw[param] + g.numpy() if param in raw else g.numpy().copy()
        for name, mask in self.row_masks.items():    # the gradient-masking hook
            if name in raw:
                raw[name][~mask.numpy()] = 0
            if self.params[name].grad is not None:
                self.params[name].grad[~mask] = 0
        scaled = {n: t.grad.numpy().copy() for n, t in self.params.items()
                  if t.grad is not None}
        if self.optimizer is not None:
            for t in self.params.values():
                if t.requires_grad and t.grad is None:
                    t.grad = torch.zeros_like(t)     # no gradient, but it still decays
            kept = {n: self.params[n].detach()[~m].clone() for n, m in self.row_masks.items()}
            self.optimizer.step()
            with torch.no_grad():   # decay and momentum masked by hand
                for name, rows in kept.items():
                    t, mask = self.params[name], self.row_masks[name]
                    t[~mask] = rows
                    buf = self.optimizer.state.get(t, {}).get("momentum_buffer")
                    if buf is not None:
                        buf[~mask] = 0
        losses = {l.name: float(values[l.name].detach().sum()) for l in self.net.layers
                  if l.op in LOSS_OPS or l.loss_weight != 0}
        # a vector metric one entry per element, as bwplan reports it
        metrics = {k: v for l in self.net.layers if l.op in METRIC_OPS
                   for k, v in metric_entries(l.name, values[l.name].detach().numpy()).items()}
        return TorchStep(float(objective.detach()), losses, metrics, raw, scaled)

    def numpy_params(self) -> dict[str, np.ndarray]:
        return {n: t.detach().numpy().copy() for n, t in self.params.items()}
