"""ONNX import on small hand-built graphs (onnx.helper) and on the real architectures the
`onnx` wheel ships: names, sharing, the ops' attribute mappings against onnxruntime, the
command line (explain, convert, train), and bad input (every unsupported node in one error,
corrupt and non-ONNX files, a missing `onnx` package), each an exit status 2 and no
traceback.
"""
from __future__ import annotations

import glob
import math
import os
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

import bwplan  # noqa: E402
from bwplan.cli.main import main  # noqa: E402
from bwplan.frontend.load import load  # noqa: E402
from bwplan.onnx.importer import import_onnx  # noqa: E402
from onnx_graphs import f32 as _f32  # noqa: E402
from onnx_graphs import initializer as _init  # noqa: E402
from onnx_graphs import save_graph as _save  # noqa: E402

LIGHT = sorted(glob.glob(os.path.join(os.path.dirname(onnx.__file__),
                                      "backend/test/data/light/light_*.onnx")))


def _ort(path, feeds):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(path).run(None, feeds)[0]


def _bw_forward(path, feeds, shapes=None):
    imported = import_onnx(path, shapes)
    prog = bwplan.compile(path, onnx_options={"input_shapes": shapes or {}})
    n = next(iter(feeds.values())).shape[0]
    batch = dict(feeds, label=np.zeros(n, np.int64))
    return prog.forward(batch, outputs=imported.outputs)[imported.outputs[0]]


# ---- the onnx wheel's real architectures -----------------------------------------------
@pytest.mark.skipif(not LIGHT, reason="this onnx wheel ships no light models")
@pytest.mark.parametrize("path", LIGHT, ids=lambda p: os.path.basename(p)[6:-5])
def test_light_models_import_and_explain(path, capsys):
    assert main(["explain", path]) == 0
    out = capsys.readouterr().out
    assert "note: the ONNX graph has no loss: assumed softmax_cross_entropy" in out
    net = import_onnx(path).net
    assert any(layer.op == "conv2d" for layer in net.layers)


def test_light_models_are_the_nine_architectures():
    names = {os.path.basename(p)[6:-5] for p in LIGHT}
    if not names:
        pytest.skip("this onnx wheel ships no light models")
    assert names == {"bvlc_alexnet", "densenet121", "inception_v1", "inception_v2",
                     "resnet50", "shufflenet", "squeezenet", "vgg19", "zfnet512"}


@pytest.mark.skipif(not LIGHT, reason="this onnx wheel ships no light models")
def test_caffe2_names_and_freeze_on_a_light_model(capsys):
    path = next(p for p in LIGHT if "squeezenet" in p)
    assert main(["explain", path, "--freeze", "fire2/*"]) == 0
    out = capsys.readouterr().out
    assert "fire2/squeeze1x1_w_0 is frozen by --freeze 'fire2/*'" in out
    # Caffe's ceil-mode pools, converted to end padding, come back as ceil pools
    alexnet = import_onnx(next(p for p in LIGHT if "alexnet" in p)).net
    assert any(layer.attrs["ceil"] for layer in alexnet.layers if layer.op == "maxpool")


# ---- names and sharing -----------------------------------------------------------------
def _two_gemms(tmp_path, second_weight: str, extra=()):
    nodes = list(extra) + [
        helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], transB=1,
                         name="/fc1/Gemm"),
        helper.make_node("Relu", ["h"], ["r"], name="/act/Relu"),
        helper.make_node("Gemm", ["r", second_weight], ["y"], transB=1, name="/fc2/Gemm")]
    rng = np.random.default_rng(0)
    inits = [_init("fc1.weight", rng.standard_normal((3, 3))), _init("fc1.bias", [1, 2, 3])]
    return _save(tmp_path / "two.onnx", nodes, [_f32("x", [2, 3])], [_f32("y", [2, 3])],
                 inits)


def test_an_initializer_used_twice_is_one_shared_parameter(tmp_path):
    net = import_onnx(_two_gemms(tmp_path, "fc1.weight")).net
    uses = [u.param for layer in net.layers for u in layer.params if u.slot == "weight"]
    assert uses == ["fc1.weight", "fc1.weight"]


def test_a_constant_aliased_through_identity_is_a_parameter_of_its_own(tmp_path):
    alias = helper.make_node("Identity", ["fc1.weight"], ["fc2.weight"], name="copy")
    imported = import_onnx(_two_gemms(tmp_path, "fc2.weight", [alias]))
    uses = [u.param for layer in imported.net.layers for u in layer.params
            if u.slot == "weight"]
    assert uses == ["fc1.weight", "fc2.weight"]
    np.testing.assert_array_equal(imported.weights["fc1.weight"], imported.weights["fc2.weight"])
    assert [layer.name for layer in imported.net.layers][:3] == ["fc1", "act", "fc2"]


def test_weights_are_loaded_and_forward_matches_onnxruntime(tmp_path):
    path = _two_gemms(tmp_path, "fc1.weight")
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    prog = bwplan.compile(path)
    np.testing.assert_array_equal(prog.params["fc1.bias"], [1, 2, 3])
    np.testing.assert_allclose(_bw_forward(path, {"x": x}), _ort(path, {"x": x}), atol=1e-6)


# ---- op mappings against onnxruntime ---------------------------------------------------
POOLS = [  # (op, attributes, input H = W)
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), 8),
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]), 6),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), 7),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                         count_include_pad=1), 7),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]), 6),
    ("AveragePool", dict(kernel_shape=[7, 7], pads=[0, 0, 1, 1]), 6),
    ("GlobalMaxPool", {}, 5),
]


@pytest.mark.parametrize("op,attrs,size", POOLS)
def test_pooling_attributes_match_onnxruntime(tmp_path, op, attrs, size):
    node = helper.make_node(op, ["x"], ["p"], **attrs)
    flat = helper.make_node("Flatten", ["p"], ["y"])
    path = _save(tmp_path / "pool.onnx", [node, flat], [_f32("x", [2, 3, size, size])],
                 [_f32("y", ["d0", "d1"])])
    x = np.random.default_rng(2).standard_normal((2, 3, size, size)).astype(np.float32)
    np.testing.assert_allclose(_bw_forward(path, {"x": x}), _ort(path, {"x": x}), atol=1e-6)


def test_shape_subgraph_transpose_clip_and_reduce_mean_match_onnxruntime(tmp_path):
    """A channel shuffle written as torch writes x.view(x.size(0), g, -1, h, w): the target
    shape is computed from Shape/Gather/Unsqueeze/Concat and folded at import."""
    i64 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero"], ["n1"]),
        helper.make_node("Concat", ["n1", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t", "back"], ["u"]),
        helper.make_node("Clip", ["u", "lo", "hi"], ["c"]),
        helper.make_node("ReduceMean", ["c"], ["y"], axes=[2, 3], keepdims=0),
    ]
    inits = [i64("zero", 0), i64("rest", [2, 3, 4, 4]), i64("back", [0, 6, 4, 4]),
             _init("lo", 0.0), _init("hi", 0.5)]
    path = _save(tmp_path / "shuffle.onnx", nodes, [_f32("x", ["N", 6, 4, 4])],
                 [_f32("y", ["d0", "d1"])], inits)
    x = np.random.default_rng(3).standard_normal((3, 6, 4, 4)).astype(np.float32)
    got = _bw_forward(path, {"x": x}, {"x": (3, 6, 4, 4)})
    np.testing.assert_allclose(got, _ort(path, {"x": x}), atol=1e-6)
    ops = [layer.op for layer in import_onnx(path, {"x": (3, 6, 4, 4)}).net.layers]
    assert ops[:5] == ["reshape", "transpose", "reshape", "clip", "global_avgpool"]


def test_transpose_cuda_record_addresses_like_numpy():
    """The permute kernel's index arithmetic (shape.cu), run on the host."""
    from bwplan.kernels.cuda.shape import _permute
    shape, perm = (2, 3, 4, 5), (0, 2, 3, 1)
    args = [int(a) for a in _permute(shape, perm)]
    dims, strides = args[:6], args[6:]
    x = np.arange(math.prod(shape))
    got = []
    for i in range(x.size):
        rest, offset = i, 0
        for k in range(5, -1, -1):
            offset += (rest % dims[k]) * strides[k]
            rest //= dims[k]
        got.append(x[offset])
    np.testing.assert_array_equal(got, x.reshape(shape).transpose(perm).reshape(-1))


# ---- the command line ------------------------------------------------------------------
def test_convert_writes_a_bw_file_that_builds_the_same_net(tmp_path):
    path = _two_gemms(tmp_path, "fc1.weight")
    out = tmp_path / "two.bw"
    assert main(["convert", path, "-o", str(out)]) == 0
    a, b = load(str(out)), import_onnx(path).net
    assert [(x.name, x.op, x.out) for x in a.layers] == [(x.name, x.op, x.out) for x in b.layers]
    assert set(a.params) == set(b.params)


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_compile_writes_an_artifact_that_keeps_the_model(tmp_path, capsys, target):
    path = _two_gemms(tmp_path, "fc1.weight")
    out = tmp_path / "art"
    assert main(["compile", path, "--target", target, "-o", str(out), "--freeze", "fc1"]) == 0
    assert (out / "two.onnx").read_bytes() == open(path, "rb").read()
    assert (out / "plan.json").exists()


def test_explicit_loss_attaches_a_target_input(tmp_path, capsys):
    path = _two_gemms(tmp_path, "fc1.weight")
    assert main(["explain", path, "--loss", "euclidean_loss"]) == 0
    out = capsys.readouterr().out
    assert "attached euclidean_loss on 'fc2', with the input 'target'" in out
    net = import_onnx(path, loss="euclidean_loss").net
    assert [i.name for i in net.inputs] == ["x", "target"]


def test_train_runs_from_the_onnx_weights(tmp_path, capsys):
    path = _two_gemms(tmp_path, "fc1.weight")
    rng = np.random.default_rng(4)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.standard_normal((8, 3)).astype(np.float32),
             label=rng.integers(0, 3, 8))
    out = tmp_path / "w.npz"
    assert main(["train", path, "--data", str(data), "--batch", "2", "--lr", "0.1",
                 "--out", str(out)]) == 0
    trained = np.load(out)
    assert not np.allclose(trained["fc1.bias"], [1, 2, 3])          # it trained
    assert np.abs(trained["fc1.bias"] - [1, 2, 3]).max() < 1.0      # from the file's values


# ---- bad input: one error, exit status 2, no traceback ---------------------------------
def _fails(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_every_unsupported_node_is_listed_in_one_error(tmp_path, capsys):
    nodes = [helper.make_node("Sin", ["x"], ["a"], name="sin_1"),
             helper.make_node("MaxPool", ["a"], ["b"], kernel_shape=[2, 2], dilations=[2, 2],
                              name="pool_2"),
             helper.make_node("Floor", ["b"], ["y"], name="floor_3")]
    inits = []
    path = _save(tmp_path / "bad.onnx", nodes, [_f32("x", [1, 3, 6, 6])],
                 [_f32("y", ["n", "c", "h", "w"])], inits)
    err = _fails(["explain", path], capsys)
    assert "3 node(s) that bwplan cannot import (opset 17)" in err
    for name, op in (("sin_1", "Sin"), ("pool_2", "MaxPool"), ("floor_3", "Floor")):
        assert f"{path}: node '{name}' ({op}, opset 17)" in err
    assert "bwplan's pools are dense" in err


@pytest.mark.parametrize("content", [b"\x08\x07\xff\xff\xff garbage \x00\x01" * 20,
                                     b"input x: f32[2, 3]\ny = relu(x)\n", b""],
                         ids=["corrupt", "bw-text", "empty"])
def test_a_file_that_is_not_onnx_is_one_error_line(tmp_path, capsys, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    err = _fails(["explain", str(path)], capsys)
    assert err.startswith(f"{path}: error: ")
    assert len([line for line in err.splitlines() if "error:" in line]) == 1


def test_dynamic_axes_need_an_input_shape(tmp_path, capsys):
    path = _save(tmp_path / "dyn.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                 [_f32("x", ["N", 4])], [_f32("y", ["N", 4])])
    err = _fails(["explain", path], capsys)
    assert "dynamic axes" in err and "--input-shape x=2,4" in err
    err = _fails(["explain", path, "--input-shape", "image=2,4"], capsys)
    assert "'image', which is not an input of the model" in err
    assert main(["explain", path, "--input-shape", "x=5,4"]) == 0


def test_a_missing_onnx_package_is_a_clear_error(tmp_path, capsys, monkeypatch):
    path = _two_gemms(tmp_path, "fc1.weight")
    monkeypatch.setitem(sys.modules, "onnx", None)   # `import onnx` now raises ImportError
    err = _fails(["explain", path], capsys)
    assert "needs the 'onnx' package" in err and 'pip install "bwplan[onnx]"' in err


def test_docs_list_every_op_the_table_maps():
    from pathlib import Path
    from bwplan.onnx.table import ROWS
    doc = (Path(__file__).parents[1] / "docs" / "onnx.md").read_text()
    missing = [op for op in ROWS if f"`{op}`" not in doc]
    assert not missing, missing


@pytest.mark.parametrize("weight,bias,folded", [
    ("onnx::Conv_12", "onnx::Conv_13", True),       # TorchScript exporter, BN folded
    ("conv1.weight", "conv1.weight_bias", True),    # dynamo exporter, BN folded
    ("conv1.weight", "conv1.bias", False),          # a conv with its own bias
    ("conv1_w_0", "conv1_b_0", False),              # Caffe2 names
])
def test_batchnorm_folding_is_told_from_the_initializer_names(tmp_path, weight, bias, folded):
    from bwplan.onnx.checks import export_notes
    nodes = [helper.make_node("Conv", ["x", weight, bias], ["y"], kernel_shape=[1, 1])]
    inits = [_init(weight, np.ones((2, 3, 1, 1))), _init(bias, np.zeros(2))]
    path = _save(tmp_path / "c.onnx", nodes, [_f32("x", [1, 3, 2, 2])], [_f32("y", [1, 2, 2, 2])],
                 inits)
    codes = [n.code for n in export_notes(onnx.load(path).graph, path)]
    assert ("onnx_batchnorm_folded" in codes) == folded
