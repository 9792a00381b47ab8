"""Freezing rows of a parameter's leading axis (--freeze 'fc.weight[0:7]') against PyTorch.

PyTorch cannot freeze part of a tensor: the usual workaround is a hook that zeroes the
gradient of the frozen rows, which still computes the whole dW, and still lets weight decay
and momentum move those rows unless they are masked by hand. The oracle here does all of
that by hand (SGD with momentum and decay written out, every term masked), in float64; the
bwplan run must give the same parameters after 5 steps, keep the frozen rows bit-identical,
and count only the trainable rows' share of the layer's dW FLOPs.
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

LR, MOMENTUM, DECAY, STEPS = 0.1, 0.9, 0.01, 5

LINEAR = """\
input x : f32[8, 16]
input y : i64[8]
h    = linear(x, out=12)
r    = relu(h)
fc   = linear(r, out=10)
loss = softmax_cross_entropy(fc, y)
"""

CONV = """\
input x : f32[4, 3, 6, 6]
input y : i64[4]
conv = conv2d(x, out=8, kernel=3, pad=1)
r    = relu(conv)
pool = global_avgpool(r)
fc   = linear(pool, out=5)
loss = softmax_cross_entropy(fc, y)
"""


def _torch_forward(name, p, x):
    if name == "linear":
        return torch.relu(x @ p["h.weight"].T + p["h.bias"]) @ p["fc.weight"].T + p["fc.bias"]
    c = torch.nn.functional.conv2d(x, p["conv.weight"], p["conv.bias"], padding=1)
    return torch.relu(c).mean(dim=(2, 3)) @ p["fc.weight"].T + p["fc.bias"]


CASES = {
    # name: (source, --freeze rules, {param: frozen row mask builder})
    "linear": (LINEAR, ["fc.weight[0:7]", "fc.bias[0:7]"], {"fc.weight": [(0, 7)],
                                                            "fc.bias": [(0, 7)]}),
    "conv": (CONV, ["conv.weight[0:2, 5:7]", "conv.bias[0:2,5:7]"],
             {"conv.weight": [(0, 2), (5, 7)], "conv.bias": [(0, 2), (5, 7)]}),
}


def _batches(net, rng):
    x_type = net.input("x").type
    n = x_type.shape[0]
    classes = 10 if "h" in [l.name for l in net.layers] else 5
    return [{"x": rng.standard_normal(x_type.shape).astype(np.float32),
             "y": rng.integers(0, classes, size=n).astype(np.int64)} for _ in range(STEPS)]


def _assert_trains_alike(a, b, seed: int) -> dict[str, np.ndarray]:
    """b starts from a's parameters, both take the same STEPS batches, and they must end
    with the same parameters bit for bit; returns the parameters they started from."""
    initial = {k: np.array(v) for k, v in a.params.items()}
    b.params.update({k: np.array(v) for k, v in initial.items()})
    for prog in (a, b):
        prog.set_optimizer(LR, MOMENTUM, DECAY)
    for batch in _batches(a.net, np.random.default_rng(seed)):
        a.run_step(batch)
        b.run_step(batch)
    for name, value in a.params.items():
        np.testing.assert_array_equal(b.params[name], value, err_msg=name)
    return initial


@pytest.mark.parametrize("target", ["reference", "cpu"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_sliced_freezing_matches_hand_masked_torch(case, target):
    source, rules, frozen = CASES[case]
    prog = bwplan.compile(source, target=target, freeze=rules)
    prog.set_optimizer(LR, MOMENTUM, DECAY)
    initial = {k: np.array(v) for k, v in prog.params.items()}
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
         for k, v in initial.items()}
    masks = {k: torch.ones_like(v) for k, v in p.items()}
    for name, ranges in frozen.items():
        for a, b in ranges:
            masks[name][a:b] = 0
    for name, t in p.items():      # the usual hook: the frozen rows' gradient zeroed
        t.register_hook(lambda g, m=masks[name]: g * m)
    velocity = {k: torch.zeros_like(v) for k, v in p.items()}
    rng = np.random.default_rng(5)
    for batch in _batches(prog.net, rng):
        prog.run_step(batch)
        for t in p.values():
            t.grad = None
        out = _torch_forward(case, p, torch.tensor(batch["x"], dtype=torch.float64))
        torch.nn.functional.cross_entropy(out, torch.tensor(batch["y"])).backward()
        with torch.no_grad():   # Caffe's SGD, decay and momentum masked by hand
            for k, t in p.items():
                velocity[k] = MOMENTUM * velocity[k] + LR * masks[k] * (t.grad + DECAY * t)
                t -= velocity[k]
    for name, t in p.items():
        want = t.detach().numpy()
        got = prog.params[name]
        err = np.abs(got - want).max()
        assert err < 1e-5, (case, target, name, err)
        for a, b in frozen.get(name, ()):
            assert np.array_equal(got[a:b], initial[name][a:b]), (name, "frozen rows moved")
        assert not np.array_equal(got, initial[name]), (name, "nothing trained")


@pytest.mark.parametrize("case", sorted(CASES))
def test_dw_flops_drop_by_the_frozen_fraction(case):
    source, rules, frozen = CASES[case]
    layer = "fc" if case == "linear" else "conv"
    whole = bwplan.make_plan(bwplan.load_bw_text(source))
    net = bwplan.apply_policy(bwplan.load_bw_text(source), [("freeze", r) for r in rules])
    part = bwplan.make_plan(net)
    rows = net.params[f"{layer}.weight"].type.shape[0]
    share = sum(b - a for a, b in frozen[f"{layer}.weight"]) / rows
    saved = whole.layer(layer).bwd_flops - part.layer(layer).bwd_flops
    # dX is untouched: what goes is the frozen share of dW (weight and bias)
    from bwplan.plan.components import op_ctx
    from bwplan import ops as registry
    lay = net.layer(layer)
    op, ctx = registry.OPS[lay.op], op_ctx(net, lay)
    full_dw = op.grad_for("weight").flops(ctx) + op.grad_for("bias").flops(ctx)
    assert saved == round(full_dw * share)
    # what a step counts agrees with the plan
    steps = part.program(prune=True).backward
    counted = sum(s.flops for s in steps if s.layer == layer)
    assert counted == part.layer(layer).bwd_flops


def test_explain_shows_the_rows_and_the_saving(capsys, tmp_path):
    path = tmp_path / "net.bw"
    path.write_text(LINEAR)
    assert main(["explain", str(path), "--freeze", "fc.weight[0:7]"]) == 0
    text = capsys.readouterr().out
    flat = " ".join(text.split())   # long lines wrap at 100 columns
    assert "\nfrozen rows\n  fc.weight  trains rows 7:10 of 10" in text
    assert "fc.weight trains rows 7:10 of 10, keeps 0:7 exactly; " \
           "dW 1.34 KFLOP saved per step (70% of its rows)" in flat
    assert "rows 7:10 of 10 only, the rest kept" in flat


def test_json_carries_each_parameters_frozen_rows(capsys, tmp_path):
    import json
    path = tmp_path / "net.bw"
    path.write_text(LINEAR)
    assert main(["explain", str(path), "--format", "json", "--freeze", "fc.weight[0:2, 5:7]",
                 "--freeze", "fc.bias[0:7]"]) == 0
    doc = json.loads(capsys.readouterr().out)
    params = {p["name"]: p for p in doc["net"]["params"]}
    assert params["fc.weight"]["frozen_rows"] == [[0, 2], [5, 7]]
    assert params["fc.bias"]["frozen_rows"] == [[0, 7]]
    assert params["h.weight"]["frozen_rows"] == []
    updates = {u["param"]: u for u in doc["updates"]}
    assert updates["fc.weight"]["rows"] == [[2, 5], [7, 10]]
    assert updates["fc.bias"]["rows"] == [[7, 10]] and updates["h.weight"]["rows"] == []
    # 6 of fc's 10 rows train: its backward (dX, and dW over those rows) costs less
    fc = next(layer for layer in doc["layers"] if layer["name"] == "fc")
    sent = {p["param"]: p["bytes"] for p in doc["allreduce"]["params"]}
    assert sent["fc.weight"] == 6 * 12 * 4 and sent["fc.bias"] == 3 * 4
    assert fc["flops"]["backward"] < fc["flops"]["backward_full"]


@pytest.mark.parametrize("rule, message", [
    ("fc.weight[0:11]", "rows 0:11 are out of bounds: the leading axis has 10 rows"),
    ("fc.weight[3:3]", "rows 3:3 are out of bounds"),
    ("fc.weight[a:b]", "'a:b' is not a range start:stop"),
    ("fc.wieght[0:1]", "no parameter 'fc.wieght'"),
    # no trainable row left: that is a frozen parameter, not a partly frozen one
    ("fc.weight[0:4, 4:10]", "the frozen rows cover all 10 rows of the leading axis"),
])
def test_a_bad_range_is_a_located_error(rule, message, capsys, tmp_path):
    path = tmp_path / "net.bw"
    path.write_text(LINEAR)
    assert main(["explain", str(path), "--freeze", rule]) == 2
    err = capsys.readouterr().err
    assert err.startswith("--freeze: error: ") and message in err, err
    with pytest.raises(BwError):
        bwplan.compile(LINEAR, freeze=[rule])


def test_why_explains_the_split(capsys, tmp_path):
    path = tmp_path / "net.bw"
    path.write_text(LINEAR)
    assert main(["explain", str(path), "--freeze", "fc.weight[0:7]", "--why",
                 "fc.weight"]) == 0
    text = capsys.readouterr().out
    assert "split: rows 0:7 of 10 are frozen, rows 7:10 train" in text


def test_the_cuda_target_takes_partly_frozen_parameters():
    """It lowers them to its sliced dW kernels and an update over the trainable rows (the
    launches are checked in test_cuda_host.py, the run in test_cuda_gpu.py)."""
    from bwplan.runtime.cuda import CudaTarget
    net = bwplan.apply_policy(bwplan.load_bw_text(LINEAR), [("freeze", "fc.weight[0:7]")])
    CudaTarget.check_net(net)


def test_rows_of_an_op_that_does_not_split_by_rows_are_an_error():
    src = LINEAR.replace("r    = relu(h)", "r    = relu(h)\ns    = scale(r)").replace(
        "fc   = linear(r", "fc   = linear(s")
    with pytest.raises(BwError, match="does not split by output rows"):
        bwplan.compile(src, freeze=["s.weight[0:2]"])


def test_the_bw_spelling_plans_and_trains_like_the_flag():
    """`weight.frozen_rows="0:7"` in the file is the same as --freeze 'fc.weight[0:7]'."""
    written = LINEAR.replace("fc   = linear(r, out=10)",
                             'fc   = linear(r, out=10) weight.frozen_rows="0:7" '
                             'bias.frozen_rows="0:7"')
    a = bwplan.compile(written, target="reference")
    b = bwplan.compile(LINEAR, target="reference", freeze=CASES["linear"][1])
    assert a.net.params["fc.weight"].frozen_rows == ((0, 7),)
    _assert_trains_alike(a, b, seed=1)


@pytest.mark.parametrize("setting, message", [
    ('weight.frozen_rows="0:17"', "rows 0:17 are out of bounds"),
    ('weight.frozen_rows=3', "needs a string of ranges"),
    ('wieght.frozen_rows="0:1"', "wieght"),
    ('weight.frozen_rows="0:10"', "the frozen rows cover all 10 rows"),
])
def test_a_bad_bw_range_is_located_at_its_setting(setting, message):
    with pytest.raises(BwError) as err:
        bwplan.load_bw_text(LINEAR.replace("fc   = linear(r, out=10)",
                                           f"fc   = linear(r, out=10) {setting}"))
    assert message in str(err.value)
    assert (err.value.span.line, err.value.span.col) == (5, 26)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_unpruned_baseline_computes_every_row_and_keeps_the_frozen_ones(case):
    """--no-prune is the baseline: dW over every row (its FLOPs the whole rule's), in blocks
    cut where frozen and trainable rows meet, while the update still skips the frozen rows;
    it trains to the pruned run's parameters bit for bit (the trainable rows come from the
    same GEMMs in both)."""
    source, rules, frozen = CASES[case]
    full = bwplan.compile(source, target="cpu", prune=False, freeze=rules)
    part = bwplan.compile(source, target="cpu", freeze=rules)
    for prog, sliced in ((full, False), (part, True)):
        program = prog.program
        for step in program.backward:
            if step.phase == "dw" and step.param in frozen:
                rows = program.dw_rows(step)
                param = prog.net.params[step.param]
                assert rows == (param.trainable_rows() if sliced else param.row_blocks())
                assert sliced or sum(b - a for a, b in rows) == param.type.shape[0]
    assert full.plan.summary.full_bwd_flops == full.program.flops("dx") + \
        full.program.flops("dw")
    initial = _assert_trains_alike(part, full, seed=2)
    for name, value in part.params.items():
        for a, b in frozen.get(name, ()):
            assert np.array_equal(full.params[name][a:b], initial[name][a:b]), name
            assert np.array_equal(value[a:b], initial[name][a:b]), name
