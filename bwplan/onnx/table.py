"""The op table: one row per ONNX op type, mapping a node to bwplan layers.

A row reads the node through a `NodeView` (attributes, constant inputs, inferred shapes) and
returns a `Mapped`: the layers to emit, each with its bwplan op, the data inputs, the
attributes, and which constant inputs become which parameter slot. A row that meets an
attribute or an input bwplan cannot express raises `Unsupported` with the reason; the
converter collects those for every node and reports them together.

Most rows emit one layer. Two fuse a pattern an exporter writes for one PyTorch module:
MatMul followed by Add of a constant vector (a Linear on a 3-D input, or a bias-less one),
and Mul then Add of per-channel constants (Caffe2's affine after a batch normalisation).
Some emit a short chain, the first layer named `<layer>.<suffix>`: a `pad` before a Conv
whose sides differ (TensorFlow's SAME), a `transpose` before a Gemm with transA=1 or
around a MatMul with a constant left operand, HardSigmoid/HardSwish as power, clip (, mul),
Gelu as power, erf, power, mul (or, tanh-approximated, power, add, power, tanh, power, mul),
a ConvTranspose as deconv2d then the slice, pad and bias layers that make ONNX's output
window, a pool whose sides differ as the pool then slices (or a pad before it), and the Mul
of a squeeze-and-excitation gate as a reshape then scale_mul. Split, SplitToSequence and a
Slice of a computed tensor emit one slice layer per piece or per axis cut.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


# An Emit argument naming the layer emitted just before it for the same node.
PREVIOUS = "<previous>"


class Unsupported(Exception):
    """A node bwplan cannot import; the message says what is missing."""


@dataclass(frozen=True)
class Weight:
    """A constant that becomes a parameter: its ONNX name (None when bwplan had to change
    the values, e.g. transpose them) and its value in the layout the bwplan op wants."""

    name: str | None
    value: np.ndarray


@dataclass(frozen=True)
class Emit:
    """One bwplan layer. `op` None is an alias: the output is the first input itself."""

    op: str | None
    args: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    weights: Mapping[str, Weight] = field(default_factory=dict)
    output: str | None = None    # the ONNX tensor this layer computes; None: an inner layer
    suffix: str = ""             # appended to the layer name for an inner layer


@dataclass(frozen=True)
class Mapped:
    layers: tuple[Emit, ...]
    absorbed: tuple[Any, ...] = ()   # later nodes this row also covered


class NodeView:
    """What a row may read about one node."""

    def __init__(self, node, attrs: Mapping[str, Any], opset: int,
                 constants: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]],
                 consumers: Callable[[str], list], initializers: frozenset[str]) -> None:
        self.node, self.attrs, self.opset = node, attrs, opset
        self.constants, self.shapes, self.consumers = constants, shapes, consumers
        self.initializers = initializers   # constants stored in the file, not computed

    def input(self, i: int) -> str | None:
        return self.node.input[i] if i < len(self.node.input) and self.node.input[i] else None

    def const(self, i: int) -> np.ndarray | None:
        name = self.input(i)
        return None if name is None else self.constants.get(name)

    def is_const(self, i: int) -> bool:
        return self.const(i) is not None

    def shape(self, i: int) -> tuple[int, ...]:
        name = self.input(i)
        if name not in self.shapes:
            raise Unsupported(f"the shape of input '{name}' is not known after shape "
                              "inference")
        return self.shapes[name]

    def out_shape(self, j: int = 0) -> tuple[int, ...]:
        name = self.node.output[j]
        if name not in self.shapes:
            raise Unsupported(f"the shape of output '{name}' is not known after shape "
                              "inference")
        return self.shapes[name]

    def data(self, i: int) -> str:
        """Input i as a tensor computed by the net, not a constant."""
        name = self.input(i)
        if name is None:
            raise Unsupported(f"input {i} is missing")
        if name in self.constants:
            raise Unsupported(f"input {i} ('{name}') is a constant where bwplan needs a "
                              "computed tensor")
        return name

    def weight(self, i: int, value: np.ndarray | None = None) -> Weight:
        """Constant input i as a parameter named after its ONNX name (or after the layer when
        `value` replaces the stored values)."""
        arr = self.const(i)
        if arr is None:
            raise Unsupported(f"input {i} ('{self.input(i)}') must be a constant (an "
                              "initializer) to become a parameter")
        if value is not None:
            return Weight(None, np.ascontiguousarray(value, dtype=np.float32))
        return Weight(self.input(i), np.ascontiguousarray(arr, dtype=np.float32))

    def only_consumer(self, j: int = 0):
        users = self.consumers(self.node.output[j])
        return users[0] if len(users) == 1 else None


def one(view: NodeView, op: str, args, attrs=None, weights=None) -> Mapped:
    return Mapped((Emit(op, tuple(args), dict(attrs or {}), dict(weights or {}),
                        view.node.output[0]),))


# ---- helpers for windowed ops ----------------------------------------------------------
def _spatial(view: NodeView, what: str) -> tuple[int, int]:
    shape = view.shape(0)
    if len(shape) != 4:
        raise Unsupported(f"{what} on a {len(shape)}-D input: bwplan has 2-D (NCHW) "
                          "windows only")
    return shape[2], shape[3]


def _begin_end(view: NodeView, kernel, strides, dilations) -> tuple[list[int], list[int]]:
    """The (h, w) padding before and after, from `pads` or `auto_pad` (SAME_UPPER puts the
    odd cell at the end, SAME_LOWER at the beginning, as TensorFlow's SAME does)."""
    auto = view.attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        h, w = _spatial(view, view.node.op_type)
        pads = []
        for size, k, s, d in zip((h, w), kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small = total // 2
            pads.append((small, total - small) if auto == "SAME_UPPER" else
                        (total - small, small))
        begin, end = [p[0] for p in pads], [p[1] for p in pads]
    elif auto == "VALID":
        begin, end = [0, 0], [0, 0]
    else:
        pads = list(view.attrs.get("pads", [0, 0, 0, 0]))
        begin, end = pads[:2], pads[2:]
    return [int(b) for b in begin], [int(e) for e in end]


def _pads(view: NodeView, kernel, strides, dilations, pool: bool = False
          ) -> tuple[tuple[int, int], bool]:
    """Symmetric (pad_h, pad_w) of a pool, and whether it must round up.

    Converters from Caffe write a pool's ceil mode as extra padding at the end (Caffe2,
    onnx's light models); when that extra padding changes nothing but the count of windows,
    it is bwplan's `ceil` with the begin padding, and it is read as such."""
    begin, end = _begin_end(view, kernel, strides, dilations)
    if begin == end:
        return (begin[0], begin[1]), False
    if pool and all(e >= b for b, e in zip(begin, end)) and _end_pad_is_ceil(
            view, kernel, strides, begin, end):
        return (begin[0], begin[1]), True
    raise Unsupported(f"asymmetric padding (begin {begin}, end {end}): bwplan pads both "
                      "sides of an axis alike" + (", and this end padding is not a ceil "
                                                  "mode" if pool else ""))


def _end_pad_is_ceil(view: NodeView, kernel, strides, begin, end) -> bool:
    """Whether floor((size + b + e - k) / s) + 1 windows are ceil mode's count with pad b on
    both sides, each starting inside the image, so that every window sees the real cells
    ceil mode's clipped last window sees. An average that counts padding would divide the
    last window differently, so it does not qualify."""
    from bwplan.ops._shapes import window_out
    if view.attrs.get("ceil_mode", 0) or (view.node.op_type == "AveragePool"
                                          and view.attrs.get("count_include_pad", 0)):
        return False
    h, w = _spatial(view, view.node.op_type)
    for size, k, s, b, e in zip((h, w), kernel, strides, begin, end):
        floor_out = (size + b + e - k) // s + 1
        if floor_out != window_out(size, k, s, b, ceil=True) or (floor_out - 1) * s - b >= size:
            return False
    return True


def _strides_dilations(view: NodeView, kernel) -> tuple[list[int], list[int]]:
    if len(kernel) != 2:
        raise Unsupported(f"a {len(kernel)}-D kernel: bwplan has 2-D windows only")
    return list(view.attrs.get("strides", [1, 1])), list(view.attrs.get("dilations", [1, 1]))


def _split_pads(begin: list[int], end: list[int]) -> tuple[tuple[int, int], Emit | None]:
    """Padding the two sides alike as the conv's own `pad`, and what is left over (one side
    only, per axis) as a `pad` layer before it, or None when the padding is symmetric."""
    both = (min(begin[0], end[0]), min(begin[1], end[1]))
    extra_begin = tuple(b - s for b, s in zip(begin, both))
    extra_end = tuple(e - s for e, s in zip(end, both))
    if not any(extra_begin + extra_end):
        return both, None
    return both, Emit("pad", (), dict(begin=extra_begin, end=extra_end), {}, None, ".pad")


def _with_pad(pre: Emit | None, layer: Emit) -> Mapped:
    """The layer, after the `pad` layer `pre` (when there is one) that reads its input."""
    if pre is None:
        return Mapped((layer,))
    return Mapped((replace(pre, args=layer.args), replace(layer, args=(PREVIOUS,))))


# ---- rows -----------------------------------------------------------------------------
def conv(view: NodeView) -> Mapped:
    _spatial(view, "Conv")
    w = view.const(1)
    if w is None:
        raise Unsupported("the weight (input 1) is computed, not an initializer")
    kernel = list(view.attrs.get("kernel_shape", w.shape[2:]))
    strides, dilations = _strides_dilations(view, kernel)
    pad, pre = _split_pads(*_begin_end(view, kernel, strides, dilations))
    weights = {"weight": view.weight(1)}
    # the dynamo exporter gives a bias-free Conv a bias computed as zeros (Expand of 0):
    # not a parameter of the model, so it does not become a trained one
    computed_zero = (view.input(2) and view.input(2) not in view.initializers
                     and view.is_const(2) and not view.const(2).any())
    if view.input(2) and not computed_zero:
        weights["bias"] = view.weight(2)
    return _with_pad(pre, Emit("conv2d", (view.data(0),), dict(
        out=int(w.shape[0]), kernel=tuple(kernel), stride=tuple(strides), pad=pad,
        dilation=tuple(dilations), groups=int(view.attrs.get("group", 1)),
        bias="bias" in weights), weights, view.node.output[0]))


def gemm(view: NodeView) -> Mapped:
    """alpha * A' B' + beta * C as linear: alpha folded into the weight, beta into the bias;
    transA=1 (A stored [K, N]) is a transpose layer before it."""
    a = view.attrs
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    b = view.const(1)
    if b is None or b.ndim != 2:
        raise Unsupported("B (input 1) must be a 2-D initializer")
    stored = b if a.get("transB", 0) else b.T           # linear's [out, in]
    weights = {"weight": view.weight(1) if alpha == 1.0 and a.get("transB", 0)
               else view.weight(1, alpha * stored)}
    out = stored.shape[0]
    if view.input(2) and beta != 0.0:
        c = view.const(2)
        if c is None or c.size != out:
            raise Unsupported("C (input 2) must be an initializer with one value per output")
        weights["bias"] = (view.weight(2) if c.ndim == 1 and beta == 1.0
                           else view.weight(2, beta * c.reshape(out)))
    if len(view.shape(0)) != 2:
        raise Unsupported(f"a {len(view.shape(0))}-D input A")
    fc = Emit("linear", (view.data(0),), dict(out=int(out), bias="bias" in weights), weights,
              view.node.output[0])
    if not a.get("transA", 0):
        return Mapped((fc,))
    first = Emit("transpose", fc.args, dict(perm=(1, 0)), {}, None, ".t")
    return Mapped((first, Emit(fc.op, (PREVIOUS,), fc.attrs, fc.weights, fc.output)))


def matmul(view: NodeView) -> Mapped:
    if view.is_const(0) and not view.is_const(1):
        return _matmul_left(view)
    b = view.const(1)
    if b is None or b.ndim != 2:
        raise Unsupported("B (input 1) must be a 2-D initializer: bwplan maps MatMul to a "
                          "linear layer")
    if len(view.shape(0)) != 2:
        raise Unsupported(f"a {len(view.shape(0))}-D input A: bwplan's linear multiplies "
                          "[N, K] inputs")
    weights = {"weight": view.weight(1, b.T)}
    absorbed = ()
    user = view.only_consumer()
    if user is not None and user.op_type == "Add":
        other = [n for n in user.input if n != view.node.output[0]]
        bias = view.constants.get(other[0]) if len(other) == 1 else None
        if bias is not None and bias.size == b.shape[1]:
            weights["bias"] = Weight(other[0] if bias.ndim == 1 else None,
                                     np.ascontiguousarray(bias.reshape(-1), dtype=np.float32))
            absorbed = (user,)
    output = absorbed[0].output[0] if absorbed else view.node.output[0]
    return Mapped((Emit("linear", (view.data(0),), dict(out=int(b.shape[1]),
                                                         bias="bias" in weights),
                        weights, output),), absorbed)


def _matmul_left(view: NodeView) -> Mapped:
    """A X with A a constant [M, K] and X computed [K, N]: (X^T A^T)^T, a linear layer with
    weight A between two transposes."""
    a = view.const(0)
    if a.ndim != 2 or len(view.shape(1)) != 2:
        raise Unsupported("a constant left operand of MatMul must be 2-D, and the right one "
                          "too")
    return Mapped((Emit("transpose", (view.data(1),), dict(perm=(1, 0)), {}, None, ".t"),
                   Emit("linear", (PREVIOUS,), dict(out=int(a.shape[0]), bias=False),
                        {"weight": view.weight(0)}, None),
                   Emit("transpose", (PREVIOUS,), dict(perm=(1, 0)), {}, view.node.output[0],
                        ".out")))


def _per_channel(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """A constant that broadcasts as one value per channel (dimension 1) of `shape`."""
    if len(shape) < 2:
        return None
    c = shape[1]
    v = np.asarray(value)
    if v.ndim > len(shape):
        return None
    full = (1,) * (len(shape) - v.ndim) + v.shape
    if full[1] not in (1, c) or any(d != 1 for i, d in enumerate(full) if i != 1):
        return None
    return np.broadcast_to(v.reshape(-1), (c,)).astype(np.float32)


def _binary_inputs(view: NodeView) -> tuple[int, int] | None:
    """(data index, constant index) for a node with one constant input, else None."""
    if view.is_const(1) and not view.is_const(0):
        return 0, 1
    if view.is_const(0) and not view.is_const(1):
        return 1, 0
    return None


def _channel_constant(view: NodeView, d: int, c: int) -> np.ndarray:
    per = _per_channel(view.const(c), view.shape(d))
    if per is None:
        raise Unsupported(f"a constant of shape {list(view.const(c).shape)} that is not one "
                          f"value per channel of {list(view.shape(d))}")
    return per


def _plus_constant(view: NodeView, d: int, c: int, sign: float) -> Mapped:
    """x + sign * constant, one value per channel: a `bias` layer (axis 1)."""
    per = _channel_constant(view, d, c)
    keep = sign == 1.0 and view.const(c).shape == per.shape
    return one(view, "bias", [view.data(d)], dict(axis=1, num_axes=1),
               {"bias": view.weight(c, None if keep else sign * per)})


def add(view: NodeView) -> Mapped:
    pair = _binary_inputs(view)
    if pair is None:
        shapes = {view.shape(i) for i in range(len(view.node.input))}
        if len(shapes) != 1:
            raise Unsupported(f"inputs of shapes {sorted(shapes)}: bwplan adds same-shaped "
                              "tensors only (no broadcasting)")
        return one(view, "add", [view.data(i) for i in range(len(view.node.input))])
    return _plus_constant(view, *pair, 1.0)


def sub(view: NodeView) -> Mapped:
    """a - b: `add` with coefficients 1, -1; x - c a bias of -c; c - x a scale of -1 with the
    bias c (all per channel)."""
    pair = _binary_inputs(view)
    if pair is None:
        if view.shape(0) != view.shape(1):
            raise Unsupported(f"inputs of shapes {view.shape(0)} and {view.shape(1)}: bwplan "
                              "subtracts same-shaped tensors only")
        return one(view, "add", [view.data(0), view.data(1)], dict(coeffs=(1.0, -1.0)))
    d, c = pair
    if d == 0:
        return _plus_constant(view, d, c, -1.0)
    per = _channel_constant(view, d, c)
    return one(view, "scale", [view.data(d)], dict(bias=True), {
        "weight": Weight(None, -np.ones_like(per)), "bias": view.weight(c, per)})


def div(view: NodeView) -> Mapped:
    """x / c, one value per channel: a scale by 1 / c."""
    if not view.is_const(1) or view.is_const(0):
        raise Unsupported("bwplan divides a computed tensor by a constant only")
    per = _channel_constant(view, 0, 1)
    if not np.all(per):
        raise Unsupported("division by a constant that holds 0")
    return one(view, "scale", [view.data(0)], dict(bias=False),
               {"weight": view.weight(1, 1.0 / per)})


def mul(view: NodeView) -> Mapped:
    pair = _binary_inputs(view)
    if pair is None:
        if view.shape(0) != view.shape(1):
            return _gate(view)
        return one(view, "mul", [view.data(0), view.data(1)])
    d, c = pair
    shape = view.shape(d)
    scale = _per_channel(view.const(c), shape)
    if scale is None:
        raise Unsupported(f"a constant of shape {list(view.const(c).shape)} that is not one "
                          f"value per channel of {list(shape)}")
    weights = {"weight": view.weight(c, scale if view.const(c).shape != scale.shape else None)}
    absorbed = ()
    user = view.only_consumer()
    if user is not None and user.op_type == "Add":
        other = [n for n in user.input if n != view.node.output[0]]
        bias = view.constants.get(other[0]) if len(other) == 1 else None
        per = None if bias is None else _per_channel(bias, shape)
        if per is not None:
            weights["bias"] = Weight(other[0] if bias.shape == per.shape else None, per)
            absorbed = (user,)
    output = absorbed[0].output[0] if absorbed else view.node.output[0]
    return Mapped((Emit("scale", (view.data(d),), dict(bias="bias" in weights), weights,
                        output),), absorbed)


def _gate(view: NodeView) -> Mapped:
    """x times a computed g that is x's dimensions a..k-1 with ones around them (the [N, C, 1,
    1] gate of a squeeze-and-excitation block): g reshaped to those dimensions
    (`<layer>.gate`), then scale_mul at axis a."""
    shapes = [view.shape(0), view.shape(1)]
    big = 0 if len(shapes[0]) >= len(shapes[1]) and np.prod(shapes[0]) >= np.prod(
        shapes[1]) else 1
    x, g = shapes[big], shapes[1 - big]
    g = (1,) * (len(x) - len(g)) + tuple(g)
    end = len(g)
    while end > 0 and g[end - 1] == 1 and x[end - 1] != 1:
        end -= 1
    start = 0
    while start < end and g[start] == 1 and x[start] != 1:
        start += 1
    if len(shapes[1 - big]) > len(x) or g[start:end] != x[start:end] or start == end:
        raise Unsupported(f"inputs of shapes {list(shapes[0])} and {list(shapes[1])}: bwplan "
                          "multiplies same-shaped tensors, or a tensor by one that is some "
                          "of its dimensions with ones around them")
    core = x[start:end]
    args = (view.data(big), view.data(1 - big))
    layers = []
    if tuple(view.shape(1 - big)) != core:
        target = _batch_kept(list(core), x) if start == 0 else core
        layers.append(Emit("reshape", (args[1],), dict(shape=tuple(target)), {}, None,
                           ".gate"))
        args = (args[0], PREVIOUS)
    layers.append(Emit("scale_mul", args, dict(axis=start), {}, view.node.output[0]))
    return Mapped(tuple(layers))


def batchnorm(view: NodeView) -> Mapped:
    for i in (1, 2, 3, 4):
        if not view.is_const(i):
            raise Unsupported(f"input {i} must be an initializer")
    if len(view.node.output) > 1 and any(view.consumers(o) for o in view.node.output[1:]):
        raise Unsupported("the updated running statistics (outputs 1, 2) are read by the "
                          "graph")
    momentum = float(view.attrs.get("momentum", 0.9))
    weights = {"weight": view.weight(1), "bias": view.weight(2), "mean": view.weight(3),
               "var": view.weight(4)}
    attrs = dict(eps=float(view.attrs.get("epsilon", 1e-5)), momentum=momentum, affine=True)
    if view.attrs.get("training_mode", 1) == 0:
        # exported for inference (opset 14's explicit training_mode=0): the stored
        # statistics, as onnxruntime runs it; a training export keeps batch statistics
        # (and --freeze still switches those to the stored ones)
        attrs["stats"] = "stored"
    return one(view, "batchnorm", [view.data(0)], attrs, weights)


def clip(view: NodeView) -> Mapped:
    if view.opset < 11:
        lo, hi = view.attrs.get("min", -np.inf), view.attrs.get("max", np.inf)
    else:
        for i in (1, 2):
            if view.input(i) and not view.is_const(i):
                raise Unsupported(f"bound {i} is computed, not a constant")
        lo = float(view.const(1)) if view.input(1) else -np.inf
        hi = float(view.const(2)) if view.input(2) else np.inf
    if lo == 0.0 and hi == np.inf:
        return one(view, "relu", [view.data(0)])
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise Unsupported(f"bounds [{lo}, {hi}]: bwplan's clip has two finite bounds")
    return one(view, "clip", [view.data(0)], dict(min=float(lo), max=float(hi)))


def _pool(op: str) -> Callable[[NodeView], Mapped]:
    def row(view: NodeView) -> Mapped:
        _spatial(view, view.node.op_type)
        if len(view.node.output) > 1 and view.consumers(view.node.output[1]):
            raise Unsupported("the Indices output is read by the graph")
        if view.attrs.get("storage_order", 0):
            raise Unsupported("storage_order=1")
        kernel = list(view.attrs["kernel_shape"])
        if _one_window_covers_all(view, kernel) and not (
                op == "avgpool" and view.attrs.get("count_include_pad", 0)):
            # Caffe's global pooling as converters write it: one window, padded past the
            # image, averaging its real cells only
            return one(view, "global_" + op, [view.data(0)])
        strides, dilations = _strides_dilations(view, kernel)
        ceil = bool(view.attrs.get("ceil_mode", 0))
        try:
            pad, end_ceil = _pads(view, kernel, strides, dilations, pool=True)
            ceil, skip = ceil or end_ceil, None
        except Unsupported:
            if op == "avgpool" and view.attrs.get("count_include_pad", 0):
                return _counted_padding(view, op, kernel, strides, dilations, ceil)
            pad, skip = _shifted_windows(view, kernel, strides, dilations, op)
        if dilations != [1, 1]:
            raise Unsupported(f"dilations {dilations}: bwplan's pools are dense")
        if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
            raise Unsupported(f"pads {list(pad)} not smaller than the kernel {kernel}")
        if ceil and skip is None and _floor_is_onnx_count(view, kernel, strides, pad):
            # ONNX drops a last window that would start in the end padding (or past the
            # image, without padding): where that leaves the floor count, every window is
            # a floor-mode one, and Caffe's ceil rule (which keeps a window starting past an
            # unpadded end) is not asked
            ceil = False
        attrs = dict(kernel=tuple(kernel), stride=tuple(strides), pad=pad, ceil=ceil)
        if op == "avgpool":
            attrs["count_pad"] = bool(view.attrs.get("count_include_pad", 0))
        if skip is None:
            return one(view, op, [view.data(0)], attrs)
        return _trimmed(view, Emit(op, (view.data(0),), attrs, {}, None), kernel, strides,
                        skip)
    return row


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _counted_padding(view: NodeView, op: str, kernel, strides, dilations, ceil: bool
                     ) -> Mapped:
    """An average that counts the padding (count_include_pad=1) whose sides differ. Counted
    padding is zeros, so what one side has more is a `pad` layer (`<layer>.pad`) before a pool
    padded alike on both sides. Its windows are ONNX's, over the same padded extent, so the
    sums and the divisors (the window's cells inside that extent) are ONNX's; in ceil mode a
    last window that ONNX drops (it would start in the end padding) and Caffe's rule keeps
    (it starts in the zeros of the pad layer) is sliced off (`.crop_h`, `.crop_w`)."""
    from bwplan.ops._shapes import window_out
    if dilations != [1, 1]:
        raise Unsupported(f"dilations {dilations}: bwplan's pools are dense")
    if ceil and _text(view.attrs.get("auto_pad", "NOTSET")) != "NOTSET":
        raise Unsupported("ceil_mode=1 with auto_pad: onnx's reference evaluator defines no "
                          "such pool, and onnxruntime's sizes differ from shape inference's")
    begin, end = _begin_end(view, kernel, strides, dilations)
    pad, pre = _split_pads(begin, end)
    if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        raise Unsupported(f"pads {list(pad)} not smaller than the kernel {kernel}")
    sizes = [n + b + e - 2 * p for n, b, e, p in zip(_spatial(view, view.node.op_type),
                                                      begin, end, pad)]
    want = view.out_shape()[2:]
    if ceil and all(window_out(n, k, s, p) == w for n, k, s, p, w in zip(
            sizes, kernel, strides, pad, want)):
        ceil = False        # no window of ONNX's ceil count is partial
    layers = [Emit(op, (PREVIOUS,) if pre else (view.data(0),), dict(
        kernel=tuple(kernel), stride=tuple(strides), pad=pad, ceil=ceil, count_pad=True),
        {}, None)]
    for axis, (n, k, s, p, w) in enumerate(zip(sizes, kernel, strides, pad, want)):
        have = window_out(n, k, s, p, ceil=ceil)
        if have < w:
            raise Unsupported(f"{w} windows along axis {2 + axis} where the pool after the "
                              f"pad layer has {have}")
        if have > w:
            layers.append(Emit("slice", (PREVIOUS,), dict(axis=2 + axis, begin=0, end=w),
                               {}, None, (".crop_h", ".crop_w")[axis]))
    layers[-1] = replace(layers[-1], output=view.node.output[0])
    if pre is not None:
        layers.insert(0, replace(pre, args=(view.data(0),)))
    return Mapped(tuple(layers))


def _floor_is_onnx_count(view: NodeView, kernel, strides, pad) -> bool:
    from bwplan.ops._shapes import window_out
    return all(window_out(size, k, s, p) == want for size, k, s, p, want in zip(
        _spatial(view, view.node.op_type), kernel, strides, pad, view.out_shape()[2:]))


def _shifted_windows(view: NodeView, kernel, strides, dilations, op: str
                     ) -> tuple[tuple[int, int], tuple[int, int]]:
    """Uneven pool padding that is no ceil mode (SAME_LOWER's odd cell at the start; SAME_UPPER
    with stride 1): the pool padded max(begin, end) on both sides, of whose windows ONNX's are
    a run, starting `skip` windows in. They read no cell outside ONNX's padded image, so a
    max, and an average over the real cells or the whole window, are ONNX's."""
    begin, end = _begin_end(view, kernel, strides, dilations)
    pad = tuple(max(b, e) for b, e in zip(begin, end))
    shift = [p - b for p, b in zip(pad, begin)]
    if any(s % st for s, st in zip(shift, strides)):
        raise Unsupported(f"asymmetric padding (begin {begin}, end {end}) of a pool with "
                          f"strides {strides}: bwplan pads both sides of a pool alike, and "
                          "no run of the windows of a pool padded so is this one's")
    return (pad[0], pad[1]), (shift[0] // strides[0], shift[1] // strides[1])


def _trimmed(view: NodeView, pool: Emit, kernel, strides, skip) -> Mapped:
    """The pool, then `slice` layers (`<layer>.crop_h`, `.crop_w`) that keep ONNX's windows:
    `skip` of them in, as many as ONNX's output has."""
    from bwplan.ops._shapes import window_out
    layers = [pool]
    for axis, size in enumerate(_spatial(view, view.node.op_type)):
        have = window_out(size, kernel[axis], strides[axis], pool.attrs["pad"][axis],
                          ceil=pool.attrs["ceil"])
        first, want = skip[axis], view.out_shape()[2 + axis]
        if have < first + want:
            raise Unsupported(f"{want} windows along axis {2 + axis} where a pool padded "
                              f"{pool.attrs['pad'][axis]} on both sides has {have}")
        if (first, want) != (0, have):
            layers.append(Emit("slice", (PREVIOUS,), dict(axis=2 + axis, begin=first,
                                                          end=first + want),
                               {}, None, (".crop_h", ".crop_w")[axis]))
    layers[-1] = replace(layers[-1], output=view.node.output[0])
    return Mapped(tuple(layers))


def _one_window_covers_all(view: NodeView, kernel) -> bool:
    h, w = _spatial(view, view.node.op_type)
    pads = list(view.attrs.get("pads", [0, 0, 0, 0]))
    if view.attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or view.attrs.get(
            "ceil_mode", 0) or len(kernel) != 2 or view.out_shape()[2:] != (1, 1):
        return False
    return all(pads[i] == 0 and kernel[i] >= size for i, size in enumerate((h, w)))


def _global(op: str) -> Callable[[NodeView], Mapped]:
    def row(view: NodeView) -> Mapped:
        _spatial(view, view.node.op_type)
        return one(view, op, [view.data(0)])
    return row


def reduce_mean(view: NodeView) -> Mapped:
    shape = view.shape(0)
    axes = view.attrs.get("axes")
    if axes is None and view.input(1):
        if not view.is_const(1):
            raise Unsupported("the axes are computed, not constant")
        axes = list(view.const(1).reshape(-1))
    axes = sorted(int(a) % len(shape) for a in (axes or []))
    if len(shape) != 4 or axes != [2, 3]:
        raise Unsupported(f"axes {axes} of a {len(shape)}-D input: bwplan imports the mean "
                          "over the spatial axes 2 and 3 of NCHW only")
    if view.attrs.get("keepdims", 1):
        return one(view, "global_avgpool", [view.data(0)])
    pooled = Emit("global_avgpool", (view.data(0),), {}, {}, None, ".pool")
    return Mapped((pooled, Emit("flatten", (PREVIOUS,), dict(axis=1), {}, view.node.output[0])))


def flatten(view: NodeView) -> Mapped:
    rank = len(view.shape(0))
    axis = int(view.attrs.get("axis", 1)) % max(rank, 1)
    if axis == 1:
        return one(view, "flatten", [view.data(0)], dict(axis=1))
    return one(view, "reshape", [view.data(0)], dict(shape=tuple(view.out_shape())))


def _batch_kept(dims: list[int], x_shape: tuple[int, ...]) -> tuple[int, ...]:
    """A folded target shape whose first entry is the input's batch: written as 0 (copy),
    so the layer follows a batch size other than the one shape inference saw."""
    if dims and x_shape and dims[0] == x_shape[0]:
        dims = [0] + dims[1:]
    return tuple(dims)


def reshape(view: NodeView) -> Mapped:
    target = view.const(1)
    if target is None:
        raise Unsupported("the target shape is computed from data, not from shapes known at "
                          "import")
    if view.attrs.get("allowzero", 0) and 0 in target:
        raise Unsupported("allowzero=1 with a 0 in the shape")
    dims = [int(d) for d in target]
    dims = [view.shape(0)[i] if d == 0 else d for i, d in enumerate(dims)]
    return one(view, "reshape", [view.data(0)], dict(shape=_batch_kept(dims, view.shape(0))))


def squeeze_like(view: NodeView) -> Mapped:
    """Squeeze and Unsqueeze of a computed tensor: a reshape to the inferred shape."""
    if view.input(1) and not view.is_const(1):
        # the axes would be read at run time: the shape declared in the file is no rule
        raise Unsupported("the axes (input 1) are computed, not constant")
    return one(view, "reshape", [view.data(0)],
               dict(shape=_batch_kept(list(view.out_shape()), view.shape(0))))


def slice_(view: NodeView) -> Mapped:
    """Slice of a computed tensor with constant starts, ends and axes, step 1 (ShuffleNet's
    `x.chunk(2, dim=1)`): one `slice` layer per axis cut (`<layer>.axis<k>` but the last)."""
    shape = view.shape(0)
    if view.opset < 10:
        starts, ends = view.attrs["starts"], view.attrs["ends"]
        axes, steps = view.attrs.get("axes"), None
    else:
        for i in (1, 2, 3, 4):
            if view.input(i) and not view.is_const(i):
                raise Unsupported(f"input {i} is computed, not a constant")
        starts, ends = view.const(1).reshape(-1), view.const(2).reshape(-1)
        axes = view.const(3).reshape(-1) if view.input(3) else None
        steps = view.const(4).reshape(-1) if view.input(4) else None
    axes = range(len(starts)) if axes is None else axes
    if steps is not None and any(int(k) != 1 for k in steps):
        raise Unsupported(f"steps {[int(k) for k in steps]}: bwplan slices with step 1")
    cuts = []
    for a, b, e in zip(axes, starts, ends):
        a, size = int(a) % len(shape), shape[int(a) % len(shape)]
        b, e = (int(v) + size if int(v) < 0 else int(v) for v in (b, e))
        b, e = min(max(b, 0), size), min(max(e, 0), size)
        if e <= b:
            raise Unsupported(f"an empty slice [{b}, {e}) of axis {a}")
        if (b, e) != (0, size):
            cuts.append((a, b, e))
    if not cuts:
        return alias(view)
    layers = [Emit("slice", (PREVIOUS,) if k else (view.data(0),), dict(axis=a, begin=b, end=e),
                   {}, None, f".axis{a}") for k, (a, b, e) in enumerate(cuts)]
    layers[-1] = replace(layers[-1], output=view.node.output[0], suffix="")
    return Mapped(tuple(layers))


def split(view: NodeView) -> Mapped:
    """Split (and SplitToSequence, whose pieces SequenceAt picks) of a computed tensor into
    constant sizes: one `slice` layer per piece, `<layer>.<k>`."""
    shape = view.shape(0)
    axis = int(view.attrs.get("axis", 0)) % len(shape)
    seq = view.node.op_type == "SplitToSequence"
    if "split" in view.attrs:
        sizes = [int(v) for v in view.attrs["split"]]
    elif view.input(1):
        if not view.is_const(1):
            raise Unsupported("the split sizes are computed, not constant")
        sizes = [int(v) for v in view.const(1).reshape(-1)]
        if seq and view.const(1).ndim == 0:      # one size: equal pieces, the last smaller
            sizes = [min(sizes[0], shape[axis] - k) for k in range(0, shape[axis], sizes[0])]
    else:
        count = len(view.node.output) if not seq else shape[axis]
        count = int(view.attrs.get("num_outputs", count))
        step = -(-shape[axis] // count)
        sizes = [min(step, shape[axis] - k) for k in range(0, shape[axis], step)]
    if sum(sizes) != shape[axis] or min(sizes) < 1:
        raise Unsupported(f"sizes {sizes} do not split axis {axis} of {list(shape)}")
    if seq and not view.attrs.get("keepdims", 1) and "split" not in view.attrs \
            and not view.input(1):
        raise Unsupported("keepdims=0: bwplan keeps the split axis")
    names = ([f"{view.node.output[0]}#{k}" for k in range(len(sizes))] if seq
             else list(view.node.output))
    layers, begin = [], 0
    for k, (size, out) in enumerate(zip(sizes, names)):
        layers.append(Emit("slice", (view.data(0),), dict(axis=axis, begin=begin,
                                                          end=begin + size), {}, out, f".{k}"))
        begin += size
    return Mapped(tuple(layers))


def sequence_at(view: NodeView) -> Mapped:
    """Piece i of a SplitToSequence (the dynamo exporter's chunk): that piece's slice."""
    if not view.is_const(1):
        raise Unsupported("the position is computed, not constant")
    k = int(view.const(1).reshape(-1)[0])
    if k < 0:
        raise Unsupported(f"the position {k}: bwplan reads a sequence from its start")
    return Mapped((Emit(None, (f"{view.input(0)}#{k}",), output=view.node.output[0]),))


def concat(view: NodeView) -> Mapped:
    rank = len(view.shape(0))
    return one(view, "concat", [view.data(i) for i in range(len(view.node.input))],
               dict(axis=int(view.attrs["axis"]) % rank))


def softmax(view: NodeView) -> Mapped:
    shape = view.shape(0)
    axis = int(view.attrs.get("axis", -1 if view.opset >= 13 else 1)) % len(shape)
    if view.opset < 13 and any(d != 1 for d in shape[axis + 1:]):
        raise Unsupported(f"opset {view.opset} Softmax over the flattened axes {axis}.. of "
                          f"{list(shape)}: bwplan's softmax runs along one axis")
    return one(view, "softmax", [view.data(0)], dict(axis=axis))


def dropout(view: NodeView) -> Mapped:
    if len(view.node.output) > 1 and view.consumers(view.node.output[1]):
        raise Unsupported("the mask output is read by the graph")
    ratio = view.attrs.get("ratio", 0.5)
    if view.opset >= 12 and view.input(1):
        if not view.is_const(1):
            raise Unsupported("the ratio is computed, not constant")
        ratio = float(view.const(1))
    return one(view, "dropout", [view.data(0)], dict(p=float(ratio)))


def _scalar(view: NodeView, name: str) -> float | None:
    value = view.constants.get(name)
    return None if value is None or np.size(value) != 1 else float(np.reshape(value, -1)[0])


def _next(view: NodeView, node, op_types: tuple[str, ...]):
    """The one node reading `node`'s output, if it is one of `op_types`; a node folded at
    import (the dynamo exporter's CastLike that reads only the draw's element type) is no
    reader."""
    users = [u for u in view.consumers(node.output[0])
             if not all(o in view.constants for o in u.output if o)]
    return users[0] if len(users) == 1 and users[0].op_type in op_types else None


def drop_path(view: NodeView) -> Mapped:
    """A random draw that starts torchvision's StochasticDepth (mode "row") as both exporters
    write it in training mode: r = RandomUniformLike(a [N, 1, ..., 1] tensor), keep =
    Cast(Less(r, q)) (CastLike for the dynamo exporter), then x * keep / q, or x * (keep /
    q): bwplan's drop_path(x, p = 1 - q), its own per-sample draw, with the Less, Cast, Mul
    and Div nodes absorbed. Any other use of a random draw is not imported."""
    a = view.attrs
    if float(a.get("low", 0.0)) != 0.0 or float(a.get("high", 1.0)) != 1.0:
        raise Unsupported("a random draw other than uniform on [0, 1)")
    less = _next(view, view.node, ("Less",))
    keep = None if less is None else _scalar(view, less.input[1])
    cast = None if less is None or less.input[0] != view.node.output[0] else _next(
        view, less, ("Cast", "CastLike"))
    if keep is None or cast is None or not 0.0 < keep <= 1.0:
        raise Unsupported("a random draw that is not a stochastic-depth mask (RandomUniformLike "
                          "< a constant, cast to floats, times a tensor)")
    absorbed, mask, scale = [less, cast], cast, None
    div = _next(view, mask, ("Div",))
    if div is not None and div.input[0] == mask.output[0]:
        scale, mask = _scalar(view, div.input[1]), div
        absorbed.append(div)
    mul = _next(view, mask, ("Mul",))
    if mul is None:
        raise Unsupported("the stochastic-depth mask is not multiplied into a tensor")
    x = next((i for i in mul.input if i != mask.output[0]), None)
    absorbed.append(mul)
    out = mul
    if scale is None:
        div = _next(view, mul, ("Div",))
        if div is not None and div.input[0] == mul.output[0]:
            scale, out = _scalar(view, div.input[1]), div
            absorbed.append(div)
    if scale is None or not np.isclose(scale, keep, rtol=1e-6):
        raise Unsupported(f"a stochastic-depth mask kept with probability {keep} but divided "
                          f"by {scale}: bwplan's drop_path scales the kept samples by 1/{keep}")
    if x is None or x in view.constants or x not in view.shapes:
        raise Unsupported("the stochastic-depth mask multiplies a constant or a tensor of "
                          "unknown shape")
    shape, x_shape = view.out_shape(), view.shapes[x]
    if len(shape) != len(x_shape) or shape[0] != x_shape[0] or any(d != 1 for d in shape[1:]):
        raise Unsupported(f"a mask of shape {list(shape)} on a tensor of {list(x_shape)}: "
                          "bwplan's drop_path draws one value per sample (mode 'row')")
    return Mapped((Emit("drop_path", (x,), dict(p=float(1.0 - keep)), {}, out.output[0]),),
                  tuple(absorbed))


def lrn(view: NodeView) -> Mapped:
    a = view.attrs
    return one(view, "lrn", [view.data(0)], dict(size=int(a["size"]),
               alpha=float(a.get("alpha", 1e-4)), beta=float(a.get("beta", 0.75)),
               k=float(a.get("bias", 1.0))))


def pad(view: NodeView) -> Mapped:
    """Constant-mode Pad with zeros, on H and W of an NCHW tensor: the `pad` layer."""
    mode = view.attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        raise Unsupported(f"mode '{mode}': bwplan pads with zeros (constant mode) only")
    rank = len(view.shape(0))
    if view.opset < 11:
        pads, value = list(view.attrs.get("pads", [])), float(view.attrs.get("value", 0.0))
    else:
        for i in (1, 2, 3):
            if view.input(i) and not view.is_const(i):
                raise Unsupported(f"input {i} is computed, not a constant")
        pads = [int(p) for p in view.const(1).reshape(-1)]
        value = float(view.const(2).reshape(-1)[0]) if view.input(2) else 0.0
        if view.input(3):
            axes = [int(a) % rank for a in view.const(3).reshape(-1)]
            full = [0] * (2 * rank)
            for k, a in enumerate(axes):
                full[a], full[rank + a] = pads[k], pads[len(axes) + k]
            pads = full
    if value != 0.0:
        raise Unsupported(f"the constant {value}: bwplan pads with zeros")
    begin, end = pads[:rank], pads[rank:]
    if rank != 4 or any(begin[:2] + end[:2]) or min(pads) < 0:
        raise Unsupported(f"pads {pads} of a {rank}-D input: bwplan pads H and W of NCHW "
                          "with zeros, never negatively")
    return one(view, "pad", [view.data(0)], dict(begin=tuple(begin[2:]), end=tuple(end[2:])))


def _conv_transpose_pads(view: NodeView, full: list[int], strides
                         ) -> tuple[list[int], list[int], list[int]]:
    """(begin, end, output_padding) per axis: how many cells of the full transposed
    convolution (`full`, no padding) the output drops before and after, and how many it adds
    at the end. `output_shape` and SAME_* derive the pads from the output size, as the ONNX
    operator text gives them (SAME_UPPER puts the odd cell at the end)."""
    extra = [int(e) for e in view.attrs.get("output_padding", [0, 0])]
    auto = view.attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    h, w = _spatial(view, "ConvTranspose")
    if "output_shape" in view.attrs:
        out = [int(d) for d in view.attrs["output_shape"]][-2:]
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        out = [size * s for size, s in zip((h, w), strides)]
    elif auto == "VALID":
        return [0, 0], [0, 0], extra
    else:
        pads = [int(p) for p in view.attrs.get("pads", [0, 0, 0, 0])]
        return pads[:2], pads[2:], extra
    begin, end = [], []
    for f, e, o in zip(full, extra, out):
        total = f + e - o
        small = total // 2
        # ONNX: SAME_UPPER puts the larger half at the end, anything else at the start
        b = small if auto == "SAME_UPPER" else total - small
        begin.append(b)
        end.append(total - b)
    return begin, end, extra


def conv_transpose(view: NodeView) -> Mapped:
    """ConvTranspose as deconv2d (Caffe's Deconvolution: the same [in, out/groups, kh, kw]
    weight and output size, padding both sides alike).

    ONNX's output is the window [begin, full + output_padding - end) of the full transposed
    convolution (no padding, zeros past its end, then the bias). The padding both sides
    share is deconv2d's own `pad`; what is left is cut away with `slice` layers
    (`<layer>.crop_h`, `.crop_w`) or, where the window reaches past the full output
    (`output_padding` larger than the end padding), added as zeros by a `pad` layer
    (`<layer>.pad`), after which a `bias` layer (`<layer>.shift`) adds the bias, so that
    the added cells hold the bias as in ONNX."""
    _spatial(view, "ConvTranspose")
    w = view.const(1)
    if w is None:
        raise Unsupported("the weight (input 1) is computed, not an initializer")
    kernel = list(view.attrs.get("kernel_shape", w.shape[2:]))
    strides, dilations = _strides_dilations(view, kernel)
    _, _, h, wd = view.shape(0)
    full = [(size - 1) * s + (k - 1) * d + 1
            for size, k, s, d in zip((h, wd), kernel, strides, dilations)]
    begin, end, extra = _conv_transpose_pads(view, full, strides)
    # cells cut at each side of the full output; negative: zeros added
    cut_begin, cut_end = list(begin), [e - x for e, x in zip(end, extra)]
    shared = [max(0, min(b, e)) for b, e in zip(cut_begin, cut_end)]
    cut_begin = [b - s for b, s in zip(cut_begin, shared)]
    cut_end = [e - s for e, s in zip(cut_end, shared)]
    inner = [f - 2 * s for f, s in zip(full, shared)]
    want = [i - b - e for i, b, e in zip(inner, cut_begin, cut_end)]
    if min(want) < 1 or min(inner) < 1:
        raise Unsupported(f"pads (begin {begin}, end {end}) leave no output")
    if tuple(want) != tuple(view.out_shape()[2:]):
        raise Unsupported(f"an output of {want} cells by the ONNX formula where shape "
                          f"inference says {list(view.out_shape()[2:])}")
    groups = int(view.attrs.get("group", 1))
    grows = any(c < 0 for c in cut_begin + cut_end)
    weights = {"weight": view.weight(1)}
    late_bias = view.weight(2) if view.input(2) and grows else None
    if view.input(2) and not grows:
        weights["bias"] = view.weight(2)
    layers = [Emit("deconv2d", (view.data(0),), dict(
        out=int(w.shape[1]) * groups, kernel=tuple(kernel), stride=tuple(strides),
        pad=tuple(shared), dilation=tuple(dilations), groups=groups,
        bias="bias" in weights), weights, None)]
    for axis, name in ((0, ".crop_h"), (1, ".crop_w")):
        lo, hi = max(0, cut_begin[axis]), max(0, cut_end[axis])
        if lo or hi:
            size = inner[axis]
            layers.append(Emit("slice", (PREVIOUS,), dict(axis=2 + axis, begin=lo,
                                                          end=size - hi), {}, None, name))
    if grows:
        layers.append(Emit("pad", (PREVIOUS,), dict(
            begin=tuple(max(0, -c) for c in cut_begin),
            end=tuple(max(0, -c) for c in cut_end)), {}, None, ".pad"))
    if late_bias is not None:
        layers.append(Emit("bias", (PREVIOUS,), dict(axis=1, num_axes=1),
                           {"bias": late_bias}, None, ".shift"))
    layers[-1] = replace(layers[-1], output=view.node.output[0])
    return Mapped(tuple(layers))


def hard_sigmoid(view: NodeView, alpha: float | None = None, beta: float | None = None
                 ) -> Mapped:
    """max(0, min(1, alpha x + beta)): power (the affine part) then clip to [0, 1]."""
    alpha = float(view.attrs.get("alpha", 0.2)) if alpha is None else alpha
    beta = float(view.attrs.get("beta", 0.5)) if beta is None else beta
    return Mapped((Emit("power", (view.data(0),), dict(power=1.0, scale=alpha, shift=beta),
                        {}, None, ".affine"),
                   Emit("clip", (PREVIOUS,), dict(min=0.0, max=1.0), {}, view.node.output[0])))


def hard_swish(view: NodeView) -> Mapped:
    """x * HardSigmoid(x) with alpha 1/6, beta 1/2 (ONNX's HardSwish, MobileNet v3)."""
    gate = hard_sigmoid(view, 1.0 / 6.0, 0.5).layers
    return Mapped((gate[0], replace(gate[1], output=None, suffix=".gate"),
                   Emit("mul", (view.data(0), PREVIOUS), {}, {}, view.node.output[0])))


def gelu(view: NodeView) -> Mapped:
    """Opset 20's Gelu. Exact: x * (1 + erf(x / sqrt 2)) / 2, as power, erf, power, mul.
    approximate="tanh": x * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2, as power (the
    cube, its coefficient inside: (c^(1/3) x)^3), add, power, tanh, power, mul."""
    how = view.attrs.get("approximate", b"none")
    how = how.decode() if isinstance(how, bytes) else how
    x = view.data(0)
    gate = Emit("power", (PREVIOUS,), dict(power=1.0, scale=0.5, shift=0.5), {}, None,
                ".gate")
    out = Emit("mul", (x, PREVIOUS), {}, {}, view.node.output[0])
    if how == "none":
        return Mapped((Emit("power", (x,), dict(power=1.0, scale=float(1 / np.sqrt(2.0)),
                                                shift=0.0), {}, None, ".scaled"),
                       Emit("erf", (PREVIOUS,), {}, {}, None, ".erf"), gate, out))
    if how != "tanh":
        raise Unsupported(f"approximate='{how}': ONNX's Gelu is 'none' or 'tanh'")
    return Mapped((Emit("power", (x,), dict(power=3.0, scale=float(0.044715 ** (1 / 3)),
                                            shift=0.0), {}, None, ".cube"),
                   Emit("add", (x, PREVIOUS), {}, {}, None, ".inner"),
                   Emit("power", (PREVIOUS,), dict(power=1.0, scale=float(np.sqrt(2 / np.pi)),
                                                   shift=0.0), {}, None, ".scaled"),
                   Emit("tanh", (PREVIOUS,), {}, {}, None, ".tanh"), gate, out))


def pow_(view: NodeView) -> Mapped:
    """x ^ c with a constant scalar exponent (the dynamo exporter's x^3 in a tanh GELU):
    bwplan's power."""
    if view.is_const(0) or not view.is_const(1) or view.const(1).size != 1:
        raise Unsupported("bwplan raises a computed tensor to a constant scalar power only")
    return one(view, "power", [view.data(0)], dict(power=float(view.const(1).reshape(-1)[0]),
                                                   scale=1.0, shift=0.0))


def unary(op: str, **fixed) -> Callable[[NodeView], Mapped]:
    return lambda view: one(view, op, [view.data(0)], fixed)


def alias(view: NodeView) -> Mapped:
    return Mapped((Emit(None, (view.data(0),), output=view.node.output[0]),))


ROWS: Mapping[str, Callable[[NodeView], Mapped]] = {
    "Conv": conv,
    "Gemm": gemm,
    "MatMul": matmul,
    "Relu": unary("relu"),
    "LeakyRelu": lambda v: one(v, "relu", [v.data(0)],
                               dict(negative_slope=float(v.attrs.get("alpha", 0.01)))),
    "Clip": clip,
    "Sigmoid": unary("sigmoid"),
    "Tanh": unary("tanh"),
    "MaxPool": _pool("maxpool"),
    "AveragePool": _pool("avgpool"),
    "GlobalAveragePool": _global("global_avgpool"),
    "GlobalMaxPool": _global("global_maxpool"),
    "ReduceMean": reduce_mean,
    "BatchNormalization": batchnorm,
    "Dropout": dropout,
    "Flatten": flatten,
    "Reshape": reshape,
    "Squeeze": squeeze_like,
    "Unsqueeze": squeeze_like,
    "Add": add,
    "Sum": add,
    "Mul": mul,
    "Sub": sub,
    "Div": div,
    "Pad": pad,
    "ConvTranspose": conv_transpose,
    "HardSigmoid": hard_sigmoid,
    "HardSwish": hard_swish,
    "Erf": unary("erf"),
    "Selu": lambda v: one(v, "selu", [v.data(0)], {
        k: float(v.attrs[k]) for k in ("alpha", "gamma") if k in v.attrs}),
    "Gelu": gelu,
    "Pow": pow_,
    "Concat": concat,
    "Slice": slice_,
    "Split": split,
    "SplitToSequence": split,
    "SequenceAt": sequence_at,
    "Softmax": softmax,
    "LRN": lrn,
    "Identity": alias,
    "RandomUniformLike": drop_path,
    "Transpose": lambda v: one(v, "transpose", [v.data(0)], dict(
        perm=tuple(int(p) for p in v.attrs.get("perm", range(len(v.shape(0)))[::-1])))),
}
