"""One loader for the library and the CLI: `load_module` returns the flat module and the
importer's warnings, which `bwplan.compile` keeps."""
from __future__ import annotations

import numpy as np
import pytest

import bwplan
from bwplan.cli.main import main
from bwplan.errors import FileError
from bwplan.frontend.import_warning import ImportWarning
from bwplan.frontend.load import load_module
from bwplan.source import Span

SHARED_LR = """name: "shared"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "a" type: "InnerProduct" bottom: "data" top: "a"
        param { name: "w" lr_mult: 1 } param { name: "b" lr_mult: 1 }
        inner_product_param { num_output: 3 } }
layer { name: "b" type: "InnerProduct" bottom: "a" top: "b"
        param { name: "w" lr_mult: 2 } param { name: "b" lr_mult: 1 }
        inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "b" bottom: "label" top: "loss" }
"""


def test_caffe_import_warnings_reach_the_compiled_net(tmp_path):
    path = tmp_path / "shared.prototxt"
    path.write_text(SHARED_LR)
    loaded = load_module(str(path))
    assert loaded.path == str(path) and loaded.warnings
    compiled = bwplan.compile(str(path), target="reference")
    assert [w.code for w in compiled.warnings] == [w.code for w in loaded.warnings]


def test_bw_text_loads_without_warnings():
    loaded = load_module("input x : f32[2, 3]\ny = relu(x)\n")
    assert loaded.path == "<source>" and loaded.warnings == ()
    assert [s.name for s in loaded.module.statements] == ["x", "y"]


def test_both_importers_warn_with_one_type(tmp_path):
    """A Caffe net's differences and an ONNX model's notes are one ImportWarning type,
    returned by the loader and kept by the compiled net."""
    pytest.importorskip("onnx")
    from onnx import helper

    from onnx_graphs import f32, initializer, save_graph
    caffe = tmp_path / "shared.prototxt"
    caffe.write_text(SHARED_LR)
    model = save_graph(tmp_path / "fc.onnx",
                       [helper.make_node("Gemm", ["x", "fc.weight"], ["y"], transB=1)],
                       [f32("x", [2, 3])], [f32("y", [2, 4])],
                       [initializer("fc.weight", np.ones((4, 3)))])
    caffe_w, onnx_w = load_module(str(caffe)).warnings, load_module(model).warnings
    assert {type(w) for w in caffe_w + onnx_w} == {ImportWarning}
    assert {w.severity for w in caffe_w} == {"warning"}
    assert [(w.code, w.severity, w.span) for w in onnx_w] == \
        [("onnx_loss_assumed", "note", Span.whole(model))]
    assert bwplan.compile(model, target="reference").warnings == onnx_w


def test_a_command_argument_is_always_a_path(tmp_path, capsys):
    """`bwplan compile FILE`: a missing file without a known suffix is reported as a
    missing file, not parsed as .bw source text."""
    missing = str(tmp_path / "net.txt")
    assert main(["compile", missing, "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"{missing}: error: no such file"
    with pytest.raises(FileError, match="no such file"):
        load_module(missing, from_file=True)
