"""Reads an ONNX file: the `onnx` package loads it, `onnx.checker` validates it, and shape
inference runs with every graph input's shape fixed (dynamic axes from `--input-shape`).
This is the one boundary where onnx's exceptions become bwplan errors.

It does not interpret any node: folding constants and mapping ops come later.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from bwplan.onnx.errors import OnnxError
from bwplan.onnx.window_sizes import corrected
from bwplan.source import Span

INSTALL_HINT = 'install the ONNX extra: pip install "bwplan[onnx]" (or pip install onnx)'


def require_onnx(path: str = "onnx") -> Any:
    """The onnx module, or a clear error saying how to get it."""
    try:
        import onnx
    except ImportError:
        raise OnnxError(Span.whole(path), "reading ONNX models needs the 'onnx' package, "
                        "which is not installed", INSTALL_HINT) from None
    return onnx


@dataclass(frozen=True)
class OnnxModel:
    """A checked model with its shapes inferred for fixed input shapes."""

    path: str
    proto: Any                                   # onnx.ModelProto, shapes inferred
    opset: int                                   # of the default ("ai.onnx") domain
    input_shapes: Mapping[str, tuple[int, ...]]  # graph inputs that are not initializers
    shapes: Mapping[str, tuple[int, ...]]        # every tensor whose shape is fully known
    dtypes: Mapping[str, int]                    # onnx TensorProto element types


def _dims(value_info) -> tuple[Any, ...] | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                 for d in t.shape.dim)


def _load(onnx, path: str):
    if not Path(path).exists():
        raise OnnxError(Span.whole(path), "no such file")
    if Path(path).is_dir():
        raise OnnxError(Span.whole(path), "is a directory, not an ONNX model")
    if Path(path).stat().st_size == 0:
        raise OnnxError(Span.whole(path), "is empty, not an ONNX model")
    try:
        return onnx.load(path)
    except Exception as err:  # protobuf's DecodeError and friends: any is a bad file
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise OnnxError(Span.whole(path), f"not a readable ONNX model ({first})",
                        "is this an .onnx file written by an exporter?") from None


def _fixed_inputs(graph, path: str, given: Mapping[str, tuple[int, ...]]
                  ) -> dict[str, tuple[int, ...]]:
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    names = [i.name for i in inputs]
    for name in given:
        if name not in names:
            raise OnnxError(Span.synthetic("--input-shape"), f"--input-shape names '{name}', "
                            "which is not an input of the model",
                            "model inputs: " + (", ".join(names) or "none"))
    shapes: dict[str, tuple[int, ...]] = {}
    for inp in inputs:
        dims = _dims(inp)
        if inp.name in given:
            want = tuple(given[inp.name])
            if dims is not None and (len(dims) != len(want) or any(
                    isinstance(d, int) and d > 0 and d != w for d, w in zip(dims, want))):
                raise OnnxError(Span.synthetic("--input-shape"), f"--input-shape gives "
                                f"'{inp.name}' the shape {list(want)}, the model declares "
                                f"{list(dims)}", "only the dynamic (named) axes can be chosen")
            shapes[inp.name] = want
            continue
        if dims is None or any(not isinstance(d, int) or d <= 0 for d in dims):
            shown = "unknown" if dims is None else "[" + ", ".join(map(str, dims)) + "]"
            example = ",".join(str(d) if isinstance(d, int) and d > 0 else "2"
                               for d in (dims or ("N", "C", "H", "W")))
            raise OnnxError(Span.whole(path), f"input '{inp.name}' has the shape {shown}, "
                            "with dynamic axes", f"give its shape: --input-shape "
                            f"{inp.name}={example}")
        shapes[inp.name] = tuple(dims)
    return shapes


# Shape inference serialises the model it is given: for a model of large weights (VGG's
# 400 MB of fully connected layers) that costs seconds, while only small constants (shapes,
# axes, pads) can decide a shape. It runs on a copy whose initializers above this many
# elements are graph inputs of the same type instead.
_INFERENCE_KEEPS = 4096


def _for_inference(proto: Any) -> Any:
    """A copy of `proto` for shape inference: the same graph, its large initializers
    declared as typed inputs rather than carried."""
    from onnx import helper
    light = type(proto)()
    for field_name in ("ir_version", "producer_name", "producer_version", "domain",
                       "model_version"):
        setattr(light, field_name, getattr(proto, field_name))
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    src, g = proto.graph, light.graph
    g.name = src.name
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    g.sparse_initializer.extend(src.sparse_initializer)
    declared = {i.name for i in src.input}
    for init in src.initializer:
        numel = 1
        for d in init.dims:
            numel *= d
        if numel <= _INFERENCE_KEEPS:
            g.initializer.append(init)
        elif init.name not in declared:
            g.input.append(helper.make_tensor_value_info(init.name, init.data_type,
                                                         list(init.dims)))
    return light


def _with_inferred(proto: Any, inferred: Any) -> Any:
    """`proto` (with its weights) given the value types inference found on its light copy."""
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(inferred.graph.value_info)
    del proto.graph.output[:]
    proto.graph.output.extend(inferred.graph.output)
    return proto


def _known_shapes(g) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """The fully known shapes and the element types of a graph's typed values."""
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, int] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = _dims(vi)
        dtypes[vi.name] = vi.type.tensor_type.elem_type
        if dims is not None and all(isinstance(d, int) and d > 0 for d in dims):
            shapes[vi.name] = tuple(dims)
    for init in g.initializer:
        shapes.setdefault(init.name, tuple(init.dims))
    return shapes, dtypes


def read_model(path: str, input_shapes: Mapping[str, tuple[int, ...]] | None = None
               ) -> OnnxModel:
    onnx = require_onnx(path)
    model = _load(onnx, path)
    try:
        onnx.checker.check_model(model)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OnnxError(Span.whole(path), f"onnx.checker rejects the model: {first}") from None
    graph = model.graph
    fixed = _fixed_inputs(graph, path, dict(input_shapes or {}))
    for inp in graph.input:
        if inp.name in fixed:
            dims = inp.type.tensor_type.shape.dim
            for d, value in zip(dims, fixed[inp.name]):
                d.Clear()
                d.dim_value = value
    light = _for_inference(model)
    for _ in range(len(graph.node) + 1):
        try:
            found = onnx.shape_inference.infer_shapes(light, strict_mode=True, data_prop=True)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise OnnxError(Span.whole(path), f"ONNX shape inference fails: {first}") from None
        # a node whose size inference gets wrong is replaced, in the copy inference reads
        # only, by one of the runtimes' size (window_sizes.py), and inference runs again
        fix = corrected(light.graph, _known_shapes(found.graph)[0])
        if fix is None:
            break
        light.graph.node[fix[0]].CopyFrom(fix[1])
    inferred = _with_inferred(model, found)
    g = inferred.graph
    shapes, dtypes = _known_shapes(g)
    for init in g.initializer:
        shapes[init.name] = tuple(init.dims)
        dtypes[init.name] = init.data_type
    opset = next((o.version for o in inferred.opset_import if o.domain in ("", "ai.onnx")), 1)
    return OnnxModel(path, inferred, opset, MappingProxyType(fixed), MappingProxyType(shapes),
                     MappingProxyType(dtypes))


def shapes_after_folding(model: OnnxModel, folded: Mapping[str, Any], nodes_folded: set[int]
                         ) -> Mapping[str, tuple[int, ...]]:
    """The shapes again, with the tensors the importer folded given as constants: shape
    inference cannot follow `x[:, :c // 2]` when c // 2 comes from Shape arithmetic, and
    then knows no shape after it (ShuffleNet's chunks). A copy of the graph without the
    folded nodes, their outputs as initializers, fills those in."""
    from onnx import numpy_helper, shape_inference
    proto = _for_inference(model.proto)
    graph = proto.graph
    keep = [n for i, n in enumerate(model.proto.graph.node) if i not in nodes_folded]
    del graph.node[:]
    graph.node.extend(keep)
    have = {i.name for i in graph.initializer}
    for name, value in folded.items():
        if name not in have:
            graph.initializer.append(numpy_helper.from_array(value, name))
    del graph.value_info[:]
    try:
        inferred = shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:   # the first inference's shapes stand
        return model.shapes
    shapes = dict(model.shapes)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = _dims(vi)
        if dims is not None and all(isinstance(d, int) and d > 0 for d in dims):
            shapes.setdefault(vi.name, tuple(dims))
    return MappingProxyType(shapes)
