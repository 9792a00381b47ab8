"""The NumPy references of every op: each gradient reference, fed only the values its rule
declares, against central finite differences; forwards against the shape rule, against
PyTorch where PyTorch has the op, and against Caffe's pooling loops written out literally.

Shapes and attributes come from Hypothesis; array values come from a NumPy generator
seeded by Hypothesis, so examples stay small and fast. Everything runs in float64.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bwplan import ops as registry
from bwplan.ops.opdef import GradRule, zero_flops
from bwplan.ops.reference import (full_attrs, grad_index, make_ctx, run_forward, run_grad,
                                  saved_values, tensor_type)

FD_EPS = 1e-6
DROPOUT_SEED = 7


@dataclass
class Case:
    attrs: dict
    inputs: list
    params: dict = field(default_factory=dict)


def _rng(draw) -> np.random.Generator:
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def _normal(rng, *shape) -> np.ndarray:
    return rng.standard_normal(shape)


def _distinct(rng, shape) -> np.ndarray:
    """Values at least 0.1 apart (a shuffled grid), so no max is ever tied and no value
    sits within a finite-difference step of another."""
    n = int(np.prod(shape))
    return (rng.permutation(n) - (n - 1) / 2).reshape(shape) * 0.1


def _shape(draw, rank_min=1, rank_max=4, dim_max=3) -> tuple[int, ...]:
    rank = draw(st.integers(rank_min, rank_max))
    return tuple(draw(st.integers(1, dim_max)) for _ in range(rank))


def _valid(op_name: str, case: Case) -> Case:
    """Rejects the rare drawn geometry that the shape rule refuses."""
    try:
        make_ctx(registry.OPS[op_name], case.attrs, case.inputs)
    except ValueError:
        assume(False)
    return case


# ---- one strategy per op ---------------------------------------------------------------
@st.composite
def conv2d_case(draw):
    rng = _rng(draw)
    groups = draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dil = draw(st.integers(1, 2))
    pad = draw(st.integers(0, 2))
    attrs = dict(out=groups * draw(st.integers(1, 2)), kernel=(kh, kw),
                 stride=(draw(st.integers(1, 2)), draw(st.integers(1, 2))), pad=pad,
                 dilation=dil, groups=groups, bias=draw(st.booleans()))
    c = groups * draw(st.integers(1, 2))
    h = max(1, dil * (kh - 1) + 1 - 2 * pad) + draw(st.integers(0, 2))
    w = max(1, dil * (kw - 1) + 1 - 2 * pad) + draw(st.integers(0, 2))
    params = {"weight": _normal(rng, attrs["out"], c // groups, kh, kw)}
    if attrs["bias"]:
        params["bias"] = _normal(rng, attrs["out"])
    return Case(attrs, [_normal(rng, draw(st.integers(1, 2)), c, h, w)], params)


@st.composite
def linear_case(draw):
    rng = _rng(draw)
    shape = _shape(draw, 2, 3)
    attrs = dict(out=draw(st.integers(1, 3)), bias=draw(st.booleans()))
    params = {"weight": _normal(rng, attrs["out"], int(np.prod(shape[1:])))}
    if attrs["bias"]:
        params["bias"] = _normal(rng, attrs["out"])
    return Case(attrs, [_normal(rng, *shape)], params)


@st.composite
def relu_case(draw):
    x = _normal(_rng(draw), *_shape(draw))
    x = np.sign(x) * (0.05 + np.abs(x))  # never within 0.05 of the kink at 0
    return Case(dict(negative_slope=draw(st.sampled_from([0.0, 0.1]))), [x])


@st.composite
def clip_case(draw):
    lo = draw(st.sampled_from([0.0, -1.0]))
    hi = draw(st.sampled_from([6.0, 0.5]))
    x = _normal(_rng(draw), *_shape(draw)) * 4
    for bound in (lo, hi):  # never within 0.05 of a kink
        x = np.where(np.abs(x - bound) < 0.05, bound + 0.1, x)
    return Case(dict(min=lo, max=hi), [x])


@st.composite
def transpose_case(draw):
    shape = _shape(draw, 1, 4)
    perm = tuple(draw(st.permutations(range(len(shape)))))
    return Case(dict(perm=perm), [_normal(_rng(draw), *shape)])


@st.composite
def unary_case(draw):
    return Case({}, [_normal(_rng(draw), *_shape(draw))])


@st.composite
def dropout_case(draw):
    p = draw(st.sampled_from([0.0, 0.3, 0.5, 0.9]))
    return Case(dict(p=p), [_normal(_rng(draw), *_shape(draw))])


@st.composite
def add_case(draw):
    rng = _rng(draw)
    shape, k = _shape(draw), draw(st.integers(1, 3))
    coeffs = tuple(draw(st.lists(st.sampled_from([-1.0, 0.5, 2.0]), min_size=k, max_size=k))
                   ) if draw(st.booleans()) else ()
    return Case(dict(coeffs=coeffs), [_normal(rng, *shape) for _ in range(k)])


@st.composite
def mul_case(draw):
    rng = _rng(draw)
    shape = _shape(draw)
    return Case({}, [_normal(rng, *shape), _normal(rng, *shape)])


@st.composite
def maximum_case(draw):
    shape, k = _shape(draw), draw(st.integers(2, 3))
    values = _distinct(_rng(draw), (k,) + shape)
    return Case({}, list(values))


@st.composite
def pool_case(draw, torch_compatible=False, average=False):
    """Caffe pooling geometry; `torch_compatible` keeps pad <= kernel / 2, as torch wants;
    `average` draws the divisor mode too."""
    rng = _rng(draw)
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    pad_limit = (kh // 2, kw // 2) if torch_compatible else (kh - 1, kw - 1)
    pad = (draw(st.integers(0, pad_limit[0])), draw(st.integers(0, pad_limit[1])))
    attrs = dict(kernel=(kh, kw), stride=stride, pad=pad, ceil=draw(st.booleans()))
    if average:
        attrs["count_pad"] = draw(st.booleans())
    h = max(1, kh - 2 * pad[0]) + draw(st.integers(0, 3))
    w = max(1, kw - 2 * pad[1]) + draw(st.integers(0, 3))
    x = _distinct(rng, (draw(st.integers(1, 2)), draw(st.integers(1, 2)), h, w))
    return Case(attrs, [x])


@st.composite
def global_pool_case(draw):
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)),
             draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return Case({}, [_distinct(_rng(draw), shape)])


@st.composite
def flatten_case(draw):
    shape = _shape(draw, 1, 4)
    rank = len(shape)
    axis = draw(st.integers(0, rank - 1))
    end = draw(st.integers(axis, rank - 1))
    attrs = dict(axis=axis - rank if draw(st.booleans()) else axis,
                 end_axis=end - rank if draw(st.booleans()) else end)
    return Case(attrs, [_normal(_rng(draw), *shape)])


@st.composite
def reshape_case(draw):
    shape = _shape(draw, 2, 4)
    flipped = tuple(reversed(shape))
    hole = draw(st.integers(0, len(shape) - 1))
    target = draw(st.sampled_from([(0, -1), (-1,), flipped,
                                   flipped[:hole] + (-1,) + flipped[hole + 1:]]))
    return Case(dict(shape=target), [_normal(_rng(draw), *shape)])


@st.composite
def concat_case(draw):
    rng = _rng(draw)
    shape = _shape(draw, 1, 3)
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    inputs = []
    for _ in range(draw(st.integers(1, 3))):
        s = list(shape)
        s[axis] = draw(st.integers(1, 3))
        inputs.append(_normal(rng, *s))
    return Case(dict(axis=axis), inputs)


@st.composite
def slice_case(draw):
    shape = _shape(draw, 1, 3, dim_max=4)
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    begin = draw(st.integers(0, shape[axis] - 1))
    end = draw(st.integers(begin + 1, shape[axis]))
    return Case(dict(axis=axis, begin=begin, end=end), [_normal(_rng(draw), *shape)])


@st.composite
def batchnorm_case(draw):
    rng = _rng(draw)
    c = draw(st.integers(1, 3))
    n = draw(st.integers(1, 3))
    shape = (n, c) if draw(st.booleans()) else (n, c, draw(st.integers(1, 3)),
                                                draw(st.integers(1, 2)))
    attrs = dict(eps=draw(st.sampled_from([1e-5, 0.1])), global_stats=draw(st.booleans()),
                 affine=draw(st.booleans()))
    params = {"mean": _normal(rng, c), "var": rng.uniform(0.5, 2.0, c)}
    if attrs["affine"]:
        params.update(weight=_normal(rng, c), bias=_normal(rng, c))
    return Case(attrs, [_normal(rng, *shape)], params)


@st.composite
def scale_case(draw):
    rng = _rng(draw)
    shape = _shape(draw, 2, 4)
    attrs = dict(bias=draw(st.booleans()))
    params = {"weight": _normal(rng, shape[1])}
    if attrs["bias"]:
        params["bias"] = _normal(rng, shape[1])
    return Case(attrs, [_normal(rng, *shape)], params)


@st.composite
def lrn_case(draw):
    # alpha well above Caffe's default, so the cross-channel term of dX is not negligible
    attrs = dict(size=draw(st.sampled_from([1, 3, 5])), alpha=draw(st.floats(0.1, 2.0)),
                 beta=draw(st.floats(0.5, 1.0)), k=draw(st.floats(1.0, 2.0)))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 2)),
             draw(st.integers(1, 2)))
    return Case(attrs, [_normal(_rng(draw), *shape)])


@st.composite
def softmax_case(draw):
    shape = _shape(draw, 1, 3)
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return Case(dict(axis=axis), [_normal(_rng(draw), *shape)])


@st.composite
def labelled_case(draw, ignore=True, weighted=False):
    """Logits [N, C] or [N, C, H] and labels [N] or [N, H]; at least one label counts.
    `weighted` sometimes draws a weight per class (SegNet's class weighting)."""
    rng = _rng(draw)
    n, c = draw(st.integers(1, 3)), draw(st.integers(2, 4))
    spatial = draw(st.sampled_from([(), (2,)]))
    label = rng.integers(0, c, (n,) + spatial).astype(np.int32)
    if ignore and draw(st.booleans()):
        label.reshape(-1)[1:] = np.where(rng.random(label.size - 1) < 0.5, -1,
                                         label.reshape(-1)[1:])
    attrs = {}
    if weighted and draw(st.booleans()):
        attrs["class_weights"] = tuple(float(w) for w in rng.uniform(0, 3, c).round(3))
    return Case(attrs, [_normal(rng, n, c, *spatial), label])


@st.composite
def euclidean_case(draw):
    rng = _rng(draw)
    n, d = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    b_shape = draw(st.sampled_from([(n, d), (n, d, 1)]))
    return Case({}, [_normal(rng, n, d), _normal(rng, *b_shape)])


@st.composite
def contrastive_case(draw):
    rng = _rng(draw)
    n, d = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    a, b = _normal(rng, n, d, 1, 1), _normal(rng, n, d, 1, 1)
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
    rng = _rng(draw)
    n, c = draw(st.integers(1, 2)), draw(st.integers(2, 4))
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    scores = _normal(rng, n, c, h, w)
    if draw(st.booleans()):
        scores = scores.round(0)        # ties: the higher class wins them
    label = rng.integers(0, c, (n, 1, h, w))
    ignored = draw(st.sampled_from([(), (255,), (255, 0)]))
    if ignored:
        label = np.where(rng.random(label.shape) < 0.3, 255, label)
    attrs = {"ignore_label": ignored} if ignored else {}
    return Case(attrs, [scores, label.astype(np.int64)])


def _prior_grid(side: int) -> np.ndarray:
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
    from bwplan.ops import multibox as mb
    rng = _rng(draw)
    n, side, c = draw(st.integers(1, 2)), draw(st.integers(2, 3)), draw(st.integers(2, 4))
    p = side * side
    prior = _prior_grid(side)
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
    loc = _normal(rng, n, p * 4)
    conf = _normal(rng, n, p * c)
    full = {**{a.name: a.default for a in registry.OPS["multibox_loss"].attrs}, **attrs}
    targets, labels = mb.decide(full, loc, conf, prior, gt)
    d = loc.reshape(n, p, 4) - targets
    assume(np.all(np.abs(np.abs(d) - 1) > 1e-3))
    z = mb.log_softmax(conf.reshape(n, p, c))[..., 0]
    for img in z:
        gaps = np.diff(np.sort(img))
        assume(np.all(gaps > 1e-4))
    return Case(attrs, [loc, conf, prior, gt])


def _away_from(x: np.ndarray, point: float = 0.0) -> np.ndarray:
    """x moved at least 0.05 away from `point` (a kink or a step)."""
    d = x - point
    return point + np.sign(d + (d == 0)) * (0.05 + np.abs(d))


@st.composite
def elu_case(draw):
    x = _away_from(_normal(_rng(draw), *_shape(draw)))
    return Case(dict(alpha=draw(st.sampled_from([1.0, 0.5, 2.0, 0.0, -0.5]))), [x])


@st.composite
def power_case(draw):
    """A positive base shift + scale * x, so that any power is defined; or scale 0."""
    x = _rng(draw).uniform(0.5, 2.0, _shape(draw))
    scale = draw(st.sampled_from([1.0, 0.5, 2.0, 0.0]))
    shift = draw(st.sampled_from([0.0, 0.5])) if scale else 0.5
    return Case(dict(power=draw(st.sampled_from([1.0, 2.0, 0.5, -1.0, 3.0, 0.0])),
                     scale=scale, shift=shift), [x])


@st.composite
def kinked_case(draw):
    return Case({}, [_away_from(_normal(_rng(draw), *_shape(draw)))])


@st.composite
def bnll_case(draw):
    spread = draw(st.sampled_from([1.0, 4.0, 30.0]))  # large |x|: no overflow either way
    return Case({}, [spread * _normal(_rng(draw), *_shape(draw))])


@st.composite
def exp_case(draw):
    attrs = dict(base=draw(st.sampled_from([-1.0, 2.0, 0.5])),
                 scale=draw(st.sampled_from([1.0, 0.5, -1.0])),
                 shift=draw(st.sampled_from([0.0, 0.3])))
    return Case(attrs, [_normal(_rng(draw), *_shape(draw))])


@st.composite
def log_case(draw):
    attrs = dict(base=draw(st.sampled_from([-1.0, 2.0, 10.0])),
                 scale=draw(st.sampled_from([1.0, 2.0])),
                 shift=draw(st.sampled_from([0.0, 0.5])))
    return Case(attrs, [_rng(draw).uniform(0.5, 2.0, _shape(draw))])


@st.composite
def prelu_case(draw):
    rng = _rng(draw)
    shape = _shape(draw, 2, 4)
    shared = draw(st.booleans())
    params = {"weight": _normal(rng, 1 if shared else shape[1])}
    return Case(dict(channel_shared=shared), [_away_from(_normal(rng, *shape))], params)


@st.composite
def threshold_case(draw):
    t = draw(st.sampled_from([0.0, 0.3, -1.0]))
    return Case(dict(threshold=t), [_away_from(_normal(_rng(draw), *_shape(draw)), t)])


@st.composite
def crop_case(draw):
    rng = _rng(draw)
    shape = _shape(draw, 2, 4, dim_max=4)
    axis = draw(st.integers(0, len(shape) - 1))
    like = shape[:axis] + tuple(draw(st.integers(1, d)) for d in shape[axis:])
    room = [d - e for d, e in zip(shape[axis:], like[axis:])]
    form = draw(st.sampled_from(["none", "one", "each"]))
    if form == "one":
        offset = (draw(st.integers(0, min(room))),)
    elif form == "each":
        offset = tuple(draw(st.integers(0, r)) for r in room)
    else:
        offset = ()
    return Case(dict(axis=axis, offset=offset), [_normal(rng, *shape), _normal(rng, *like)])


@st.composite
def interp_case(draw):
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 4)),
             draw(st.integers(1, 4)))
    attrs = dict(height=draw(st.integers(1, 6)), width=draw(st.integers(1, 6)))
    return Case(attrs, [_normal(_rng(draw), *shape)])


@st.composite
def roi_pool_case(draw):
    rng = _rng(draw)
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    h, w = draw(st.integers(2, 5)), draw(st.integers(2, 5))
    scale = draw(st.sampled_from([1.0, 0.5]))
    rois = []
    for _ in range(draw(st.integers(1, 3))):
        x1, y1 = draw(st.integers(0, w)), draw(st.integers(0, h))
        rois.append([draw(st.integers(0, n - 1)), x1 / scale, y1 / scale,
                     draw(st.integers(x1, w + 1)) / scale, draw(st.integers(y1, h + 1)) / scale])
    attrs = dict(pooled_h=draw(st.integers(1, 3)), pooled_w=draw(st.integers(1, 3)),
                 spatial_scale=scale)
    return Case(attrs, [_distinct(rng, (n, c, h, w)), np.array(rois, dtype=np.float64)])


@st.composite
def normalize_case(draw):
    rng = _rng(draw)
    shape = _shape(draw, 2, 4)
    attrs = dict(across_spatial=draw(st.booleans()), channel_shared=draw(st.booleans()),
                 eps=1e-10)
    weight = _normal(rng, 1 if attrs["channel_shared"] else shape[1])
    return Case(attrs, [_normal(rng, *shape) + 0.5], {"weight": weight})


@st.composite
def pad_case(draw):
    shape = _shape(draw, 4, 4)
    side = st.one_of(st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2)))
    return Case(dict(begin=draw(side), end=draw(side)), [_normal(_rng(draw), *shape)])


@st.composite
def deconv2d_case(draw):
    rng = _rng(draw)
    groups = draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dil = draw(st.integers(1, 2))
    pad = draw(st.integers(0, 1))
    attrs = dict(out=groups * draw(st.integers(1, 2)), kernel=(kh, kw), stride=stride,
                 pad=pad, dilation=dil, groups=groups, bias=draw(st.booleans()))
    c = groups * draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    params = {"weight": _normal(rng, c, attrs["out"] // groups, kh, kw)}
    if attrs["bias"]:
        params["bias"] = _normal(rng, attrs["out"])
    return Case(attrs, [_normal(rng, draw(st.integers(1, 2)), c, h, w)], params)


@st.composite
def reduction_case(draw):
    shape = _shape(draw)
    attrs = dict(operation=draw(st.sampled_from(["SUM", "ASUM", "SUMSQ", "MEAN"])),
                 axis=draw(st.integers(-len(shape), len(shape) - 1)),
                 coeff=draw(st.sampled_from([1.0, -0.5, 2.0])))
    return Case(attrs, [_away_from(_normal(_rng(draw), *shape))])


@st.composite
def argmax_case(draw):
    shape = _shape(draw, 2, 4)
    axis = draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    dim = int(np.prod(shape[1:])) if axis is None else shape[axis]
    attrs = dict(axis=axis, top_k=draw(st.integers(1, dim)),
                 out_max_val=draw(st.booleans()))
    return Case(attrs, [_distinct(_rng(draw), shape)])


@st.composite
def silence_case(draw):
    rng = _rng(draw)
    return Case({}, [_normal(rng, *_shape(draw)) for _ in range(draw(st.integers(1, 2)))])


def _axis_of(draw, shape) -> tuple[int, int]:
    """(axis as written, possibly negative; axis)."""
    axis = draw(st.integers(0, len(shape) - 1))
    return (axis - len(shape) if draw(st.booleans()) else axis), axis


@st.composite
def bias_case(draw):
    rng = _rng(draw)
    shape = _shape(draw)
    written, axis = _axis_of(draw, shape)
    count = draw(st.integers(0, len(shape) - axis))
    num_axes = -1 if count == len(shape) - axis and draw(st.booleans()) else count
    return Case(dict(axis=written, num_axes=num_axes), [_normal(rng, *shape)],
                {"bias": _normal(rng, *(shape[axis:axis + count] or (1,)))})


@st.composite
def bias_add_case(draw):
    rng = _rng(draw)
    shape = _shape(draw)
    written, axis = _axis_of(draw, shape)
    count = draw(st.integers(0, len(shape) - axis))
    b = np.asarray(_normal(rng, *shape[axis:axis + count]))
    return Case(dict(axis=written), [_normal(rng, *shape), b])


@st.composite
def tile_case(draw):
    shape = _shape(draw)
    written, _ = _axis_of(draw, shape)
    return Case(dict(axis=written, tiles=draw(st.integers(1, 3))),
                [_normal(_rng(draw), *shape)])


@st.composite
def embed_case(draw):
    """Indices as floats, as Caffe's data layers give them (integer indices, whose output
    is float32 whatever the weights, are checked in test_kernels_cpu.py)."""
    rng = _rng(draw)
    k, n = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    attrs = dict(num_output=n, input_dim=k, bias_term=draw(st.booleans()))
    x = rng.integers(0, k, _shape(draw, 1, 3)).astype(np.float64)
    params = {"weight": _normal(rng, k, n)}
    if attrs["bias_term"]:
        params["bias"] = _normal(rng, n)
    return Case(attrs, [x], params)


_NORMALIZATIONS = st.sampled_from(["FULL", "VALID", "BATCH_SIZE", "NONE"])


@st.composite
def sigmoid_ce_case(draw):
    rng = _rng(draw)
    shape = _shape(draw, 1, 3)
    target = rng.uniform(0, 1, shape)
    if draw(st.booleans()):
        target.reshape(-1)[1:] = np.where(rng.random(target.size - 1) < 0.3, -1,
                                          target.reshape(-1)[1:])
    attrs = dict(normalization=draw(_NORMALIZATIONS), ignore_label=-1)
    return Case(attrs, [3 * _normal(rng, *shape), target])


@st.composite
def hinge_case(draw):
    rng = _rng(draw)
    n, d = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    scores = _away_from(_away_from(1.5 * _normal(rng, n, d), 1.0), -1.0)  # off the hinges
    label = rng.integers(0, d, (n,)).astype(np.int32)
    return Case(dict(norm=draw(st.sampled_from(["L1", "L2"]))),
                [scores.reshape(draw(st.sampled_from([(n, d), (n, d, 1)]))), label])


@st.composite
def infogain_case(draw, as_input=False):
    case = draw(labelled_case())
    rng = _rng(draw)
    c = case.inputs[0].shape[1]
    h = rng.uniform(0, 1, (c, c))
    case.attrs.update(normalization=draw(_NORMALIZATIONS))
    if as_input:
        case.inputs.append(h.reshape(draw(st.sampled_from([(c, c), (1, 1, c, c)]))))
    else:
        case.params["infogain"] = h
    return case


@st.composite
def smooth_l1_case(draw, weighted=False):
    rng = _rng(draw)
    shape = _shape(draw, 1, 3)
    inputs = [_normal(rng, *shape), _normal(rng, *shape)]
    if weighted:
        inputs += [rng.uniform(0, 2, shape), rng.uniform(0, 2, shape)]
    return Case(dict(sigma=draw(st.sampled_from([1.0, 3.0, 0.5]))), inputs)


@st.composite
def mvn_case(draw):
    shape = _shape(draw, 2, 4)
    attrs = dict(normalize_variance=draw(st.booleans()), across_channels=draw(st.booleans()),
                 eps=draw(st.sampled_from([1e-9, 0.1])))
    return Case(attrs, [_normal(_rng(draw), *shape)])


@st.composite
def lrn_within_case(draw):
    attrs = dict(size=draw(st.sampled_from([1, 3, 5])), alpha=draw(st.floats(0.1, 2.0)),
                 beta=draw(st.floats(0.5, 1.0)))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 4)),
             draw(st.integers(1, 4)))
    return Case(attrs, [_normal(_rng(draw), *shape)])



@st.composite
def max_unpool_case(draw):
    """Distinct mask positions in each output plane, as a max pool without overlapping
    windows gives them; the size either from `scale` or written out."""
    rng = _rng(draw)
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    scale = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    size = draw(st.one_of(st.none(), st.just((h * scale[0] + 1, w * scale[1]))))
    ho, wo = size or (h * scale[0], w * scale[1])
    mask = np.stack([rng.permutation(ho * wo)[:h * w] for _ in range(n * c)])
    return Case(dict(scale=scale, size=size),
                [_normal(rng, n, c, h, w), mask.reshape(n, c, h, w).astype(np.float64)])

CASES = {
    "conv2d": conv2d_case(), "linear": linear_case(), "relu": relu_case(),
    "clip": clip_case(), "transpose": transpose_case(), "sigmoid": unary_case(),
    "tanh": unary_case(), "dropout": dropout_case(),
    "add": add_case(), "mul": mul_case(), "maximum": maximum_case(),
    "maxpool": pool_case(), "avgpool": pool_case(average=True),
    "global_maxpool": global_pool_case(), "global_avgpool": global_pool_case(),
    "flatten": flatten_case(), "reshape": reshape_case(), "concat": concat_case(),
    "slice": slice_case(), "batchnorm": batchnorm_case(), "scale": scale_case(),
    "lrn": lrn_case(), "softmax": softmax_case(),
    "softmax_cross_entropy": labelled_case(weighted=True),
    "euclidean_loss": euclidean_case(), "contrastive_loss": contrastive_case(),
    "accuracy": accuracy_case(), "accuracy_per_class": accuracy_case(),
    "seg_accuracy": seg_accuracy_case(), "multibox_loss": multibox_case(),
    "elu": elu_case(), "power": power_case(), "absval": kinked_case(), "bnll": bnll_case(),
    "exp": exp_case(), "log": log_case(), "prelu": prelu_case(),
    "threshold": threshold_case(), "reduction": reduction_case(), "argmax": argmax_case(),
    "silence": silence_case(), "bias": bias_case(), "bias_add": bias_add_case(),
    "tile": tile_case(), "embed": embed_case(),
    "sigmoid_cross_entropy_loss": sigmoid_ce_case(), "hinge_loss": hinge_case(),
    "infogain_loss": infogain_case(), "infogain_loss_h": infogain_case(as_input=True),
    "smooth_l1_loss": smooth_l1_case(), "smooth_l1_loss_weighted": smooth_l1_case(True),
    "mvn": mvn_case(), "lrn_within_channel": lrn_within_case(),
    "crop": crop_case(), "deconv2d": deconv2d_case(), "pad": pad_case(), "erf": unary_case(),
    "interp": interp_case(), "roi_pool": roi_pool_case(),
    "scale_mul": bias_add_case(),     # the same shapes: a factor where bias_add adds
    "normalize": normalize_case(),
    "maxpool_mask": pool_case(), "max_unpool": max_unpool_case(),
}
WITH_GRADS = sorted(name for name, op in registry.OPS.items() if op.grads)


def draw_case(data, name: str) -> Case:
    return _valid(name, data.draw(CASES[name], label=name))


def test_every_op_has_a_case():
    assert set(CASES) == set(registry.OPS)


# ---- gradients against finite differences ----------------------------------------------
class _Recording(dict):
    """A dict that remembers which keys a reference read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def _forward(op, case, inputs, params):
    return run_forward(op, case.attrs, inputs, params, training=True,
                       rng=np.random.default_rng(DROPOUT_SEED))


def _numeric_grad(f, value: np.ndarray) -> np.ndarray:
    """Central differences of the scalar f() with respect to `value`, edited in place."""
    grad = np.zeros_like(value)
    flat, gflat = value.reshape(-1), grad.reshape(-1)
    for j in range(flat.size):
        keep = flat[j]
        flat[j] = keep + FD_EPS
        up = f()
        flat[j] = keep - FD_EPS
        down = f()
        flat[j] = keep
        gflat[j] = (up - down) / (2 * FD_EPS)
    return grad


def _targets(op, ctx, rule, inputs, params):
    """(index passed to the reference, array the gradient is taken against) per target."""
    if op.slot(rule.wrt) is not None:
        if op.slot(rule.wrt) in op.param_slots(ctx.attrs):
            yield 0, params[rule.wrt]
        return
    for i, x in enumerate(inputs):
        if op.port_for(i).name == rule.wrt:
            yield grad_index(op, rule.wrt, i), x


@pytest.mark.parametrize("name", WITH_GRADS)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_grad_reference_matches_finite_differences(name, data):
    op = registry.OPS[name]
    case = draw_case(data, name)
    inputs = [x.copy() for x in case.inputs]
    params = {k: v.copy() for k, v in case.params.items()}
    ctx = make_ctx(op, case.attrs, inputs)
    out, aux = _forward(op, case, inputs, params)
    weights = np.random.default_rng(1).standard_normal(np.shape(out))

    def objective():
        again, again_aux = _forward(op, case, inputs, params)
        for key, value in aux.items():
            if key == "mask":  # dropout: the same mask for every perturbed forward
                assert np.array_equal(again_aux[key], value)
        return float(np.sum(again * weights))

    for rule in op.grads:
        for index, target in _targets(op, ctx, rule, inputs, params):
            saved = _Recording(saved_values(op, rule, ctx, inputs, params, out, aux))
            got = rule.reference(ctx, saved, weights, index)
            unread = rule.needs_for(ctx.attrs) - saved.read
            assert not unread, f"{name}.{rule.wrt} declares {sorted(unread)} but never reads"
            assert np.shape(got) == target.shape
            expected = _numeric_grad(objective, target)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} d/d{rule.wrt}[{index}]")


def test_run_grad_passes_the_input_position_of_a_variadic_port():
    op = registry.OPS["concat"]
    xs = [np.zeros((2, 1)), np.ones((2, 3)), np.full((2, 2), 2.0)]
    ctx = make_ctx(op, {}, xs)
    out, aux = run_forward(op, {}, xs, {})
    for i, x in enumerate(xs):
        assert run_grad(op, "xs", ctx, xs, {}, out, aux, out, index=i).tolist() == x.tolist()


def test_saved_values_holds_exactly_the_declared_needs():
    op = registry.OPS["batchnorm"]
    x = np.arange(12.0).reshape(3, 4)
    params = {"mean": np.zeros(4), "var": np.ones(4), "weight": np.ones(4),
              "bias": np.zeros(4)}
    for global_stats in (False, True):
        attrs = dict(affine=True, global_stats=global_stats)
        ctx = make_ctx(op, attrs, [x])
        out, aux = run_forward(op, attrs, [x], params)
        saved = saved_values(op, op.grad_for("x"), ctx, [x], params, out, aux)
        assert set(saved) == op.grad_for("x").needs_for(ctx.attrs)
    op = registry.OPS["mul"]
    a, b = np.ones(3), np.full(3, 2.0)
    ctx = make_ctx(op, {}, [a, b])
    saved = saved_values(op, op.grad_for("a"), ctx, [a, b], {}, a * b, {})
    assert list(saved) == ["b"] and saved["b"] is b


def test_saved_values_gives_a_variadic_port_as_a_list():
    op = registry.OPS["concat"]
    xs = [np.zeros((1, 2)), np.ones((1, 3))]
    ctx = make_ctx(op, {}, xs)
    rule = GradRule("xs", frozenset({"xs", "out"}), zero_flops)
    saved = saved_values(op, rule, ctx, xs, {}, "the output", {})
    assert saved["out"] == "the output"
    assert len(saved["xs"]) == 2 and all(a is b for a, b in zip(saved["xs"], xs))


# ---- forwards against the shape rule -----------------------------------------------------
@pytest.mark.parametrize("name", sorted(registry.OPS))
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_forward_agrees_with_shape_rule_and_aux_specs(name, data):
    op = registry.OPS[name]
    case = draw_case(data, name)
    ctx = make_ctx(op, case.attrs, case.inputs)
    out, aux = _forward(op, case, case.inputs, case.params)
    assert tensor_type(out) == ctx.out
    declared = {a.name for a in op.aux if a.nbytes(ctx) > 0}
    assert set(aux) == declared
    for spec in op.aux:
        if spec.name in aux:
            assert aux[spec.name].nbytes == spec.nbytes(ctx), spec.name


# ---- hand-checked facts ------------------------------------------------------------------
def test_accuracy_counts_ties_against_the_true_class():
    op = registry.OPS["accuracy"]
    logits = np.array([[1.0, 2.0, 2.0], [3.0, 1.0, 0.0]])
    label = np.array([1, 0], dtype=np.int32)
    assert run_forward(op, dict(top_k=1), [logits, label], {})[0] == 0.5
    assert run_forward(op, dict(top_k=2), [logits, label], {})[0] == 1.0


@pytest.mark.parametrize("match_type, labels, loss", [
    # B overlaps the box by 2/3: matched per prediction (threshold 0.5), so C alone is a
    # negative; bipartite leaves B unmatched, but 2/3 is above neg_overlap: not mined
    ("PER_PREDICTION", [1, 1, 0], (1.5 + 3 * np.log(2)) / 2),
    ("BIPARTITE", [1, -1, 0], 2 * np.log(2)),
])
def test_multibox_matches_mines_and_scores_a_worked_example(match_type, labels, loss):
    from bwplan.kernels.cpu import get
    from bwplan.ops.opdef import OpCtx
    op = registry.OPS["multibox_loss"]
    priors = [[0, 0, .5, .5], [.1, 0, .6, .5], [.5, .5, 1, 1]]     # A, B, C
    prior = np.array([sum(priors, []), [0.1, 0.1, 0.2, 0.2] * 3]).reshape(1, 2, 12)
    gt = np.array([0, 1, 0, 0, 0, .5, .5, 0], dtype=np.float64).reshape(1, 1, 1, 8)
    loc, conf = np.zeros((1, 12)), np.zeros((1, 6))
    attrs = dict(num_classes=2, match_type=match_type)
    out, aux = run_forward(op, attrs, [loc, conf, prior, gt], {})
    assert aux["labels"].tolist() == [labels]
    # B's box centre is 0.1 left of its own: (-0.1 / 0.5) / 0.1 = -2, smooth L1 1.5
    if labels[1] == 1:
        assert aux["targets"][0, 1].tolist() == pytest.approx([-2, 0, 0, 0])
    assert float(out) == pytest.approx(loss)
    ctx = make_ctx(op, attrs, [loc, conf, prior, gt])
    got, kept = np.zeros(()), {"targets": np.zeros((1, 3, 4)), "labels": np.zeros((1, 3))}
    get(op.kernels["cpu"]["fwd"])(OpCtx(ctx.attrs, ctx.inputs, ctx.out),
                                  [loc, conf, prior, gt], {}, got, kept, True, None)
    assert float(got) == pytest.approx(loss) and kept["labels"].tolist() == [labels]


def test_argmax_gives_a_tie_to_the_larger_index_and_lays_out_like_caffe():
    op = registry.OPS["argmax"]
    x = np.array([[3.0, 5.0, 5.0, 1.0], [2.0, 2.0, 0.0, 7.0]])
    out, _ = run_forward(op, dict(top_k=3, out_max_val=True), [x], {})
    # no axis: (N, 2, top_k), the indices then the values
    assert out.shape == (2, 2, 3)
    assert out[0].tolist() == [[2, 1, 0], [5, 5, 3]]
    assert out[1].tolist() == [[3, 1, 0], [7, 2, 2]]
    out, _ = run_forward(op, dict(axis=0), [x], {})
    assert out.tolist() == [[0, 0, 0, 1]]
    out, _ = run_forward(op, dict(axis=1, out_max_val=True), [x], {})
    assert out.tolist() == [[5], [7]]


def test_reduction_mean_divides_the_coefficient_by_the_reduced_count():
    op = registry.OPS["reduction"]
    x = np.arange(24.0).reshape(2, 3, 4)
    out, _ = run_forward(op, dict(operation="MEAN", axis=1, coeff=2.0), [x], {})
    assert np.allclose(out, 2.0 * x.reshape(2, 12).mean(axis=1))
    out, _ = run_forward(op, dict(operation="SUMSQ", axis=-1), [x], {})
    assert out.shape == (2, 3) and np.allclose(out, (x * x).sum(axis=2))
    assert run_forward(op, {}, [x], {})[0].shape == ()


@settings(max_examples=20, deadline=None)
@given(case=labelled_case())
def test_infogain_with_the_identity_is_the_softmax_cross_entropy(case):
    """Caffe's InfogainLoss with H = I and VALID normalization is SoftmaxWithLoss."""
    c = case.inputs[0].shape[1]
    want, _ = run_forward(registry.OPS["softmax_cross_entropy"], {}, case.inputs, {})
    got, _ = run_forward(registry.OPS["infogain_loss"], {}, case.inputs,
                         {"infogain": np.eye(c)})
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_sigmoid_cross_entropy_divides_as_caffes_normalization_says():
    op = registry.OPS["sigmoid_cross_entropy_loss"]
    x = np.array([[0.0, 100.0, -100.0], [1.0, 2.0, 3.0]])
    t = np.array([[1.0, 1.0, 0.0], [-1.0, -1.0, 0.5]])
    per = np.array([np.log(2.0), 0.0, 0.0, 0.0, 0.0, 3 - 1.5 + np.log1p(np.exp(-3.0))])
    for mode, divisor in [("BATCH_SIZE", 2), ("FULL", 6), ("VALID", 4), ("NONE", 1)]:
        got, _ = run_forward(op, dict(normalization=mode), [x, t], {})
        assert np.isclose(got, per.sum() / divisor), mode


def test_dropout_keeps_the_expected_fraction_and_scales_it():
    op = registry.OPS["dropout"]
    x = np.ones((100, 100))
    out, aux = run_forward(op, dict(p=0.25), [x], {}, rng=np.random.default_rng(0))
    kept = aux["mask"].astype(bool)
    assert abs(kept.mean() - 0.75) < 0.02
    assert np.allclose(out[kept], 1 / 0.75) and np.all(out[~kept] == 0)
    out, aux = run_forward(op, dict(p=0.25), [x], {}, training=False)
    assert np.array_equal(out, x) and aux == {}


def test_dropout_needs_a_generator_when_training():
    with pytest.raises(ValueError, match="random generator"):
        run_forward(registry.OPS["dropout"], {}, [np.ones(3)], {})


def test_batchnorm_uses_stored_statistics_at_inference():
    op = registry.OPS["batchnorm"]
    x = np.arange(8.0).reshape(4, 2)
    params = {"mean": np.array([1.0, 2.0]), "var": np.array([3.0, 8.0])}
    out, aux = run_forward(op, dict(eps=1.0), [x], params, training=False)
    assert np.allclose(out, (x - params["mean"]) / np.sqrt(params["var"] + 1.0))
    assert aux == {}


def _caffe_pool(x, kernel, stride, pad, out_hw, mode):
    """Caffe's PoolingLayer::Forward_cpu loops, written out literally."""
    n, c, h, w = x.shape
    out = np.zeros((n, c) + tuple(out_hw))
    for ph in range(out_hw[0]):
        for pw in range(out_hw[1]):
            hstart, wstart = ph * stride[0] - pad[0], pw * stride[1] - pad[1]
            if mode == "max":
                hend, wend = min(hstart + kernel[0], h), min(wstart + kernel[1], w)
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                out[:, :, ph, pw] = x[:, :, hstart:hend, wstart:wend].max(axis=(2, 3))
            else:
                hend = min(hstart + kernel[0], h + pad[0])
                wend = min(wstart + kernel[1], w + pad[1])
                size = (hend - hstart) * (wend - wstart)
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                hend, wend = min(hend, h), min(wend, w)
                out[:, :, ph, pw] = x[:, :, hstart:hend, wstart:wend].sum(axis=(2, 3)) / size
    return out


@pytest.mark.parametrize("name,mode", [("maxpool", "max"), ("avgpool", "ave")])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_pooling_matches_caffe_loops(name, mode, data):
    op = registry.OPS[name]
    case = draw_case(data, name)
    if name == "avgpool":
        case.attrs["count_pad"] = True   # Caffe's divisor; the other mode is torch's below
    x = case.inputs[0] - 10.0  # all negative: a padding zero would win a wrong max
    ctx = make_ctx(op, case.attrs, [x])
    out, _ = run_forward(op, case.attrs, [x], {})
    kernel = case.attrs["kernel"]
    stride = case.attrs["stride"] or kernel
    expected = _caffe_pool(x, kernel, stride, case.attrs["pad"], ctx.out.shape[2:], mode)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(case=lrn_within_case())
def test_lrn_within_channel_is_caffes_pooling_pipeline(case):
    """Caffe builds WITHIN_CHANNEL LRN from layers: x^2, average pooling (size, stride 1,
    pad (size - 1) / 2), Power(scale alpha, shift 1, power -beta), and a product with x."""
    a, x = case.attrs, case.inputs[0]
    pad = (a["size"] - 1) // 2
    pooled = _caffe_pool(x * x, (a["size"],) * 2, (1, 1), (pad, pad), x.shape[2:], "ave")
    want = x * (1 + a["alpha"] * pooled) ** -a["beta"]
    got, _ = run_forward(registry.OPS["lrn_within_channel"], a, [x], {})
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# ---- forwards against PyTorch --------------------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    """Skips only the tests that use it: everything above needs NumPy alone."""
    return pytest.importorskip("torch")


def _t(torch, a):
    return torch.from_numpy(np.ascontiguousarray(a))


def _torch_conv2d(torch, case):
    a, p = case.attrs, case.params
    return torch.nn.functional.conv2d(_t(torch, case.inputs[0]), _t(torch, p["weight"]),
                                      _t(torch, p["bias"]) if "bias" in p else None,
                                      a["stride"], a["pad"], a["dilation"], a["groups"])


def _torch_linear(torch, case):
    x = case.inputs[0].reshape(case.inputs[0].shape[0], -1)
    bias = case.params.get("bias")
    return torch.nn.functional.linear(_t(torch, x), _t(torch, case.params["weight"]),
                                      None if bias is None else _t(torch, bias))


def _torch_pool(kind):
    def run(torch, case):
        a = case.attrs
        f = getattr(torch.nn.functional, kind)
        extra = {"count_include_pad": a["count_pad"]} if kind == "avg_pool2d" else {}
        return f(_t(torch, case.inputs[0]), a["kernel"], a["stride"] or a["kernel"],
                 a["pad"], ceil_mode=a["ceil"], **extra)
    return run


def _torch_batchnorm(training):
    def run(torch, case):
        p, a = case.params, case.attrs
        affine = a["affine"]
        return torch.nn.functional.batch_norm(
            _t(torch, case.inputs[0]), _t(torch, p["mean"].copy()), _t(torch, p["var"].copy()),
            _t(torch, p["weight"]) if affine else None, _t(torch, p["bias"]) if affine else None,
            training=training, eps=a["eps"])
    return run


def _torch_cross_entropy(torch, case):
    logits, label = case.inputs
    return torch.nn.functional.cross_entropy(_t(torch, logits), _t(torch, label.astype(np.int64)),
                                             ignore_index=-1)


TORCH = {
    "conv2d": (conv2d_case(), _torch_conv2d),
    "linear": (linear_case(), _torch_linear),
    "maxpool": (pool_case(torch_compatible=True), _torch_pool("max_pool2d")),
    "avgpool": (pool_case(torch_compatible=True, average=True), _torch_pool("avg_pool2d")),
    "global_maxpool": (global_pool_case(),
                       lambda torch, c: torch.amax(_t(torch, c.inputs[0]), (2, 3), True)),
    "global_avgpool": (global_pool_case(),
                       lambda torch, c: torch.mean(_t(torch, c.inputs[0]), (2, 3), True)),
    "softmax": (softmax_case(),
                lambda torch, c: torch.softmax(_t(torch, c.inputs[0]), c.attrs["axis"])),
    "lrn": (lrn_case(), lambda torch, c: torch.nn.functional.local_response_norm(
        _t(torch, c.inputs[0]), c.attrs["size"], c.attrs["alpha"], c.attrs["beta"],
        c.attrs["k"])),
    # torch refuses batch statistics over a single value per channel
    "batchnorm-training": (batchnorm_case().filter(
        lambda c: not c.attrs["global_stats"] and c.inputs[0].size > c.inputs[0].shape[1]),
        _torch_batchnorm(True)),
    "batchnorm-eval": (batchnorm_case().filter(lambda c: c.attrs["global_stats"]),
                       _torch_batchnorm(False)),
    "softmax_cross_entropy": (labelled_case(), _torch_cross_entropy),
    "dropout": (dropout_case().filter(lambda c: c.attrs["p"] == 0.0),
                lambda torch, c: torch.nn.functional.dropout(_t(torch, c.inputs[0]), 0.0, True)),
    "flatten": (flatten_case(), lambda torch, c: torch.flatten(
        _t(torch, c.inputs[0]), c.attrs["axis"], c.attrs["end_axis"])),
    "sigmoid": (unary_case(), lambda torch, c: torch.sigmoid(_t(torch, c.inputs[0]))),
    "tanh": (unary_case(), lambda torch, c: torch.tanh(_t(torch, c.inputs[0]))),
    "transpose": (transpose_case(), lambda torch, c: _t(torch, c.inputs[0]).permute(
        *c.attrs["perm"])),
    "clip": (clip_case(), lambda torch, c: torch.nn.functional.hardtanh(
        _t(torch, c.inputs[0]), c.attrs["min"], c.attrs["max"])),
}


def _oracle(name: str):
    """The forward of torch_oracle.OPS[name]: the same torch translation the training oracle
    (test_train_vs_torch.py) runs, so that an op has one torch row for both checks."""
    def run(torch, case):
        import torch_oracle
        attrs = dict(full_attrs(registry.OPS[name], case.attrs))
        return torch_oracle.OPS[name](attrs, [_t(torch, x) for x in case.inputs],
                                      {k: _t(torch, v) for k, v in case.params.items()}, True)
    return run


# SegNet's class weighting, through the training oracle's translation (torch's weight=)
TORCH["softmax_cross_entropy-weighted"] = (labelled_case(weighted=True),
                                           _oracle("softmax_cross_entropy"))

# ops checked through the training oracle's translation, on their reference-test strategy
TORCH.update({name: (CASES[name], _oracle(name)) for name in (
    "elu", "power", "absval", "bnll", "exp", "log", "prelu", "threshold", "reduction",
    "argmax", "silence", "bias", "bias_add", "tile", "embed", "sigmoid_cross_entropy_loss",
    "hinge_loss", "infogain_loss", "infogain_loss_h", "smooth_l1_loss",
    "smooth_l1_loss_weighted", "mvn", "lrn_within_channel", "maxpool_mask", "max_unpool",
    "accuracy", "accuracy_per_class", "seg_accuracy", "multibox_loss", "scale_mul")})


@pytest.mark.parametrize("key", sorted(TORCH))
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_forward_matches_torch(torch, key, data):
    name = key.split("-")[0]
    strategy, run_torch = TORCH[key]
    case = _valid(name, data.draw(strategy))
    out, _ = run_forward(registry.OPS[name], case.attrs, case.inputs, case.params,
                         training=True, rng=np.random.default_rng(0))
    with torch.no_grad():
        expected = run_torch(torch, case).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-10)



@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_deconv2d_forward_matches_torch_conv_transpose(data):
    torch = pytest.importorskip("torch")
    case = draw_case(data, "deconv2d")
    a = case.attrs
    out, _ = run_forward(registry.OPS["deconv2d"], a, case.inputs, case.params)
    bias = case.params.get("bias")
    want = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(case.inputs[0]), torch.from_numpy(case.params["weight"]),
        None if bias is None else torch.from_numpy(bias), stride=a["stride"],
        padding=a["pad"], groups=a["groups"], dilation=a["dilation"]).numpy()
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-10)


def test_interp_aligns_corners_like_caffe():
    # caffe_cpu_interp2: output i samples input i * (in - 1) / (out - 1)
    x = np.arange(3.0).reshape(1, 1, 1, 3)
    out, _ = run_forward(registry.OPS["interp"], dict(height=1, width=5), [x], {})
    np.testing.assert_allclose(out.ravel(), [0, 0.5, 1, 1.5, 2])


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_interp_matches_torch_bilinear_with_aligned_corners(data):
    torch = pytest.importorskip("torch")
    case = draw_case(data, "interp")
    out, _ = run_forward(registry.OPS["interp"], case.attrs, case.inputs, {})
    want = torch.nn.functional.interpolate(
        torch.from_numpy(case.inputs[0]), size=(case.attrs["height"], case.attrs["width"]),
        mode="bilinear", align_corners=True).numpy()
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-10)


def _caffe_roi_pool(x, rois, pooled_h, pooled_w, scale):
    """ROIPoolingLayer::Forward_cpu of Fast R-CNN, transcribed loop for loop."""
    n, c, h, w = x.shape
    top = np.zeros((len(rois), c, pooled_h, pooled_w))
    for r, roi in enumerate(rois):
        b = int(roi[0])
        start_w, start_h, end_w, end_h = (int(np.sign(v * scale) * np.floor(abs(v * scale)
                                                                           + 0.5))
                                          for v in roi[1:])
        bin_h = max(end_h - start_h + 1, 1) / pooled_h
        bin_w = max(end_w - start_w + 1, 1) / pooled_w
        for ch in range(c):
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    hstart = min(max(int(np.floor(ph * bin_h)) + start_h, 0), h)
                    hend = min(max(int(np.ceil((ph + 1) * bin_h)) + start_h, 0), h)
                    wstart = min(max(int(np.floor(pw * bin_w)) + start_w, 0), w)
                    wend = min(max(int(np.ceil((pw + 1) * bin_w)) + start_w, 0), w)
                    if hend <= hstart or wend <= wstart:
                        continue
                    best = -np.inf
                    for yy in range(hstart, hend):
                        for xx in range(wstart, wend):
                            best = max(best, x[b, ch, yy, xx])
                    top[r, ch, ph, pw] = best
    return top


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_roi_pool_matches_fast_rcnns_loops(data):
    case = draw_case(data, "roi_pool")
    a = case.attrs
    out, _ = run_forward(registry.OPS["roi_pool"], a, case.inputs, {})
    want = _caffe_roi_pool(*case.inputs, a["pooled_h"], a["pooled_w"], a["spatial_scale"])
    np.testing.assert_array_equal(out, want)


def test_normalize_divides_by_the_l2_norm_at_each_position():
    x = np.array([3.0, 4.0]).reshape(1, 2, 1)
    attrs = dict(across_spatial=False, channel_shared=True, eps=0.0)
    out, aux = run_forward(registry.OPS["normalize"], attrs, [x], {"weight": np.array([2.0])})
    np.testing.assert_allclose(out.ravel(), [1.2, 1.6])
    np.testing.assert_allclose(aux["norm"].ravel(), [5.0])


def test_maxpool_mask_is_maxpools_argmax_and_max_unpool_puts_each_max_back():
    """SegNet's pool -> upsample pair: every window's max returns to where it was, every
    other cell is zero; overlapping windows' shared winner is counted once."""
    x = np.array([[[[1.0, 5.0, 2.0, 0.0],
                    [3.0, 4.0, 7.0, 6.0],
                    [9.0, 8.0, 0.5, 0.25],
                    [2.0, 1.0, 3.0, 4.0]]]])
    attrs = dict(kernel=2, stride=2)
    pooled, aux = run_forward(registry.OPS["maxpool"], attrs, [x], {})
    mask, _ = run_forward(registry.OPS["maxpool_mask"], attrs, [x], {})
    assert mask.dtype == x.dtype and np.array_equal(mask, aux["argmax"])
    assert mask[0, 0].tolist() == [[1.0, 6.0], [8.0, 15.0]]
    up, _ = run_forward(registry.OPS["max_unpool"], {}, [pooled, mask], {})
    assert np.array_equal(up, np.where(x == np.kron(pooled, np.ones((2, 2))), x, 0.0))


def test_class_weights_scale_each_term_but_not_the_count():
    """SegNet's weight_by_label_freqs: -sum w[label] log p[label] / (counted positions)."""
    op = registry.OPS["softmax_cross_entropy"]
    logits = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, -1.0]])
    label = np.array([0, 1, -1])
    loss, _ = run_forward(op, dict(class_weights=(0.5, 3.0)), [logits, label], {})
    assert np.isclose(loss, (0.5 + 3.0) * np.log(2.0) / 2)
    plain, _ = run_forward(op, {}, [logits, label], {})
    assert np.isclose(plain, np.log(2.0))
