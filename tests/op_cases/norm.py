"""The rows of normalisation and softmax (bwplan/ops/norm.py)."""
from __future__ import annotations

from hypothesis import strategies as st

from .draw import rng_from, normal, draw_shape
from .row import Case, NetUse, OpRow
from .torch_support import F, torch, channel_view


@st.composite
def batchnorm_case(draw):
    rng = rng_from(draw)
    c = draw(st.integers(1, 3))
    n = draw(st.integers(1, 3))
    shape = (n, c) if draw(st.booleans()) else (n, c, draw(st.integers(1, 3)),
                                                draw(st.integers(1, 2)))
    attrs = dict(eps=draw(st.sampled_from([1e-5, 0.1])), global_stats=draw(st.booleans()),
                 affine=draw(st.booleans()))
    params = {"mean": normal(rng, c), "var": rng.uniform(0.5, 2.0, c)}
    if attrs["affine"]:
        params.update(weight=normal(rng, c), bias=normal(rng, c))
    return Case(attrs, [normal(rng, *shape)], params)


@st.composite
def scale_case(draw):
    rng = rng_from(draw)
    shape = draw_shape(draw, 2, 4)
    attrs = dict(bias=draw(st.booleans()))
    params = {"weight": normal(rng, shape[1])}
    if attrs["bias"]:
        params["bias"] = normal(rng, shape[1])
    return Case(attrs, [normal(rng, *shape)], params)


@st.composite
def lrn_case(draw):
    # alpha well above Caffe's default, so the cross-channel term of dX is not negligible
    attrs = dict(size=draw(st.sampled_from([1, 3, 5])), alpha=draw(st.floats(0.1, 2.0)),
                 beta=draw(st.floats(0.5, 1.0)), k=draw(st.floats(1.0, 2.0)))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 2)),
             draw(st.integers(1, 2)))
    return Case(attrs, [normal(rng_from(draw), *shape)])


@st.composite
def softmax_case(draw):
    shape = draw_shape(draw, 1, 3)
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return Case(dict(axis=axis), [normal(rng_from(draw), *shape)])


def batchnorm(a, xs, p, training):
    """Batch statistics in training unless global_stats; torch updates the running mean and
    the unbiased running variance in place with its momentum = 1 - Caffe's fraction."""
    batch_stats = training and not a["global_stats"]
    weight = p["weight"] if a["affine"] else None
    bias = p["bias"] if a["affine"] else None
    return F.batch_norm(xs[0], p["mean"], p["var"], weight, bias, training=batch_stats,
                        momentum=1.0 - a["momentum"], eps=a["eps"])


def scale(a, xs, p, training):
    x = xs[0]
    out = x * channel_view(p["weight"], x.dim())
    return out + channel_view(p["bias"], x.dim()) if a["bias"] else out


def lrn(a, xs, p, training):
    x = xs[0]
    flat = x.dim() == 2
    out = F.local_response_norm(x[..., None] if flat else x, a["size"], a["alpha"], a["beta"],
                                a["k"])
    return out[..., 0] if flat else out


def _batch_statistics_of_several_values(case) -> bool:
    """torch refuses batch statistics over a single value per channel."""
    return not case.attrs["global_stats"] and case.inputs[0].size > case.inputs[0].shape[1]


ROWS = {
    # a 4-D batchnorm with its own momentum, then a 2-D one
    "batchnorm": OpRow(batchnorm_case(), NetUse(
        "batchnorm_maps = batchnorm(f, affine=true, momentum=0.9)\n"
        "batchnorm_flat = flatten(batchnorm_maps)\n"
        "batchnorm = batchnorm(batchnorm_flat)"), batchnorm, torch_cases={
            "training": batchnorm_case().filter(_batch_statistics_of_several_values),
            "eval": batchnorm_case().filter(lambda c: c.attrs["global_stats"])}),
    "scale": OpRow(scale_case(), NetUse("scale = scale(f, bias=true) weight.lr=2"), scale),
    "lrn": OpRow(lrn_case(), NetUse("lrn = lrn(f, size=3, alpha=0.5, beta=0.75, k=2)"), lrn),
    "softmax": OpRow(softmax_case(), NetUse("softmax = softmax(f)"),
                     lambda a, xs, p, t: torch.softmax(xs[0], dim=a["axis"])),
}
