"""The nine real architectures the `onnx` wheel ships (onnx/backend/test/data/light/),
run by bwplan's forward and by onnxruntime on the same random batch.

The files fill every weight with one value (ConstantOfShape), so every channel of a layer
holds the same number and a softmax over 1000 equal logits is 0.001 whatever the net does.
To make the comparison say something, the weights are drawn at random first, at the shapes
the file gives (He-scaled conv and Gemm weights, batch-norm variances and scales in
[0.5, 1.5]): channels then differ, so grouped convolutions, ShuffleNet's channel shuffle,
concatenation order and the classifier's layout all show. Both the logits (the input of the
final Softmax) and the model's output must agree within 1e-4 of their largest magnitude.

All run at the files' own size (1x3x224x224). Four run by default (Inception v1, ShuffleNet,
SqueezeNet, DenseNet-121: about 10 s together on two cores); the other five (ResNet-50,
Inception v2, and AlexNet, ZFNet and VGG-19 with 60-140 M weights each: about 2 minutes and
a few GB of memory) run when BWPLAN_TEST_ONNX_LIGHT=all, as .ci/run sets it for the suite.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import helper, numpy_helper  # noqa: E402

import bwplan  # noqa: E402
from bwplan.onnx.importer import import_onnx  # noqa: E402

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light")
DEFAULT = ("densenet121", "inception_v1", "shufflenet", "squeezenet")
ALL = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
       "shufflenet", "squeezenet", "vgg19", "zfnet512")
RTOL = 1e-4


def _selected() -> list:
    run_all = os.environ.get("BWPLAN_TEST_ONNX_LIGHT", "") == "all"
    return [pytest.param(name, marks=() if run_all or name in DEFAULT else pytest.mark.skip(
        reason="a large net: set BWPLAN_TEST_ONNX_LIGHT=all")) for name in ALL]


def _random_weight(rng, shape, op: str, slot: int, node) -> np.ndarray:
    shape = tuple(int(d) for d in shape)
    if op == "Conv" and slot == 1:
        return rng.standard_normal(shape) * np.sqrt(2.0 / max(1, int(np.prod(shape[1:]))))
    if op == "Gemm" and slot == 1:
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        fan_in = shape[1] if trans_b else shape[0]
        return rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)
    if (op == "BatchNormalization" and slot in (1, 4)) or op == "Mul":
        return rng.uniform(0.5, 1.5, shape)
    return rng.standard_normal(shape) * 0.1      # biases, shifts, means


def randomized(path: str, out_dir, seed: int = 0) -> tuple[str, str | None]:
    """A copy of the model with every ConstantOfShape weight replaced by random values, and
    its Softmax's input added as a graph output (None when the model ends otherwise)."""
    model = onnx.load(path)
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    users = {}
    for node in g.node:
        for k, name in enumerate(node.input):
            users.setdefault(name, []).append((node, k))
    rng = np.random.default_rng(seed)
    kept, added = [], []
    for node in g.node:
        out = node.output[0]
        if node.op_type == "ConstantOfShape" and node.input[0] in inits and users.get(out):
            user, slot = users[out][0]
            value = _random_weight(rng, inits[node.input[0]], user.op_type, slot, user)
            added.append(numpy_helper.from_array(value.astype(np.float32), out))
            continue
        kept.append(node)
    del g.node[:]
    g.node.extend(kept)
    g.initializer.extend(added)
    if model.ir_version < 4:   # these files' IR version wants initializers among the inputs
        g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                       for t in added)
    logits = None
    last = next((n for n in g.node if n.output[0] == g.output[0].name), None)
    if last is not None and last.op_type == "Softmax":
        logits = last.input[0]
        g.output.append(helper.make_empty_tensor_value_info(logits))
    target = os.path.join(str(out_dir), os.path.basename(path))
    onnx.save(model, target)
    return target, logits


def _close(got: np.ndarray, want: np.ndarray) -> float:
    assert got.size == want.size, (got.shape, want.shape)
    return float(np.abs(got.reshape(want.shape) - want).max() / np.abs(want).max())


@pytest.mark.parametrize("name", _selected())
def test_light_model_forward_matches_onnxruntime(name, tmp_path):
    path, logits = randomized(os.path.join(LIGHT_DIR, f"light_{name}.onnx"), tmp_path)
    session = ort.InferenceSession(path)
    feed = session.get_inputs()[0]
    x = np.random.default_rng(1).standard_normal(feed.shape).astype(np.float32)
    wanted = session.run(None, {feed.name: x})
    # the logits the model outputs too is a second graph output: bwplan imports one,
    # so the copy without it (the file's own output list) is what bwplan reads
    only_one = onnx.load(path)
    del only_one.graph.output[1:]
    onnx.save(only_one, path)
    imported = import_onnx(path)
    out = imported.outputs[0]
    fetch = [out]
    last = imported.net.layer(out)
    if logits is not None:
        assert last.op == "softmax"
        fetch.append(last.inputs[0].src)
    prog = bwplan.compile(path)
    got = prog.forward({feed.name: x, "label": np.zeros(x.shape[0], np.int64)},
                       outputs=fetch)
    errors = {"output": _close(got[out], wanted[0])}
    if logits is not None:
        spread = float(wanted[1].std())
        assert spread > 1e-3 * np.abs(wanted[1]).max(), "the logits do not differ"
        errors["logits"] = _close(got[fetch[1]], wanted[1])
    assert max(errors.values()) < RTOL, errors
