"""Excerpts of public Caffe nets (tests/caffe_nets/, written for these tests with the layer
types and fields the public files use, at small sizes): each imports with no flag beyond
`--input-shape`, and `explain`, `explain --caffe`, `--freeze`, `convert` and the .bw round
trip agree with each other and with Caffe's decisions."""
from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

import bwplan
from bwplan.caffe.importer import import_caffe_text
from bwplan.cli.main import main
from bwplan.frontend.load import load_bw_text
from bwplan.plan.plan import make_plan
from test_write_bw import summary

NETS = Path(__file__).parent / "caffe_nets"

# net -> (the --input-shape flags it needs, a --freeze pattern its users would write)
CASES = {
    "segnet_train": (("data=2,3,16,16", "label=2,1,16,16"), "conv1_*"),
    "segnet_inference": ((), "conv1_*"),
    "faster_rcnn_test": (("rois=8,5",), "conv*"),
    "enet_train": ((), "*0_1"),
    "pspnet_deploy": ((), "conv1_*"),
    "densenet121_deploy": ((), "conv1*"),
    "cifar10_full_train_test": (("data=2,3,32,32",), "conv1"),
}


def _shapes(flags: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(int(d) for d in v.split(",")) for k, v in (f.split("=") for f in flags)}


def _imported(case: str, **kw):
    path = NETS / f"{case}.prototxt"
    return import_caffe_text(path.read_text(), str(path),
                             input_shapes=_shapes(CASES[case][0]), **kw)


def _args(case: str) -> list[str]:
    return [a for flag in CASES[case][0] for a in ("--input-shape", flag)]


def _words(text: str) -> str:
    return " ".join(text.split())


def _table(explained: str) -> str:
    """explain's table, reasons, figures and updates: from the table to the first finding
    (findings name where they are, a line of the file explained)."""
    body = explained[explained.index("\nlayer "):].splitlines()
    end = next((i for i, line in enumerate(body)
                if line.startswith("warning") or re.match(r"\S+:\d+:\d+: ", line)), len(body))
    return _words("\n".join(body[:end]))


@pytest.mark.parametrize("case", sorted(CASES))
def test_explain_and_the_caffe_view_run_with_only_input_shapes(case, capsys):
    path = str(NETS / f"{case}.prototxt")
    assert main(["explain", path, *_args(case)]) == 0
    assert main(["explain", "--caffe", path, *_args(case)]) == 0
    out = capsys.readouterr()
    assert "bwplan cannot plan" not in out.out and "error" not in out.err


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_plan_never_computes_a_gradient_caffe_skips(case):
    result = _imported(case)
    plan = make_plan(result.net)
    for layer in result.caffe.layers:
        for ir_name in result.layer_map.get(layer.name, ()) if layer.source else ():
            if not layer.need_backward:
                assert not plan.layer(ir_name).has_backward, f"{case}: {ir_name}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_convert_round_trips_and_explains_the_same(case, tmp_path, capsys):
    path, bw = str(NETS / f"{case}.prototxt"), tmp_path / f"{case}.bw"
    assert main(["convert", path, *_args(case), "-o", str(bw)]) == 0
    assert summary(load_bw_text(bw.read_text(), str(bw))) == summary(_imported(case).net)
    freeze = ["--freeze", CASES[case][1]]
    capsys.readouterr()
    assert main(["explain", path, *_args(case), *freeze]) == 0
    from_prototxt = capsys.readouterr().out
    assert main(["explain", str(bw), *freeze]) == 0
    from_bw = capsys.readouterr().out
    # the same table, figures and reasons; only the header names the file, and only the
    # prototxt's import has warnings about Caffe
    assert _table(from_bw) == _table(from_prototxt)


@pytest.mark.parametrize("case", sorted(CASES))
def test_freezing_removes_the_frozen_layers_weight_gradients(case, tmp_path, capsys):
    path = str(NETS / f"{case}.prototxt")
    bw = tmp_path / "net.bw"
    assert main(["convert", path, *_args(case), "-o", str(bw)]) == 0
    pattern = CASES[case][1]
    net = bwplan.compile(str(bw), target="reference", freeze=[pattern])
    frozen = [l for l in net.plan.net.layers if fnmatch.fnmatchcase(l.name, pattern)]
    assert frozen, f"{pattern} freezes nothing in {case}"
    for layer in frozen:
        assert not any(d.needed for d in net.plan.layer(layer.name).dw), layer.name


def test_segnet_train_brings_its_metrics_and_class_weights():
    net = _imported("segnet_train").net
    assert net.layer("per_class_accuracy").op == "accuracy_per_class"
    assert net.layer("per_class_accuracy").out.shape == (4,)
    assert len(net.layer("loss").attrs["class_weights"]) == 4


def test_cifar10_full_label_follows_the_given_batch():
    # the LMDB image has no shape in the file; its label, batch_size 100, follows the
    # batch --input-shape gives the image
    net = _imported("cifar10_full_train_test").net
    assert net.input("label").type.shape == (2,)
    assert net.layer("norm1").op == "lrn_within_channel"


def test_ssd300_stops_only_at_multiboxloss_and_the_caffe_view_still_emulates(capsys):
    path = str(NETS / "ssd300_vgg_train.prototxt")
    flags = ["--input-shape", "label=1,1,3,8"]
    assert main(["explain", path, *flags]) == 2
    err = capsys.readouterr().err
    assert err.count(": error: ") == 1 and "'MultiBoxLoss'" in err
    assert main(["explain", "--caffe", path, *flags]) == 0
    out = capsys.readouterr().out
    assert "conv4_3_norm_mbox_conf needs backward computation." in out
    assert "mbox_priorbox does not need backward computation." in out
