"""`import_onnx`: an ONNX file -> the flat AST, the Net, the weights and the notes for
`explain` (ImportWarnings of severity "note"); `onnx_module`, all but the Net, is what
the loader calls. The pipeline after it (build -> Net -> plan -> lower) is the one .bw
files take.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from bwplan.frontend import ast
from bwplan.frontend.import_warning import ImportWarning
from bwplan.ir.build import build
from bwplan.ir.net import Net
from bwplan.onnx.checks import export_notes
from bwplan.onnx.loss import attach_loss
from bwplan.onnx.read import read_model
from bwplan.onnx.to_ast import Converted, to_flat_ast


@dataclass(frozen=True)
class OnnxImport:
    module: ast.Module
    net: Net
    weights: Mapping[str, np.ndarray]
    warnings: tuple[ImportWarning, ...]     # notes about the model as a whole
    outputs: tuple[str, ...]                # the layers that compute the graph's outputs


def onnx_module(path: str, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
                loss: str | None = None) -> Converted:
    """Everything but the Net: the flat module with its loss, the weights, the notes (the
    export's first) and the output layers. What the loader calls."""
    model = read_model(path, input_shapes)
    converted = to_flat_ast(model)
    out_name = model.proto.graph.output[0].name if model.proto.graph.output else None
    converted = attach_loss(converted, converted.shapes.get(out_name), loss, path)
    return replace(converted, notes=export_notes(model.proto.graph, path) + converted.notes)


def import_onnx(path: str, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
                loss: str | None = None) -> OnnxImport:
    converted = onnx_module(path, input_shapes, loss)
    return OnnxImport(converted.module, build(converted.module), converted.weights,
                      converted.notes, converted.outputs)
