"""What an ONNX file shows about how it was exported, told to the user as notes.

Batch normalisation folded into the convolutions. Both PyTorch exporters fold an eval-mode
BatchNorm2d into the preceding Conv by default (the TorchScript exporter with
do_constant_folding=True, the dynamo exporter through its optimizer), so the file's conv
weights are not the model's and there is no BN left to train or freeze. The signal used: the
graph has no BatchNormalization node, and a Conv's weight initializer carries a name the
exporter made up for a tensor it computed (`onnx::Conv_12`, or not `<module>.weight` while
the Gemm/MatMul weights keep their module names), or the bias beside `X.weight` is not
`X.bias` (the dynamo exporter's `X.weight_bias`). Its limits: a model that never had batch
normalisation, exported by a tool that renames every initializer, looks folded too; a model
whose BN was folded by hand before export and renamed `conv.weight` does not.

Batch normalisation kept: a frozen BN runs on its stored statistics (the running mean and
variance from the file); a trained one on batch statistics, updating the stored ones.
"""
from __future__ import annotations

import re

from bwplan.frontend.import_warning import ImportWarning
from bwplan.onnx.to_ast import note

_MADE_UP = re.compile(r"^(onnx::|_?val_|_?v_|const)|^[0-9]+$")


def _made_up_bias(node, init) -> bool:
    """A bias beside a module's `X.weight` that is not `X.bias` (the dynamo exporter's
    folded `conv1.weight_bias`)."""
    if len(node.input) < 3 or node.input[2] not in init or not node.input[1].endswith(".weight"):
        return False
    return node.input[2] != node.input[1][:-len("weight")] + "bias"


def export_notes(graph, path: str) -> tuple[ImportWarning, ...]:
    ops = [n.op_type for n in graph.node]
    init = {i.name for i in graph.initializer}
    notes: list[ImportWarning] = []
    if "BatchNormalization" in ops:
        count = ops.count("BatchNormalization")
        notes.append(note(path, "onnx_batchnorm", f"{count} BatchNormalization node(s): a "
                          "frozen one runs on its stored statistics (the file's running mean "
                          "and variance), a trained one on batch statistics",
                          "freeze a BN layer (--freeze NAME) to keep its statistics fixed"))
        notes.extend(_training_mode(graph, path))
        return tuple(notes)
    named = [n.input[1] for n in graph.node if n.op_type in ("Gemm", "MatMul")
             and len(n.input) > 1 and n.input[1] in init]
    modules_named = any(name.endswith(".weight") for name in named)
    folded = [n for n in graph.node if n.op_type == "Conv" and len(n.input) > 1
              and n.input[1] in init
              and (_MADE_UP.match(n.input[1])
                   or (modules_named and not n.input[1].endswith(".weight"))
                   or _made_up_bias(n, init))]
    if folded:
        first = ", ".join(n.input[2] if _made_up_bias(n, init) else n.input[1]
                          for n in folded[:3])
        notes.append(note(path, "onnx_batchnorm_folded", f"{len(folded)} Conv layer(s) "
                          f"carry initializers the exporter named ({first}"
                          f"{', ...' if len(folded) > 3 else ''})"
                          " and the graph has no BatchNormalization: batch normalisation was "
                          "most likely folded into the convolutions at export, so these "
                          "weights are not the model's and no BN is left to train or freeze",
                          "export in training mode (the dynamo exporter also with "
                          "optimize=False) to keep BN and the module names (docs/onnx.md)"))
    return tuple(notes)


def _training_mode(graph, path: str) -> list[ImportWarning]:
    """BatchNormalization's `training_mode` (opset 14 on) says which statistics the file's own
    forward normalises with. bwplan does not follow it: a training step normalises a trained
    BN with the batch's statistics and a frozen one with the stored ones; a forward outside
    training uses the stored ones for every BN. Where that differs from the file, say so."""
    from bwplan.onnx.fold import attrs_of
    marked = [n for n in graph.node if n.op_type == "BatchNormalization"
              and attrs_of(n).get("training_mode", 0)]
    if not marked:
        return []
    first = ", ".join(n.name or n.output[0] for n in marked[:3])
    return [note(path, "onnx_batchnorm_training_mode", f"{len(marked)} BatchNormalization "
                 f"node(s) have training_mode=1 ({first}{', ...' if len(marked) > 3 else ''}): the "
                 "file normalises them with batch statistics; bwplan does so in a training "
                 "step for the ones it trains, and uses the stored statistics for frozen ones "
                 "and in every forward outside training (explain, eval)",
                 "onnxruntime's output on this file matches bwplan's training-mode forward "
                 "(forward(..., training=True)) with no BN frozen")]
