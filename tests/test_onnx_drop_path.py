"""Stochastic depth exported in training mode (torchvision's StochasticDepth, EfficientNet's
residual branches): the random draw the exporters write (RandomUniformLike, Less, Cast,
Mul, Div) imports as bwplan's drop_path, which draws its own per-sample mask.

Checked here: EfficientNet (tests/onnx_models.py, stochastic depth 0.1 on its one residual
block with p > 0) exported by the TorchScript exporter imports with the drop_path named
after the module, and its forward outside training equals onnxruntime's on the eval-mode
export of the same weights; both exporters' forms of a small residual block import; in
training, each sample is kept whole or zeroed, kept ones scaled by 1/(1-p), with the
kept fraction 1 - p; the gradient reaching the conv before it is zero for the dropped
samples (the NumPy reference's dX is checked against finite differences with the mask held
fixed in test_ops_reference.py, the kernels against the reference in test_kernels_cpu.py);
a pruned and an unpruned program train bit-identically under one seed.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch loads: see torch_oracle
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

import bwplan  # noqa: E402
from bwplan.onnx.importer import import_onnx  # noqa: E402
import onnx_models  # noqa: E402

P = 0.3


class Block(torch.nn.Module):
    """conv, then stochastic depth on the branch, plus the shortcut; a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.stochastic_depth = onnx_models.StochasticDepth(P)
        self.head = torch.nn.Linear(3, 4)

    def forward(self, x):
        y = self.stochastic_depth(torch.relu(self.conv(x))) + x
        return self.head(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))


def _export_block(path, dynamo: bool, batch: int = 64) -> str:
    torch.manual_seed(0)
    kwargs = dict(optimize=False) if dynamo else dict(
        training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Block().train(), (torch.randn(batch, 3, 4, 4),), str(path),
                          dynamo=dynamo, input_names=["input"], output_names=["output"],
                          **kwargs)
    return str(path)


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    return _export_block(tmp_path_factory.mktemp("sd") / "block.onnx", dynamo=False)


def _batch(n=64, seed=1):
    rng = np.random.default_rng(seed)
    return {"input": rng.standard_normal((n, 3, 4, 4)).astype(np.float32),
            "label": rng.integers(0, 4, n)}


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_both_exporters_random_draw_imports_as_drop_path(tmp_path, block, dynamo):
    if dynamo:
        pytest.importorskip("onnxscript")
    path = block if not dynamo else _export_block(tmp_path / "block.onnx", dynamo=True)
    layers = {layer.name: layer for layer in import_onnx(path).net.layers}
    drops = [layer for layer in layers.values() if layer.op == "drop_path"]
    assert len(drops) == 1
    assert abs(drops[0].attrs["p"] - P) < 1e-6
    # the random draw and its arithmetic are absorbed: the branch is conv, relu, drop_path
    assert not {"mul", "scale"} & {layer.op for layer in layers.values()}, sorted(layers)


def test_efficientnet_with_stochastic_depth_imports_and_runs_as_onnxruntime(tmp_path):
    """The training export (BN kept, stochastic depth 0.1 in block features.2.1) outside
    training (stored BN statistics, drop_path the identity), against onnxruntime on an eval
    export of the same module."""
    train_path, eval_path = str(tmp_path / "train.onnx"), str(tmp_path / "eval.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the module as the training export left it (its BN statistics are the file's),
        # exported again in eval mode: no random draw, the same weights
        module = onnx_models.export("efficientnet_b0", train_path, train=True, drop=True)
        torch.onnx.export(module.eval(), (torch.randn(2, 3, 32, 32),), eval_path,
                          dynamo=False, input_names=["input"], output_names=["output"])
    kinds = {n.op_type for n in onnx.load(train_path).graph.node}
    assert "RandomUniformLike" in kinds
    imported = import_onnx(train_path)
    drops = {layer.name: layer.attrs["p"] for layer in imported.net.layers
             if layer.op == "drop_path"}
    assert list(drops) == ["features.2.1.stochastic_depth"] and abs(
        drops["features.2.1.stochastic_depth"] - 0.1) < 1e-6, drops
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    want = ort.InferenceSession(eval_path).run(None, {"input": x})[0]
    got = bwplan.compile(train_path).forward({"input": x, "label": np.zeros(2, np.int64)},
                                             outputs=imported.outputs)[imported.outputs[0]]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_training_keeps_or_zeroes_whole_samples_scaled_by_one_over_keep(block):
    prog = bwplan.compile(block)
    drop = next(layer for layer in prog.net.layers if layer.op == "drop_path")
    src = drop.inputs[0].src
    batch = _batch(2000)
    got = prog.forward(batch, outputs=[src, drop.name], training=True)
    x, y = got[src].reshape(2000, -1), got[drop.name].reshape(2000, -1)
    kept = np.all(np.isclose(y, x / (1 - P), rtol=1e-6, atol=1e-7), axis=1)
    dropped = np.all(y == 0, axis=1)
    live = np.any(x != 0, axis=1)               # a sample the relu zeroed whole is both
    assert np.all(kept | dropped)
    share = kept[live & ~dropped].size / live.sum()
    assert abs(share - (1 - P)) < 4 * np.sqrt(P * (1 - P) / live.sum()), share
    # outside training: the identity
    plain = prog.forward(batch, outputs=[src, drop.name])
    np.testing.assert_array_equal(plain[src], plain[drop.name])


def test_one_steps_gradients_are_pytorchs_with_the_drawn_mask(block):
    """Batch of one sample, several steps: each draw keeps or drops the branch; the
    gradients of every parameter equal PyTorch's (float64) for the same module with the
    stochastic depth replaced by that mask (y * m / (1 - p)), so dX is mask * dY / (1 - p)."""
    prog = bwplan.compile(block)
    prog.set_optimizer(lr=0.0, momentum=0.0)
    torch.manual_seed(0)
    module = Block().double()
    seen = set()
    for k in range(10):
        batch = _batch(1, seed=10 + k)
        prog.step(batch)
        kept = bool(np.abs(prog.grads["conv.weight"]).max() > 0)
        seen.add(kept)
        x = torch.tensor(batch["input"], dtype=torch.float64)
        branch = torch.relu(module.conv(x)) * (float(kept) / (1 - P))
        module.zero_grad()
        out = module.head(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(
            branch + x, 1), 1))
        torch.nn.functional.cross_entropy(out, torch.tensor(batch["label"])).backward()
        for name, param in module.named_parameters():
            want = param.grad.numpy()
            got = prog.grads[name]
            assert np.abs(got - want).max() <= 1e-4 * max(np.abs(want).max(), 1e-3), (
                k, kept, name)
    assert seen == {True, False}, seen     # some steps dropped the branch, some kept it


def test_pruned_and_unpruned_programs_train_bit_identically(block):
    """A frozen conv: the pruned program skips its dW; under one seed both draw the same
    masks and reach the same weights."""
    progs = [bwplan.compile(block, freeze=["conv"], prune=prune, seed=7)
             for prune in (True, False)]
    for prog in progs:
        prog.set_optimizer(lr=0.1, momentum=0.9)
        for k in range(3):
            prog.step(_batch(16, seed=20 + k))
    a, b = (prog.params for prog in progs)
    assert set(a) == set(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert not np.array_equal(a["head.weight"], bwplan.compile(block).params["head.weight"])
