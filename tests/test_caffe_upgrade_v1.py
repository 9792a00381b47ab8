"""V1 nets (`layers { type: CONVOLUTION blobs_lr weight_decay }`, as the Fast R-CNN and
DeepLab files are written) are read as Caffe's UpgradeV1Net rewrites them: the same Net as
the `layer { }` text Caffe's upgrade tool writes. Hand-written nets, a few layers each."""
from __future__ import annotations

import pytest

from bwplan.caffe.importer import import_caffe_text
from bwplan.caffe.model import read_net
from bwplan.cli.main import main
from bwplan.errors import CaffeError, MultipleErrors
from test_write_bw import summary

V1 = """name: "tiny"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
input: "rois"
input_dim: 4  # rois as the old files give them: [R, 5, 1, 1]
input_dim: 5
input_dim: 1
input_dim: 1
input: "label"
input_dim: 4 input_dim: 1 input_dim: 1 input_dim: 1
layers {
  bottom: "data" top: "conv1" name: "conv1" type: CONVOLUTION
  convolution_param { num_output: 4 pad: 1 kernel_size: 3 }
  blobs_lr: 0 blobs_lr: 0 weight_decay: 0 weight_decay: 0
}
layers { bottom: "conv1" top: "conv1" name: "relu1" type: RELU }
layers {
  name: "roi_pool" type: ROI_POOLING bottom: "conv1" bottom: "rois" top: "pool"
  roi_pooling_param { pooled_w: 2 pooled_h: 2 }
}
layers {
  bottom: "pool" top: "fc" name: "fc" type: INNER_PRODUCT param: "fc_w"
  inner_product_param { num_output: 3 }
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
}
layers { name: "loss" type: SOFTMAX_LOSS bottom: "fc" bottom: "label" top: "loss" }
"""

# the same net as Caffe's upgrade_net_proto_text writes it
V2 = """name: "tiny"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
input: "rois"
input_dim: 4 input_dim: 5 input_dim: 1 input_dim: 1
input: "label"
input_dim: 4 input_dim: 1 input_dim: 1 input_dim: 1
layer {
  bottom: "data" top: "conv1" name: "conv1" type: "Convolution"
  param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 }
  convolution_param { num_output: 4 pad: 1 kernel_size: 3 }
}
layer { bottom: "conv1" top: "conv1" name: "relu1" type: "ReLU" }
layer {
  name: "roi_pool" type: "ROIPooling" bottom: "conv1" bottom: "rois" top: "pool"
  roi_pooling_param { pooled_w: 2 pooled_h: 2 }
}
layer {
  bottom: "pool" top: "fc" name: "fc" type: "InnerProduct"
  param { name: "fc_w" lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 3 }
}
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def test_a_v1_net_imports_as_the_upgraded_net():
    old = import_caffe_text(V1, "old.prototxt")
    new = import_caffe_text(V2, "new.prototxt")
    assert summary(old.net) == summary(new.net)
    fc = old.net.layer("fc")
    assert [(u.slot, u.lr_mult, u.decay_mult) for u in fc.params] == [
        ("weight", 1.0, 1.0), ("bias", 2.0, 0.0)]
    assert old.net.layer("roi_pool").out.shape == (4, 4, 2, 2)
    assert old.net.layer("conv1").frozen is False
    assert all(u.lr_mult == 0 for u in old.net.layer("conv1").params)


def test_v1_types_and_spans_point_at_the_text(tmp_path, capsys):
    path = tmp_path / "old.prototxt"
    path.write_text(V1)
    assert main(["explain", "--caffe", str(path)]) == 0
    assert "conv1 does not need backward computation." in capsys.readouterr().out
    layer = next(l for l in read_net(V1, "old.prototxt").layers if l.name == "roi_pool")
    assert layer.type == "ROIPooling"
    assert layer.record.where("type").line == V1.splitlines().index(
        '  name: "roi_pool" type: ROI_POOLING bottom: "conv1" bottom: "rois" top: "pool"') + 1


def test_a_v1_data_layer_keeps_its_crop_in_data_param():
    # UpgradeNetDataTransformation: V1 data layers wrote crop_size / mirror / mean_file /
    # scale in data_param; they belong to transform_param
    text = """layers { name: "d" type: DATA top: "data" top: "label"
      data_param { source: "x" batch_size: 5 crop_size: 6 mirror: true }
      transform_param { mean_value: 1 mean_value: 2 mean_value: 3 } }
    layers { name: "fc" type: INNER_PRODUCT bottom: "data" top: "fc"
      inner_product_param { num_output: 2 } }
    layers { name: "loss" type: SOFTMAX_LOSS bottom: "fc" bottom: "label" }"""
    net = import_caffe_text(text, "d.prototxt").net
    assert net.input("data").type.shape == (5, 3, 6, 6)
    assert net.input("label").type.shape == (5,)


def test_v1_problems_are_reported_together_at_their_fields():
    text = """layers { name: "d" type: DUMMY_DATA top: "x"
      dummy_data_param { shape { dim: 1 dim: 2 } } }
    layers { name: "fc" type: INNER_PRODUCT bottom: "x" top: "fc" strict_dim: false
      inner_product_param { num_output: 2 } }
    layers { name: "odd" type: MAT_WRITE bottom: "fc" }"""
    with pytest.raises(MultipleErrors) as info:
        import_caffe_text(text, "p.prototxt")
    messages = [str(e) for e in info.value.errors]
    assert any('no field named "strict_dim"' in m for m in messages), messages
    assert any("MAT_WRITE" in m for m in messages), messages


def test_layer_and_layers_together_are_refused_as_caffe_does():
    with pytest.raises(CaffeError, match="both 'layer' and 'layers'"):
        read_net('layers { name: "a" type: RELU } layer { name: "b" type: "ReLU" }', "t")


def test_v0_nets_are_refused_with_the_upgrade_tool():
    with pytest.raises(CaffeError) as info:
        read_net('layers { layer { name: "a" type: "relu" } }', "t.prototxt")
    assert "upgrade_net_proto_text" in info.value.hint
