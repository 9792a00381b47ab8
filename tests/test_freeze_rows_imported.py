"""Frozen rows on imported nets: `--freeze 'fc8.weight[0:7]'` on a Caffe InnerProduct and on
an ONNX Gemm (built with onnx.helper) keeps those rows bit-identical through training, trains
the others, and trains them exactly as the same net written in .bw does (the .bw spelling is
checked against hand-masked PyTorch in test_freeze_rows.py)."""
from __future__ import annotations

import numpy as np
import pytest

import bwplan
from bwplan.cli.main import main

LR, MOMENTUM, DECAY, STEPS = 0.1, 0.9, 0.01, 5
FREEZE = ["fc8.weight[0:7]", "fc8.bias[0:7]"]

PROTOTXT = """\
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 8 dim: 6 } shape { dim: 8 } } }
layer { name: "fc7" type: "InnerProduct" bottom: "data" top: "fc7"
        inner_product_param { num_output: 12 } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8"
        inner_product_param { num_output: 10 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }
"""

# the same net in .bw, its input named as each import names it
BW = """\
input {x} : f32[8, 6]
input label : i64[8]
fc7 = linear({x}, out=12)
relu7 = relu(fc7)
fc8 = linear(relu7, out=10)
loss = softmax_cross_entropy(fc8, label)
"""


def _onnx_model(path, trans_b: int) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w7 = rng.standard_normal((12, 6)).astype(np.float32) * 0.4
    w8 = rng.standard_normal((10, 12)).astype(np.float32) * 0.3
    inits = [numpy_helper.from_array(w7, "fc7.weight"),
             numpy_helper.from_array(rng.standard_normal(12).astype(np.float32), "fc7.bias"),
             # transB=0 stores B as [in, out]: the import transposes it to linear's rows
             numpy_helper.from_array(w8 if trans_b else np.ascontiguousarray(w8.T),
                                     "fc8.weight"),
             numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "fc8.bias")]
    nodes = [helper.make_node("Gemm", ["x", "fc7.weight", "fc7.bias"], ["h"], transB=1,
                              name="fc7"),
             helper.make_node("Relu", ["h"], ["r"], name="relu7"),
             helper.make_node("Gemm", ["r", "fc8.weight", "fc8.bias"], ["logits"],
                              transB=trans_b, name="fc8")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [8, 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
              str(path))


def _imported(kind: str, tmp_path, target: str):
    if kind == "caffe":
        path = tmp_path / "tiny.prototxt"
        path.write_text(PROTOTXT)
        return bwplan.compile(str(path), target=target, freeze=FREEZE), "data"
    path = tmp_path / "tiny.onnx"
    _onnx_model(path, trans_b=int(kind == "onnx_transB1"))
    return bwplan.compile(str(path), target=target, freeze=FREEZE,
                          onnx_options={"loss": "softmax_cross_entropy"}), "x"


def _train(prog, x_name: str) -> None:
    prog.set_optimizer(LR, MOMENTUM, DECAY)
    rng = np.random.default_rng(3)
    for _ in range(STEPS):
        prog.step({x_name: rng.standard_normal((8, 6)).astype(np.float32),
                   "label": rng.integers(0, 10, 8).astype(np.int64)})


@pytest.mark.parametrize("target", ["reference", "cpu"])
@pytest.mark.parametrize("kind", ["caffe", "onnx_transB1", "onnx_transB0"])
def test_imported_head_keeps_its_frozen_rows(kind, target, tmp_path):
    prog, x_name = _imported(kind, tmp_path, target)
    assert prog.net.params["fc8.weight"].frozen_rows == ((0, 7),)
    initial = {k: np.array(v) for k, v in prog.params.items()}
    if kind.startswith("onnx"):   # the model's own weights, as linear's [out, in]
        assert not np.allclose(initial["fc8.weight"][:, 0], initial["fc8.weight"][0, 0])
    twin = bwplan.compile(BW.format(x=x_name), target=target, freeze=FREEZE)
    for k in twin.params:
        twin.params[k][...] = initial[k]
    _train(prog, x_name)
    _train(twin, x_name)
    for k in ("fc8.weight", "fc8.bias"):
        assert np.array_equal(prog.params[k][:7], initial[k][:7]), k    # bit-identical
        assert not np.allclose(prog.params[k][7:], initial[k][7:]), k   # the new rows train
    assert not np.allclose(prog.params["fc7.weight"], initial["fc7.weight"])
    for k in twin.params:   # the same program as the .bw spelling: the same parameters
        np.testing.assert_array_equal(prog.params[k], twin.params[k], err_msg=k)


@pytest.mark.parametrize("kind", ["caffe", "onnx_transB1"])
def test_explain_shows_the_rows_of_an_imported_head(kind, tmp_path, capsys):
    if kind == "caffe":
        path = tmp_path / "tiny.prototxt"
        path.write_text(PROTOTXT)
    else:
        path = tmp_path / "tiny.onnx"
        _onnx_model(path, 1)
    assert main(["explain", str(path), "--freeze", FREEZE[0], "--freeze", FREEZE[1]]) == 0
    text = capsys.readouterr().out
    assert "\nfrozen rows\n  fc8.weight  trains rows 7:10 of 10, keeps 0:7 exactly" in text
    assert main(["explain", str(path), "--freeze", "fc8.weight[0:11]"]) == 2
    assert "rows 0:11 are out of bounds: the leading axis has 10 rows" in \
        capsys.readouterr().err


def test_train_cli_on_a_prototxt_keeps_the_rows(tmp_path):
    path = tmp_path / "tiny.prototxt"
    path.write_text(PROTOTXT)
    rng = np.random.default_rng(4)
    data = tmp_path / "d.npz"
    np.savez(data, data=rng.standard_normal((24, 6)).astype(np.float32),
             label=rng.integers(0, 10, 24))
    out = tmp_path / "w.npz"
    assert main(["train", str(path), "--data", str(data), "--out", str(out), "--batch", "8",
                 "--epochs", "2", "--lr", "0.1", "--weight-decay", "0.01", "--target",
                 "reference", "--freeze", FREEZE[0], "--freeze", FREEZE[1]]) == 0
    initial = bwplan.compile(str(path), target="reference").params
    trained = np.load(out)
    for k in ("fc8.weight", "fc8.bias"):
        assert np.array_equal(trained[k][:7], initial[k][:7]), k
        assert not np.allclose(trained[k][7:], initial[k][7:]), k
