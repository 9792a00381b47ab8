"""Bias gradients summed in the pass that writes d(out) (Step.sum_of).

Lowering pairs a bias gradient with the one dX step that writes its layer's d(out); the CPU
executor then computes it in that step's pass (relu's dX) instead of a separate one. The
pairing must be exact (no pair where d(out) has several writers, or the bias is a later
use, partly frozen or mixed-scale), and the fused gradients must match the separate
kernels'.
"""
from __future__ import annotations

import numpy as np
import pytest

import bwplan
from bwplan.runtime.backend import CpuBackend

NET = """\
input image : f32[4, 3, 8, 8]
input label : i64[4]
conv1 = conv2d(image, out=6, kernel=3, pad=1)
relu1 = relu(conv1, negative_slope={slope})
conv2 = conv2d(relu1, out=5, kernel=3, pad=1)
relu2 = relu(conv2)
skip = conv2d(relu1, out=5, kernel=3, pad=1)
both = add(relu2, skip)
flat = flatten(both)
fc1 = linear(flat, out=7)
relu3 = relu(fc1)
fc2 = linear(relu3, out=3)
loss = softmax_cross_entropy(fc2, label)
"""


def _compiled(tmp_path, slope: float, prune: bool = True, **kw):
    path = tmp_path / "net.bw"
    path.write_text(NET.format(slope=slope))
    return bwplan.compile(str(path), target="cpu", seed=3, prune=prune, **kw)


def _batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((4, 3, 8, 8)).astype(np.float32),
            "label": rng.integers(0, 3, 4)}


def test_lowering_pairs_each_bias_with_its_single_writer(tmp_path):
    program = _compiled(tmp_path, 0.0).program
    paired = {(s.layer, s.param): program.backward[s.sum_of]
              for s in program.backward if s.sum_of >= 0}
    # conv2's, skip's and fc2's d(out) each have one writer (relu2's dX, add's dX, the
    # loss's dX); conv1's d(out) is written by relu1's dX alone
    assert {layer for layer, _ in paired} == {"conv1", "conv2", "skip", "fc1", "fc2"}
    for (layer, _), writer in paired.items():
        assert writer.phase == "dx" and writer.target.tensor == layer and not writer.accumulate
    # relu1's d(out) has two writers (conv2's and skip's dX): relu1 has no bias, and the
    # weight gradients are never paired
    assert all(program.backward[s.sum_of].target.tensor == s.layer
               for s in program.backward if s.sum_of >= 0)
    assert not any(s.sum_of >= 0 for s in program.backward if s.component.wrt != "bias")


@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_fused_bias_gradients_match_the_separate_kernels(tmp_path, monkeypatch, slope):
    batch = _batch()
    fused = _compiled(tmp_path, slope)
    stats = fused.run_step(batch).stats
    # every bias after a relu is summed in relu's dX pass; the others run their own kernel
    summed = [f for f in stats.fused if f[1] == "dw:bias"]
    assert sorted(summed) == [("conv1", "dw:bias"), ("conv2", "dw:bias"), ("fc1", "dw:bias")]
    monkeypatch.setattr(CpuBackend, "channel_sum_kernel", lambda self, op, component: None)
    separate = _compiled(tmp_path, slope)
    assert [f for f in separate.run_step(batch).stats.fused if f[1] == "dw:bias"] == []
    # same seed, same batches: the parameters after two steps agree to float32 rounding
    fused.run_step(_batch(1))
    separate.run_step(_batch(1))
    for name in fused.params:
        np.testing.assert_allclose(fused.params[name], separate.params[name], rtol=2e-6,
                                   atol=1e-7, err_msg=name)


def test_frozen_rows_and_later_uses_are_not_paired(tmp_path):
    program = _compiled(tmp_path, 0.0, freeze=["conv2.bias[0:2]"]).program
    assert not any(s.sum_of >= 0 for s in program.backward if s.layer == "conv2")
    assert any(s.sum_of >= 0 for s in program.backward if s.layer == "conv1")


def test_the_schedule_json_says_which_step_sums(tmp_path):
    import json
    prog = _compiled(tmp_path, 0.0)
    backward = json.loads(prog.program_json())["backward"]
    paired = {(s["layer"], s["component"]): backward[s["sum_of"]]["layer"]
              for s in backward if s["sum_of"] >= 0}
    assert paired[("conv1", "dw:bias")] == "relu1"
    assert paired[("fc1", "dw:bias")] == "relu3"
    assert all(s["sum_of"] == -1 for s in backward if s["component"] != "dw:bias")
