"""Prototxt inputs that used to end in a traceback, or in a negative dimension reaching the
planner: each is now one located error with exit status 2."""
from __future__ import annotations

import re

import pytest

from bwplan.cli.main import main

HEAD = re.compile(r"^(\S+?):(\d+):(\d+): error: (.+)$")
NET = ('name: "t"\n'
       'layer {{ name: "data" type: "Input" top: "data" '
       'input_param {{ shape {{ dim: {dim} dim: 3 }} }} }}\n'
       'layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
       'inner_product_param {{ num_output: 2 }} }}\n')


def explain(tmp_path, capsys, text: str):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    rc = main(["explain", str(path)])
    lines = capsys.readouterr().err.splitlines()
    m = HEAD.match(lines[0]) if lines else None
    return rc, m


@pytest.mark.parametrize("dim, words", [
    ("-1", "has dimension -1"),
    ("0", "has dimension 0"),
    (str(2**64), "out of the range of a 64-bit integer"),
    ("9" * 5000, "too long"),
])
def test_bad_dimensions_are_located(tmp_path, capsys, dim, words):
    rc, m = explain(tmp_path, capsys, NET.format(dim=dim))
    assert rc == 2 and m and words in m[4], m
    assert int(m[2]) == 2


def test_deep_nesting_is_an_error_not_a_recursion_error(tmp_path, capsys):
    rc, m = explain(tmp_path, capsys, "x { " * 250 + "}" * 250 + "\n")
    assert rc == 2 and m and "nest more than" in m[4], m


def test_shared_param_on_inner_product_without_num_output(tmp_path, capsys):
    text = ('name: "t"\n'
            'layer { name: "data" type: "Input" top: "data" '
            'input_param { shape { dim: 2 dim: 3 } } }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
            'param { name: "w" } inner_product_param { num_output: 2 } }\n'
            'layer { name: "fc2" type: "InnerProduct" bottom: "data" top: "fc2" '
            'param { name: "w" } }\n')
    rc, m = explain(tmp_path, capsys, text)
    assert rc == 2 and m and "needs num_output" in m[4] and m[2] == "4", m


def test_a_megabyte_list_is_refused_quickly(tmp_path, capsys):
    import time
    start = time.perf_counter()
    rc, m = explain(tmp_path, capsys, NET.format(dim="[" + ",".join(["1"] * 300_000) + "]"))
    assert time.perf_counter() - start < 5
    assert rc == 2 and m and "list of more than" in m[4], m


LOSS_NET = ('name: "t"\n'
            'layer { name: "data" type: "Input" top: "data" top: "label" '
            'input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
            'param { lr_mult: LR } inner_product_param { num_output: 2 } }\n'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" '
            'top: "loss" loss_weight: LW }\n')


@pytest.mark.parametrize("lr, weight, line", [("nan", "1", 3), ("1", "inf", 4),
                                              ("1", "-inf", 4)])
def test_non_finite_multipliers_and_loss_weights(tmp_path, capsys, lr, weight, line):
    rc, m = explain(tmp_path, capsys, LOSS_NET.replace("LR", lr).replace("LW", weight))
    assert rc == 2 and m and "finite" in m[4] and int(m[2]) == line, m


def test_a_zero_kernel_is_located_in_the_prototxt(tmp_path, capsys):
    text = ('name: "t"\nlayer { name: "data" type: "Input" top: "data" '
            'input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }\n'
            'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
            'convolution_param { num_output: 2 kernel_size: 0 } }\n')
    rc, m = explain(tmp_path, capsys, text)
    assert rc == 2 and m and "'kernel' must be at least 1" in m[4] and m[2] == "3", m
