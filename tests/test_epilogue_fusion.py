"""A relu after its producer runs in place on the producer's output (Step.applied_by), and
the cpu target's conv2d and linear apply it in their own output write.

Lowering decides where: the relu's one input must be the output of a layer that nothing
else reads (no other forward reader, not kept for the backward, not an output). The fused
program must compute what the unfused one (BWPLAN_FUSE=0) computes, bit for bit: the fused
kernels do the float ops of the two kernels in sequence. Gradients against PyTorch for the
fused programs come from tests/test_train_vs_torch.py, which trains every example (each a
chain of conv/linear and relu) on the cpu target, fused as lowering decides by default.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bwplan
from bwplan import ops as registry
from bwplan.kernels import cpu
from bwplan.lower.program import value
from bwplan.ops.reference import make_ctx
from bwplan.runtime.backend import CpuBackend
from test_kernels_cpu import (conv_case, conv_limits, winograd5_case, winograd5_from,
                              winograd_case, winograd_from)
from op_cases.draw import normal as _normal, valid as _valid

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NET = """\
input image : f32[4, 3, 8, 8]
input label : i64[4]
conv1 = conv2d(image, out=6, kernel=3, pad=1)
relu1 = relu(conv1, negative_slope={slope})
conv2 = conv2d(relu1, out=5, kernel=3, pad=1, bias=false)
relu2 = relu(conv2)
both = conv2d(relu1, out=5, kernel=1)
rboth = relu(both)
side = add(both, relu2)
total = add(rboth, side)
flat = flatten(total)
fc1 = linear(flat, out=7)
relu3 = relu(fc1)
fc2 = linear(relu3, out=3)
loss = softmax_cross_entropy(fc2, label)
"""


def _compiled(tmp_path, monkeypatch, fuse: bool, slope: float = 0.0, target: str = "cpu",
              **kw):
    monkeypatch.setenv("BWPLAN_FUSE", "1" if fuse else "0")
    path = tmp_path / "net.bw"
    path.write_text(NET.format(slope=slope))
    return bwplan.compile(str(path), target=target, seed=3, **kw)


def _batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((4, 3, 8, 8)).astype(np.float32),
            "label": rng.integers(0, 3, 4)}


def test_lowering_fuses_where_nothing_else_reads_the_producer(tmp_path, monkeypatch):
    program = _compiled(tmp_path, monkeypatch, True).program
    steps = {s.layer: s for s in program.forward}
    index = {s.layer: i for i, s in enumerate(program.forward)}
    applied = {s.layer: program.forward[s.applied_by].layer
               for s in program.forward if s.applied_by >= 0}
    # both's output is also read by side: rboth keeps a step and a buffer of its own
    assert applied == {"relu1": "conv1", "relu2": "conv2", "relu3": "fc1"}
    for relu, producer in applied.items():
        assert steps[producer].target == value(relu)
        assert steps[relu].reads == (value(relu),) and steps[relu].target == value(relu)
        assert steps[relu].applied_by == index[producer]
    ids = {b.id for b in program.buffers}
    assert not ids & {value("conv1"), value("conv2"), value("fc1")}
    assert value("both") in ids and steps["rboth"].applied_by == -1
    # the schedule says so too
    forward = json.loads(_compiled(tmp_path, monkeypatch, True).program_json())["forward"]
    assert {s["layer"]: s["applied_by"] for s in forward}["relu1"] == index["conv1"]


def test_without_fusion_every_layer_writes_its_own_buffer(tmp_path, monkeypatch):
    fused = _compiled(tmp_path, monkeypatch, True).program
    program = _compiled(tmp_path, monkeypatch, False).program
    assert all(s.applied_by == -1 and s.target == value(s.layer) for s in program.forward)
    assert value("conv1") in {b.id for b in program.buffers}
    assert fused.peak_bytes() <= program.peak_bytes()


@pytest.mark.parametrize("slope", [0.0, 0.1])
@pytest.mark.parametrize("target", ["cpu", "reference"])
def test_the_fused_program_trains_as_the_unfused_one_bit_for_bit(tmp_path, monkeypatch,
                                                                   slope, target):
    runs = {}
    for fuse in (True, False):
        prog = _compiled(tmp_path, monkeypatch, fuse, slope, target)
        losses = [prog.run_step(_batch(i)).loss for i in range(2)]
        runs[fuse] = losses, prog.params, prog.last_stats
    assert runs[True][0] == runs[False][0]
    for name, p in runs[False][1].items():
        assert np.array_equal(runs[True][1][name], p), name
    fused = {f for f in runs[True][2].fused if f[1] == "fwd"}
    # the cpu target applies each relu in its producer's write; the references run it in
    # place, with no kernel of the producer's that applies it
    assert fused == ({("relu1", "fwd"), ("relu2", "fwd"), ("relu3", "fwd")}
                     if target == "cpu" else set())
    assert not any(f[1] == "fwd" for f in runs[False][2].fused)


def test_pruned_and_unpruned_fused_programs_agree(tmp_path, monkeypatch):
    params = []
    for prune in (True, False):
        prog = _compiled(tmp_path, monkeypatch, True, 0.0, "cpu", prune=prune,
                         freeze=["conv1"])
        for i in range(2):
            prog.run_step(_batch(i))
        params.append(prog.params)
    for name, p in params[1].items():
        assert np.array_equal(params[0][name], p), name


def test_a_frozen_prefix_writes_only_what_it_keeps(tmp_path, monkeypatch):
    """With the convolutions frozen, the prefix's conv outputs are never buffers; the cached
    prefix (its boundary captured once, then given) trains as the uncached one."""
    rules = dict(freeze=["conv*", "both"])
    fused = _compiled(tmp_path, monkeypatch, True, **rules)
    unfused = _compiled(tmp_path, monkeypatch, False, **rules)
    written = {b.id for b in fused.program.buffers}
    assert written == {b.id for b in unfused.program.buffers} - {
        value("conv1"), value("conv2"), value("fc1")}
    boundary = fused.plan.prefix.boundary
    assert boundary and fused.plan.prefix.cacheable
    batch = _batch()
    first = fused.run_step(batch, capture=boundary)
    given = {n: first.values[n] for n in boundary}
    again = fused.run_step(batch, given=given)
    assert again.stats.launched["fwd"] < first.stats.launched["fwd"]
    unfused.run_step(batch)
    reference = unfused.run_step(batch)
    assert again.loss == reference.loss
    for name, p in unfused.params.items():
        assert np.array_equal(fused.params[name], p), name


@pytest.mark.parametrize("name,shrinks", [("frozen_backbone", True), ("cnn_small", False)])
def test_the_peak_drops_where_the_forward_holds_it(monkeypatch, name, shrinks):
    """frozen_backbone keeps nothing below its head, so its peak is in the forward, where
    conv1's output and relu1's lay side by side; cnn_small trains everything, and its peak
    is where the backward starts, which fusion does not change."""
    path = str(EXAMPLES / f"{name}.bw")
    peaks = []
    for fuse in ("1", "0"):
        monkeypatch.setenv("BWPLAN_FUSE", fuse)
        peaks.append(bwplan.compile(path, target="reference").plan.summary.planned_peak_bytes)
    assert (peaks[0] < peaks[1]) if shrinks else (peaks[0] == peaks[1])


def test_the_cpu_backend_has_epilogue_kernels_for_conv_and_linear_only():
    backend = CpuBackend()
    epilogue = next(op.name for op in registry.OPS.values() if op.epilogue)
    applying = {name for name in registry.OPS if "cpu" in registry.OPS[name].kernels
                and "fwd" in registry.OPS[name].kernels["cpu"]
                and backend.epilogue_kernel(name, epilogue) is not None}
    assert applying == {"conv2d", "linear"}


# ---- the kernels: conv2d and linear with relu in the write, against the two kernels -------
def _fused_equals_two_kernels(op: str, attrs, x, params, slope: float) -> None:
    conv_op, relu_op = registry.OPS[op], next(o for o in registry.OPS.values() if o.epilogue)
    ctx = make_ctx(conv_op, attrs, [x])
    relu_ctx = make_ctx(relu_op, {"negative_slope": slope}, [np.empty(ctx.out.shape,
                                                                      np.float32)])
    plain = cpu.get(conv_op.kernels["cpu"]["fwd"])
    fused = cpu.with_epilogue(conv_op.kernels["cpu"]["fwd"], relu_op.kernels["cpu"]["fwd"])
    relu = cpu.get(relu_op.kernels["cpu"]["fwd"])
    want = np.full(ctx.out.shape, np.nan, np.float32)
    plain(ctx, [x], params, want, {}, True, None)
    relu(relu_ctx, [want], {}, want, {}, True, None)   # in place, as the program runs it
    got = np.full(ctx.out.shape, np.nan, np.float32)
    fused(ctx, [x], params, got, {}, True, None, relu_ctx)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))   # signed zeros too


def _f32(case):
    x = case.inputs[0].astype(np.float32)
    return x, {k: v.astype(np.float32) for k, v in case.params.items()}


FEW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FEW
@given(data=st.data())
def test_conv2d_applies_relu_in_its_write_on_the_im2col_paths(data):
    case, samples = data.draw(conv_case(), label="conv2d")
    _valid("conv2d", case)
    slope = data.draw(st.sampled_from([0.0, 0.1]), label="slope")
    with conv_limits(case, samples, data.draw(st.booleans(), label="per_sample")):
        _fused_equals_two_kernels("conv2d", case.attrs, *_f32(case), slope)


@FEW
@given(data=st.data())
def test_conv2d_applies_relu_in_its_write_on_the_winograd_path(data):
    case, samples = data.draw(winograd_case(), label="conv2d")
    _valid("conv2d", case)
    slope = data.draw(st.sampled_from([0.0, 0.1]), label="slope")
    with winograd_from(1, case, samples):
        _fused_equals_two_kernels("conv2d", case.attrs, *_f32(case), slope)


@FEW
@given(data=st.data())
def test_conv2d_applies_relu_after_its_5x5_winograd_output(data):
    case, samples = data.draw(winograd5_case(), label="conv2d")
    _valid("conv2d", case)
    slope = data.draw(st.sampled_from([0.0, 0.1]), label="slope")
    with winograd5_from(1, case, samples):
        _fused_equals_two_kernels("conv2d", case.attrs, *_f32(case), slope)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("slope", [0.0, 0.25])
def test_linear_applies_relu_in_its_write(bias, slope):
    rng = np.random.default_rng(5)
    x = _normal(rng, 6, 2, 5).astype(np.float32)
    params = {"weight": _normal(rng, 4, 10).astype(np.float32)}
    if bias:
        params["bias"] = _normal(rng, 4).astype(np.float32)
    _fused_equals_two_kernels("linear", dict(out=4, bias=bias), x, params, slope)


def test_compile_says_what_runs_in_place(tmp_path, capsys):
    from bwplan.cli.main import main
    assert main(["compile", str(EXAMPLES / "frozen_backbone.bw"), "--target", "reference",
                 "-o", str(tmp_path / "art")]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "in place: 4 layer(s) on their producer's output, which is no buffer: relu1 on " \
           "conv1, relu2 on conv2, relu3 on conv3, relu4 on fc1" in text
    forward = json.loads((tmp_path / "art" / "schedule.json").read_text())["forward"]
    assert [s["target"] for s in forward[:2]] == ["relu1", "relu1"]
    assert [s["applied_by"] for s in forward[:2]] == [-1, 0]
