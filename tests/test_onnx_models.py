"""ONNX import checked against references nobody here wrote: torchvision's architectures
(tests/onnx_models.py, small), exported by PyTorch's own exporters, run by onnxruntime and
trained by PyTorch.

For each model:
* the file imports and `bwplan explain --freeze` plans it, with frozen layers named as in
  PyTorch;
* an eval-mode export with a dynamic batch runs in bwplan's forward as in onnxruntime, to
  1e-4 of the output's scale, at the batch given by --input-shape and at another one;
* a training-mode export (batch normalisation kept, dropout p = 0) gives, for one step with
  a frozen part, the same gradients as PyTorch's autograd on the same module, loss and
  freezing (float64 in torch; relative error 1e-4, see _compare_gradients for gradients
  that are 0 in exact arithmetic), and the same set of parameters with a gradient; a
  frozen BN runs on its stored statistics, as `module.eval()` in PyTorch.

The dynamo exporter (it needs onnxscript) is checked on resnet18 in training mode.
"""
from __future__ import annotations

import copy
import fnmatch
import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch loads: see torch_oracle
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

import bwplan  # noqa: E402
from bwplan.cli.main import main  # noqa: E402
from bwplan.onnx.importer import import_onnx  # noqa: E402
import onnx_models  # noqa: E402

BATCH = 2
# model -> the --freeze glob the checks use (PyTorch module names)
FREEZE = {"mlp": "fc1", "resnet18": "layer1.*", "resnet50": "layer2.*",
          "mobilenet_v2": "features.1.*", "squeezenet1_0": "features.3.*",
          "vgg11": "features.0"}
RTOL = 1e-4


def _export(path, name, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return onnx_models.export(name, str(path), batch=BATCH, **kw)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> {kind: (path, torch module)}: one eval export with a dynamic batch and one
    training export with a static batch per model, made once for the module."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for name in onnx_models.MODELS:
        out[name] = {
            "eval": (root / f"{name}.eval.onnx",
                     _export(root / f"{name}.eval.onnx", name, dynamic=True)),
            "train": (root / f"{name}.train.onnx",
                      _export(root / f"{name}.train.onnx", name, train=True)),
        }
    return out


def _shape(name: str, batch: int = BATCH) -> tuple[int, ...]:
    spec = onnx_models.MODELS.get(name) or onnx_models.MORE_MODELS[name]
    return (batch,) + spec[1]


def _arg(name: str, batch: int = BATCH) -> str:
    return "input=" + ",".join(map(str, _shape(name, batch)))


def _batch(name: str, batch: int = BATCH, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(_shape(name, batch)).astype(np.float32)
    y = rng.integers(0, 5, size=batch).astype(np.int64)
    return x, y


@pytest.mark.parametrize("name", sorted(onnx_models.MODELS))
@pytest.mark.parametrize("kind", ["eval", "train"])
def test_imports_and_explains_with_freeze(exported, name, kind, capsys):
    path = exported[name][kind][0]
    assert main(["explain", str(path), "--input-shape", _arg(name),
                 "--freeze", FREEZE[name]]) == 0
    text = capsys.readouterr().out
    frozen = [line.split()[0] for line in text.splitlines()
              if f"frozen by --freeze '{FREEZE[name]}'" in line]
    assert frozen and all(fnmatch.fnmatchcase(n, FREEZE[name]) for n in frozen), text
    assert "assumed softmax_cross_entropy" in text
    if kind == "train" and name not in ("mlp", "squeezenet1_0", "vgg11"):
        assert "BatchNormalization node(s)" in text
    if kind == "eval" and name in ("resnet18", "resnet50", "mobilenet_v2"):
        assert "folded into the convolutions" in text


@pytest.mark.parametrize("name", sorted(onnx_models.MODELS))
def test_forward_matches_onnxruntime_at_two_batch_sizes(exported, name):
    path = exported[name]["eval"][0]
    session = ort.InferenceSession(str(path))
    imported = import_onnx(str(path), {"input": _shape(name)})
    prog = bwplan.compile(str(path), onnx_options={"input_shapes": {"input": _shape(name)}})
    for batch in (BATCH, 3):    # 3: the dynamic batch at a size the import did not see
        x, y = _batch(name, batch)
        want = session.run(None, {"input": x})[0]
        got = prog.forward({"input": x, "label": y}, outputs=imported.outputs)
        got = got[imported.outputs[0]]
        assert got.shape == want.shape
        err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
        assert err < RTOL, (name, batch, err)


def test_training_export_forward_matches_onnxruntime(exported):
    """A training-mode export normalises with batch statistics in onnxruntime too."""
    name = "resnet18"
    path = exported[name]["train"][0]
    x, y = _batch(name)
    want = ort.InferenceSession(str(path)).run(["output"], {"input": x})[0]
    prog = bwplan.compile(str(path))
    got = prog.forward({"input": x, "label": y}, outputs=["fc"], training=True)["fc"]
    assert np.abs(got - want).max() / np.abs(want).max() < RTOL


def torch_gradients(module, x, y, pattern: str) -> dict[str, np.ndarray]:
    """PyTorch's gradients of the mean cross-entropy, in float64, with the modules that
    `pattern` matches frozen: their parameters take no gradient and a frozen BatchNorm
    normalises with its running statistics (eval mode)."""
    m = copy.deepcopy(module).double().train()
    for mod_name, mod in m.named_modules():
        if mod_name and fnmatch.fnmatchcase(mod_name, pattern):
            for p in mod.parameters(recurse=False):
                p.requires_grad_(False)
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.eval()
    loss = torch.nn.functional.cross_entropy(m(torch.tensor(x, dtype=torch.float64)),
                                             torch.tensor(y))
    loss.backward()
    return {n: p.grad.numpy() for n, p in m.named_parameters() if p.grad is not None}


def _compare_gradients(prog, module, name: str, pattern: str) -> None:
    x, y = _batch(name)
    prog.set_optimizer(lr=0.0, momentum=0.0)
    prog.step({"input": x, "label": y})
    want = torch_gradients(module, x, y, pattern)
    assert set(prog.grads) == set(want), (sorted(prog.grads), sorted(want))
    # A gradient that is exactly 0 in exact arithmetic (a BN bias whose shift every later
    # batch-statistics BN removes, in MobileNet's projections) holds float32 noise: its
    # error is measured against 1e-4 of the norm of the whole step's gradient, i.e. an
    # absolute error of at most 1e-8 of it.
    floor = 1e-4 * np.sqrt(sum(float((g ** 2).sum()) for g in want.values()))
    for p, g in want.items():
        err = np.linalg.norm(prog.grads[p] - g) / max(np.linalg.norm(g), floor)
        assert err < RTOL, (name, p, err)


@pytest.mark.parametrize("name", sorted(onnx_models.MODELS))
def test_one_step_gradients_match_torch_with_freezing(exported, name):
    path, module = exported[name]["train"]
    prog = bwplan.compile(str(path), freeze=[FREEZE[name]])
    _compare_gradients(prog, module, name, FREEZE[name])


@pytest.fixture(scope="module")
def dynamo_exports(tmp_path_factory):
    pytest.importorskip("onnxscript")
    root = tmp_path_factory.mktemp("dynamo")
    path = root / "resnet18.dynamo.onnx"
    # one export only: each costs ~10 s of tracing
    return path, _export(path, "resnet18", train=True, dynamo=True, opset=18)


def test_dynamo_export_imports_runs_and_trains(dynamo_exports):
    path, module = dynamo_exports
    x, y = _batch("resnet18")
    want = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    imported = import_onnx(str(path))
    prog = bwplan.compile(str(path), freeze=["layer1.*"])
    # this exporter writes BatchNormalization without training_mode: inference in onnxruntime
    got = prog.forward({"input": x, "label": y}, outputs=imported.outputs)
    assert np.abs(got[imported.outputs[0]] - want).max() / np.abs(want).max() < RTOL
    # the exporter's zero conv biases are not parameters: the names are the module's
    assert "conv1.bias" not in prog.params and "bn1.running_mean" in prog.params
    _compare_gradients(prog, module, "resnet18", "layer1.*")


@pytest.mark.parametrize("opset", [13, 20])
def test_other_opsets_match_onnxruntime(tmp_path, opset):
    name = "mobilenet_v2"    # Clip's bounds, ReduceMean's axes and Reshape move with opsets
    path = tmp_path / f"m{opset}.onnx"
    _export(path, name, dynamic=True, opset=opset)
    x, y = _batch(name)
    want = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    imported = import_onnx(str(path), {"input": _shape(name)})
    prog = bwplan.compile(str(path), onnx_options={"input_shapes": {"input": _shape(name)}})
    got = prog.forward({"input": x, "label": y}, outputs=imported.outputs)
    assert np.abs(got[imported.outputs[0]] - want).max() / np.abs(want).max() < RTOL


# ---- more torchvision architectures, small (tests/onnx_models.py MORE_MODELS) -------------
# The TorchScript exporter's files are checked always; the dynamo exporter's (several
# seconds of tracing each) where BWPLAN_TEST_ONNX_LIGHT=all, as CI sets it, and only for the
# two models whose dynamo files take paths the others do not (shufflenet's chunk as
# Split/SplitToSequence, mobilenet_v3's Pow-free HardSwish and the squeeze-and-excitation
# gate), to keep the suite's time.
ALL = os.environ.get("BWPLAN_TEST_ONNX_LIGHT", "") == "all"
DYNAMO_CHECKED = ("mobilenet_v3_small", "shufflenet_v2_x0_5")


@pytest.mark.parametrize("name, dynamo", [
    *((name, False) for name in sorted(onnx_models.MORE_MODELS)),
    *((name, True) for name in DYNAMO_CHECKED)],
    ids=lambda v: {False: "torchscript", True: "dynamo"}.get(v, v) if isinstance(v, bool) else v)
def test_more_models_explain_run_and_train_as_ort_and_torch(tmp_path, capsys, name, dynamo):
    """A training-mode export (BN kept, dropout and stochastic depth at p = 0): `explain
    --freeze` freezes the PyTorch modules the glob names; the forward is onnxruntime's (batch
    statistics where the file says training_mode=1, as the TorchScript exporter writes;
    stored ones where it says nothing, as the dynamo exporter writes); one step's gradients
    with that part frozen are PyTorch's."""
    if dynamo and not ALL:
        pytest.skip("the dynamo exporter's files: set BWPLAN_TEST_ONNX_LIGHT=all")
    if dynamo:
        pytest.importorskip("onnxscript")
    torch.set_num_threads(1)
    pattern = onnx_models.MORE_MODELS[name][2]
    path = tmp_path / f"{name}.onnx"
    module = _export(path, name, train=True, dynamo=dynamo, opset=18 if dynamo else 17)
    assert main(["explain", str(path), "--freeze", pattern]) == 0
    # long names wrap the table: which layers froze is checked by the gradients below
    assert f"frozen by --freeze '{pattern}'" in " ".join(capsys.readouterr().out.split())
    x, y = _batch(name)
    want = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    imported = import_onnx(str(path))
    # nothing frozen here: a frozen BN would normalise with its stored statistics
    got = bwplan.compile(str(path)).forward({"input": x, "label": y}, outputs=imported.outputs,
                                            training=not dynamo)[imported.outputs[0]]
    assert np.abs(got - want).max() / np.abs(want).max() < RTOL
    _compare_gradients(bwplan.compile(str(path), freeze=[pattern]), module, name, pattern)
