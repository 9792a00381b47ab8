"""The error an ONNX file that bwplan cannot import raises, and where a node is named."""
from __future__ import annotations

from bwplan.errors import BwError
from bwplan.source import Span


class OnnxError(BwError):
    """An ONNX model that cannot be read, or that holds something bwplan cannot import."""


def node_span(path: str, name: str, op_type: str) -> Span:
    """ONNX has no line numbers: a node is located by its file, name and op type."""
    return Span.synthetic(f"{path}: node '{name}' ({op_type})")
