"""ONNX ops beyond the first import, each checked against onnxruntime on a hand-built graph
(onnx.helper): Conv with asymmetric padding (explicit `pads` and every `auto_pad` mode, as
TensorFlow/Keras exports write them), which becomes a `pad` layer before the conv2d; Sub
and Div by constants (input normalisation), Add of a constant, Gemm with transA, alpha and
beta, MatMul with a constant on either side, Squeeze/Unsqueeze of computed tensors, Pad
(constant mode, opsets 9, 13 and 18), ConvTranspose, HardSigmoid, HardSwish, Erf, Gelu
(opset 20's node and the decomposition older exporters write) and Selu.
"""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import helper, numpy_helper  # noqa: E402

import bwplan  # noqa: E402
from bwplan.onnx.importer import import_onnx  # noqa: E402
from onnx_graphs import f32 as _f32  # noqa: E402
from onnx_graphs import initializer as _init  # noqa: E402
from onnx_graphs import save_graph as _save  # noqa: E402


def _compare(path, x, atol=1e-5):
    """bwplan's forward against onnxruntime's on x; returns the imported net."""
    want = ort.InferenceSession(path).run(None, {"x": x})[0]
    imported = import_onnx(path)
    prog = bwplan.compile(path)
    got = prog.forward({"x": x, "label": np.zeros(x.shape[0], np.int64)},
                       outputs=imported.outputs)[imported.outputs[0]]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=atol * max(1.0, np.abs(want).max()), rtol=0)
    return imported.net


CONVS = [  # (attributes, input H, W, whether the two sides differ on some axis)
    (dict(auto_pad="SAME_UPPER", strides=[2, 2]), 8, 7, True),
    (dict(auto_pad="SAME_LOWER", strides=[2, 2]), 8, 7, True),
    (dict(auto_pad="SAME_UPPER", strides=[3, 1]), 7, 5, False),
    (dict(auto_pad="SAME_LOWER", strides=[1, 2]), 5, 6, True),
    (dict(auto_pad="VALID", strides=[2, 1]), 7, 6, False),
    (dict(pads=[0, 1, 2, 0]), 5, 6, True),
    (dict(pads=[1, 2, 2, 1], strides=[2, 2]), 7, 7, True),
    (dict(pads=[1, 1, 1, 1], strides=[2, 2]), 6, 6, False),
]


@pytest.mark.parametrize("attrs,h,w,asymmetric", CONVS)
def test_conv_padding_matches_onnxruntime(tmp_path, attrs, h, w, asymmetric):
    rng = np.random.default_rng(0)
    conv = helper.make_node("Conv", ["x", "k.weight", "k.bias"], ["c"], name="/k/Conv",
                            **attrs)
    relu = helper.make_node("Relu", ["c"], ["r"])
    flat = helper.make_node("Flatten", ["r"], ["y"])
    path = _save(tmp_path / "conv.onnx", [conv, relu, flat], [_f32("x", [2, 4, h, w])],
                 [_f32("y", ["a", "b"])], [_init("k.weight", rng.standard_normal((3, 4, 3, 3))),
                                           _init("k.bias", rng.standard_normal(3))])
    x = rng.standard_normal((2, 4, h, w)).astype(np.float32)
    net = _compare(path, x)
    ops = {layer.name: layer.op for layer in net.layers}
    assert ops["k"] == "conv2d"
    # only the difference between the sides is a layer of its own
    assert ("k.pad" in ops) == asymmetric, ops


def test_a_padded_conv_trains_through_its_pad_layer(tmp_path):
    """The pad layer passes the gradient back: the first conv's weight gets one."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Conv", ["x", "a.weight"], ["c"], auto_pad="SAME_UPPER",
                              strides=[2, 2], name="/a/Conv"),
             helper.make_node("Conv", ["c", "b.weight"], ["d"], pads=[0, 0, 1, 1],
                              name="/b/Conv"),
             helper.make_node("GlobalAveragePool", ["d"], ["g"]),
             helper.make_node("Flatten", ["g"], ["y"])]
    path = _save(tmp_path / "two.onnx", nodes, [_f32("x", [2, 3, 6, 6])], [_f32("y", [2, 4])],
                 [_init("a.weight", rng.standard_normal((5, 3, 3, 3))),
                  _init("b.weight", rng.standard_normal((4, 5, 2, 2)))])
    prog = bwplan.compile(path)
    prog.set_optimizer(lr=0.0, momentum=0.0)
    prog.step({"x": rng.standard_normal((2, 3, 6, 6)).astype(np.float32),
               "label": np.array([0, 3])})
    assert np.abs(prog.grads["a.weight"]).max() > 0


# ---- arithmetic with constants, Gemm, MatMul, Pad, ConvTranspose, hard activations --------
def _net(tmp_path, nodes, shape, inits=(), opset=17):
    """A graph from x of `shape` to a 2-D y, whose sizes shape inference fills in."""
    return _save(tmp_path / "net.onnx", nodes, [_f32("x", list(shape))],
                 [_f32("y", ["a", "b"])], inits, opset)


def _x(shape, seed=3):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_input_normalisation_sub_then_div_is_bias_then_scale(tmp_path):
    """(x - mean) / std with per-channel constants, as torchvision's transforms are exported
    inside a model, and a scalar division (x / 255)."""
    nodes = [helper.make_node("Sub", ["x", "mean"], ["a"]),
             helper.make_node("Div", ["a", "std"], ["b"]),
             helper.make_node("Div", ["b", "k"], ["c"]),
             helper.make_node("Sub", ["one", "c"], ["d"]),
             helper.make_node("Sub", ["d", "c"], ["e"]),
             helper.make_node("Add", ["e", "shift"], ["f"]),
             helper.make_node("Flatten", ["f"], ["y"])]
    inits = [_init("mean", np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)),
             _init("std", np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1)),
             _init("k", 255.0), _init("one", [1.0]), _init("shift", [[[0.5]], [[-1]], [[2]]])]
    net = _compare(_net(tmp_path, nodes, (2, 3, 4, 4), inits), _x((2, 3, 4, 4)))
    assert [layer.op for layer in net.layers][:6] == ["bias", "scale", "scale", "scale",
                                                      "add", "bias"]


@pytest.mark.parametrize("attrs", [dict(transB=1), dict(transA=1), dict(alpha=0.5, beta=2.0),
                                   dict(transA=1, transB=1, alpha=-1.5, beta=0.0)],
                         ids=["transB", "transA", "alpha-beta", "all"])
def test_gemm_variants_match_onnxruntime(tmp_path, attrs):
    rng = np.random.default_rng(4)
    a_shape = (5, 2) if attrs.get("transA") else (2, 5)
    b = rng.standard_normal((3, 5) if attrs.get("transB") else (5, 3))
    nodes = [helper.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["y"], **attrs)]
    path = _net(tmp_path, nodes, a_shape, [_init("fc.weight", b),
                                           _init("fc.bias", rng.standard_normal(3))])
    net = _compare(path, _x(a_shape))
    assert ("transpose" in [layer.op for layer in net.layers]) == bool(attrs.get("transA"))


def test_matmul_with_a_constant_on_either_side_matches_onnxruntime(tmp_path):
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("MatMul", ["x", "right"], ["a"]),     # [4, 6] @ [6, 3]
             helper.make_node("MatMul", ["left", "a"], ["y"])]      # [2, 4] @ [4, 3]
    path = _net(tmp_path, nodes, (4, 6), [_init("right", rng.standard_normal((6, 3))),
                                          _init("left", rng.standard_normal((2, 4)))])
    _compare(path, _x((4, 6)))


def test_squeeze_and_unsqueeze_of_computed_tensors_match_onnxruntime(tmp_path):
    i64 = numpy_helper.from_array(np.asarray([2, 3], np.int64), "axes")
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]),
             helper.make_node("Squeeze", ["g", "axes"], ["s"]),
             helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("Unsqueeze", ["r", "axes"], ["u"]),
             helper.make_node("Flatten", ["u"], ["y"])]
    net = _compare(_net(tmp_path, nodes, (2, 3, 4, 4), [i64]), _x((2, 3, 4, 4)))
    assert [layer.op for layer in net.layers][:4] == ["global_avgpool", "reshape", "relu",
                                                      "reshape"]


@pytest.mark.parametrize("opset", [9, 13, 18])
def test_constant_pad_matches_onnxruntime(tmp_path, opset):
    pads = [0, 0, 1, 2, 0, 0, 3, 0]
    if opset == 9:
        node = helper.make_node("Pad", ["x"], ["p"], pads=pads)
        inits = []
    elif opset == 13:
        node = helper.make_node("Pad", ["x", "pads", "zero"], ["p"])
        inits = [numpy_helper.from_array(np.asarray(pads, np.int64), "pads"), _init("zero", 0)]
    else:   # the axes input: only H and W given
        node = helper.make_node("Pad", ["x", "pads", "", "axes"], ["p"])
        inits = [numpy_helper.from_array(np.asarray([1, 2, 3, 0], np.int64), "pads"),
                 numpy_helper.from_array(np.asarray([2, 3], np.int64), "axes")]
    nodes = [node, helper.make_node("Flatten", ["p"], ["y"])]
    net = _compare(_net(tmp_path, nodes, (2, 3, 4, 5), inits, opset), _x((2, 3, 4, 5)))
    assert net.layers[0].op == "pad" and net.layers[0].out.shape == (2, 3, 8, 7)


@pytest.mark.parametrize("attrs", [dict(strides=[2, 2]), dict(strides=[2, 1], pads=[1, 0, 1, 0]),
                                   dict(group=2, dilations=[1, 2])])
def test_conv_transpose_matches_onnxruntime(tmp_path, attrs):
    rng = np.random.default_rng(6)
    g = attrs.get("group", 1)
    nodes = [helper.make_node("ConvTranspose", ["x", "up.weight", "up.bias"], ["u"], **attrs),
             helper.make_node("Flatten", ["u"], ["y"])]
    path = _net(tmp_path, nodes, (2, 4, 3, 4), [_init("up.weight", rng.standard_normal(
        (4, 3, 3, 3))), _init("up.bias", rng.standard_normal(3 * g))])
    net = _compare(path, _x((2, 4, 3, 4)))
    assert net.layer("up").op == "deconv2d"


def test_hard_sigmoid_and_hard_swish_match_onnxruntime(tmp_path):
    nodes = [helper.make_node("HardSigmoid", ["x"], ["a"], alpha=0.3, beta=0.4),
             helper.make_node("HardSwish", ["x"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    x = _x((3, 8), 7) * 4     # across both bends of each
    _compare(_net(tmp_path, nodes, (3, 8)), x)


# ---- BatchNormalization's training_mode --------------------------------------------------
def _bn_model(tmp_path, training_mode: int) -> str:
    rng = np.random.default_rng(8)
    nodes = [helper.make_node("BatchNormalization", ["x", "bn.weight", "bn.bias",
                                                     "bn.running_mean", "bn.running_var"],
                              ["b", "mean", "var"][:1 + 2 * training_mode],
                              training_mode=training_mode, name="/bn/BatchNorm"),
             helper.make_node("Flatten", ["b"], ["y"])]
    inits = [_init("bn.weight", rng.uniform(0.5, 1.5, 3)), _init("bn.bias", [0.1, -0.2, 0.3]),
             _init("bn.running_mean", [1.0, -1.0, 0.5]),
             _init("bn.running_var", [2.0, 0.5, 1.5])]
    return _save(tmp_path / f"bn{training_mode}.onnx", nodes, [_f32("x", [4, 3, 2, 2])],
                 [_f32("y", ["a", "b"])], inits, opset=15)


@pytest.mark.parametrize("training_mode", [0, 1])
def test_batchnorm_training_mode_is_told_and_matches_the_forward_it_names(
        tmp_path, capsys, training_mode):
    from bwplan.cli.main import main
    path = _bn_model(tmp_path, training_mode)
    assert main(["explain", path]) == 0
    said = "have training_mode=1 (/bn/BatchNorm)" in capsys.readouterr().out
    assert said == bool(training_mode)
    x = _x((4, 3, 2, 2), 9) * 2 + 1
    want = ort.InferenceSession(path).run(None, {"x": x})[0]
    imported = import_onnx(path)
    prog = bwplan.compile(path)
    got = prog.forward({"x": x, "label": np.zeros(4, np.int64)}, outputs=imported.outputs,
                       training=bool(training_mode))[imported.outputs[0]]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_same_padded_net_converts_to_a_bw_file_that_builds_the_same_net(tmp_path, capsys):
    from bwplan.cli.main import main
    from bwplan.frontend.load import load
    rng = np.random.default_rng(10)
    nodes = [helper.make_node("Sub", ["x", "mean"], ["n"]),
             helper.make_node("Conv", ["n", "a.weight"], ["c"], auto_pad="SAME_UPPER",
                              strides=[2, 2], name="/a/Conv"),
             helper.make_node("Pad", ["c", "pads"], ["p"]),
             helper.make_node("ConvTranspose", ["p", "b.weight"], ["d"], strides=[2, 2]),
             helper.make_node("HardSwish", ["d"], ["h"]),
             helper.make_node("GlobalAveragePool", ["h"], ["g"]),
             helper.make_node("Flatten", ["g"], ["y"])]
    inits = [_init("mean", np.array([0.5, 0.25, 0.0]).reshape(3, 1, 1)),
             _init("a.weight", rng.standard_normal((4, 3, 3, 3))),
             numpy_helper.from_array(np.asarray([0, 0, 1, 0, 0, 0, 0, 1], np.int64), "pads"),
             _init("b.weight", rng.standard_normal((4, 2, 2, 2)))]
    path = _save(tmp_path / "same.onnx", nodes, [_f32("x", [2, 3, 8, 8])], [_f32("y", [2, 2])],
                 inits)
    out = tmp_path / "same.bw"
    assert main(["convert", path, "-o", str(out)]) == 0
    a, b = load(str(out)), import_onnx(path).net
    assert [(x.name, x.op, x.out) for x in a.layers] == [(x.name, x.op, x.out) for x in b.layers]
    assert {"a.pad", "a"} <= {x.name for x in a.layers}
    _compare(path, _x((2, 3, 8, 8)))


@pytest.mark.parametrize("op,kernel,size", [("MaxPool", 2, 7), ("MaxPool", 3, 8),
                                            ("AveragePool", 3, 8), ("AveragePool", 2, 6)])
def test_same_upper_pools_match_onnxruntime(tmp_path, op, kernel, size):
    """Keras's 'same' pools: the odd cell of padding at the end, which only completes the last
    window, is bwplan's ceil mode (no pad layer: a pool's padding is not zeros)."""
    nodes = [helper.make_node(op, ["x"], ["p"], kernel_shape=[kernel, kernel], strides=[2, 2],
                              auto_pad="SAME_UPPER"),
             helper.make_node("Flatten", ["p"], ["y"])]
    net = _compare(_net(tmp_path, nodes, (2, 3, size, size)), _x((2, 3, size, size)) - 2)
    assert net.layers[0].op == {"MaxPool": "maxpool", "AveragePool": "avgpool"}[op]


def test_gelu_and_the_erf_pattern_older_exporters_write_match_onnxruntime(tmp_path):
    nodes = [helper.make_node("Gelu", ["x"], ["a"]),
             helper.make_node("Div", ["x", "sqrt2"], ["d"]),         # torch's GELU, opset < 20
             helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["f"]),
             helper.make_node("Mul", ["x", "f"], ["g"]),
             helper.make_node("Mul", ["g", "half"], ["b"]),
             helper.make_node("Sub", ["a", "b"], ["c"]),
             helper.make_node("Add", ["a", "c"], ["y"])]
    inits = [_init("sqrt2", np.sqrt(2.0)), _init("one", 1.0), _init("half", 0.5)]
    net = _compare(_net(tmp_path, nodes, (3, 8), inits, opset=20), _x((3, 8), 11) * 2)
    assert "erf" in [layer.op for layer in net.layers]


# ---- ConvTranspose: uneven pads, output_padding, output_shape, auto_pad -------------------
CONV_TRANSPOSES = [  # attributes on a [2, 4, 4, 5] input, 3 x 3 kernel
    dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),   # PyTorch's usual
    dict(strides=[2, 2], output_padding=[1, 1]),          # past the full output: zeros+bias
    dict(strides=[2, 3], pads=[0, 1, 2, 0]),
    dict(strides=[2, 2], pads=[2, 0, 0, 1], output_padding=[1, 0]),
    dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(strides=[2, 2], auto_pad="SAME_LOWER"),
    dict(strides=[3, 2], auto_pad="SAME_UPPER"),
    dict(strides=[2, 2], auto_pad="VALID", output_padding=[1, 0]),
    dict(strides=[2, 2], output_shape=[8, 9]),
    dict(strides=[2, 2], output_shape=[7, 10], auto_pad="SAME_UPPER"),
    dict(strides=[2, 2], output_shape=[10, 10]),
    # SAME with output_padding: in * stride cells, as onnxruntime and onnx's reference
    # compute them (onnx's shape inference says in * stride + output_padding)
    dict(strides=[3, 2], auto_pad="SAME_LOWER", output_padding=[1, 1]),
    dict(strides=[2, 2], auto_pad="SAME_UPPER", output_padding=[1, 0]),
    dict(strides=[3, 3], auto_pad="SAME_UPPER", output_padding=[2, 1]),
    dict(strides=[2, 3], auto_pad="SAME_LOWER", output_padding=[0, 2]),
]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("attrs", CONV_TRANSPOSES, ids=lambda a: "-".join(
    f"{k}{v}" for k, v in a.items()).replace(" ", ""))
def test_conv_transpose_padding_matches_onnxruntime(tmp_path, attrs, bias):
    rng = np.random.default_rng(12)
    nodes = [helper.make_node("ConvTranspose", ["x", "up.weight"] + ["up.bias"] * bias, ["u"],
                              **attrs),
             helper.make_node("Flatten", ["u"], ["y"])]
    inits = [_init("up.weight", rng.standard_normal((4, 3, 3, 3)))]
    inits += [_init("up.bias", rng.standard_normal(3))] * bias
    net = _compare(_net(tmp_path, nodes, (2, 4, 4, 5), inits), _x((2, 4, 4, 5)))
    ops = {layer.name: layer.op for layer in net.layers}
    assert ops["up"] == "deconv2d"
    # the bias moves after the zeros only where zeros are added
    assert ("up.shift" in ops) == (bias and "up.pad" in ops), ops


def test_conv_transpose_same_with_output_padding_feeds_the_right_size_on(tmp_path):
    """SAME_LOWER with output_padding: onnxruntime writes in * stride cells where ONNX's shape
    inference says in * stride + output_padding; the layers after it (a Conv whose SAME
    padding depends on its input's size) see onnxruntime's size."""
    rng = np.random.default_rng(21)
    nodes = [helper.make_node("ConvTranspose", ["x", "up.weight"], ["u"], strides=[3, 2],
                              auto_pad="SAME_LOWER", output_padding=[1, 1]),
             helper.make_node("Conv", ["u", "k.weight"], ["c"], auto_pad="SAME_UPPER",
                              strides=[2, 2], name="/k/Conv"),
             helper.make_node("Flatten", ["c"], ["y"])]
    path = _net(tmp_path, nodes, (2, 4, 4, 5), [
        _init("up.weight", rng.standard_normal((4, 3, 3, 3))),
        _init("k.weight", rng.standard_normal((2, 3, 2, 2)))])
    net = _compare(path, _x((2, 4, 4, 5)))
    assert {layer.name: layer.out.shape for layer in net.layers}["k"] == (2, 2, 6, 5)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_conv_transpose_with_output_padding_matches_ort_and_torch(tmp_path, dynamo):
    """nn.ConvTranspose2d(output_padding=1), exported by either exporter: the forward as in
    onnxruntime, one step's gradients as in PyTorch (float64)."""
    import warnings
    torch = pytest.importorskip("torch")
    if dynamo:
        pytest.importorskip("onnxscript")

    class Up(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.up = torch.nn.ConvTranspose2d(4, 5, 3, stride=2, padding=1, output_padding=1)
            self.head = torch.nn.ConvTranspose2d(5, 6, 2, stride=2, output_padding=1,
                                                 bias=False)

        def forward(self, x):
            y = self.head(torch.relu(self.up(self.conv(x))))
            return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1)

    torch.manual_seed(0)
    module, path = Up(), str(tmp_path / "up.onnx")
    x = _x((2, 3, 5, 6), 13)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.tensor(x),), path, dynamo=dynamo,
                          input_names=["input"], output_names=["output"])
    want = ort.InferenceSession(path).run(None, {"input": x})[0]
    imported = import_onnx(path)
    prog = bwplan.compile(path)
    y = np.array([1, 4])
    got = prog.forward({"input": x, "label": y}, outputs=imported.outputs)
    np.testing.assert_allclose(got[imported.outputs[0]], want, atol=1e-5, rtol=0)
    assert {"up.crop_h", "up.crop_w", "head.pad"} <= {layer.name for layer in imported.net.layers}
    prog.set_optimizer(lr=0.0, momentum=0.0)
    prog.step({"input": x, "label": y})
    m = module.double()
    torch.nn.functional.cross_entropy(m(torch.tensor(x, dtype=torch.float64)),
                                      torch.tensor(y)).backward()
    grads = {n: p.grad.numpy() for n, p in m.named_parameters()}
    assert set(prog.grads) == set(grads)
    for name, g in grads.items():
        assert np.linalg.norm(prog.grads[name] - g) / np.linalg.norm(g) < 1e-4, name


POOLS = [  # (op, auto_pad, kernel, stride, count_include_pad, the layers it becomes)
    # the odd cell at the start: padding it on both sides adds no window here
    ("MaxPool", "SAME_LOWER", 3, 2, 0, ["maxpool"]),
    # ... and with stride 1 one window too many, at the end: sliced off
    ("MaxPool", "SAME_LOWER", 2, 1, 0, ["maxpool", "slice", "slice"]),
    # the odd cell at the end with stride 1: the first window is sliced off
    ("MaxPool", "SAME_UPPER", 2, 1, 0, ["maxpool", "slice", "slice"]),
    ("MaxPool", "VALID", 3, 2, 0, ["maxpool"]),
    ("AveragePool", "SAME_LOWER", 2, 2, 0, ["avgpool"]),
    ("AveragePool", "SAME_UPPER", 2, 1, 0, ["avgpool", "slice", "slice"]),
    # an average that counts the padding: the extra padding is zeros, a pad layer
    ("AveragePool", "SAME_LOWER", 3, 2, 1, ["pad", "avgpool"]),
    ("AveragePool", "SAME_UPPER", 2, 2, 1, ["pad", "avgpool"]),
    ("AveragePool", "VALID", 2, 2, 1, ["avgpool"]),
]


@pytest.mark.parametrize("op,auto,kernel,stride,cip,layers", POOLS)
def test_auto_pad_pools_match_onnxruntime(tmp_path, op, auto, kernel, stride, cip, layers):
    """Every auto_pad mode, on an input whose sizes (7 x 8) make the padding odd on one axis
    and even on the other; SAME_LOWER's odd cell is at the start."""
    attrs = dict(kernel_shape=[kernel, kernel], strides=[stride, stride], auto_pad=auto)
    if op == "AveragePool":
        attrs["count_include_pad"] = cip
    nodes = [helper.make_node(op, ["x"], ["p"], **attrs),
             helper.make_node("Flatten", ["p"], ["y"])]
    net = _compare(_net(tmp_path, nodes, (2, 3, 7, 8)), _x((2, 3, 7, 8), 14) - 1, atol=1e-4)
    got = [layer.op for layer in net.layers][:-2]          # then flatten and the loss
    assert sorted(got) == sorted(layers), got


def test_a_same_lower_pool_passes_the_gradient_back(tmp_path):
    """Through the slices after the pool: the conv before it gets the gradient a central
    difference of the loss gives."""
    rng = np.random.default_rng(15)
    nodes = [helper.make_node("Conv", ["x", "a.weight"], ["c"], pads=[1, 1, 1, 1],
                              name="/a/Conv"),
             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[3, 3], strides=[2, 2],
                              auto_pad="SAME_LOWER"),
             helper.make_node("GlobalAveragePool", ["p"], ["g"]),
             helper.make_node("Flatten", ["g"], ["y"])]
    path = _save(tmp_path / "p.onnx", nodes, [_f32("x", [2, 2, 6, 5])], [_f32("y", [2, 3])],
                 [_init("a.weight", rng.standard_normal((3, 2, 3, 3)))])
    batch = {"x": _x((2, 2, 6, 5), 16), "label": np.array([0, 2])}
    prog = bwplan.compile(path)
    prog.set_optimizer(lr=0.0, momentum=0.0)
    prog.step(batch)
    grad = prog.grads["a.weight"].copy()
    w, eps = prog.params["a.weight"], 1e-2
    for idx in [(0, 0, 0, 0), (1, 1, 2, 1), (2, 0, 1, 2)]:
        old = w[idx]
        losses = []
        for v in (old + eps, old - eps):
            w[idx] = v
            losses.append(float(prog.forward(batch)["loss"]))
        w[idx] = old
        assert abs((losses[0] - losses[1]) / (2 * eps) - grad[idx]) < 1e-3, idx


# ---- the activations of MobileNet v3, EfficientNet and transformers -----------------------
@pytest.mark.parametrize("dynamo,opset", [(False, 14), (False, 20), (True, 18)],
                         ids=["torchscript-14", "torchscript-20", "dynamo-18"])
def test_torch_activations_match_ort_and_torch(tmp_path, dynamo, opset):
    """SiLU (Sigmoid and Mul), GELU both ways (opset 20's Gelu node; before it the exporters'
    Erf and Tanh patterns, the dynamo one with Pow), HardSwish and HardSigmoid (opset 14):
    the forward as in onnxruntime, one step's gradients as in PyTorch."""
    import warnings
    torch = pytest.importorskip("torch")
    if dynamo:
        pytest.importorskip("onnxscript")
    F = torch.nn.functional

    class Acts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(6, 8)
            self.fc2 = torch.nn.Linear(8, 4)

        def forward(self, x):
            h = self.fc1(x)
            h = (F.silu(h) + F.gelu(h, approximate="tanh") + F.gelu(h) + F.hardswish(h)
                 + F.hardsigmoid(h))
            return self.fc2(h)

    torch.manual_seed(1)
    module, path = Acts(), str(tmp_path / "acts.onnx")
    x = _x((5, 6), 17) * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.tensor(x),), path, dynamo=dynamo, opset_version=opset,
                          input_names=["input"], output_names=["output"])
    kinds = {n.op_type for n in onnx.load(path).graph.node}
    assert {"HardSwish", "HardSigmoid", "Sigmoid"} <= kinds
    assert ("Gelu" in kinds) == (opset >= 20) and ("Pow" in kinds) == (dynamo and opset < 20)
    want = ort.InferenceSession(path).run(None, {"input": x})[0]
    imported = import_onnx(path)
    prog = bwplan.compile(path)
    y = np.array([0, 1, 2, 3, 1])
    got = prog.forward({"input": x, "label": y}, outputs=imported.outputs)
    np.testing.assert_allclose(got[imported.outputs[0]], want, atol=1e-5, rtol=0)
    prog.set_optimizer(lr=0.0, momentum=0.0)
    prog.step({"input": x, "label": y})
    m = module.double()
    F.cross_entropy(m(torch.tensor(x, dtype=torch.float64)), torch.tensor(y)).backward()
    grads = {n: p.grad.numpy() for n, p in m.named_parameters()}
    # the older exporters' constants (GELU's 0.5, 1, 0.044715) are parameters of their own
    # Mul and Add layers (docs/onnx.md); the module's are compared
    assert set(grads) <= set(prog.grads)
    for name, g in grads.items():
        assert np.linalg.norm(prog.grads[name] - g) / np.linalg.norm(g) < 1e-4, name


def test_a_squeeze_and_excitation_gate_is_scale_mul_and_matches_onnxruntime(tmp_path):
    """x [N, C, H, W] times its gate [N, C, 1, 1], either side of the Mul: the gate reshaped
    to [N, C], then scale_mul at axis 0."""
    rng = np.random.default_rng(18)
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]),
             helper.make_node("Conv", ["g", "se.weight", "se.bias"], ["c"], name="/se/Conv"),
             helper.make_node("Sigmoid", ["c"], ["s"]),
             helper.make_node("Mul", ["x", "s"], ["a"], name="/se/Mul"),
             helper.make_node("Mul", ["s", "a"], ["b"], name="/se2/Mul"),
             helper.make_node("Flatten", ["b"], ["y"])]
    inits = [_init("se.weight", rng.standard_normal((4, 4, 1, 1))),
             _init("se.bias", rng.standard_normal(4))]
    net = _compare(_net(tmp_path, nodes, (2, 4, 3, 3), inits), _x((2, 4, 3, 3), 19))
    layer = net.layer("se.mul")
    assert layer.op == "scale_mul" and net.layer("se.mul.gate").out.shape == (2, 4)


def test_slice_split_and_split_to_sequence_match_onnxruntime(tmp_path):
    """The chunks of ShuffleNet: Slice with bounds from Shape arithmetic (the TorchScript
    exporter's chunk, whose shapes ONNX's inference only knows once the bounds are folded),
    Split, and SplitToSequence with SequenceAt (the dynamo exporter's)."""
    i64 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "one"], ["c"], axis=0),
             helper.make_node("Div", ["c", "two"], ["half"]),
             helper.make_node("Unsqueeze", ["half", "axis0"], ["ends"]),
             helper.make_node("Slice", ["x", "zeros", "ends", "ones"], ["a"]),     # [:, :4]
             helper.make_node("Slice", ["x", "ends", "big", "ones"], ["b"]),       # [:, 4:]
             helper.make_node("Slice", ["a", "minus", "big", "three"], ["a2"]),    # [..., -2:]
             helper.make_node("Split", ["b", "sizes"], ["s0", "s1"], axis=1),
             helper.make_node("SplitToSequence", ["a", "two"], ["seq"], axis=1),
             helper.make_node("SequenceAt", ["seq", "one"], ["q1"]),
             helper.make_node("SequenceAt", ["seq", "zero"], ["q0"]),
             helper.make_node("Concat", ["s1", "q1", "s0", "q0"], ["cat"], axis=1),
             helper.make_node("Relu", ["cat"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("GlobalMaxPool", ["a2"], ["m"]),
             helper.make_node("Flatten", ["g"], ["fg"]),
             helper.make_node("Flatten", ["m"], ["fm"]),
             helper.make_node("Concat", ["fg", "fm"], ["y"], axis=1)]
    inits = [i64("one", 1), i64("two", 2), i64("zero", 0), i64("axis0", [0]),
             i64("zeros", [0]), i64("ones", [1]), i64("big", [2 ** 62]), i64("minus", [-2]),
             i64("three", [3]), i64("sizes", [1, 3])]
    net = _compare(_net(tmp_path, nodes, (2, 8, 3, 5), inits), _x((2, 8, 3, 5), 20))
    assert [layer.op for layer in net.layers].count("slice") == 2 + 1 + 2 + 2


def test_a_sequence_position_past_the_end_is_reported(tmp_path):
    from bwplan.errors import BwError
    i64 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    nodes = [helper.make_node("SplitToSequence", ["x", "two"], ["seq"], axis=1),
             helper.make_node("SequenceAt", ["seq", "five"], ["q"], name="pick"),
             helper.make_node("Flatten", ["q"], ["y"])]
    path = _net(tmp_path, nodes, (2, 4, 3, 3), [i64("two", 2), i64("five", 5)])
    with pytest.raises(BwError, match=r"node 'pick' \(SequenceAt.*'seq#5' is not computed"):
        import_onnx(path)


def test_one_constant_in_two_slots_is_a_copy_per_slot(tmp_path):
    """The dynamo exporter's optimizer merges equal constants: a fresh BN's scale and
    running variance (ones) arrive as one initializer. The same slot of two layers stays one
    shared parameter (tied weights); another slot gets its own copy."""
    nodes = [helper.make_node("BatchNormalization", ["x", "ones", "zeros", "zeros", "ones"],
                              ["a"], training_mode=0, name="/bn1/BatchNorm"),
             helper.make_node("BatchNormalization", ["a", "ones", "zeros", "zeros", "ones"],
                              ["b"], training_mode=0, name="/bn2/BatchNorm"),
             helper.make_node("Flatten", ["b"], ["y"])]
    inits = [_init("ones", np.ones(3)), _init("zeros", np.zeros(3))]
    net = _compare(_net(tmp_path, nodes, (2, 3, 2, 2), inits, opset=15), _x((2, 3, 2, 2), 21))
    bn1, bn2 = net.layer("bn1"), net.layer("bn2")
    by_slot = lambda layer: {u.slot: u.param for u in layer.params}  # noqa: E731
    assert by_slot(bn1)["weight"] == by_slot(bn2)["weight"] != by_slot(bn1)["var"]
    assert by_slot(bn1)["var"] == by_slot(bn2)["var"]


def test_selu_with_its_default_and_its_own_constants_matches_onnxruntime(tmp_path):
    nodes = [helper.make_node("Selu", ["x"], ["a"]),
             helper.make_node("Selu", ["a"], ["y"], alpha=0.5, gamma=2.0)]
    net = _compare(_net(tmp_path, nodes, (3, 8)), _x((3, 8), 5) * 2)
    selus = [dict(layer.attrs) for layer in net.layers if layer.op == "selu"]
    assert selus == [{"alpha": pytest.approx(1.6732632), "gamma": pytest.approx(1.0507010)},
                     {"alpha": 0.5, "gamma": 2.0}]


COUNTED_POOLS = [  # (kernel, stride, pads, ceil_mode): averages that count their padding
    (k, s, pads, ceil) for k, s in ((2, 2), (3, 2), (3, 3), (2, 3))
    for pads in ([1, 1, 1, 1], [0, 0, 1, 1], [1, 0, 0, 1], [1, 2, 2, 1], [0, 1, 0, 0])
    for ceil in (0, 1) if max(pads) < k and (ceil or pads[:2] != pads[2:])]


@pytest.mark.parametrize("kernel,stride,pads,ceil", COUNTED_POOLS)
def test_averages_counting_uneven_padding_or_ceil_match_onnxruntime(tmp_path, kernel, stride,
                                                                    pads, ceil):
    """count_include_pad=1 with ceil_mode, uneven pads or both, on 6 x 7 (the sizes make
    some last windows start in the end padding, which ONNX drops and shape inference keeps):
    the extra padding is a pad layer before the pool, the window ONNX drops is sliced off."""
    nodes = [helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[kernel, kernel],
                              strides=[stride, stride], pads=pads, ceil_mode=ceil,
                              count_include_pad=1),
             helper.make_node("Flatten", ["p"], ["y"])]
    net = _compare(_net(tmp_path, nodes, (2, 3, 6, 7)), _x((2, 3, 6, 7), 22) + 1, atol=1e-5)
    ops = [layer.op for layer in net.layers]
    assert ("pad" in ops) == (pads[:2] != pads[2:]), ops
