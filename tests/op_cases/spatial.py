"""The rows of the spatial family: crop, deconv2d, interp, roi_pool, normalize, pad
(bwplan/ops/spatial.py)."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from .draw import rng_from, normal, distinct, draw_shape
from .row import Case, NetUse, OpRow
from .torch_support import F, torch, pair, channel_view


@st.composite
def crop_case(draw):
    rng = rng_from(draw)
    shape = draw_shape(draw, 2, 4, dim_max=4)
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
    return Case(dict(axis=axis, offset=offset), [normal(rng, *shape), normal(rng, *like)])


@st.composite
def deconv2d_case(draw):
    rng = rng_from(draw)
    groups = draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dil = draw(st.integers(1, 2))
    pad = draw(st.integers(0, 1))
    attrs = dict(out=groups * draw(st.integers(1, 2)), kernel=(kh, kw), stride=stride,
                 pad=pad, dilation=dil, groups=groups, bias=draw(st.booleans()))
    c = groups * draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    params = {"weight": normal(rng, c, attrs["out"] // groups, kh, kw)}
    if attrs["bias"]:
        params["bias"] = normal(rng, attrs["out"])
    return Case(attrs, [normal(rng, draw(st.integers(1, 2)), c, h, w)], params)


@st.composite
def interp_case(draw):
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 4)),
             draw(st.integers(1, 4)))
    attrs = dict(height=draw(st.integers(1, 6)), width=draw(st.integers(1, 6)))
    return Case(attrs, [normal(rng_from(draw), *shape)])


@st.composite
def roi_pool_case(draw):
    rng = rng_from(draw)
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
    return Case(attrs, [distinct(rng, (n, c, h, w)), np.array(rois, dtype=np.float64)])


@st.composite
def normalize_case(draw):
    rng = rng_from(draw)
    shape = draw_shape(draw, 2, 4)
    attrs = dict(across_spatial=draw(st.booleans()), channel_shared=draw(st.booleans()),
                 eps=1e-10)
    weight = normal(rng, 1 if attrs["channel_shared"] else shape[1])
    return Case(attrs, [normal(rng, *shape) + 0.5], {"weight": weight})


@st.composite
def pad_case(draw):
    shape = draw_shape(draw, 4, 4)
    side = st.one_of(st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2)))
    return Case(dict(begin=draw(side), end=draw(side)), [normal(rng_from(draw), *shape)])


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
    return F.conv_transpose2d(xs[0], p["weight"], p.get("bias"), stride=pair(a["stride"]),
                              padding=pair(a["pad"]), groups=a["groups"],
                              dilation=pair(a["dilation"]))


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
    return x / norm * channel_view(p["weight"], x.dim())


def _pad(a, xs, p, training):
    (top, left), (bottom, right) = pair(a["begin"]), pair(a["end"])
    return F.pad(xs[0], (left, right, top, bottom))


ROWS = {
    "crop": OpRow(crop_case(), NetUse("crop = crop(f, like, axis=2, offset=[1, 2])",
                                      "like : f32[N, 3, 4, 4]"), crop),
    "deconv2d": OpRow(deconv2d_case(), NetUse(
        "deconv2d = deconv2d(f, out=4, kernel=3, stride=2, pad=1, groups=2)"), deconv2d),
    "interp": OpRow(interp_case(), NetUse("interp = interp(f, height=8, width=8)"), interp),
    "roi_pool": OpRow(roi_pool_case(), NetUse(
        "roi_pool = roi_pool(f, rois, pooled_h=2, pooled_w=3, spatial_scale=0.5)",
        "rois : f32[N, 5]"), roi_pool),
    "normalize": OpRow(normalize_case(), NetUse(
        "normalize_each = normalize(f, across_spatial=false, channel_shared=false)\n"
        "normalize = normalize(normalize_each)"), normalize),
    "pad": OpRow(pad_case(), NetUse("pad = pad(f, begin=[1, 0], end=[0, 2])"), _pad),
}
