"""The README demo end to end on the packaged digits data: pretrain, save, fine-tune a new
head with the backbone frozen, and check the accuracy; plus the compile artifact, the
frozen-prefix cache and gradual unfreezing through the command line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bwplan.cli.main import main

EXAMPLES = Path(__file__).parents[1] / "examples"
pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    d = tmp_path_factory.mktemp("digits")
    assert main(["data", "digits", "--classes", "0-4", "-o", str(d / "a.npz")]) == 0
    assert main(["data", "digits", "--classes", "5-9", "-o", str(d / "b.npz")]) == 0
    return d


def test_pretrain_then_finetune_a_new_head(digits, capsys):
    d = digits
    assert main(["train", str(EXAMPLES / "digits_pretrain.bw"), "--data", str(d / "a.npz"),
                 "--epochs", "4", "--lr", "0.05", "--batch", "64", "--target", "reference",
                 "--out", str(d / "backbone.npz")]) == 0
    out = capsys.readouterr().out
    pretrain_acc = float(out.split("acc ")[-1])
    assert pretrain_acc > 0.9, out
    backbone = dict(np.load(d / "backbone.npz"))
    assert main(["train", str(EXAMPLES / "digits_finetune.bw"), "--data", str(d / "b.npz"),
                 "--weights", str(d / "backbone.npz"), "--skip", "head.*", "--epochs", "8",
                 "--lr", "0.05", "--target", "reference", "--out", str(d / "tuned.npz"),
                 "--profile"]) == 0
    out = capsys.readouterr().out
    assert float(out.split("acc ")[1].split()[0].rstrip(",")) > 0.6, out
    assert "dw        2 kernels" in out and "dx        1 kernel " in out
    tuned = dict(np.load(d / "tuned.npz"))
    for frozen in ("conv1.weight", "conv2.weight", "feat.weight", "feat.bias"):
        assert np.array_equal(tuned[frozen], backbone[frozen])
    assert not np.array_equal(tuned["head.weight"], backbone["head.weight"])


def test_cached_prefix_trains_like_the_uncached_run(digits, capsys):
    d = digits
    args = ["train", str(EXAMPLES / "digits_finetune.bw"), "--data", str(d / "b.npz"),
            "--epochs", "3", "--lr", "0.05", "--target", "reference", "--seed", "3"]
    assert main(args + ["--out", str(d / "plain.npz")]) == 0
    assert main(args + ["--out", str(d / "cached.npz"), "--cache-frozen", "--profile"]) == 0
    out = capsys.readouterr().out
    assert "fwd       3 kernels" in out  # the prefix's 7 forward kernels did not run
    plain, cached = dict(np.load(d / "plain.npz")), dict(np.load(d / "cached.npz"))
    for k in plain:
        np.testing.assert_allclose(cached[k], plain[k], rtol=1e-5, atol=1e-6)


def test_gradual_unfreezing_schedule(digits, tmp_path, capsys):
    sched = tmp_path / "stages.txt"
    sched.write_text("# epoch action pattern\n2 unfreeze feat\n3 unfreeze conv*\n")
    assert main(["train", str(EXAMPLES / "digits_finetune.bw"), "--data",
                 str(digits / "b.npz"), "--epochs", "3", "--target", "reference",
                 "--schedule", str(sched), "--profile"]) == 0
    out = capsys.readouterr().out
    assert "dw        8 kernels" in out  # every layer trains in the last stage
    sched.write_text("2 thaw feat\n")
    assert main(["train", str(EXAMPLES / "digits_finetune.bw"), "--data",
                 str(digits / "b.npz"), "--schedule", str(sched)]) == 2
    assert "stages.txt:1:1: error" in capsys.readouterr().err


def test_train_reports_data_mismatches(tmp_path, capsys):
    np.savez(tmp_path / "wrong.npz", pixels=np.zeros((4, 1, 8, 8), np.float32))
    assert main(["train", str(EXAMPLES / "digits_pretrain.bw"), "--data",
                 str(tmp_path / "wrong.npz")]) == 2
    err = capsys.readouterr().err
    assert "lacks arrays for the net's inputs: image, label" in err


def test_compile_writes_the_artifact(tmp_path, capsys):
    out = tmp_path / "art"
    assert main(["compile", str(EXAMPLES / "frozen_backbone.bw"), "--target", "reference",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "skipped:" in text and "conv1: dW conv1.weight (dw_frozen)" in text
    schedule = json.loads((out / "schedule.json").read_text())
    assert {s["layer"] for s in schedule["backward"]} == {"loss", "fc2", "relu4", "fc1"}
    plan = json.loads((out / "plan.json").read_text())
    assert plan["schema"] == "bwplan.plan/1"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pruned"] and (out / manifest["source"]).exists()
    full = tmp_path / "full"
    assert main(["compile", str(EXAMPLES / "frozen_backbone.bw"), "--target", "reference",
                 "-o", str(full), "--no-prune"]) == 0
    schedule_full = json.loads((full / "schedule.json").read_text())
    assert len(schedule_full["backward"]) > len(schedule["backward"])
