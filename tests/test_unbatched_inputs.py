"""Inputs without a batch axis (`input p: f32[1, 2, 64] unbatched`; Caffe's PriorBox tops and
AnnotatedData labels): a batch change leaves them, the batch checks skip them, a data file
gives them whole and data sharding hands every rank the whole array."""
from __future__ import annotations

import types

import numpy as np
import pytest

import bwplan
from bwplan.cli.main import main
from bwplan.frontend.load import load_bw_text
from bwplan.runtime.data import load_dataset, save_arrays
from bwplan.runtime.distributed import DataParallel
from test_caffe_public_nets import NETS, _ssd_batch


@pytest.fixture(scope="module")
def ssd(tmp_path_factory):
    bw = tmp_path_factory.mktemp("ssd") / "ssd.bw"
    assert main(["convert", str(NETS / "ssd300_vgg_train.prototxt"), "--input-shape",
                 "data=2,3,32,32", "--input-shape", "label=1,1,6,8", "-o", str(bw)]) == 0
    return bw


def test_the_bw_spelling_marks_the_inputs(ssd):
    net = load_bw_text(ssd.read_text(), str(ssd))
    batched = {i.name: i.batched for i in net.inputs}
    assert batched == {"data": True, "label": False, "conv4_3_norm_mbox_priorbox": False}


def test_a_data_file_gives_unbatched_arrays_whole(ssd, tmp_path, capsys):
    batch = _ssd_batch(2)
    data = tmp_path / "ssd.npz"
    # four images; the boxes name images 0 and 1 of each batch of two
    save_arrays(str(data), {"data": np.concatenate([batch["data"]] * 2),
                            "label": batch["label"],
                            "conv4_3_norm_mbox_priorbox": batch["conv4_3_norm_mbox_priorbox"]})
    loaded = load_dataset(str(data), ["data", "label", "conv4_3_norm_mbox_priorbox"],
                          unbatched=frozenset({"label", "conv4_3_norm_mbox_priorbox"}))
    assert loaded.size == 4
    got = [b for _, b in loaded.batches(2, None)]
    assert len(got) == 2 and all(b["label"].shape == (1, 1, 6, 8) for b in got)
    assert main(["train", str(ssd), "--data", str(data), "--batch", "2", "--epochs", "2",
                 "--target", "reference", "--lr", "0.001"]) == 0
    err = capsys.readouterr()
    assert "Traceback" not in err.err


def test_an_unbatched_array_of_another_shape_is_a_data_error(ssd, tmp_path, capsys):
    batch = _ssd_batch(2)
    data = tmp_path / "bad.npz"
    save_arrays(str(data), {"data": batch["data"], "label": batch["label"],
                            "conv4_3_norm_mbox_priorbox":
                                np.concatenate([batch["conv4_3_norm_mbox_priorbox"]] * 2)})
    assert main(["train", str(ssd), "--data", str(data), "--batch", "2",
                 "--target", "reference"]) == 2
    err = capsys.readouterr().err
    assert ("array 'conv4_3_norm_mbox_priorbox' has shape [2, 2, 1024]; the net's input "
            "'conv4_3_norm_mbox_priorbox' is [1, 2, 1024] (unbatched") in " ".join(err.split())
    assert "Traceback" not in err


def test_every_rank_gets_the_whole_unbatched_arrays(ssd):
    prog = bwplan.compile(str(ssd), target="reference")
    batch = _ssd_batch(4)
    dp = DataParallel(prog, types.SimpleNamespace(rank=1, size=2))
    local = dp.local(batch)
    np.testing.assert_array_equal(local["data"], batch["data"][2:])
    assert local["label"] is batch["label"]
    assert local["conv4_3_norm_mbox_priorbox"] is batch["conv4_3_norm_mbox_priorbox"]
    assert dp.share == 0.5 and not dp.is_empty(local)


def test_the_priors_do_not_follow_a_batch_change_from_one():
    # the file's batch_size 1 is the priors' leading 1 too: --input-shape data=2,... moves
    # the image's batch, never the priors'
    from bwplan.caffe.importer import import_caffe_text
    text = (NETS / "ssd300_vgg_train.prototxt").read_text()
    assert "batch_size: 2" in text
    net = import_caffe_text(text.replace("batch_size: 2", "batch_size: 1"), "ssd.prototxt",
                            input_shapes={"data": (2, 3, 32, 32),
                                          "label": (1, 1, 4, 8)}).net
    shapes = {i.name: (i.type.shape, i.batched) for i in net.inputs}
    assert shapes == {"data": ((2, 3, 32, 32), True), "label": ((1, 1, 4, 8), False),
                      "conv4_3_norm_mbox_priorbox": ((1, 2, 1024), False)}


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_boxes_naming_an_image_beyond_the_batch_are_a_data_error(ssd, tmp_path, target,
                                                                   capsys):
    # the last batch of three images in twos holds one image; the boxes of image 1 then
    # name no image of it: exit 2 with the row, never a traceback
    batch = _ssd_batch(2)
    data = tmp_path / "odd.npz"
    save_arrays(str(data), {"data": np.concatenate([batch["data"]] * 2)[:3],
                            "label": batch["label"],
                            "conv4_3_norm_mbox_priorbox": batch["conv4_3_norm_mbox_priorbox"]})
    assert main(["train", str(ssd), "--data", str(data), "--batch", "2", "--epochs", "1",
                 "--target", target]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "its image is beyond the batch of 1" in err and "Traceback" not in err
