"""Caffe's metric layers as bwplan metrics: Accuracy with `ignore_label` and its second,
per-class top (SegNet's train nets), and the DeepLab fork's SegAccuracy. Each is a stop of
the plan (computed, never differentiated); a training step computes them with the compiled
kernels and reports a vector metric one element per entry. The expected values are worked
out by hand from Caffe's AccuracyLayer and the fork's ConfusionMatrix."""
from __future__ import annotations

import numpy as np
import pytest

import bwplan
from bwplan.caffe.importer import import_caffe_text
from bwplan.cli.main import main
from bwplan.errors import BwError, CaffeError
from bwplan.plan.plan import make_plan

NET = """\
name: "seg"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 1 dim: 2 } shape { dim: 2 dim: 1 dim: 1 dim: 2 } } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
  convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  loss_param { ignore_label: 2 } }
layer { name: "accuracy" type: "Accuracy" bottom: "score" bottom: "label"
  top: "accuracy" top: "per_class_accuracy" accuracy_param { ignore_label: 2 } }
layer { name: "segacc" type: "SegAccuracy" bottom: "score" bottom: "label" top: "segacc"
  seg_accuracy_param { ignore_label: 2 ignore_label: 255 } }
"""


def test_the_metric_layers_import_as_stops_of_the_plan():
    result = import_caffe_text(NET, "seg.prototxt")
    net = result.net
    assert result.layer_map["accuracy"] == ("accuracy", "per_class_accuracy")
    per_class = net.layer("per_class_accuracy")
    assert per_class.op == "accuracy_per_class" and per_class.out.shape == (3,)
    assert per_class.attrs["ignore_label"] == 2 == net.layer("accuracy").attrs["ignore_label"]
    seg = net.layer("segacc")
    assert seg.op == "seg_accuracy" and seg.attrs["ignore_label"] == (2, 255)
    assert seg.out.shape == (1, 1, 1, 3)
    plan = make_plan(net)
    for name in ("accuracy", "per_class_accuracy", "segacc"):
        lp = plan.layer(name)
        assert lp.forward.needed and not lp.has_backward, name
        assert not any(d.needed for d in lp.dx), name
    # the metrics read the scores; nothing flows back from them into the conv
    assert plan.layer("score").has_backward


def test_explain_calls_them_metrics(tmp_path, capsys):
    path = tmp_path / "seg.prototxt"
    path.write_text(NET)
    assert main(["explain", str(path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for name in ("per_class_accuracy", "segacc"):
        assert f"{name} it is a metric" in out


def _fixed_scores(net: bwplan.CompiledNet) -> None:
    """score = the data itself (a 1x1 conv with the identity weight), so the test picks
    the scores."""
    net.params = {**net.params, "score.weight": np.eye(3, dtype=np.float32)[:, :, None, None],
                  "score.bias": np.zeros(3, np.float32)}


# scores per pixel (n, w) over 3 classes; labels with the ignored 2
SCORES = np.array([[[1, 0, 0], [0, 2, 1]], [[0, 0, 3], [5, 5, 0]]], np.float32)
LABELS = np.array([[0, 2], [1, 1]])


def _batch(labels) -> dict[str, np.ndarray]:
    data = np.moveaxis(SCORES, -1, 1)[:, :, None, :]      # (2, 3, 1, 2)
    return {"data": np.ascontiguousarray(data), "label": labels.reshape(2, 1, 1, 2)}


@pytest.mark.parametrize("target", ["cpu", "reference"])
def test_a_training_step_computes_and_reports_them(tmp_path, target):
    path = tmp_path / "seg.prototxt"
    path.write_text(NET)
    net = bwplan.compile(str(path), target=target)
    _fixed_scores(net)
    # pixels: (0,0) label 0, top 0: hit; (0,1) label 2: ignored by both; (1,0) label 1,
    # top 2: miss; (1,1) label 1, scores 5, 5 tied: Accuracy counts the tie as ranked
    # above the label, a miss; SegAccuracy gives the tie to the higher class, 1: a hit
    metrics = net.run_step(_batch(LABELS)).metrics
    assert metrics["accuracy"] == pytest.approx(1 / 3)
    assert [metrics[f"per_class_accuracy[{k}]"] for k in range(3)] == \
        pytest.approx([1.0, 0.0, 0.0])
    # confusion (true, predicted): (0, 0), (1, 2), (1, 1); pixel accuracy 2/3; class
    # accuracy over the present classes 0 and 1: (1 + 1/2) / 2; IoU: class 0 1/1,
    # class 1 1/2, class 2 0/1, mean 1/2
    assert [metrics[f"segacc[{k}]"] for k in range(3)] == pytest.approx([2 / 3, 0.75, 0.5])


def test_nothing_counted_scores_zero_as_in_caffe(tmp_path):
    path = tmp_path / "seg.prototxt"
    path.write_text(NET)
    net = bwplan.compile(str(path))
    metrics = net.run_step(_batch(np.array([[2, 2], [2, 2]]))).metrics
    assert metrics["accuracy"] == 0.0
    assert all(metrics[f"per_class_accuracy[{k}]"] == 0.0 for k in range(3))
    # no pixel: pixel and class accuracy 0, every class's IoU (empty union) 1
    assert [metrics[f"segacc[{k}]"] for k in range(3)] == [0.0, 0.0, 1.0]


def test_a_label_outside_the_classes_and_not_ignored_is_refused():
    net = bwplan.compile("input s : f32[1, 3, 1, 2]\ninput y : i64[1, 1, 1, 2]\n"
                         "fc = conv2d(s, out=3, kernel=1)\nloss = euclidean_loss(fc, s)\n"
                         "m = seg_accuracy(fc, y, ignore_label=[255, 9])\n")
    s = np.ones((1, 3, 1, 2), np.float32)
    metrics = net.run_step({"s": s, "y": np.array([255, 9]).reshape(1, 1, 1, 2)}).metrics
    assert metrics == {"m[0]": 0.0, "m[1]": 0.0, "m[2]": 1.0}
    with pytest.raises(BwError) as info:
        net.run_step({"s": s, "y": np.array([255, 7]).reshape(1, 1, 1, 2)})
    assert "label 7" in info.value.message
    assert "takes classes 0-2 or the ignore labels 255, 9" in info.value.message


def test_train_prints_every_element_of_a_vector_metric(tmp_path, capsys):
    path = tmp_path / "seg.prototxt"
    path.write_text(NET)
    batch = _batch(LABELS)
    np.savez(tmp_path / "d.npz", **batch, **{f"val/{k}": v for k, v in batch.items()})
    assert main(["train", str(path), "--data", str(tmp_path / "d.npz"), "--epochs", "1",
                 "--batch", "2", "--lr", "0", "--target", "reference"]) == 0
    out = capsys.readouterr().out
    assert "per_class_accuracy[2]" in out and "segacc[1]" in out


@pytest.mark.parametrize("param, words", [
    ("seg_accuracy_param { reset: false }", "reset: false"),
    ("seg_accuracy_param { metric: IOUAccuracy }", "metric IOUAccuracy"),
])
def test_segaccuracy_settings_bwplan_cannot_keep_are_errors(param, words):
    text = NET.replace("seg_accuracy_param { ignore_label: 2 ignore_label: 255 }", param)
    with pytest.raises(CaffeError) as info:
        import_caffe_text(text, "seg.prototxt")
    assert words in info.value.message and info.value.span.line == 11


def test_caffe_view_lists_them_as_needing_no_backward(tmp_path, capsys):
    path = tmp_path / "seg.prototxt"
    path.write_text(NET)
    assert main(["explain", "--caffe", str(path)]) == 0
    out = capsys.readouterr().out
    assert "segacc does not need backward computation." in out
    assert "accuracy does not need backward computation." in out
