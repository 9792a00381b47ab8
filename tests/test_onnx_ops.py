"""ONNX ops beyond the first import, each checked against onnxruntime on a hand-built graph
(onnx.helper): Conv with asymmetric padding (explicit `pads` and every `auto_pad` mode, as
TensorFlow/Keras exports write them), which becomes a `pad` layer before the conv2d.
"""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import bwplan  # noqa: E402
from bwplan.onnx.importer import import_onnx  # noqa: E402


def _save(path, nodes, inputs, outputs, inits=(), opset=17) -> str:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, str(path))
    return str(path)


def _f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _init(name, value):
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


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
