"""`import_onnx`: an ONNX file -> the flat AST, the Net, the weights and the notes for
`explain`. The pipeline after it (build -> Net -> plan -> lower) is the one .bw files take.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bwplan.frontend import ast
from bwplan.ir.build import build
from bwplan.ir.net import Net
from bwplan.onnx.checks import export_notes
from bwplan.onnx.loss import attach_loss
from bwplan.onnx.read import read_model
from bwplan.onnx.to_ast import Note, to_flat_ast


@dataclass(frozen=True)
class OnnxImport:
    module: ast.Module
    net: Net
    weights: Mapping[str, np.ndarray]
    notes: tuple[Note, ...]
    outputs: tuple[str, ...]     # the layers that compute the graph's outputs


def import_onnx(path: str, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
                loss: str | None = None) -> OnnxImport:
    model = read_model(path, input_shapes)
    converted = to_flat_ast(model)
    out_name = model.proto.graph.output[0].name if model.proto.graph.output else None
    converted = attach_loss(converted, converted.shapes.get(out_name), loss, path)
    net = build(converted.module)
    return OnnxImport(converted.module, net, converted.weights,
                      export_notes(model.proto.graph) + converted.notes, converted.outputs)
