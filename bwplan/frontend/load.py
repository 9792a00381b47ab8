"""Reads a network file of any kind (.bw, Caffe .prototxt, ONNX) and returns its flat
module with the importer's warnings and the file's weights (`load_module`), or its Net
(`load`): the one entry point of the CLI's commands and of `bwplan.compile`."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bwplan.errors import FileError
from bwplan.frontend import ast
from bwplan.frontend.expand import expand
from bwplan.frontend.import_warning import ImportWarning
from bwplan.frontend.parse_bw import parse_bw
from bwplan.ir.build import build
from bwplan.ir.net import Net
from bwplan.source import Span


# The largest network or schedule file read: far above any real net (GoogLeNet's
# prototxt is ~40 KB), small enough that a wrong path such as /dev/zero stops at once.
MAX_TEXT_BYTES = 64 * 2**20


def read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TEXT_BYTES + 1)
        if len(raw) > MAX_TEXT_BYTES:
            raise FileError(Span.whole(path), f"larger than {MAX_TEXT_BYTES // 2**20} MiB: "
                            "not a network file bwplan reads")
        return raw.decode("utf-8")
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


@dataclass(frozen=True)
class Loaded:
    """A network's flat module, where it came from, what its importer warned about (a
    Caffe net's differences from Caffe, an ONNX model's notes; none for .bw) and the
    weights the file holds (an ONNX model's initializers; none for the text formats)."""

    module: ast.Module
    path: str
    warnings: tuple[ImportWarning, ...] = ()
    weights: Mapping = field(default_factory=dict)


_CAFFE = (".prototxt", ".pbtxt")


def load_module(source: str, caffe_options: Mapping | None = None,
                onnx_options: Mapping | None = None, from_file: bool = False) -> Loaded:
    """A .bw, Caffe or ONNX file by path, or .bw source text (anything with a newline, or
    that names no file). `from_file`: `source` is a path whatever it looks like (a
    command's argument), so a missing file is reported as one. The file's kind is its
    suffix: .onnx, .prototxt / .pbtxt, anything else .bw."""
    if "\n" not in source and source.endswith(".onnx"):
        from bwplan.onnx.importer import onnx_module
        converted = onnx_module(source, **dict(onnx_options or {}))
        return Loaded(converted.module, source, converted.notes, converted.weights)
    looks_like_path = "\n" not in source and source.endswith((".bw",) + _CAFFE)
    if from_file or looks_like_path or (len(source) < 4096 and "\n" not in source
                                        and os.path.exists(source)):
        path, text = source, read_text(source)
    else:
        path, text = "<source>", source
    if path.endswith(_CAFFE):
        from bwplan.caffe.importer import caffe_module
        _, flat, warnings = caffe_module(text, path, **dict(caffe_options or {}))
        return Loaded(flat.module, path, tuple(warnings))
    return Loaded(expand(parse_bw(text, path)), path)


def load(path: str, **caffe_options) -> Net:
    """Load a .bw file, or a Caffe .prototxt (phase and input shapes via caffe_options), or
    an ONNX model (its default loss assumed; bwplan.onnx.importer for the options)."""
    return build(load_module(path, caffe_options, from_file=True).module)
