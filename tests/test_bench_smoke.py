"""The benchmark suite's own machinery on one small case: the figures it reports are
consistent with the plan (timings themselves belong to bench/, not to tests)."""
from __future__ import annotations

from bench.measure import Ratio, interleaved, percentile
from bench.nets import NETWORKS, scenario_rules
from bench.report import markdown
from bench.suite import run_case


def test_interleaved_measures_wall_time_of_each_contestant():
    import time
    timings = interleaved({"slow": lambda: time.sleep(0.02), "fast": lambda: 1.5}, 0, 3)
    assert timings["slow"].median >= 0.02 > timings["fast"].median
    assert len(timings["fast"].samples) == 3


def test_interleaved_rotates_the_start_and_records_cpu_time():
    order = []
    runs = {k: (lambda k=k: order.append(k)) for k in "abc"}
    timings = interleaved(runs, 1, 3)
    assert order == list("abc" "bca" "cab" "abc")
    assert all(len(t.cpu) == 3 and min(t.cpu) >= 0 for t in timings.values())


def test_paired_ratios_and_percentiles():
    assert percentile([4, 1, 3, 2, 5], 0.5) == 3 and percentile([0, 10], 0.1) == 1
    r = Ratio.of((2.0, 4.0, 9.0), (1.0, 2.0, 3.0))  # per round: 2, 2, 3
    assert (r.median, r.rounds) == (2.0, 3) and r.p10 == 2.0 and 2.0 < r.p90 <= 3.0


def test_scenarios_freeze_what_they_say():
    import bwplan
    net = bwplan.compile(str(NETWORKS["cnn_small"].path), target="reference").net
    head = bwplan.make_plan(bwplan.apply_policy(net, scenario_rules(net, "head")))
    trained = {l.name for l in head.layers if any(d.needed for d in l.dw)}
    assert trained == {"fc2"}
    top3 = bwplan.make_plan(bwplan.apply_policy(net, scenario_rules(net, "top3")))
    assert {l.name for l in top3.layers if any(d.needed for d in l.dw)} == {"conv3", "fc1", "fc2"}
    mid = bwplan.make_plan(bwplan.apply_policy(net, scenario_rules(net, "mid_frozen")))
    frozen = [l.name for l in mid.layers if l.dw and not any(d.needed for d in l.dw)]
    assert frozen == ["conv3"] and mid.layer("conv3").dx[0].needed


def test_the_class_incremental_scenario_slices_the_head():
    import bwplan
    net = bwplan.compile(str(NETWORKS["cnn_small"].path), target="reference").net
    rules = scenario_rules(net, "head_rows90")
    assert rules[-2:] == [("freeze", "fc2.weight[0:9]"), ("freeze", "fc2.bias[0:9]")]
    rows = bwplan.make_plan(bwplan.apply_policy(net, rules))
    head = bwplan.make_plan(bwplan.apply_policy(net, scenario_rules(net, "head")))
    assert {l.name for l in rows.layers if any(d.needed for d in l.dw)} == {"fc2"}
    # 1 of fc2's 10 output rows trains: a tenth of its dW and db, the loss's dX unchanged
    loss_dx = rows.layer("loss").bwd_flops
    assert loss_dx == head.layer("loss").bwd_flops
    assert rows.layer("fc2").bwd_flops * 10 == head.layer("fc2").bwd_flops
    assert rows.summary.planned_bwd_flops == loss_dx + head.layer("fc2").bwd_flops // 10


def test_one_case_end_to_end():
    row = run_case(NETWORKS["siamese_mlp"], "head", "cpu", warmup=0, repeats=2,
                   with_torch=False)
    # the head trains fc alone; unpruned, both towers (4 uses) and fc compute their dW
    assert row["kernels"]["pruned"]["dw"] == 2 and row["kernels"]["full"]["dw"] == 10
    assert row["flops"]["backward_planned"] < row["flops"]["backward_full"]
    assert row["peak_bytes"]["pruned"] <= row["peak_bytes"]["full"]
    assert row["peak_bytes"]["pruned"] == row["peak_bytes"]["planned_estimate"]
    assert 0 < row["saving"]["flop_backward"] <= 1
    assert "siamese_mlp | head" in markdown([row])


def test_torch_peer_variants_take_the_same_first_step():
    import numpy as np
    import pytest
    torch = pytest.importorskip("torch")
    import bwplan
    from bench.suite import DECAY, LR, MOMENTUM, random_batch
    from bench.torch_peer import TorchPeer
    prog = bwplan.compile(str(NETWORKS["cnn_small"].path), target="reference")
    batch = random_batch(prog.net)
    losses = {}
    for variant in ("eager", "channels_last"):
        peer = TorchPeer(prog.net, prog.params, LR, MOMENTUM, DECAY, variant)
        tbatch = peer.batch(batch)
        if variant == "channels_last":
            assert tbatch["image"].is_contiguous(memory_format=torch.channels_last)
        losses[variant] = peer.step(tbatch)
        assert peer.saved_bytes > 0
    np.testing.assert_allclose(losses["channels_last"], losses["eager"], rtol=1e-5)


def test_torch_at_its_best_is_the_fastest_variant_and_targets_say_so():
    from bench.measure import Timing
    from bench.report import _speed_targets
    from bench.suite import torch_comparison
    times = {"pruned": Timing.of([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]),
             "torch_eager": Timing.of([2.0, 2.0, 2.0], [2.0, 2.0, 2.0]),
             "torch_channels_last": Timing.of([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])}
    row = {"net": "n", "scenario": "s", **torch_comparison(times, ["eager", "channels_last"])}
    assert row["torch_best"] == "channels_last"
    assert row["vs_torch_best"]["wall"]["median"] == 2.0  # per round: 1, 2, 3
    assert row["vs_torch_eager"]["cpu"]["median"] == 0.5
    lines = _speed_targets([row], lambda ok: "met" if ok else "NOT met")
    assert "NOT met" in lines[0] and "n/s 2.00" in lines[0]  # 2.0 > 1.0x the best
    assert lines[1].endswith("NOT met (0 of 1 cases; wall 1.00-1.00, CPU time 0.50-0.50; "
                             "over: n/s 1.00)")


def test_torch_peer_puts_the_frozen_rows_back_and_steps_as_bwplan_does():
    """PyTorch's workaround for frozen rows (the whole dW, the rows restored after the step)
    gives the parameters bwplan's sliced step gives."""
    import numpy as np
    import pytest
    pytest.importorskip("torch")
    import bwplan
    from bench.suite import DECAY, LR, MOMENTUM, random_batch
    from bench.torch_peer import TorchPeer
    base = bwplan.compile(str(NETWORKS["cnn_small"].path), target="reference")
    prog = bwplan.compile(str(NETWORKS["cnn_small"].path), target="reference",
                          rules=scenario_rules(base.net, "head_rows90"))
    prog.set_optimizer(LR, MOMENTUM, DECAY)
    initial = {k: np.array(v) for k, v in prog.params.items()}
    batch = random_batch(prog.net)
    peer = TorchPeer(prog.net, initial, LR, MOMENTUM, DECAY)
    tbatch = peer.batch(batch)
    for _ in range(2):
        peer.step(tbatch)
        prog.step(batch)
    for k in ("fc2.weight", "fc2.bias"):
        theirs = peer.params[k].detach().numpy()
        assert np.array_equal(theirs[:9], initial[k][:9]), k
        assert np.array_equal(prog.params[k][:9], initial[k][:9]), k
        assert not np.allclose(theirs[9:], initial[k][9:]), k
        np.testing.assert_allclose(prog.params[k], theirs, rtol=1e-4, atol=1e-6, err_msg=k)


def test_conv_paths_runs_both_algorithms_to_the_same_first_loss(capsys):
    from bench import conv_paths
    from bwplan.kernels.cpu import conv

    threshold = conv.WINOGRAD_MIN_CHANNELS
    assert conv_paths.main(["--nets", "cnn_small", "--scenarios", "head", "--repeats", "1",
                            "--threads", "1"]) == 0
    assert conv.WINOGRAD_MIN_CHANNELS == threshold   # restored after each step
    row = next(line for line in capsys.readouterr().out.splitlines()
               if line.startswith("| cnn_small | head"))
    im2col, winograd = (float(v) for v in row.rstrip(" |").split("|")[-1].split("/"))
    assert abs(winograd - im2col) <= 1e-5 * abs(im2col)


def test_cold_start_runs_the_command_with_an_empty_cache(tmp_path):
    # the reference target compiles nothing, so this checks the harness, not the figures
    import numpy as np
    from bench.cold_start import measure, summary
    (tmp_path / "net.bw").write_text("input x : f32[4, 6]\ninput y : i64[4]\n"
                                     "fc = linear(x, out=3)\n"
                                     "loss = softmax_cross_entropy(fc, y)\n")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((8, 6)).astype(np.float32),
             y=rng.integers(0, 3, 8))
    doc = measure(tmp_path / "net.bw", tmp_path / "d.npz", runs=1, epochs=1,
                  target="reference")
    assert [r["cache"] for r in doc["runs"]] == ["cold", "warm"]
    for r in doc["runs"]:
        assert r["kernels"] == 0 and r["cpu"] > 0
        assert r["wall"] is None or r["wall"] > 0
    text = "\n".join(summary(doc))
    assert "CPU to the first step" in text and "warm cache: first step at" in text
