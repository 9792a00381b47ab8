"""The rows of SegNet's pooling mask and unpooling (bwplan/ops/unpool.py)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from .draw import rng_from, normal
from .pool import pool_case, pool_geometry, pool_windows
from .row import Case, NetUse, OpRow
from .torch_support import F, torch, pair, winner


@st.composite
def max_unpool_case(draw):
    """Distinct mask positions in each output plane, as a max pool without overlapping
    windows gives them; the size either from `scale` or written out."""
    rng = rng_from(draw)
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    scale = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    size = draw(st.one_of(st.none(), st.just((h * scale[0] + 1, w * scale[1]))))
    ho, wo = size or (h * scale[0], w * scale[1])
    mask = np.stack([rng.permutation(ho * wo)[:h * w] for _ in range(n * c)])
    return Case(dict(scale=scale, size=size),
                [normal(rng, n, c, h, w), mask.reshape(n, c, h, w).astype(np.float64)])


def maxpool_mask(a, xs, p, training, hints=None):
    """Caffe's pooling mask: the flat position h * W + w of maxpool's winner, as floats."""
    x = xs[0].detach()
    kernel, stride, pad, out_hw = pool_geometry(a, x)
    cells = pool_windows(x, float("-inf"), kernel, stride, pad, out_hw)
    hint = None if hints is None else pool_windows(hints[0], float("-inf"), kernel, stride,
                                                    pad, out_hw)
    k = winner(cells, 2, hint, x)
    rows = torch.arange(out_hw[0])[:, None] * stride[0] - pad[0] + k // kernel[1]
    cols = torch.arange(out_hw[1])[None, :] * stride[1] - pad[1] + k % kernel[1]
    return (rows * x.shape[3] + cols).to(x.dtype)


def max_unpool(a, xs, p, training):
    """torch's max_unpool2d; a stride-1 window of (out - in + 1) makes its default output
    size the wanted one, whatever the scale."""
    x, mask = xs
    h, w = x.shape[2:]
    if a["size"] is not None:
        ho, wo = pair(a["size"])
    else:
        ho, wo = h * pair(a["scale"])[0], w * pair(a["scale"])[1]
    return F.max_unpool2d(x, mask.detach().long(), (ho - h + 1, wo - w + 1), stride=1,
                          output_size=(ho, wo))


# 3x3 windows, stride 3, of the 6x6 map unpool to the size written out (the scale would
# give 4x4); the mask alone feeds a linear head, so that its forward runs in training
ROWS = {
    "maxpool_mask": OpRow(pool_case(), NetUse("maxpool_mask = maxpool_mask(f, kernel=2, stride=2)"),
                          maxpool_mask, deciding=True),
    "max_unpool": OpRow(max_unpool_case(), NetUse(
        "max_unpool_pool = maxpool(f, kernel=3, stride=3, pad=1)\n"
        "max_unpool_mask = maxpool_mask(f, kernel=3, stride=3, pad=1)\n"
        "max_unpool = max_unpool(max_unpool_pool, max_unpool_mask, size=[6, 6])"), max_unpool),
}
