"""Inputs too big for the machine or the toolchain: compile never allocates parameters,
train refuses parameters that exceed memory (with the sizes), and an --arch the installed
nvcc lacks is the user's error (exit 2), not an internal one."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from bwplan.cli.main import main

HUGE = "input x : f32[2, 100000]\ny = linear(x, out=2000000000)\nl = euclidean_loss(y, y)\n"


def test_compile_of_a_huge_net_allocates_nothing(tmp_path, capsys):
    net = tmp_path / "huge.bw"
    net.write_text(HUGE)
    assert main(["compile", str(net), "-o", str(tmp_path / "out"), "--target",
                 "reference"]) == 0
    assert (tmp_path / "out" / "plan.json").exists()


def test_train_of_a_huge_net_says_how_much_memory_it_needs(tmp_path, capsys):
    net = tmp_path / "huge.bw"
    net.write_text(HUGE)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((2, 100000), np.float32))
    assert main(["train", str(net), "--data", str(data), "--target", "reference"]) == 2
    err = capsys.readouterr().err
    assert "huge.bw:2:1: error: the parameters need 745,065.5 GiB, more than" in err, err


def test_initial_values_are_unchanged_by_chunked_drawing(monkeypatch):
    """Parameters are drawn in chunks to avoid a float64 copy; the values are the ones a
    single draw gives."""
    from bwplan.frontend.load import load_bw_text
    from bwplan.runtime import init
    net = load_bw_text("input x : f32[2, 300]\ny = linear(x, out=70)\n")
    whole = init.initial_params(net, 5)
    monkeypatch.setattr(init, "_CHUNK", 1000)
    chunked = init.initial_params(net, 5)
    rng = np.random.default_rng(5)
    bound = np.sqrt(3.0 / 300)
    expected = rng.uniform(-bound, bound, size=(70, 300)).astype(np.float32)
    assert np.array_equal(whole["y.weight"], expected)
    assert np.array_equal(chunked["y.weight"], expected)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_an_arch_nvcc_lacks_is_the_users_error(tmp_path, capsys):
    net = tmp_path / "n.bw"
    net.write_text("input x : f32[2, 3]\ny = linear(x, out=2)\nl = euclidean_loss(y, y)\n")
    rc = main(["compile", str(net), "--target", "cuda", "--arch", "sm_1", "-o",
               str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "--arch: error: this nvcc" in err and "cannot compile for sm_1" in err
