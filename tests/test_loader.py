"""One loader for the library and the CLI: `load_module` returns the flat module and the
importer's warnings, which `bwplan.compile` keeps."""
from __future__ import annotations

import bwplan
from bwplan.frontend.load import load_module

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
