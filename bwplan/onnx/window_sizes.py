"""Output sizes that ONNX's shape inference gets wrong, by the operators' own rules.

Two windowed ops get a size from onnx's shape inference (onnx 1.23) that neither
onnxruntime nor onnx's reference evaluator (`onnx.reference`) computes:

    ConvTranspose, auto_pad SAME_* with output_padding    inference: in * stride + padding;
                                                          runtimes: in * stride (the text's
                                                          output_shape), output_padding
                                                          folded into the total padding
    MaxPool / AveragePool, ceil_mode with uneven pads     inference keeps a last window that
                                                          starts in the end padding; the
                                                          runtimes drop it

`corrected` returns the first such node of a graph (in file order, so its input's shape is
right) as a node of the same output size that inference does follow: the ConvTranspose with
its SAME padding written out as `pads`, the pool in floor mode with the end padding that
gives the runtimes' count. The reader infers shapes again on a copy with that node replaced,
until none is left. The copy serves inference only: the importer reads the file's nodes,
and its rows give them the runtimes' meaning (`table.py`).

It does not map anything to bwplan: it only makes the shapes the rows read the runtimes'.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _attrs(node) -> dict[str, Any]:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def conv_transpose_same_pads(size: int, kernel: int, stride: int, dilation: int, extra: int,
                             upper: bool) -> tuple[int, int]:
    """(begin, end) padding of a SAME_* ConvTranspose axis: the output is size * stride,
    the total padding what the full transposed convolution plus output_padding has more."""
    total = max(0, (size - 1) * stride + (kernel - 1) * dilation + 1 + extra - size * stride)
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def pool_count(size: int, kernel: int, stride: int, dilation: int, begin: int, end: int,
               ceil: bool) -> int:
    """The windows along one axis of a pool, as onnxruntime and onnx's reference count them:
    in ceil mode a last window that would start in the end padding is dropped."""
    span = size + begin + end - ((kernel - 1) * dilation + 1)
    if not ceil:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + begin:
        out -= 1
    return out


def _replacement(node, shapes: Mapping[str, tuple[int, ...]]):
    """A node of the same output size that shape inference follows, or None when the file's
    node is one inference already sizes as the runtimes do."""
    from onnx import helper
    if node.domain not in ("", "ai.onnx") or not node.input or not node.output:
        return None
    src, out = shapes.get(node.input[0]), shapes.get(node.output[0])
    if src is None or len(src) != 4:
        return None
    a = _attrs(node)
    auto = _text(a.get("auto_pad", "NOTSET"))
    kernel = list(a.get("kernel_shape", []))
    strides = list(a.get("strides", [1, 1]))
    dilations = list(a.get("dilations", [1, 1]))
    if node.op_type == "ConvTranspose" and auto in ("SAME_UPPER", "SAME_LOWER") and any(
            a.get("output_padding", [0, 0])) and "output_shape" not in a:
        weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
        kernel = kernel or (list(weight[2:]) if weight else [])
        if len(kernel) != 2:
            return None
        pads = [conv_transpose_same_pads(n, k, s, d, e, auto == "SAME_UPPER") for n, k, s, d, e
                in zip(src[2:], kernel, strides, dilations, a["output_padding"])]
        keep = {k: v for k, v in a.items() if k != "auto_pad"}
        keep["pads"] = [p[0] for p in pads] + [p[1] for p in pads]
        return helper.make_node(node.op_type, node.input, node.output, node.name, **keep)
    if node.op_type not in ("MaxPool", "AveragePool") or not a.get("ceil_mode", 0) or (
            auto != "NOTSET") or len(kernel) != 2 or out is None or len(out) != 4:
        return None
    pads = list(a.get("pads", [0, 0, 0, 0]))
    counts = [pool_count(n, k, s, d, b, e, True) for n, k, s, d, b, e in zip(
        src[2:], kernel, strides, dilations, pads[:2], pads[2:])]
    if tuple(counts) == tuple(out[2:]):
        return None
    # floor mode, and the (largest) end padding that makes its count the runtimes'
    ends = [c * s + (k - 1) * d - n - b for c, n, k, s, d, b in zip(
        counts, src[2:], kernel, strides, dilations, pads[:2])]
    if min(ends) < 0:
        return None
    keep = dict(a, ceil_mode=0, pads=pads[:2] + ends)
    return helper.make_node(node.op_type, node.input, node.output, node.name, **keep)


def corrected(graph, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, Any] | None:
    """(index, replacement) of the first node whose inferred output size is not the
    runtimes', or None."""
    for i, node in enumerate(graph.node):
        new = _replacement(node, shapes)
        if new is not None:
            return i, new
    return None
