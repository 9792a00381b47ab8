"""Blob and param-blob shapes as Caffe computes them in each layer's Reshape, one rule per
layer type; the catalogue (`catalogue.py`) names the rule of each type. Used to check
shared params (Caffe compares their shapes) and to give data blobs their types.

A shape is a tuple of ints, or None when it cannot be known (a data layer whose source
files decide it, a layer type with no rule here, or inputs that do not fit). These rules
never reject a net: bwplan's own shape checks do that, with better messages.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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
def inputs(layer, bottoms):
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


def data(layer, bottoms):
    t, d = layer.sub("transform_param"), layer.sub("data_param")
    batch = d.get("batch_size")
    crop = t.get("crop_size") or d.get("crop_size")
    means = t.get("mean_value")
    # one mean_value applies to every channel, so only several of them give the count
    image = (batch, len(means), crop, crop) if batch and crop and len(means) > 1 else None
    return _batch_label(batch, image, len(layer.tops)), []


def image_data(layer, bottoms):
    t, p = layer.sub("transform_param"), layer.sub("image_data_param")
    batch, crop = p.get("batch_size"), t.get("crop_size")
    h, w = (crop, crop) if crop else (p.get("new_height"), p.get("new_width"))
    image = (batch, 3 if p.get("is_color") else 1, h, w) if h and w else None
    return _batch_label(batch, image, len(layer.tops)), []


def memory_data(layer, bottoms):
    p = layer.sub("memory_data_param")
    dims = tuple(p.get(k) for k in ("batch_size", "channels", "height", "width"))
    image = dims if all(dims) else None
    return _batch_label(dims[0], image, len(layer.tops)), []


def dummy_data(layer, bottoms):
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
def _conv_geometry(p):
    """kernel, stride, pad, dilation (each (h, w)), num_output and group of a
    convolution_param: Convolution's and Deconvolution's."""
    dilation = (p.get("hole"),) * 2 if p.has("hole") else _hw(p, "dilation", 1)
    return (_hw(p, "kernel", None, "kernel_size"), _hw(p, "stride", 1), _hw(p, "pad", 0),
            dilation, p.get("num_output"), p.get("group"))


def conv(layer, bottoms):
    p = layer.sub("convolution_param")
    n, c, h, w = bottoms[0]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), out, group = _conv_geometry(p)
    tops = [(s[0], out, _window(s[2], kh, sh, ph, dh, False), _window(s[3], kw, sw, pw, dw,
                                                                       False))
            for s in bottoms]
    params = [(out, c // group, kh, kw)] + ([(out,)] if p.get("bias_term") else [])
    return tops, params


def inner_product(layer, bottoms):
    p = layer.sub("inner_product_param")
    x = bottoms[0]
    axis = _axis(p.get("axis"), len(x))
    k, out = math.prod(x[axis:]), p.get("num_output")
    weight = (k, out) if p.get("transpose") else (out, k)
    return [x[:axis] + (out,)], [weight] + ([(out,)] if p.get("bias_term") else [])


def batch_norm(layer, bottoms):
    c = bottoms[0][1] if len(bottoms[0]) > 1 else 1
    return [bottoms[0]], [(c,), (c,), (1,)]


def scale(layer, bottoms):
    p = layer.sub("scale_param")
    x = bottoms[0]
    axis = _axis(p.get("axis"), len(x))
    num_axes = p.get("num_axes")
    shape = x[axis:] if num_axes == -1 else x[axis:axis + num_axes]
    n = int(len(layer.bottoms) == 1) + int(bool(p.get("bias_term")))
    return [x], [shape] * n


# ---- layers without parameters -------------------------------------------------------------
def same(layer, bottoms):
    return [bottoms[0]] * max(1, len(layer.tops)), []


def pooling(layer, bottoms):
    p = layer.sub("pooling_param")
    n, c, h, w = bottoms[0]
    if p.get("global_pooling"):
        top = (n, c, 1, 1)
    else:
        kh, kw = _hw(p, "kernel", None, "kernel_size")
        sh, sw = _hw(p, "stride", 1)
        ph, pw = _hw(p, "pad", 0)
        ceil = p.get("round_mode") == "CEIL" and p.get("ceil_mode")
        top = (n, c, _window(h, kh, sh, ph, 1, ceil), _window(w, kw, sw, pw, 1, ceil))
    return [top] * len(layer.tops), []


def concat(layer, bottoms):
    p = layer.sub("concat_param")
    x = bottoms[0]
    axis = p.get("concat_dim") if p.has("concat_dim") else _axis(p.get("axis"), len(x))
    size = sum(b[axis] for b in bottoms)
    return [x[:axis] + (size,) + x[axis + 1:]], []


def scalar(layer, bottoms):
    return [()] + [bottoms[0]] * (len(layer.tops) - 1), []


def accuracy(layer, bottoms):
    return [()] + [(bottoms[0][1],)] * (len(layer.tops) - 1), []


def seg_accuracy(layer, bottoms):
    # the DeepLab fork's top: (1, 1, 1, 3), its three scores
    return [(1, 1, 1, 3)], []


def flatten(layer, bottoms):
    p = layer.sub("flatten_param")
    x = bottoms[0]
    start, end = _axis(p.get("axis"), len(x)), _axis(p.get("end_axis"), len(x))
    return [x[:start] + (math.prod(x[start:end + 1]),) + x[end + 1:]], []


def reshape(layer, bottoms):
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


def slices(layer, bottoms):
    x = bottoms[0]
    axis, bounds = slice_bounds(layer, x)
    return [x[:axis] + (b - a,) + x[axis + 1:] for a, b in bounds], []


def infer(rule: Rule | None, layer: CaffeLayer, bottoms: Sequence[Shape | None],
          n_params: int) -> tuple[Shapes, Shapes]:
    """Top shapes and param-blob shapes of one layer by its type's rule (None where unknown).
    Raises CaffeError only for what Caffe itself rejects while reshaping."""
    unknown: tuple[Shapes, Shapes] = ([None] * len(layer.tops), [None] * n_params)
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


# ---- the types of Caffe forks and the rest of BVLC's catalogue ------------------------------
def _open_get(p, name: str, default=None):
    """A field of an open message (a fork's `*_param`): its first value, or `default`."""
    value = p.get(name, default)
    return value[0] if isinstance(value, tuple) and value else value


def deconv(layer, bottoms):
    p = layer.sub("convolution_param")
    n, c, h, w = bottoms[0]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), out, group = _conv_geometry(p)
    tops = [(s[0], out, sh * (s[2] - 1) + dh * (kh - 1) + 1 - 2 * ph,
             sw * (s[3] - 1) + dw * (kw - 1) + 1 - 2 * pw) for s in bottoms]
    params = [(c, out // group, kh, kw)] + ([(out,)] if p.get("bias_term") else [])
    return tops, params


def crop(layer, bottoms):
    """Caffe's CropLayer: axes from `axis` on take the second bottom's size."""
    p = layer.sub("crop_param")
    x, like = bottoms[0], bottoms[1]
    axis = _axis(p.get("axis", 2), len(x))
    return [tuple(x[:axis]) + tuple(like[axis:])], []


def upsample(layer, bottoms):
    p = layer.sub("upsample_param")
    n, c, h, w = bottoms[0]
    if p.has("upsample_h"):
        return [(n, c, _open_get(p, "upsample_h"), _open_get(p, "upsample_w"))], []
    scale = _open_get(p, "scale", 2)
    sh, sw = _open_get(p, "scale_h", scale), _open_get(p, "scale_w", scale)
    pad_h, pad_w = bool(_open_get(p, "pad_out_h", False)), bool(_open_get(p, "pad_out_w", False))
    return [(n, c, h * sh - int(pad_h), w * sw - int(pad_w))], []


def interp(layer, bottoms):
    """PSPNet's InterpLayer: zoom / shrink factors on the padded size, or a fixed size."""
    p = layer.sub("interp_param")
    n, c, h, w = bottoms[0]
    h_in = h + _open_get(p, "pad_beg", 0) + _open_get(p, "pad_end", 0)
    w_in = w + _open_get(p, "pad_beg", 0) + _open_get(p, "pad_end", 0)
    zoom, shrink = _open_get(p, "zoom_factor"), _open_get(p, "shrink_factor")
    if len(bottoms) > 1:
        h_out, w_out = bottoms[1][2], bottoms[1][3]
    elif zoom is not None and shrink is not None:
        h_out = (h_in - 1) // shrink + 1
        w_out = (w_in - 1) // shrink + 1
        h_out, w_out = h_out + (h_out - 1) * (zoom - 1), w_out + (w_out - 1) * (zoom - 1)
    elif zoom is not None:
        h_out, w_out = h_in + (h_in - 1) * (zoom - 1), w_in + (w_in - 1) * (zoom - 1)
    elif shrink is not None:
        h_out, w_out = (h_in - 1) // shrink + 1, (w_in - 1) // shrink + 1
    else:
        h_out, w_out = _open_get(p, "height"), _open_get(p, "width")
    return [(n, c, int(h_out), int(w_out))], []


def permute(layer, bottoms):
    x = bottoms[0]
    return [tuple(x[i] for i in permute_order(layer, len(x)))], []


def permute_order(layer: CaffeLayer, ndim: int) -> tuple[int, ...]:
    """SSD's PermuteLayer order: the axes given, then the others in their order."""
    given = layer.sub("permute_param").get("order", ())
    given = tuple(given) if isinstance(given, tuple) else (given,)
    order = [_axis(int(a), ndim) for a in given]
    if len(set(order)) != len(order):
        raise ValueError("an axis is repeated in permute_param.order")
    return tuple(order + [a for a in range(ndim) if a not in order])


def prior_box(layer, bottoms):
    """SSD's PriorBoxLayer: [1, 2, H*W*priors*4] (the boxes, then their variances)."""
    p = layer.sub("prior_box_param")
    h, w = bottoms[0][2], bottoms[0][3]
    mins = p.get("min_size", ())
    maxs = p.get("max_size", ())
    ratios = [1.0]
    for r in p.get("aspect_ratio", ()):
        for v in (r, 1.0 / r) if _open_get(p, "flip", True) else (r,):
            if all(abs(v - q) > 1e-6 for q in ratios):
                ratios.append(v)
    priors = len(ratios) * len(mins) + len(maxs)
    return [(1, 2, h * w * priors * 4)], []


def detection_output(layer, bottoms):
    """SSD's DetectionOutputLayer: at most keep_top_k detections of 7 numbers each (Caffe
    reshapes the top to the count found; the plan takes the most it can hold)."""
    keep = _open_get(layer.sub("detection_output_param"), "keep_top_k", -1)
    return [(1, 1, keep, 7) if keep and keep > 0 else None], []


def roi_pooling(layer, bottoms):
    p = layer.sub("roi_pooling_param")
    rois, c = bottoms[1][0], bottoms[0][1]
    return [(rois, c, _open_get(p, "pooled_h", 0), _open_get(p, "pooled_w", 0))], []


def normalize(layer, bottoms):
    p = layer.sub("norm_param")
    shared = getattr(_open_get(p, "channel_shared", True), "name", True) in (True, "true")
    return [bottoms[0]], [(1,) if shared else (bottoms[0][1],)]


def fork_bn(layer, bottoms):
    c = bottoms[0][1]
    return [bottoms[0]] + [(1, c, 1, 1)] * (len(layer.tops) - 1), [(1, c, 1, 1)] * 2


def argmax(layer, bottoms):
    p = layer.sub("argmax_param")
    x = bottoms[0]
    k = _open_get(p, "top_k", 1)
    if p.has("axis"):
        axis = _axis(_open_get(p, "axis"), len(x))
        return [x[:axis] + (k,) + x[axis + 1:]], []
    # Caffe's ArgMaxLayer::Reshape: as many axes as the bottom, all 1 but these
    shape = [1] * max(3, len(x))
    shape[0], shape[1], shape[2] = x[0], 2 if _open_get(p, "out_max_val", False) else 1, k
    return [tuple(shape)], []


def reduction(layer, bottoms):
    p = layer.sub("reduction_param")
    x = bottoms[0]
    return [x[:_axis(_open_get(p, "axis", 0), len(x) + 1)]], []


def bias(layer, bottoms):
    p = layer.sub("bias_param")
    x = bottoms[0]
    if len(bottoms) > 1:
        return [x], []
    axis = _axis(p.get("axis", 1), len(x))
    n = p.get("num_axes", 1)
    return [x], [x[axis:] if n == -1 else x[axis:axis + n]]


def tile(layer, bottoms):
    p = layer.sub("tile_param")
    x = bottoms[0]
    axis = _axis(_open_get(p, "axis", 1), len(x))
    return [x[:axis] + (x[axis] * _open_get(p, "tiles"),) + x[axis + 1:]], []


def embed(layer, bottoms):
    p = layer.sub("embed_param")
    out = p.get("num_output")
    params = [(p.get("input_dim"), out)] + ([(out,)] if p.get("bias_term") else [])
    return [tuple(bottoms[0]) + (out,)], params


def prelu(layer, bottoms):
    shared = _open_get(layer.sub("prelu_param"), "channel_shared", False)
    return [bottoms[0]], [() if shared else (bottoms[0][1],)]


def dense_image_data(layer, bottoms):
    """SegNet's DenseImageData: [batch, 3, crop_h, crop_w] and the label map [batch, 1, ..];
    without a crop the images decide the size (None)."""
    p = layer.sub("dense_image_data_param")
    batch = _open_get(p, "batch_size", 1)
    h, w = _open_get(p, "crop_height", 0), _open_get(p, "crop_width", 0)
    if not (h and w):
        return [None] * len(layer.tops), []
    return [(batch, 3 if _open_get(p, "is_color", True) else 1, h, w), (batch, 1, h, w)
            ][:len(layer.tops)], []


def image_seg_data(layer, bottoms):
    """DeepLab's ImageSegData: crop_size square images and label maps."""
    p = layer.sub("image_data_param")
    crop = layer.sub("transform_param").get("crop_size")
    batch = p.get("batch_size")
    if not crop:
        return [None] * len(layer.tops), []
    return [(batch, 3 if p.get("is_color") else 1, crop, crop), (batch, 1, crop, crop),
            (batch, 1, 1, 1)][:len(layer.tops)], []


def annotated_data(layer, bottoms):
    """SSD's AnnotatedData: images resized by transform_param.resize_param; the annotation
    top [1, 1, boxes, 8] depends on the data (None)."""
    t, d = layer.sub("transform_param"), layer.sub("data_param")
    resize = t.get("resize_param")
    batch = d.get("batch_size")
    if resize is None or not batch:
        return [None] * len(layer.tops), []
    resize = resize[0] if isinstance(resize, tuple) else resize
    h, w = _open_get(resize, "height", 0), _open_get(resize, "width", 0)
    crop = t.get("crop_size")
    h, w = (crop, crop) if crop else (h, w)
    image = (batch, 3, h, w) if h and w else None
    return [image] + [None] * (len(layer.tops) - 1), []
