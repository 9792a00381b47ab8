"""Shape arithmetic shared by the op families (window sizes, pair attributes)."""
from __future__ import annotations

from bwplan.ops.opdef import Attrs


def pair(value: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    """An attribute written as `3` or `[3, 5]`, as (height, width)."""
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            return int(value[0]), int(value[0])
        return int(value[0]), int(value[1])
    return int(value), int(value)


def window_out(size: int, kernel: int, stride: int, pad: int, dilation: int = 1,
               ceil: bool = False) -> int:
    """Output length of a sliding window. `ceil` follows Caffe's pooling, which also drops a
    last window that would start inside the right padding."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    if not ceil:
        return span // stride + 1
    out = -(-span // stride) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def spatial_out(attrs: Attrs, h: int, w: int, ceil: bool = False) -> tuple[int, int]:
    kh, kw = pair(attrs["kernel"])
    sh, sw = pair(attrs.get("stride", 1))
    ph, pw = pair(attrs.get("pad", 0))
    dh, dw = pair(attrs.get("dilation", 1))
    return (window_out(h, kh, sh, ph, dh, ceil), window_out(w, kw, sw, pw, dw, ceil))
