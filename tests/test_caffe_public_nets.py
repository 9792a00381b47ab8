"""Excerpts of public Caffe nets (tests/caffe_nets/, written for these tests with the layer
types and fields the public files use, at small sizes): each imports with no flag beyond
`--input-shape`, and `explain`, `explain --caffe`, `--freeze`, `convert` and the .bw round
trip agree with each other and with Caffe's decisions."""
from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import numpy as np
import pytest

import bwplan
from bwplan.caffe.importer import import_caffe_text
from bwplan.cli.main import main
from bwplan.errors import BwError, CaffeError
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
    "ssd300_vgg_train": (("label=1,1,3,8",), "conv4_3*"),
    "resnet50_deploy": ((), "res2a_branch*"),
    "inception_v3_deploy": ((), "conv_*"),
    "mobilenet_v1_deploy": ((), "conv1*"),
    "mobilenet_v2_deploy": ((), "conv2_1/*"),
    "squeezenet_v1_1_train_val": ((), "fire2/*"),
    "xception_deploy": ((), "xception1_*"),
    "fcn8s_deploy": ((), "conv*"),
    # the Python layers' tops: the documented stop-point import
    "faster_rcnn_train": (("data=1,3,32,48", "im_info=1,3", "gt_boxes=4,5",
                           "rpn_labels=1,1,18,3", "rpn_bbox_targets=1,36,2,3",
                           "rpn_bbox_inside_weights=1,36,2,3",
                           "rpn_bbox_outside_weights=1,36,2,3", "rpn_rois=8,5", "rois=8,5",
                           "labels=8", "bbox_targets=8,12", "bbox_inside_weights=8,12",
                           "bbox_outside_weights=8,12"), "conv*"),
    "openpose_train": ((), "conv*"),
    "mnist_autoencoder": (("data=2,1,28,28",), "encode*"),
    "mnist_siamese_train_test": (("pair_data=2,2,28,28",), "ip1*"),
    "cifar10_full_sigmoid_train_test_bn": (("data=2,3,32,32",), "conv1"),
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
                if line.startswith("warning") or re.match(r"\S+:\d+:\d+:( |$)", line)),
               len(body))
    # a reason may cite where a setting is written (weight.lr=0 at FILE:LINE:COL): in the
    # prototxt or in the .bw
    return re.sub(r" at \S+:\d+:\d+\)", " at <source>)", _words("\n".join(body[:end])))


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
    assert len(result.built_as) == len(result.caffe.layers)
    for layer, built in zip(result.caffe.layers, result.built_as):
        for ir_name in built if layer.source else ():
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


def _ssd_batch(n: int = 1) -> dict[str, np.ndarray]:
    """SSD300's blobs at the excerpt's size for n images: an 8 x 8 map with 4 priors per
    cell (min 30, max 60 pixels of 32, aspect ratio 2 flipped, clipped), and three boxes
    (one difficult) per image, each row naming its image: the priors and the boxes have no
    batch axis."""
    rng = np.random.default_rng(3)
    c = (np.arange(8) + 0.5) / 8
    cx, cy = (a.ravel() for a in np.meshgrid(c, c))
    sizes = [(30 / 32, 30 / 32), (np.sqrt(30 * 60) / 32,) * 2,
             (30 / 32 * np.sqrt(2), 30 / 32 / np.sqrt(2)),
             (30 / 32 / np.sqrt(2), 30 / 32 * np.sqrt(2))]
    boxes = np.stack([np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
                      for w, h in sizes], 1).reshape(-1, 4).clip(0, 1)
    priors = np.stack([boxes.ravel(), np.tile([0.1, 0.1, 0.2, 0.2], len(boxes))])
    gt = np.array([[0, 12, 0, 0.1, 0.2, 0.6, 0.9, 0], [0, 3, 1, 0.5, 0.5, 0.9, 0.8, 0],
                   [0, 7, 2, 0.2, 0.1, 0.5, 0.6, 1]])
    # image i's boxes shifted a little, so that every image matches other priors
    gt = np.concatenate([gt + [i, 0, 0, 0.05 * i, 0.03 * i, 0.05 * i, 0, 0]
                         for i in range(n)])
    return {"data": rng.standard_normal((n, 3, 32, 32)).astype(np.float32),
            "label": gt.reshape(1, 1, 3 * n, 8).astype(np.float32),
            "conv4_3_norm_mbox_priorbox": priors.reshape(1, 2, -1).astype(np.float32)}


def test_ssd300_trains_on_the_cpu_as_the_references_compute(tmp_path):
    bw = tmp_path / "ssd.bw"
    assert main(["convert", str(NETS / "ssd300_vgg_train.prototxt"), "--input-shape",
                 "data=1,3,32,32", *_args("ssd300_vgg_train"), "-o", str(bw)]) == 0
    batch = _ssd_batch()
    cpu = bwplan.compile(str(bw), target="cpu")
    ref = bwplan.compile(str(bw), target="reference")
    ref.params = {k: v.copy() for k, v in cpu.params.items()}
    got, want = cpu.run_step(batch), ref.run_step(batch)
    assert np.isfinite(got.loss) and got.loss > 0
    assert got.loss == pytest.approx(want.loss, rel=1e-5)
    assert set(cpu.grads) == set(ref.grads) and "conv4_3_norm_mbox_conf.weight" in cpu.grads
    for name, grad in cpu.grads.items():
        np.testing.assert_allclose(grad, ref.grads[name], rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("n", [2, 3])
def test_ssd300_trains_with_a_batch_of_several_images(n, tmp_path):
    # the priors and the ground truth have no batch axis: the import marks them unbatched,
    # a batch of n images leaves them at their shapes, and the rows of the ground truth
    # name their images
    bw = tmp_path / "ssd.bw"
    assert main(["convert", str(NETS / "ssd300_vgg_train.prototxt"), "--input-shape",
                 f"data={n},3,32,32", "--input-shape", f"label=1,1,{3 * n},8",
                 "-o", str(bw)]) == 0
    text = bw.read_text()
    assert f"input label: f32[1, 1, {3 * n}, 8] unbatched" in text
    assert "input conv4_3_norm_mbox_priorbox: f32[1, 2, 1024] unbatched" in text
    assert f"input data: f32[{n}, 3, 32, 32]\n" in text
    batch = _ssd_batch(n)
    cpu = bwplan.compile(str(bw), target="cpu")
    ref = bwplan.compile(str(bw), target="reference")
    ref.params = {k: v.copy() for k, v in cpu.params.items()}
    got, want = cpu.run_step(batch), ref.run_step(batch)
    assert np.isfinite(got.loss) and got.loss > 0
    assert got.loss == pytest.approx(want.loss, rel=1e-5)
    assert set(cpu.grads) == set(ref.grads)
    for name, grad in cpu.grads.items():
        np.testing.assert_allclose(grad, ref.grads[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_a_batch_change_at_run_time_leaves_the_unbatched_inputs(tmp_path):
    # compiled for one image, run on two: only the image's batch changes; the two-image
    # step equals the one compiled for two images
    one, two = tmp_path / "one.bw", tmp_path / "two.bw"
    for path, n in ((one, 1), (two, 2)):
        assert main(["convert", str(NETS / "ssd300_vgg_train.prototxt"), "--input-shape",
                     f"data={n},3,32,32", "--input-shape", "label=1,1,6,8",
                     "-o", str(path)]) == 0
    batch = _ssd_batch(2)
    rebatched, compiled = (bwplan.compile(str(p), target="reference") for p in (one, two))
    compiled.params = {k: v.copy() for k, v in rebatched.params.items()}
    assert rebatched.run_step(batch).loss == pytest.approx(compiled.run_step(batch).loss,
                                                           rel=1e-6)
    for name, grad in rebatched.grads.items():
        np.testing.assert_allclose(grad, compiled.grads[name], rtol=1e-6, err_msg=name)
    wrong = dict(batch, label=np.concatenate([batch["label"]] * 2))
    with pytest.raises(BwError) as info:
        rebatched.run_step(wrong)
    assert "input 'label' has shape [2, 1, 6, 8]" in info.value.message
    assert "it has no batch axis" in info.value.message


def test_the_cuda_target_compiles_ssd300_with_its_multiboxloss(tmp_path, capsys,
                                                              monkeypatch):
    """The whole net's CUDA source (its Normalize, Permute, Concat and MultiBoxLoss
    kernels) is written (nvcc left out: test_cuda_compile.py compiles the kernel files)."""
    from bwplan.kernels.cuda import build
    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    path = str(NETS / "ssd300_vgg_train.prototxt")
    assert main(["compile", path, *_args("ssd300_vgg_train"), "--target", "cuda",
                 "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    source = (tmp_path / "out" / "ssd300_vgg_train.cu").read_text()
    for kernel in ("multibox_bipartite", "multibox_mine", "multibox_loss_dx_conf",
                   "normalize_fwd"):
        assert f"{kernel}(" in source, kernel
    assert "nvcc not found" in out


def test_a_background_box_in_the_ground_truth_is_refused(tmp_path):
    bw = tmp_path / "ssd.bw"
    assert main(["convert", str(NETS / "ssd300_vgg_train.prototxt"), "--input-shape",
                 "data=1,3,32,32", *_args("ssd300_vgg_train"), "-o", str(bw)]) == 0
    batch = _ssd_batch()
    batch["label"][0, 0, 1, 1] = 0
    with pytest.raises(BwError) as info:
        bwplan.compile(str(bw)).run_step(batch)
    assert "its label is the background 0" in info.value.message


@pytest.mark.parametrize("edit, words", [
    (("code_type: CENTER_SIZE", "code_type: CORNER"), "code_type: CORNER is not supported"),
    (("mining_type: MAX_NEGATIVE", "mining_type: HARD_EXAMPLE"), "HARD_EXAMPLE"),
    (("propagate_down: true\n  propagate_down: true", "propagate_down: true\n"
      "  propagate_down: false"), "propagate_down: false on bottom 1"),
    (("num_classes: 21", ""), "needs num_classes"),
])
def test_multibox_settings_bwplan_does_not_implement_are_errors(edit, words):
    text = (NETS / "ssd300_vgg_train.prototxt").read_text()
    assert edit[0] in text
    with pytest.raises(CaffeError) as info:
        import_caffe_text(text.replace(*edit), "ssd.prototxt",
                          input_shapes={"label": (1, 1, 3, 8)})
    assert words in info.value.message


def test_two_layers_of_one_name_are_told_apart():
    # BVLC's mnist_autoencoder names both its losses "loss"; the l2 one (loss_weight 0)
    # needs no backward, and the Caffe view compares each with the layer it became
    result = _imported("mnist_autoencoder")
    losses = [(layer.need_backward, built) for layer, built
              in zip(result.caffe.layers, result.built_as) if layer.name == "loss"]
    assert losses == [(True, ("loss",)), (False, ("loss_2",))]
    assert result.net.layer("loss").op == "sigmoid_cross_entropy_loss"
    assert result.net.layer("loss_2").loss_weight == 0


def test_siamese_with_conv2_frozen_in_both_towers_warns_nothing_false():
    # issue 9: one warning said bwplan skips the shared gradient in conv2_p while the plan
    # computed it; conv2's weight and bias (shared by name) have lr_mult 0 in both uses
    result = _imported("mnist_siamese_train_test")
    plan = make_plan(result.net)
    for name in ("conv2", "conv2_p"):
        assert not any(d.needed for d in plan.layer(name).dw), name
        assert plan.layer(name).dx[0].needed, name     # conv1 below still trains
    assert not [w for w in result.warnings if "conv2" in w.text]
