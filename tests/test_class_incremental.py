"""Class-incremental fine-tuning end to end, from each of the three formats: a classifier of
1000 classes extended with 10 new ones (examples/class_incremental.bw, its Caffe twin
examples/class_incremental.prototxt, and a PyTorch model exported with torch.onnx.export).

For each: `bwplan explain` shows the split of fc8 and the dW FLOPs its frozen rows save,
which must equal the frozen share (1000 of 1010 rows) of fc8's whole dW, computed here from
the GEMM's size; `bwplan train` with momentum and weight decay keeps rows 0:1000 of fc8's
weight and bias bit-identical, and ends with the parameters of a hand-masked PyTorch run
(the gradient hook, and decay and momentum masked by hand: what PyTorch users write today)
within 1e-5. All three start from the same PyTorch model's weights: the ONNX run from the
weights in the ONNX file, the others from an .npz of them (--weights).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch loads: see torch_oracle
torch = pytest.importorskip("torch")

from bwplan.cli.main import main  # noqa: E402
from bwplan.explain.units import flops  # noqa: E402

ROOT = Path(__file__).parents[1]
BATCH, FEATURES, HIDDEN, OLD, CLASSES = 8, 16, 16, 1000, 1010
LR, MOMENTUM, DECAY, STEPS = 0.1, 0.9, 0.01, 5
FREEZE = ["--freeze", f"fc8.weight[0:{OLD}]", "--freeze", f"fc8.bias[0:{OLD}]"]
FORMATS = ("bw", "prototxt", "onnx")


class Head(torch.nn.Module):
    """The classifier: fc7 (16 -> 16), relu, fc8 (16 -> 1010 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc7 = torch.nn.Linear(FEATURES, HIDDEN)
        self.fc8 = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, x):
        return self.fc8(torch.relu(self.fc7(x)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The three sources, the model's weights as .npz, and one batch of data."""
    root = tmp_path_factory.mktemp("class_incremental")
    torch.manual_seed(0)
    model = Head()
    with torch.no_grad():    # the old rows as a trained head would have them, not tiny
        model.fc8.weight.mul_(4.0)
    weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    np.savez(root / "init.npz", **weights)
    onnx_path = root / "class_incremental.onnx"
    with warnings.catch_warnings():    # the TorchScript exporter says it is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(BATCH, FEATURES),), str(onnx_path),
                          input_names=["data"], output_names=["logits"], opset_version=17,
                          dynamo=False)
    rng = np.random.default_rng(7)
    labels = np.concatenate([rng.integers(OLD, CLASSES, BATCH // 2),   # the new classes
                             rng.integers(0, OLD, BATCH - BATCH // 2)])
    np.savez(root / "data.npz", data=rng.standard_normal((BATCH, FEATURES)).astype(np.float32),
             label=labels.astype(np.int64))
    sources = {"bw": ROOT / "examples/class_incremental.bw",
               "prototxt": ROOT / "examples/class_incremental.prototxt", "onnx": onnx_path}
    return root, sources, weights


def _args(fmt: str) -> list[str]:
    """The .bw example says frozen_rows= itself; the imports take --freeze."""
    return [] if fmt == "bw" else FREEZE


def _hand_masked_torch(weights, data):
    """Caffe's SGD in float64, every term masked on the frozen rows by hand."""
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
         for k, v in weights.items()}
    masks = {k: torch.ones_like(v) for k, v in p.items()}
    masks["fc8.weight"][:OLD] = 0
    masks["fc8.bias"][:OLD] = 0
    for k, t in p.items():      # the usual hook: the frozen rows' gradient zeroed
        t.register_hook(lambda g, m=masks[k]: g * m)
    velocity = {k: torch.zeros_like(v) for k, v in p.items()}
    x = torch.tensor(data["data"], dtype=torch.float64)
    y = torch.tensor(data["label"])
    for _ in range(STEPS):
        for t in p.values():
            t.grad = None
        h = torch.relu(x @ p["fc7.weight"].T + p["fc7.bias"])
        torch.nn.functional.cross_entropy(h @ p["fc8.weight"].T + p["fc8.bias"], y).backward()
        with torch.no_grad():
            for k, t in p.items():
                velocity[k] = MOMENTUM * velocity[k] + LR * masks[k] * (t.grad + DECAY * t)
                t -= velocity[k]
    return {k: t.detach().numpy() for k, t in p.items()}


@pytest.mark.parametrize("fmt", FORMATS)
def test_explain_shows_the_split_and_the_frozen_share_of_dw(fmt, files, capsys):
    _, sources, _ = files
    assert main(["explain", str(sources[fmt]), *_args(fmt)]) == 0
    text = " ".join(capsys.readouterr().out.split())   # explain wraps at 100 columns
    # fc8's dW: the GEMM dW[o, k] = sum_b dy[b, o] x[b, k] is BATCH * HIDDEN * CLASSES
    # multiply-adds, db[o] = sum_b dy[b, o] is BATCH * CLASSES adds; the frozen rows save
    # their share, OLD of CLASSES rows
    weight_saved = 2 * BATCH * HIDDEN * CLASSES * OLD // CLASSES
    bias_saved = BATCH * CLASSES * OLD // CLASSES
    assert (f"fc8.weight trains rows {OLD}:{CLASSES} of {CLASSES}, keeps 0:{OLD} exactly; "
            f"dW {flops(weight_saved)} saved per step (99% of its rows)") in text
    assert (f"fc8.bias trains rows {OLD}:{CLASSES} of {CLASSES}, keeps 0:{OLD} exactly; "
            f"dW {flops(bias_saved)} saved per step") in text
    assert f"rows {OLD}:{CLASSES} of {CLASSES} only, the rest kept" in text
    assert main(["explain", str(sources[fmt]), "--format", "json", *_args(fmt)]) == 0
    doc = json.loads(capsys.readouterr().out)
    fc8 = next(layer for layer in doc["layers"] if layer["name"] == "fc8")
    # dX is untouched: what the layer's backward loses is exactly the frozen dW share
    assert fc8["flops"]["backward_full"] - fc8["flops"]["backward"] == \
        weight_saved + bias_saved
    params = {p["name"]: p for p in doc["net"]["params"]}
    assert params["fc8.weight"]["frozen_rows"] == [[0, OLD]]
    assert params["fc8.bias"]["frozen_rows"] == [[0, OLD]]
    sent = {p["param"]: p["bytes"] for p in doc["allreduce"]["params"]}
    assert sent["fc8.weight"] == (CLASSES - OLD) * HIDDEN * 4


@pytest.mark.parametrize("fmt", FORMATS)
def test_train_keeps_the_old_classes_and_matches_hand_masked_torch(fmt, files, capsys):
    root, sources, weights = files
    out = root / f"trained_{fmt}.npz"
    init = [] if fmt == "onnx" else ["--weights", str(root / "init.npz")]
    assert main(["train", str(sources[fmt]), "--data", str(root / "data.npz"), *init,
                 "--out", str(out), "--batch", str(BATCH), "--epochs", str(STEPS),
                 "--lr", str(LR), "--momentum", str(MOMENTUM), "--weight-decay", str(DECAY),
                 "--target", "cpu", *_args(fmt)]) == 0, capsys.readouterr().err
    trained = dict(np.load(out))
    assert set(trained) == set(weights)
    with np.load(root / "data.npz") as data:
        want = _hand_masked_torch(weights, dict(data))
    for k in ("fc8.weight", "fc8.bias"):     # the old classes: bit-identical
        assert np.array_equal(trained[k][:OLD], weights[k][:OLD]), k
        assert not np.allclose(trained[k][OLD:], weights[k][OLD:]), k   # the new ones train
    for k, w in want.items():
        err = float(np.abs(trained[k] - w).max())
        assert err < 1e-5, (fmt, k, err)
        assert not np.array_equal(trained[k], weights[k]), (k, "nothing trained")


def test_the_tensor_wide_hook_alone_moves_the_frozen_rows(files):
    """Why the masking above is by hand: with torch.optim.SGD's own momentum and weight
    decay, zeroing the frozen rows' gradient still moves them (decay shrinks them)."""
    _, _, weights = files
    w = torch.tensor(weights["fc8.weight"], requires_grad=True)
    mask = torch.ones_like(w)
    mask[:OLD] = 0
    w.register_hook(lambda g: g * mask)
    opt = torch.optim.SGD([w], lr=LR, momentum=MOMENTUM, weight_decay=DECAY)
    x = torch.ones(BATCH, HIDDEN)
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(x @ w.T, torch.full((BATCH,), OLD)).backward()
        opt.step()
    assert not np.array_equal(w.detach().numpy()[:OLD], weights["fc8.weight"][:OLD])
