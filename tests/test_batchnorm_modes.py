"""Batchnorm modes (ops.norm.BatchNormMode) against torch.nn.BatchNorm2d.

Each case is one batchnorm layer between a convolution and a linear head, written in .bw
with a mode, and the same module in PyTorch set up as a user would: train() or eval(),
requires_grad on or off, momentum 0 for statistics that must not move. Both start from the
same parameters, take 3 steps of SGD with momentum and weight decay on the same batches,
and must agree on every parameter and on the running statistics (1e-4 relative, float32
against float64); what must not change is bit-identical. The plan's mode, what the
backward keeps, and explain's line and warnings are checked on the same nets.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch loads: see torch_oracle
torch = pytest.importorskip("torch")

import bwplan  # noqa: E402
from bwplan.cli.main import main  # noqa: E402
from bwplan.errors import BwError  # noqa: E402

LR, MOMENTUM, DECAY, STEPS = 0.1, 0.9, 0.01, 3
KEEP = 0.9   # bwplan's momentum (the fraction the running statistics keep): torch's is 0.1

NET = """\
input x : f32[8, 3, 6, 6]
input y : i64[8]
conv = conv2d(x, out=4, kernel=3, bias=false)
bn   = batchnorm(conv, affine=true, momentum=0.9{attrs}){frozen}
act  = relu(bn)
pool = global_avgpool(act)
fc   = linear(pool, out=3)
loss = softmax_cross_entropy(fc, y)
"""

# name: (.bw attributes, frozen, torch train(), scale/shift requires_grad, torch momentum,
#        the plan's mode)
CASES = {
    "default":          ("", False, True, True, 1 - KEEP, ("batch", True)),
    "frozen":           ("", True, False, False, None, ("stored", False)),
    "frozen_batch":     (", stats=batch", True, True, False, 1 - KEEP, ("batch", True)),
    "batch_fixed":      (", update_stats=false", False, True, True, 0.0, ("batch", False)),
    "stored_trains":    (", stats=stored", False, False, True, None, ("stored", False)),
    "caffe_global":     (", global_stats=true", False, False, True, None, ("stored", False)),
    "stored_updating":  (", stats=stored, update_stats=true", False, False, True, 1 - KEEP,
                         ("stored", True)),
}


def _source(case: str) -> str:
    attrs, frozen = CASES[case][:2]
    return NET.format(attrs=attrs, frozen=" frozen" if frozen else "")


class TorchModel(torch.nn.Module):
    def __init__(self, params, train_mode: bool, affine_grad: bool, momentum):
        super().__init__()
        # no conv bias: before batch statistics its gradient is 0, and only noise is left
        self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
        self.bn = torch.nn.BatchNorm2d(4, eps=1e-5, momentum=momentum or 0.0)
        self.fc = torch.nn.Linear(4, 3)
        t = lambda a: torch.tensor(np.array(a), dtype=torch.float64)   # noqa: E731
        with torch.no_grad():
            self.conv.weight.copy_(t(params["conv.weight"]))
            self.fc.weight.copy_(t(params["fc.weight"]))
            self.fc.bias.copy_(t(params["fc.bias"]))
            self.bn.weight.copy_(t(params["bn.weight"]))
            self.bn.bias.copy_(t(params["bn.bias"]))
            self.bn.running_mean.copy_(t(params["bn.mean"]))
            self.bn.running_var.copy_(t(params["bn.var"]))
        self.double()
        self.bn.weight.requires_grad_(affine_grad)
        self.bn.bias.requires_grad_(affine_grad)
        self.bn_train = train_mode
        self.stats_momentum = momentum

    def forward(self, x):
        c = self.conv(x)
        self.bn.train(self.bn_train)
        if not self.bn_train and self.stats_momentum:
            # stored statistics normalise, and the step still moves them from the batch
            # (the values before the move normalise): torch has no such module mode
            before = (self.bn.running_mean.clone(), self.bn.running_var.clone())
            with torch.no_grad():
                torch.nn.functional.batch_norm(c, self.bn.running_mean, self.bn.running_var,
                                               training=True, momentum=self.stats_momentum)
            out = torch.nn.functional.batch_norm(c, *before, self.bn.weight, self.bn.bias,
                                                 training=False, eps=self.bn.eps)
        else:
            out = self.bn(c)
        return self.fc(torch.relu(out).mean(dim=(2, 3)))


def _torch_params(model) -> dict[str, np.ndarray]:
    return {"conv.weight": model.conv.weight,
            "bn.weight": model.bn.weight, "bn.bias": model.bn.bias,
            "bn.mean": model.bn.running_mean, "bn.var": model.bn.running_var,
            "fc.weight": model.fc.weight, "fc.bias": model.fc.bias}


def _batches(rng):
    return [{"x": (rng.standard_normal((8, 3, 6, 6)) * 2 + 1).astype(np.float32),
             "y": rng.integers(0, 3, size=8).astype(np.int64)} for _ in range(STEPS)]


@pytest.mark.parametrize("target", ["reference", "cpu"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_training_matches_torch_batchnorm2d(case, target):
    _, _, train_mode, affine_grad, momentum, _ = CASES[case]
    prog = bwplan.compile(_source(case), target=target)
    rng = np.random.default_rng(3)
    # stored statistics unlike the batch's, so that the two kinds of statistics differ
    prog.params["bn.mean"][...] = rng.standard_normal(4).astype(np.float32)
    prog.params["bn.var"][...] = rng.uniform(0.5, 2.0, 4).astype(np.float32)
    prog.params["bn.weight"][...] = rng.uniform(0.5, 1.5, 4).astype(np.float32)
    prog.params["bn.bias"][...] = rng.standard_normal(4).astype(np.float32) * 0.1
    initial = {k: np.array(v) for k, v in prog.params.items()}
    prog.set_optimizer(LR, MOMENTUM, DECAY)
    model = TorchModel(initial, train_mode, affine_grad, momentum)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR,
                          momentum=MOMENTUM, weight_decay=DECAY)
    for batch in _batches(rng):
        prog.run_step(batch)
        opt.zero_grad()
        out = model(torch.tensor(batch["x"], dtype=torch.float64))
        torch.nn.functional.cross_entropy(out, torch.tensor(batch["y"])).backward()
        opt.step()
    want = {k: v.detach().numpy() for k, v in _torch_params(model).items()}
    for name, value in want.items():
        got = prog.params[name]
        if np.array_equal(value, initial[name]):
            assert np.array_equal(got, initial[name]), (case, name, "moved")
            continue
        err = np.linalg.norm(got - value) / max(np.linalg.norm(value), 1e-6)
        assert err < 1e-4, (case, name, err)
    # the cases differ where they should: the statistics move exactly when updated
    moved = not np.array_equal(prog.params["bn.mean"], initial["bn.mean"])
    assert moved == CASES[case][5][1]


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_records_the_mode_and_keeps_what_it_needs(case):
    stats, update = CASES[case][5]
    plan = bwplan.make_plan(bwplan.load_bw_text(_source(case)))
    mode = plan.layer("bn").mode
    assert (mode.mode.stats, mode.mode.update_stats) == (stats, update)
    assert mode.scale_shift == ("trains" if CASES[case][3] else "frozen")
    keeps = set(plan.layer("bn").keeps)
    # batch statistics: dX reads the input and the saved batch statistics; fixed stored
    # ones: an affine map whose dX reads only the (resident) variance
    if stats == "batch":
        assert {"conv", "bn:batch_stats"} <= keeps
    elif update:
        assert "bn:batch_stats" in keeps    # the stored values from before the update
    elif not CASES[case][3]:
        assert keeps == set()


def test_explain_prints_each_mode_and_warns_on_the_traps(capsys, tmp_path):
    path = tmp_path / "net.bw"
    path.write_text(_source("frozen_batch").replace("f32[8,", "f32[2,")
                    .replace("[8, 3", "[2, 3").replace("i64[8]", "i64[2]"))
    assert main(["explain", str(path)]) == 0
    text = capsys.readouterr().out
    assert "\nmodes\n  bn  stats=batch, updated; scale/shift frozen\n" in text
    flat = " ".join(text.split())   # findings wrap at 100 columns
    assert "the scale/shift of bn is frozen, but it normalises with batch" in flat
    assert "a batch of 2 sample(s)" in flat


def test_explain_without_batchnorm_prints_no_modes(capsys, tmp_path):
    path = tmp_path / "net.bw"
    path.write_text(NET.replace("bn   = batchnorm(conv, affine=true, momentum=0.9{attrs})"
                                "{frozen}", "bn   = relu(conv)"))
    assert main(["explain", str(path)]) == 0
    assert "modes" not in capsys.readouterr().out


def test_a_mode_follows_its_scale_layer():
    """Caffe's BatchNorm then Scale: the scale/shift the mode reports is the Scale's."""
    src = NET.replace("affine=true, ", "").format(attrs="", frozen="").replace(
        "act  = relu(bn)", "sc   = scale(bn, bias=true) frozen\nact  = relu(sc)")
    mode = bwplan.make_plan(bwplan.load_bw_text(src)).layer("bn").mode
    assert (mode.scale_shift, mode.scale_shift_in) == ("frozen", "sc")
    assert mode.cell("bn") == "stats=batch, updated; scale/shift frozen in sc"


def test_a_bad_mode_is_a_located_error():
    with pytest.raises(BwError) as err:
        bwplan.load_bw_text(NET.format(attrs=", stats=global", frozen=""))
    assert "'stats' must be one of auto, batch, stored" in str(err.value)
    assert err.value.span.line == 4


CAFFE = """\
name: "bn"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 8 dim: 3 dim: 6 dim: 6 } shape { dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv"
        param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } %s }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv"
        param { lr_mult: 0 } param { lr_mult: 0 } scale_param { bias_term: true } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


@pytest.mark.parametrize("param, want", [
    ("", ("batch", True)),     # TRAIN: batch statistics although every lr_mult is 0
    ("batch_norm_param { use_global_stats: true }", ("stored", False))])
def test_caffe_import_follows_caffe(tmp_path, param, want):
    path = tmp_path / "bn.prototxt"
    path.write_text(CAFFE % param)
    mode = bwplan.make_plan(bwplan.load(str(path))).layer("bn").mode
    assert (mode.mode.stats, mode.mode.update_stats) == want
    assert (mode.scale_shift, mode.scale_shift_in) == ("frozen", "sc")


@pytest.mark.parametrize("training_mode, want", [(None, "batch"), (1, "batch"),
                                                 (0, "stored")])
def test_onnx_import_follows_the_exported_training_mode(tmp_path, training_mode, want):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    extra = {} if training_mode is None else {"training_mode": training_mode}
    outs = ["y", "rm", "rv"] if training_mode else ["y"]   # a training node has all 3
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], outs,
                              **extra)]
    inits = [numpy_helper.from_array(np.full(4, v, np.float32), n)
             for n, v in (("s", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [2, 4, 3, 3])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [2, 4, 3, 3])], inits)
    path = tmp_path / "bn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]),
              str(path))
    from bwplan.onnx.importer import import_onnx
    net = import_onnx(str(path), loss="euclidean_loss").net
    bn = next(layer for layer in net.layers if layer.op == "batchnorm")
    assert bwplan.make_plan(net).layer(bn.name).mode.mode.stats == want


@pytest.mark.parametrize("case", ["default", "frozen", "batch_fixed"])
def test_json_carries_each_mode(case, capsys, tmp_path):
    import json
    path = tmp_path / "net.bw"
    path.write_text(_source(case))
    assert main(["explain", str(path), "--format", "json"]) == 0
    layers = {layer["name"]: layer for layer in json.loads(capsys.readouterr().out)["layers"]}
    stats, update = CASES[case][5]
    assert layers["bn"]["mode"] == {
        "stats": stats, "update_stats": update,
        "scale_shift": "trains" if CASES[case][3] else "frozen", "scale_shift_in": "bn"}
    assert layers["conv"]["mode"] is None and layers["fc"]["mode"] is None


def test_json_names_the_scale_layer_of_a_caffe_batchnorm(tmp_path, capsys):
    import json
    path = tmp_path / "bn.prototxt"
    path.write_text(CAFFE % "batch_norm_param { use_global_stats: true }")
    assert main(["explain", str(path), "--format", "json"]) == 0
    layers = {layer["name"]: layer for layer in json.loads(capsys.readouterr().out)["layers"]}
    assert layers["bn"]["mode"] == {"stats": "stored", "update_stats": False,
                                    "scale_shift": "frozen", "scale_shift_in": "sc"}
