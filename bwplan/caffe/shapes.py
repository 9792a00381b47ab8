"""Blob and param-blob shapes as Caffe computes them in each layer's Reshape, one rule per
layer type. Used to check shared params (Caffe compares their shapes) and to give data
blobs their types.

A shape is a tuple of ints, or None when it cannot be known (a data layer whose source
files decide it, a layer type with no rule here, or inputs that do not fit). These rules
never reject a net: bwplan's own shape checks do that, with better messages.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from bwplan.caffe.model import CaffeLayer
from bwplan.errors import CaffeError

Shape = tuple[int, ...]
Shapes = list[Shape | None]
Rule = Callable[[CaffeLayer, Sequence[Shape]], tuple[Shapes, Shapes]]


def _axis(axis: int, ndim: int) -> int:
    """Caffe's CanonicalAxisIndex."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} out of range for {ndim} axes")
    return axis + ndim if axis < 0 else axis


def _hw(p, name: str, default: int | None, full: str = "") -> tuple[int, int]:
    """A 2-D size given as name_h / name_w, or as `full` (one value, or one per axis)."""
    if p.has(f"{name}_h") or p.has(f"{name}_w"):
        return p.get(f"{name}_h", default), p.get(f"{name}_w", default)
    value = p.get(full or name, default)
    if isinstance(value, tuple):
        value = value or (default,)
        value = value if len(value) == 2 else (value[0], value[0])
        return int(value[0]), int(value[1])
    return value, value


def _window(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil: bool) -> int:
    span = size + 2 * pad - (dilation * (kernel - 1) + 1)
    out = (math.ceil if ceil else math.floor)(span / stride) + 1
    if ceil and pad and (out - 1) * stride >= size + pad:
        out -= 1  # Caffe drops a last window that would start inside the padding
    if out <= 0:
        raise ValueError("window does not fit")
    return out


# ---- data layers -----------------------------------------------------------------------
def _input(layer, bottoms):
    shapes = layer.sub("input_param").get("shape")
    n_top, n_shape = len(layer.tops), len(shapes)
    if n_shape not in (0, 1, n_top):
        raise CaffeError(layer.span, "Must specify 'shape' once, once per top blob, or not at "
                         f"all: {n_top} tops vs. {n_shape} shapes.")
    if not shapes:
        return [None] * n_top, []
    return [tuple(shapes[0 if n_shape == 1 else i].get("dim")) for i in range(n_top)], []


def _batch_label(batch: int | None, image: Shape | None, n_top: int) -> Shapes:
    label = (batch,) if batch else None
    return [image, label][:n_top] + [None] * (n_top - 2)


def _data(layer, bottoms):
    t, d = layer.sub("transform_param"), layer.sub("data_param")
    batch = d.get("batch_size")
    crop = t.get("crop_size") or d.get("crop_size")
    means = t.get("mean_value")
    # one mean_value applies to every channel, so only several of them give the count
    image = (batch, len(means), crop, crop) if batch and crop and len(means) > 1 else None
    return _batch_label(batch, image, len(layer.tops)), []


def _image_data(layer, bottoms):
    t, p = layer.sub("transform_param"), layer.sub("image_data_param")
    batch, crop = p.get("batch_size"), t.get("crop_size")
    h, w = (crop, crop) if crop else (p.get("new_height"), p.get("new_width"))
    image = (batch, 3 if p.get("is_color") else 1, h, w) if h and w else None
    return _batch_label(batch, image, len(layer.tops)), []


def _memory_data(layer, bottoms):
    p = layer.sub("memory_data_param")
    dims = tuple(p.get(k) for k in ("batch_size", "channels", "height", "width"))
    image = dims if all(dims) else None
    return _batch_label(dims[0], image, len(layer.tops)), []


def _dummy_data(layer, bottoms):
    p = layer.sub("dummy_data_param")
    shapes = [tuple(s.get("dim")) for s in p.get("shape")]
    if not shapes:
        legacy = [p.get(k) for k in ("num", "channels", "height", "width")]
        shapes = [tuple(v[i] for v in legacy) for i in range(min(map(len, legacy)))]
    if not shapes:
        return [None] * len(layer.tops), []
    return [shapes[0 if len(shapes) == 1 else i] if len(shapes) in (1, len(layer.tops))
            else None for i in range(len(layer.tops))], []


# ---- layers with parameters --------------------------------------------------------------
def _conv(layer, bottoms):
    p = layer.sub("convolution_param")
    n, c, h, w = bottoms[0]
    kh, kw = _hw(p, "kernel", None, "kernel_size")
    sh, sw = _hw(p, "stride", 1)
    ph, pw = _hw(p, "pad", 0)
    dh, dw = _hw(p, "dilation", 1)
    out, group = p.get("num_output"), p.get("group")
    tops = [(s[0], out, _window(s[2], kh, sh, ph, dh, False), _window(s[3], kw, sw, pw, dw,
                                                                       False))
            for s in bottoms]
    params = [(out, c // group, kh, kw)] + ([(out,)] if p.get("bias_term") else [])
    return tops, params


def _inner_product(layer, bottoms):
    p = layer.sub("inner_product_param")
    x = bottoms[0]
    axis = _axis(p.get("axis"), len(x))
    k, out = math.prod(x[axis:]), p.get("num_output")
    weight = (k, out) if p.get("transpose") else (out, k)
    return [x[:axis] + (out,)], [weight] + ([(out,)] if p.get("bias_term") else [])


def _batch_norm(layer, bottoms):
    c = bottoms[0][1] if len(bottoms[0]) > 1 else 1
    return [bottoms[0]], [(c,), (c,), (1,)]


def _scale(layer, bottoms):
    p = layer.sub("scale_param")
    x = bottoms[0]
    axis = _axis(p.get("axis"), len(x))
    num_axes = p.get("num_axes")
    shape = x[axis:] if num_axes == -1 else x[axis:axis + num_axes]
    n = int(len(layer.bottoms) == 1) + int(bool(p.get("bias_term")))
    return [x], [shape] * n


# ---- layers without parameters -------------------------------------------------------------
def _same(layer, bottoms):
    return [bottoms[0]] * max(1, len(layer.tops)), []


def _pooling(layer, bottoms):
    p = layer.sub("pooling_param")
    n, c, h, w = bottoms[0]
    if p.get("global_pooling"):
        top = (n, c, 1, 1)
    else:
        kh, kw = _hw(p, "kernel", None, "kernel_size")
        sh, sw = _hw(p, "stride", 1)
        ph, pw = _hw(p, "pad", 0)
        ceil = p.get("round_mode") == "CEIL"
        top = (n, c, _window(h, kh, sh, ph, 1, ceil), _window(w, kw, sw, pw, 1, ceil))
    return [top] * len(layer.tops), []


def _concat(layer, bottoms):
    p = layer.sub("concat_param")
    x = bottoms[0]
    axis = p.get("concat_dim") if p.has("concat_dim") else _axis(p.get("axis"), len(x))
    size = sum(b[axis] for b in bottoms)
    return [x[:axis] + (size,) + x[axis + 1:]], []


def _scalar(layer, bottoms):
    return [()] + [bottoms[0]] * (len(layer.tops) - 1), []


def _accuracy(layer, bottoms):
    return [()] + [(bottoms[0][1],)] * (len(layer.tops) - 1), []


def _flatten(layer, bottoms):
    p = layer.sub("flatten_param")
    x = bottoms[0]
    start, end = _axis(p.get("axis"), len(x)), _axis(p.get("end_axis"), len(x))
    return [x[:start] + (math.prod(x[start:end + 1]),) + x[end + 1:]], []


def _reshape(layer, bottoms):
    p = layer.sub("reshape_param")
    x = bottoms[0]
    dims = list(p.sub("shape").get("dim"))
    start = _axis(p.get("axis"), len(x) + 1)
    num_axes = p.get("num_axes")
    end = len(x) if num_axes == -1 else start + num_axes
    if end > len(x):
        raise ValueError("num_axes out of range")
    new = [x[start + i] if d == 0 else d for i, d in enumerate(dims)]
    out = list(x[:start]) + new + list(x[end:])
    if out.count(-1) == 1:
        known = math.prod(d for d in out if d != -1)
        out[out.index(-1)] = math.prod(x) // known
    if math.prod(out) != math.prod(x):
        raise ValueError("reshape changes the element count")
    return [tuple(out)], []


def slice_bounds(layer: CaffeLayer, x: Shape) -> tuple[int, list[tuple[int, int]]]:
    """The slice axis and (begin, end) of each top, as Caffe's SliceLayer cuts them."""
    p = layer.sub("slice_param")
    axis = p.get("slice_dim") if p.has("slice_dim") else _axis(p.get("axis"), len(x))
    size, n = x[axis], len(layer.tops)
    points = list(p.get("slice_point"))
    if points:
        if len(points) != n - 1:
            raise ValueError("slice_point count must be one less than the top count")
    else:
        if size % n:
            raise ValueError(f"cannot split {size} evenly into {n} tops")
        points = [size // n * (i + 1) for i in range(n - 1)]
    edges = [0] + points + [size]
    if any(a >= b for a, b in zip(edges, edges[1:])):
        raise ValueError("slice points must increase inside the axis")
    return axis, list(zip(edges, edges[1:]))


def _slice(layer, bottoms):
    x = bottoms[0]
    axis, bounds = slice_bounds(layer, x)
    return [x[:axis] + (b - a,) + x[axis + 1:] for a, b in bounds], []


RULES: Mapping[str, Rule] = {
    "Input": _input, "Data": _data, "ImageData": _image_data, "MemoryData": _memory_data,
    "DummyData": _dummy_data,
    "Convolution": _conv, "InnerProduct": _inner_product, "BatchNorm": _batch_norm,
    "Scale": _scale,
    "ReLU": _same, "Sigmoid": _same, "TanH": _same, "Dropout": _same, "LRN": _same,
    "Softmax": _same, "Eltwise": _same, "Split": _same,
    "Pooling": _pooling, "Concat": _concat, "Flatten": _flatten, "Reshape": _reshape,
    "Slice": _slice, "Accuracy": _accuracy,
    "SoftmaxWithLoss": _scalar, "EuclideanLoss": _scalar, "ContrastiveLoss": _scalar,
    "SigmoidCrossEntropyLoss": _scalar, "MultinomialLogisticLoss": _scalar,
    "InfogainLoss": _scalar, "HingeLoss": _scalar,
}


def infer(layer: CaffeLayer, bottoms: Sequence[Shape | None], n_params: int
          ) -> tuple[Shapes, Shapes]:
    """Top shapes and param-blob shapes of one layer (None where unknown). Raises CaffeError
    only for what Caffe itself rejects while reshaping."""
    unknown: tuple[Shapes, Shapes] = ([None] * len(layer.tops), [None] * n_params)
    rule = RULES.get(layer.type)
    if rule is None or any(b is None for b in bottoms):
        return unknown
    try:
        tops, params = rule(layer, bottoms)
    except (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError):
        return unknown
    tops = (list(map(_known, tops)) + [None] * len(layer.tops))[:len(layer.tops)]
    params = (list(map(_known, params)) + [None] * n_params)[:n_params]
    return tops, params


def _known(shape: Shape | None) -> Shape | None:
    """A shape with a missing field in it (num_output not given) is unknown as a whole."""
    return None if shape is None or any(d is None for d in shape) else shape


def shape_string(shape: Shape | None) -> str:
    """Caffe's Blob::shape_string: '64 3 7 7 (9408)'; a scalar is '(1)'."""
    if shape is None:
        return "unknown"
    return "".join(f"{d} " for d in shape) + f"({math.prod(shape)})"
