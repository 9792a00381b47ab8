"""Constructs of the forks' public nets (SegNet, Fast R-CNN, DeepLab, SSD, ENet, OpenPose),
each in a hand-written net of a few layers: what the real files write imports, and what
bwplan cannot represent is one clear error at its place."""
from __future__ import annotations

from bwplan.caffe.importer import import_caffe_text

SEGNET_DATA = """layer { name: "data" type: "DenseImageData" top: "data" top: "label"
  dense_image_data_param { source: "train.txt" batch_size: 4 shuffle: true } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" top: "loss" }
"""


def test_a_label_map_takes_the_size_given_for_its_image():
    # SegNet's DenseImageData without a crop: the images decide the size, and the label
    # map is [N, 1, H, W] of the image whose shape --input-shape gives
    net = import_caffe_text(SEGNET_DATA, "s.prototxt",
                            input_shapes={"data": (2, 3, 8, 6)}).net
    assert net.input("label").type.shape == (2, 1, 8, 6)
    assert net.input("label").type.dtype == "i64"
    given = import_caffe_text(SEGNET_DATA, "s.prototxt", input_shapes={
        "data": (2, 3, 8, 6), "label": (2, 1, 8, 6)}).net
    assert given.input("label").type == net.input("label").type
