"""The rows of MVN and within-channel LRN (bwplan/ops/spatial_norm.py)."""
from __future__ import annotations

from hypothesis import strategies as st

from .draw import rng_from, normal, draw_shape
from .row import Case, NetUse, OpRow
from .torch_support import F, torch


@st.composite
def mvn_case(draw):
    shape = draw_shape(draw, 2, 4)
    attrs = dict(normalize_variance=draw(st.booleans()), across_channels=draw(st.booleans()),
                 eps=draw(st.sampled_from([1e-9, 0.1])))
    return Case(attrs, [normal(rng_from(draw), *shape)])


@st.composite
def lrn_within_case(draw):
    attrs = dict(size=draw(st.sampled_from([1, 3, 5])), alpha=draw(st.floats(0.1, 2.0)),
                 beta=draw(st.floats(0.5, 1.0)))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 4)),
             draw(st.integers(1, 4)))
    return Case(attrs, [normal(rng_from(draw), *shape)])


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


ROWS = {
    "mvn": OpRow(mvn_case(), NetUse("mvn = mvn(f, eps=0.001)"), mvn),
    "lrn_within_channel": OpRow(lrn_within_case(), NetUse(
        "lrn_within_channel = lrn_within_channel(f, size=3, alpha=0.5)"), lrn_within_channel),
}
