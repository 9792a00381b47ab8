"""The rows of convolution (bwplan/ops/conv.py)."""
from __future__ import annotations

from hypothesis import strategies as st

from .draw import rng_from, normal
from .row import Case, NetUse, OpRow
from .torch_support import F, pair


@st.composite
def conv2d_case(draw):
    rng = rng_from(draw)
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
    params = {"weight": normal(rng, attrs["out"], c // groups, kh, kw)}
    if attrs["bias"]:
        params["bias"] = normal(rng, attrs["out"])
    return Case(attrs, [normal(rng, draw(st.integers(1, 2)), c, h, w)], params)


def conv2d(a, xs, p, training):
    return F.conv2d(xs[0], p["weight"], p.get("bias"), pair(a["stride"]), pair(a["pad"]),
                    pair(a["dilation"]), a["groups"])


ROWS = {
    "conv2d": OpRow(conv2d_case(), NetUse(
        "conv2d = conv2d(f, out=4, kernel=3, stride=2, pad=1, groups=2)"), conv2d),
}
