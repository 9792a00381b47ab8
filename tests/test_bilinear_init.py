"""`weight.init="bilinear"` (Caffe's BilinearFiller, which FCN's fixed upsampling layers use):
the kernels equal FCN's own `upsample_filt`, a deconvolution with them upsamples, and the
Caffe import carries the filler over."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bwplan
from bwplan.caffe.importer import import_caffe_text
from bwplan.errors import BwError
from bwplan.frontend.load import load_bw_text
from bwplan.runtime.init import bilinear

NETS = Path(__file__).parent / "caffe_nets"


def _upsample_filt(size: int) -> np.ndarray:
    """fcn.berkeleyvision.org surgery.upsample_filt, as FCN's net surgery writes it."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


@pytest.mark.parametrize("k", [2, 3, 4, 7, 16])
def test_the_kernels_are_fcns_bilinear_filters(k):
    w = bilinear((3, 1, k, k), np.float32)
    for c in range(3):
        np.testing.assert_allclose(w[c, 0], _upsample_filt(k), rtol=1e-6)


NET = """input x: f32[1, 2, 6, 6]
input target: f32[1, 2, 14, 14]
up = deconv2d(x, out=2, kernel=4, stride=2, groups=2, bias=false) weight.lr=0 {init}
loss = euclidean_loss(up, target)
"""


def test_a_bilinear_deconvolution_upsamples_a_ramp_to_a_ramp(tmp_path):
    bw = tmp_path / "up.bw"
    bw.write_text(NET.format(init='weight.init="bilinear"'))
    net = bwplan.compile(str(bw), target="reference")
    ramp = np.broadcast_to(np.arange(6, dtype=np.float32), (1, 2, 6, 6)).copy()
    up = net.forward({"x": ramp, "target": np.zeros((1, 2, 14, 14), np.float32)},
                     outputs=["up"])["up"]
    assert up.shape == (1, 2, 14, 14)
    # away from the border, each output column sits half a step further along the ramp
    inner = up[0, :, 2:-2, 2:-2]
    np.testing.assert_allclose(np.diff(inner, axis=-1), 0.5, atol=1e-6)
    np.testing.assert_allclose(np.diff(inner, axis=-2), 0.0, atol=1e-6)


@pytest.mark.parametrize("init, words", [
    ('weight.init="gaussian"', "'weight.init' must be one of"),
    ('bias.init="bilinear"', "bias"),
])
def test_bad_inits_are_errors_at_the_setting(init, words):
    with pytest.raises(BwError) as info:
        load_bw_text(NET.format(init=init), "up.bw")
    assert words in info.value.message
    assert info.value.span.line == 3


def test_a_non_square_kernel_cannot_be_bilinear():
    text = NET.format(init='weight.init="bilinear"').replace("kernel=4", "kernel=[4, 2]")
    with pytest.raises(BwError) as info:
        load_bw_text(text, "up.bw")
    assert 'init="bilinear" needs a square 4-D kernel' in info.value.message


def test_the_caffe_bilinear_filler_is_carried_over():
    path = NETS / "fcn8s_deploy.prototxt"
    net = import_caffe_text(path.read_text(), str(path)).net
    assert net.params["upscore8.weight"].init == "bilinear"
    # FCN's other upsampling layers give no filler: their weights come from the caffemodel
    assert net.params["upscore2.weight"].init != "bilinear"
