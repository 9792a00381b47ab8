"""The one type an importer (Caffe, ONNX) uses to tell what it found in a file that the
user should know: where Caffe would train differently, the loss an ONNX model was given.
The loader returns them beside the module (`Loaded.warnings`); `explain` shows them among
the plan's findings, `bwplan.compile` keeps them (`CompiledNet.warnings`)."""
from __future__ import annotations

from dataclasses import dataclass

from bwplan.source import Span


@dataclass(frozen=True, slots=True)
class ImportWarning:
    code: str            # stable, for JSON and tests: "caffe-force-backward", "onnx_batchnorm"
    span: Span           # where in the file; Span.whole(path) for a fact about the whole file
    text: str
    fix: str
    subject: str = ""    # the layer it is about (for grouping many of one kind)
    severity: str = "warning"    # "warning" | "note", as a plan Finding's
