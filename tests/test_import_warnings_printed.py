"""`compile` and `train` print the importer's warnings (a Caffe net's differences from
Caffe, an ONNX model's notes) to stderr, grouped as `explain` shows them: one block per
kind found many times, with its count and the first names."""
from __future__ import annotations

import numpy as np
import pytest

from bwplan.cli.main import main

HEAD = ('layer { name: "data" type: "Input" top: "data" top: "label" input_param { '
        'shape { dim: 2 dim: 4 dim: 6 dim: 6 } shape { dim: 2 } } }\n'
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "x" '
        'convolution_param { num_output: 4 kernel_size: 1 } }\n')
TAIL = ('layer { name: "fc" type: "InnerProduct" bottom: "x" top: "fc" '
        'inner_product_param { num_output: 3 } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" '
        'top: "loss" }\n')
GROUP = "7 like it (caffe-batchnorm-statistics): bn0, bn1, bn2, bn3, bn4 and 2 more"


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def bn_chain(tmp_path):
    """Seven BatchNorm layers, each of which Caffe would treat differently: one kind of
    warning found seven times."""
    path = tmp_path / "bn.prototxt"
    path.write_text(HEAD + "".join(f'layer {{ name: "bn{i}" type: "BatchNorm" bottom: "x" '
                                   f'top: "x" }}\n' for i in range(7)) + TAIL)
    return path


def _explain_block(path, capsys) -> str:
    """explain's lines for the warning, from its text to its fix."""
    assert main(["explain", str(path), "--wide"]) == 0
    out = capsys.readouterr().out
    start = out.index("warning: Caffe marks")
    return out[start:out.index("\n", out.index("fix:", start))]


def test_compile_prints_the_warnings_explain_shows(bn_chain, tmp_path, capsys):
    block = _explain_block(bn_chain, capsys)
    assert GROUP in block
    assert main(["compile", str(bn_chain), "-o", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert _flat(block) in _flat(err)
    assert err.count("warning: Caffe marks") == 1 and GROUP in err
    assert "Caffe marks" not in out   # the report on stdout stays what it was


def test_train_prints_the_warnings_explain_shows(bn_chain, tmp_path, capsys):
    block = _explain_block(bn_chain, capsys)
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, data=rng.standard_normal((4, 4, 6, 6)).astype(np.float32),
             label=np.array([0, 1, 2, 0]))
    assert main(["train", str(bn_chain), "--data", str(data), "--batch", "2",
                 "--target", "reference"]) == 0
    out, err = capsys.readouterr()
    assert _flat(block) in _flat(err)
    assert err.count("warning: Caffe marks") == 1 and GROUP in err
    assert "Caffe marks" not in out


def test_compile_prints_an_onnx_models_note(tmp_path, capsys):
    pytest.importorskip("onnx")
    from onnx import helper

    from onnx_graphs import f32, initializer, save_graph
    model = save_graph(tmp_path / "fc.onnx",
                       [helper.make_node("Gemm", ["x", "fc.weight"], ["y"], transB=1)],
                       [f32("x", [2, 3])], [f32("y", [2, 4])],
                       [initializer("fc.weight", np.ones((4, 3), np.float32))])
    assert main(["compile", model, "-o", str(tmp_path / "out"), "--target", "reference"]) == 0
    err = capsys.readouterr().err
    assert err.count("note: ") == 1 and "softmax_cross_entropy" in err


def test_a_bw_net_has_no_warnings_to_print(tmp_path, capsys):
    net = tmp_path / "n.bw"
    net.write_text("input x : f32[2, 3]\ninput label : i32[2]\n"
                   "y = linear(x, out=4)\nloss = softmax_cross_entropy(y, label)\n")
    assert main(["compile", str(net), "-o", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().err == ""
