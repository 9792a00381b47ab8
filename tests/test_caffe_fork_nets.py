"""Constructs of the forks' public nets (SegNet, Fast R-CNN, DeepLab, SSD, ENet, OpenPose),
each in a hand-written net of a few layers: what the real files write imports, and what
bwplan cannot represent is one clear error at its place."""
from __future__ import annotations

import numpy as np
import pytest

import bwplan
from bwplan.caffe.importer import import_caffe_text
from bwplan.errors import BwError

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


FAST_RCNN_LOSS = """input: "x" input_shape { dim: 4 dim: 6 }
input: "t" input_shape { dim: 4 dim: 8 }
input: "w" input_shape { dim: 4 dim: 8 }
layer { name: "bbox_pred" type: "InnerProduct" bottom: "x" top: "bbox_pred"
  inner_product_param { num_output: 8 } }
layer { name: "loss_bbox" type: "SmoothL1Loss" bottom: "bbox_pred" bottom: "t" bottom: "w"
  top: "loss_bbox" loss_weight: 1 }
"""


def test_the_original_fast_rcnn_loss_weights_its_differences(tmp_path):
    # the original Fast R-CNN's SmoothL1Loss has three bottoms: predictions, targets and
    # loss weights, sum(f(w * (p - t))) / N with f Huber's at 1, and no outside weights
    path = tmp_path / "frcnn.prototxt"
    path.write_text(FAST_RCNN_LOSS)
    net = bwplan.compile(str(path), target="cpu")
    assert net.plan.net.layer("loss_bbox").op == "smooth_l1_loss_inside"
    rng = np.random.default_rng(0)
    batch = {"x": rng.standard_normal((4, 6)).astype(np.float32),
             "t": rng.standard_normal((4, 8)).astype(np.float32),
             "w": rng.integers(0, 3, (4, 8)).astype(np.float32)}
    w, b = net.params["bbox_pred.weight"], net.params["bbox_pred.bias"]
    d = batch["w"] * (batch["x"] @ w.T + b - batch["t"])
    huber = np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5)
    step = net.run_step(batch)
    assert step.loss == pytest.approx(huber.sum() / 4, rel=1e-5)
    # d loss / d pred = w f'(d) / N: a zero weight removes that element's gradient
    grad = batch["w"] * np.where(np.abs(d) < 1, d, np.sign(d)) / 4
    np.testing.assert_allclose(net.grads["bbox_pred.bias"], grad.sum(0), rtol=1e-4, atol=1e-6)


def test_the_forks_hole_convolution_is_a_dilated_convolution():
    # PSPNet's and DeepLab's forks write the dilation as `hole`, in Convolution or in their
    # own HoleConvolution type
    text = """input: "data" input_dim: 1 input_dim: 2 input_dim: 9 input_dim: 9
    layer { name: "a" type: "HoleConvolution" bottom: "data" top: "a"
      convolution_param { num_output: 3 pad: 2 hole: 2 kernel_size: 3 bias_term: false } }
    layer { name: "b" type: "Convolution" bottom: "a" top: "b"
      convolution_param { num_output: 3 pad: 0 hole: 4 kernel_size: 3 } }"""
    net = import_caffe_text(text, "h.prototxt").net
    a, b = net.layer("a"), net.layer("b")
    assert (a.op, a.attrs["dilation"], a.out.shape) == ("conv2d", 2, (1, 3, 9, 9))
    assert (b.attrs["dilation"], b.out.shape) == (4, (1, 3, 1, 1))
    both = text.replace("hole: 4", "hole: 4 dilation: 4")
    with pytest.raises(BwError, match="dilation or hole"):
        import_caffe_text(both, "h.prototxt")
