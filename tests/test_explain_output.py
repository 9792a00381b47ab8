"""How `explain` and `train` word and lay out what they print: the table fits 100 columns
(--wide keeps one line per layer), names are not doubled or misattributed, a saving of
nothing says so, options that do not apply say so, data-file errors name the data file,
and a stop_gradient on a block input is located where it was written."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bwplan.cli.main import main
from bwplan.explain.units import saving

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.bw")) + [ROOT / "examples/small_caffe.prototxt"]


def explain(capsys, *args):
    rc = main(["explain", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_table_fits_100_columns_and_wide_keeps_a_line_per_layer(capsys, path):
    rc, text, _ = explain(capsys, path)
    assert rc == 0
    too_wide = [line for line in text.splitlines() if len(line) > 100]
    assert not too_wide, too_wide
    rc, wide, _ = explain(capsys, path, "--wide")
    assert rc == 0 and wide.splitlines()[1].split()[-1] == "why"
    layers = int(wide.split(": ", 1)[1].split(" layers")[0])
    assert all(len(row.split()) >= 7 for row in wide.splitlines()[2:2 + layers])


# names long enough that every --why line about them overflows 100 columns
LONG_NAMES = """\
input image : f32[4, 3, 8, 8]
input label : i64[4]
feature_extractor_convolution_a = conv2d(image, out=4, kernel=3, pad=1) frozen
feature_extractor_activation_a = relu(feature_extractor_convolution_a)
feature_extractor_convolution_b = conv2d(feature_extractor_activation_a, out=4, kernel=3)
feature_extractor_global_pooling = global_avgpool(feature_extractor_convolution_b)
classification_head_fully_connected = linear(feature_extractor_global_pooling, out=10)
classification_loss_softmax = softmax_cross_entropy(classification_head_fully_connected, label)
"""


@pytest.mark.parametrize("name", ["feature_extractor_convolution_b",
                                  "feature_extractor_convolution_a.weight",
                                  "classification_head_fully_connected.weight", "image"])
def test_why_fits_100_columns_and_wide_keeps_its_lines(capsys, tmp_path, name):
    path = tmp_path / "long.bw"
    path.write_text(LONG_NAMES)
    rc, text, _ = explain(capsys, path, "--why", name, "--freeze",
                          "classification_head_fully_connected.weight[0:9]")
    assert rc == 0
    assert max(map(len, text.splitlines())) <= 100, text
    rc, wide, _ = explain(capsys, path, "--why", name, "--wide", "--freeze",
                          "classification_head_fully_connected.weight[0:9]")
    assert rc == 0 and max(map(len, wide.splitlines())) > 100
    # each wide line becomes lines holding its words, continued 4 columns deeper
    wrapped = iter(text.splitlines())
    for line in wide.splitlines():
        lead = len(line) - len(line.lstrip(" "))
        first = next(wrapped)
        assert line.startswith(first), (line, first)
        words = first.split()
        while len(words) < len(line.split()):
            more = next(wrapped)
            assert more.startswith(" " * (lead + 4)) and more[lead + 4] != " ", more
            words += more.split()
        assert words == line.split()
    assert next(wrapped, None) is None


def test_wording(capsys, tmp_path):
    for path in EXAMPLES:
        rc, text, _ = explain(capsys, path)
        assert "reaches the loss loss " not in text + " " and "saves 0.0%" not in text
    net = tmp_path / "g.bw"
    net.write_text("input x : f32[2, 3] grad\ninput y : i64[2]\n"
                   "r = relu(x)\nfc = linear(stop_gradient(r), out=2)\n"
                   "r2 = relu(x)\nfc2 = linear(r2, out=2)\n"
                   "l = softmax_cross_entropy(fc2, y)\nl2 = softmax_cross_entropy(fc, y)\n")
    rc, text, _ = explain(capsys, net, "--wide")
    assert rc == 0
    assert "x asks for its gradient upstream of x" in text and "x trains" not in text
    assert "(no saving; what 1 stop_gradient edge(s) cut is left out of both)" in text
    assert saving(1000, 1000) == "no saving" and saving(100000, 99999) == "saves under 0.1%"
    assert saving(100, 50) == "saves 50.0%" and saving(0, 0) == "nothing to save"


@pytest.mark.parametrize("extra,named", [(["--format", "json"], "--format json"),
                                         (["--why", "fc"], "--why")])
def test_caffe_view_refuses_options_it_cannot_honour(capsys, extra, named):
    rc, out, err = explain(capsys, ROOT / "examples/small_caffe.prototxt", "--caffe", *extra)
    assert rc == 2 and out == ""
    assert f"{named} does not apply to it" in err.splitlines()[0]


def test_data_file_errors_name_the_data_file(capsys, tmp_path):
    net = ROOT / "examples/digits_finetune.bw"
    cases = {
        "a network given as --data": (str(net), "not a readable .npz data file: it holds text"),
        "a missing file": (str(tmp_path / "none.npz"), "no such data file"),
    }
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, image=np.zeros((4, 1, 7, 7), np.float32), label=np.zeros(4, np.int64))
    cases["a shape that does not fit"] = (
        str(wrong), "array 'image' has shape [4, 1, 7, 7]; the net's input 'image' is "
                    "[N, 1, 8, 8]")
    for what, (data, message) in cases.items():
        rc = main(["train", str(net), "--data", data, "--target", "reference"])
        err = capsys.readouterr().err
        assert rc == 2, what
        first = err.splitlines()[0]
        assert first.startswith(f"{data}: error: ") and message in first, (what, err)
        assert "weight file" not in err and "allow_pickle" not in err


def test_stop_gradient_on_a_block_input_is_located_where_it_was_written(capsys, tmp_path):
    net = tmp_path / "b.bw"
    net.write_text("input x : f32[2, 4]\ninput y : i64[2]\n\n"
                   "block tower(t) {\n    h = linear(t, out=4)\n    return h\n}\n\n"
                   "a = linear(x, out=4)\nb = tower(stop_gradient(a))\n"
                   "loss = softmax_cross_entropy(b, y)\n")
    rc, text, _ = explain(capsys, net, "--wide")
    assert rc == 0
    assert f"the edge a -> b/h has stop_gradient ({net}:10:11)" in text, text
