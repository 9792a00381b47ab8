"""Reads a network file of either kind and returns its Net: the one entry point the CLI
and the library use."""
from __future__ import annotations

from pathlib import Path

from bwplan.errors import FileError
from bwplan.frontend.expand import expand
from bwplan.frontend.parse_bw import parse_bw
from bwplan.ir.build import build
from bwplan.ir.net import Net
from bwplan.source import Span


def read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileError(Span.whole(path), "no such file") from None
    except IsADirectoryError:
        raise FileError(Span.whole(path), "is a directory, not a network file") from None
    except UnicodeDecodeError as err:
        raise FileError(Span.whole(path), f"not UTF-8 text ({err.reason} at byte "
                        f"{err.start})") from None
    except OSError as err:
        raise FileError(Span.whole(path), f"cannot read: {err.strerror}") from None


def load_bw_text(text: str, path: str = "<input>") -> Net:
    return build(expand(parse_bw(text, path)))


def load(path: str, **caffe_options) -> Net:
    """Load a .bw file, or a Caffe .prototxt (phase and input shapes via caffe_options), or
    an ONNX model (its default loss assumed; bwplan.onnx.importer for the options)."""
    if path.endswith(".onnx"):
        from bwplan.onnx.importer import import_onnx
        return import_onnx(path).net
    text = read_text(path)
    if path.endswith((".prototxt", ".pbtxt")):
        from bwplan.caffe.importer import import_caffe_text
        return import_caffe_text(text, path, **caffe_options).net
    return load_bw_text(text, path)
