"""The op table: one row per ONNX op type, mapping a node to bwplan layers.

A row reads the node through a `NodeView` (attributes, constant inputs, inferred shapes) and
returns a `Mapped`: the layers to emit, each with its bwplan op, the data inputs, the
attributes, and which constant inputs become which parameter slot. A row that meets an
attribute or an input bwplan cannot express raises `Unsupported` with the reason; the
converter collects those for every node and reports them together.

Most rows emit one layer. Two fuse a pattern an exporter writes for one PyTorch module:
MatMul followed by Add of a constant vector (a Linear on a 3-D input, or a bias-less one),
and Mul then Add of per-channel constants (Caffe2's affine after a batch normalisation).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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


def _window_attrs(view: NodeView, kernel, pool: bool = False
                  ) -> tuple[list[int], list[int], tuple[int, int], bool]:
    strides, dilations = _strides_dilations(view, kernel)
    pad, ceil = _pads(view, kernel, strides, dilations, pool)
    return strides, dilations, pad, ceil


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


def _with_pad(view: NodeView, pre: Emit | None, layer: Emit) -> Mapped:
    """The layer, after the `pad` layer `pre` (when there is one) that reads its input."""
    if pre is None:
        return Mapped((layer,))
    from dataclasses import replace
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
    return _with_pad(view, pre, Emit("conv2d", (view.data(0),), dict(
        out=int(w.shape[0]), kernel=tuple(kernel), stride=tuple(strides), pad=pad,
        dilation=tuple(dilations), groups=int(view.attrs.get("group", 1)),
        bias="bias" in weights), weights, view.node.output[0]))


def gemm(view: NodeView) -> Mapped:
    a = view.attrs
    if a.get("transA", 0):
        raise Unsupported("transA=1: bwplan's linear takes its input as [N, K]")
    if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
        raise Unsupported(f"alpha={a.get('alpha', 1.0)} beta={a.get('beta', 1.0)}: bwplan "
                          "imports Gemm with alpha = beta = 1")
    b = view.const(1)
    if b is None or b.ndim != 2:
        raise Unsupported("B (input 1) must be a 2-D initializer")
    weights = {"weight": view.weight(1) if a.get("transB", 0) else view.weight(1, b.T)}
    out = b.shape[0] if a.get("transB", 0) else b.shape[1]
    if view.input(2):
        c = view.const(2)
        if c is None or c.size != out:
            raise Unsupported("C (input 2) must be an initializer with one value per output")
        weights["bias"] = view.weight(2, c.reshape(out)) if c.ndim != 1 else view.weight(2)
    if len(view.shape(0)) != 2:
        raise Unsupported(f"a {len(view.shape(0))}-D input A")
    return one(view, "linear", [view.data(0)], dict(out=int(out), bias="bias" in weights),
               weights)


def matmul(view: NodeView) -> Mapped:
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


def add(view: NodeView) -> Mapped:
    pair = _binary_inputs(view)
    if pair is None:
        shapes = {view.shape(i) for i in range(len(view.node.input))}
        if len(shapes) != 1:
            raise Unsupported(f"inputs of shapes {sorted(shapes)}: bwplan adds same-shaped "
                              "tensors only (no broadcasting)")
        return one(view, "add", [view.data(i) for i in range(len(view.node.input))])
    raise Unsupported("adding a constant: bwplan imports a per-channel constant only after a "
                      "Mul by one (as scale with a bias)")


def mul(view: NodeView) -> Mapped:
    pair = _binary_inputs(view)
    if pair is None:
        if view.shape(0) != view.shape(1):
            raise Unsupported(f"inputs of shapes {view.shape(0)} and {view.shape(1)}: bwplan "
                              "multiplies same-shaped tensors only")
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
    return one(view, "batchnorm", [view.data(0)], dict(
        eps=float(view.attrs.get("epsilon", 1e-5)), momentum=momentum, affine=True), weights)


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
        strides, dilations, pad, end_ceil = _window_attrs(view, kernel, pool=True)
        if dilations != [1, 1]:
            raise Unsupported(f"dilations {dilations}: bwplan's pools are dense")
        if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
            raise Unsupported(f"pads {list(pad)} not smaller than the kernel {kernel}")
        attrs = dict(kernel=tuple(kernel), stride=tuple(strides), pad=pad,
                     ceil=bool(view.attrs.get("ceil_mode", 0)) or end_ceil)
        if op == "avgpool":
            attrs["count_pad"] = bool(view.attrs.get("count_include_pad", 0))
        return one(view, op, [view.data(0)], attrs)
    return row


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
    return one(view, "reshape", [view.data(0)],
               dict(shape=_batch_kept(list(view.out_shape()), view.shape(0))))


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


def lrn(view: NodeView) -> Mapped:
    a = view.attrs
    return one(view, "lrn", [view.data(0)], dict(size=int(a["size"]),
               alpha=float(a.get("alpha", 1e-4)), beta=float(a.get("beta", 0.75)),
               k=float(a.get("bias", 1.0))))


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
    "Concat": concat,
    "Softmax": softmax,
    "LRN": lrn,
    "Identity": alias,
    "Transpose": lambda v: one(v, "transpose", [v.data(0)], dict(
        perm=tuple(int(p) for p in v.attrs.get("perm", range(len(v.shape(0)))[::-1])))),
}
