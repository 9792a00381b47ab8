"""Bad attributes, dimensions and literals end in one located error (exit 2) before any
shape rule or kernel sees them; oversized inputs (blocks that expand without end, megabyte
lists, /dev/zero) stop quickly with an error."""
from __future__ import annotations

import re
import time

import pytest

from bwplan.cli.main import main
from bwplan.frontend.expand import MAX_LAYERS

HEAD = re.compile(r"^(\S+?):(\d+):(\d+): error: (.+)$")

CONV = ("input image : f32[4, 2, 8, 8]\n"
        "c = conv2d(image, out=4, kernel=3, {attr})\n"
        "l = euclidean_loss(c, c)\n")


def explain(tmp_path, capsys, text: str, name: str = "net.bw", *extra: str):
    path = tmp_path / name
    path.write_text(text)
    rc = main(["explain", str(path), *extra])
    err = capsys.readouterr().err
    return rc, err.splitlines()[0] if err else ""


def located(line: str) -> tuple[int, int, str]:
    m = HEAD.match(line)
    assert m, line
    return int(m[2]), int(m[3]), m[4]


@pytest.mark.parametrize("attr, words", [
    ("pad=-1", "'pad' must be at least 0"),
    ("stride=0", "'stride' must be at least 1"),
    ("stride=[1, 0]", "'stride' must be at least 1"),
    ("dilation=0", "'dilation' must be at least 1"),
    ("groups=0", "'groups' must be at least 1"),
    ("groups=-2", "'groups' must be at least 1"),
    ("pad=[1, 1, 1]", "'pad' takes 1 or 2 value(s), 3 given"),
    ("stride=99999999999", "beyond the limit"),
])
def test_conv_geometry_is_checked_at_the_attribute(tmp_path, capsys, attr, words):
    rc, line = explain(tmp_path, capsys, CONV.format(attr=attr))
    assert rc == 2
    row, col, message = located(line)
    assert (row, col) == (2, 36) and words in message, line


@pytest.mark.parametrize("text, col, words", [
    ("y = conv2d(x, out=4, kernel=0)", 22, "'kernel' must be at least 1"),
    ("y = conv2d(x, out=4, kernel=[3, 3, 3])", 22, "'kernel' takes 1 or 2"),
    ("y = conv2d(x, out=0, kernel=1)", 15, "'out' must be at least 1"),
    ("y = linear(x, out=-3)", 15, "'out' must be at least 1"),
    ("y = maxpool(x, kernel=2, stride=0)", 26, "'stride' must be at least 1"),
    ("y = avgpool(x, kernel=[2, 0])", 16, "'kernel' must be at least 1"),
    ("y = dropout(x, p=1.0)", 16, "'p' must be less than 1"),
    ("y = dropout(x, p=1e999)", 16, "must be a finite number"),
    ("y = batchnorm(x, eps=0)", 18, "'eps' must be greater than 0"),
    ("y = lrn(x, size=-1)", 12, "'size' must be at least 1"),
    ("y = reshape(x, shape=[-2, 8])", 16, "'shape' must be at least -1"),
])
def test_every_op_checks_its_attributes(tmp_path, capsys, text, col, words):
    net = f"input x : f32[2, 2, 4, 4]\n{text}\nl = euclidean_loss(y, y)\n"
    rc, line = explain(tmp_path, capsys, net)
    assert rc == 2
    row, c, message = located(line)
    assert (row, c) == (2, col) and words in message, line


@pytest.mark.parametrize("layers", [
    "y = linear(x, out=3) lr=1e999\nl = euclidean_loss(y, y)",
    "y = linear(x, out=3) decay=1e999\nl = euclidean_loss(y, y)",
    "y = linear(x, out=3)\nl = euclidean_loss(y, y) weight=1e999",
])
def test_non_finite_settings_are_refused(tmp_path, capsys, layers):
    rc, line = explain(tmp_path, capsys, f"input x : f32[2, 3]\n{layers}\n")
    assert rc == 2 and "finite" in line, line
    assert located(line)[0] in (2, 3)


def test_param_declaration_settings_are_checked(tmp_path, capsys):
    net = ("input x : f32[2, 3]\nparam w : f32[3, 3] lr=1e999\n"
           "y = linear(x, out=3, weight=w, bias=false)\nl = euclidean_loss(y, y)\n")
    rc, line = explain(tmp_path, capsys, net)
    assert rc == 2 and located(line)[:2] == (2, 21) and "finite" in line, line


@pytest.mark.parametrize("decl, col", [("f32[0, 3]", 15), ("f32[2, 99999999999]", 18)])
def test_dimensions_are_positive_and_bounded(tmp_path, capsys, decl, col):
    rc, line = explain(tmp_path, capsys, f"input x : {decl}\ny = relu(x)\n")
    assert rc == 2 and located(line)[:2] == (1, col) and "dimension" in line, line


def test_a_5000_digit_integer_is_a_located_error(tmp_path, capsys):
    rc, line = explain(tmp_path, capsys, "input x : f32[2, 3]\ny = linear(x, out=%s)\n"
                       % ("9" * 5000))
    assert rc == 2 and located(line)[:2] == (2, 19) and "too large" in line, line
    rc, line = explain(tmp_path, capsys, "input x : f32[2, %s]\n" % ("9" * 5000))
    assert rc == 2 and "too large" in line, line


def test_a_megabyte_list_is_refused_quickly(tmp_path, capsys):
    values = ",".join(["1"] * 300_000)
    start = time.perf_counter()
    rc, line = explain(tmp_path, capsys, f"input x : f32[2, 3]\ny = reshape(x, shape=[{values}])\n")
    assert time.perf_counter() - start < 5
    assert rc == 2 and located(line)[:2] == (2, 22) and "list of more than" in line, line


def test_block_expansion_stops_at_the_layer_limit(tmp_path, capsys):
    lines = ["input x : f32[2, 3]", "block b0(x) {", " y = relu(x)", " return y", "}"]
    for i in range(1, 30):  # 2^29 layers if expanded
        lines += [f"block b{i}(x) {{", f" a = b{i - 1}(x)", f" c = b{i - 1}(a)", " return c",
                  "}"]
    lines += ["out = b29(x)", "l = euclidean_loss(out, x)"]
    start = time.perf_counter()
    rc, line = explain(tmp_path, capsys, "\n".join(lines) + "\n")
    assert time.perf_counter() - start < 5
    assert rc == 2 and f"more than {MAX_LAYERS:,} layers" in line, line
    assert located(line)[:2] == (len(lines) - 1, 7)


def test_dev_zero_as_the_net_stops(capsys):
    start = time.perf_counter()
    assert main(["explain", "/dev/zero"]) == 2
    assert "larger than 64 MiB" in capsys.readouterr().err
    assert time.perf_counter() - start < 10


def test_a_bad_pad_never_reaches_the_cpu_kernels(tmp_path, capsys):
    """Today's segfault: pad=-1 passed explain and the Numba kernel wrote out of bounds."""
    import numpy as np
    net = tmp_path / "net.bw"
    net.write_text("input image : f32[4, 2, 8, 8]\ninput label : i64[4]\n"
                   "c = conv2d(image, out=3, kernel=3, pad=-1)\nh = linear(c, out=2)\n"
                   "l = softmax_cross_entropy(h, label)\n")
    data = tmp_path / "d.npz"
    np.savez(data, image=np.ones((8, 2, 8, 8), np.float32), label=np.zeros(8, np.int64))
    assert main(["train", str(net), "--data", str(data), "--target", "cpu"]) == 2
    assert "'pad' must be at least 0" in capsys.readouterr().err
