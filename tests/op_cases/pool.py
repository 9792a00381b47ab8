"""The rows of pooling with Caffe's geometry (bwplan/ops/pool.py)."""
from __future__ import annotations

from hypothesis import strategies as st

from .draw import rng_from, distinct
from .row import Case, NetUse, OpRow
from .torch_support import F, torch, pair, winner, take


@st.composite
def pool_case(draw, average=False):
    """Caffe pooling geometry (pad up to kernel - 1, beyond what torch's own pooling takes);
    `average` draws the divisor mode too."""
    rng = rng_from(draw)
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    pad = (draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1)))
    attrs = dict(kernel=(kh, kw), stride=stride, pad=pad, ceil=draw(st.booleans()))
    if average:
        attrs["count_pad"] = draw(st.booleans())
    h = max(1, kh - 2 * pad[0]) + draw(st.integers(0, 3))
    w = max(1, kw - 2 * pad[1]) + draw(st.integers(0, 3))
    x = distinct(rng, (draw(st.integers(1, 2)), draw(st.integers(1, 2)), h, w))
    return Case(attrs, [x])


@st.composite
def global_pool_case(draw):
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)),
             draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return Case({}, [distinct(rng_from(draw), shape)])


def caffe_pool_len(size: int, k: int, s: int, p: int, ceil: bool, any_pad: bool) -> int:
    """Caffe PoolingLayer::Reshape: floor or ceil of (size + 2p - k) / s, plus one; with
    any padding, a last window that starts at or past size + p (in the padding) is dropped."""
    span = size + 2 * p - k
    out = (-(-span // s) if ceil else span // s) + 1
    if any_pad and (out - 1) * s >= size + p:
        out -= 1
    return out


def pool_geometry(a, x: torch.Tensor):
    kh, kw = pair(a["kernel"])
    sh, sw = pair(a["kernel"] if a["stride"] is None else a["stride"])
    ph, pw = pair(a["pad"])
    h, w = x.shape[2:]
    any_pad = bool(ph or pw)
    ho = caffe_pool_len(h, kh, sh, ph, a["ceil"], any_pad)
    wo = caffe_pool_len(w, kw, sw, pw, a["ceil"], any_pad)
    return (kh, kw), (sh, sw), (ph, pw), (ho, wo)


def padded_for_windows(x, value, kernel, stride, pad, out_hw):
    """x padded by `pad` on the left and as far right as the last window reaches."""
    h, w = x.shape[2:]
    right_h = max(0, (out_hw[0] - 1) * stride[0] + kernel[0] - pad[0] - h)
    right_w = max(0, (out_hw[1] - 1) * stride[1] + kernel[1] - pad[1] - w)
    return F.pad(x, (pad[1], right_w, pad[0], right_h), value=value)


def pool_windows(x, fill, kernel, stride, pad, out_hw) -> torch.Tensor:
    """[N, C, kh*kw, Ho, Wo]: the cells of every window, in row-major order."""
    xp = padded_for_windows(x, fill, kernel, stride, pad, out_hw)
    rows = (xp.shape[2] - kernel[0]) // stride[0] + 1
    cols = (xp.shape[3] - kernel[1]) // stride[1] + 1
    cells = F.unfold(xp, kernel, stride=stride)
    cells = cells.reshape(x.shape[0], x.shape[1], kernel[0] * kernel[1], rows, cols)
    return cells[..., :out_hw[0], :out_hw[1]]


def maxpool(a, xs, p, training, hints=None):
    """Padding is -inf, so it never wins; the first maximum of a window wins a tie."""
    x = xs[0]
    kernel, stride, pad, out_hw = pool_geometry(a, x)
    cells = pool_windows(x, float("-inf"), kernel, stride, pad, out_hw)
    hint = None if hints is None else pool_windows(hints[0], float("-inf"), kernel, stride,
                                                    pad, out_hw)
    return take(cells, 2, winner(cells, 2, hint, x))


def avg_divisors(size: int, out: int, k: int, s: int, p: int, count_pad: bool = True
                  ) -> list[int]:
    """Caffe AVE: each window's extent clipped to the padded image [-p, size + p); without
    count_pad (ONNX's default), clipped to the image [0, size)."""
    if not count_pad:
        return [min(o * s - p + k, size) - max(o * s - p, 0) for o in range(out)]
    return [min(o * s - p + k, size + p) - (o * s - p) for o in range(out)]


def avgpool(a, xs, p, training):
    x = xs[0]
    kernel, stride, pad, (ho, wo) = pool_geometry(a, x)
    xp = padded_for_windows(x, 0.0, kernel, stride, pad, (ho, wo))
    sums = F.avg_pool2d(xp, kernel, stride, divisor_override=1)[:, :, :ho, :wo]
    count_pad = a.get("count_pad", True)
    dh = torch.tensor(avg_divisors(x.shape[2], ho, kernel[0], stride[0], pad[0], count_pad),
                      dtype=x.dtype)
    dw = torch.tensor(avg_divisors(x.shape[3], wo, kernel[1], stride[1], pad[1], count_pad),
                      dtype=x.dtype)
    return sums / (dh[:, None] * dw[None, :])


def global_maxpool(a, xs, p, training, hints=None):
    x = xs[0]
    cells = x.flatten(2)
    hint = None if hints is None else hints[0].flatten(2)
    return take(cells, 2, winner(cells, 2, hint, x))[:, :, None, None]


def global_avgpool(a, xs, p, training):
    return xs[0].mean(dim=(2, 3), keepdim=True)


def _native_geometry(a):
    """(kernel, stride, pad) for torch's own pooling, or None where torch refuses the pad
    (more than half the kernel). Where it accepts it, torch's ceil mode drops a window that
    would start in the right padding, and its average divides by the window clipped to the
    padded image, as Caffe does."""
    kernel, pad = pair(a["kernel"]), pair(a["pad"])
    if any(2 * q > k for q, k in zip(pad, kernel)):
        return None
    return kernel, pair(a["kernel"] if a["stride"] is None else a["stride"]), pad


def _maxpool_peer(a, xs, p):
    """torch's own max pooling (the padded emulation above ran 5x slower on a GPU)."""
    geometry = _native_geometry(a)
    if geometry is None:
        return maxpool(a, xs, p, True)
    return F.max_pool2d(xs[0], *geometry, ceil_mode=bool(a["ceil"]))


def _avgpool_peer(a, xs, p):
    geometry = _native_geometry(a)
    if geometry is None:
        return avgpool(a, xs, p, True)
    return F.avg_pool2d(xs[0], *geometry, ceil_mode=bool(a["ceil"]),
                        count_include_pad=a["count_pad"])


# Caffe's edge cases on the 6x6 map: the max pool's fifth window would start in the padding
# and is dropped (and its pad is beyond what torch's own pooling takes); the ceil-mode
# average pool's last window overhangs the image, so its divisor is clipped.
ROWS = {
    "maxpool": OpRow(pool_case(), NetUse(
        "maxpool = maxpool(f, kernel=3, stride=2, pad=2, ceil=true)"), maxpool,
        deciding=True, peer=_maxpool_peer),
    "avgpool": OpRow(pool_case(average=True),
                     NetUse("avgpool = avgpool(f, kernel=3, stride=2, ceil=true)"), avgpool,
                     peer=_avgpool_peer),
    "global_maxpool": OpRow(global_pool_case(), NetUse("global_maxpool = global_maxpool(f)"),
                            global_maxpool, deciding=True,
                            peer=lambda a, xs, p: F.adaptive_max_pool2d(xs[0], 1)),
    "global_avgpool": OpRow(global_pool_case(), NetUse("global_avgpool = global_avgpool(f)"),
                            global_avgpool),
}
