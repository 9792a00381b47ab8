"""Weight files: round trip, net surgery with rename and skip, every mismatch reported,
and saves that an interruption cannot corrupt."""
from __future__ import annotations

import os

import numpy as np
import pytest

import bwplan
from bwplan.errors import FileError
from bwplan.runtime.weights import WeightsError, load_into, save_weights

TWO_TOWERS = """
input a : f32[2, 6]
input b : f32[2, 6]
input y : i64[2]
block tower(x) {
  h = linear(x, out=4)
  r = relu(h)
  return r
}
left  = tower(a)
right = tower(b)
both  = concat(left, right)
head  = linear(both, out=3)
loss  = softmax_cross_entropy(head, y)
"""


def test_round_trip(tmp_path):
    prog = bwplan.compile(TWO_TOWERS, target="reference", seed=1)
    path = tmp_path / "w.npz"
    prog.save_weights(str(path))
    other = bwplan.compile(TWO_TOWERS, target="reference", seed=2)
    assert not np.array_equal(other.params["head.weight"], prog.params["head.weight"])
    loaded = other.load_weights(str(path))
    assert set(loaded) == set(prog.params)
    for k in prog.params:
        assert np.array_equal(other.params[k], prog.params[k])


def test_two_independent_towers_from_one_pretrained_tower(tmp_path):
    pretrained = {"tower/h.weight": np.full((4, 6), 0.5, np.float32),
                  "tower/h.bias": np.arange(4, dtype=np.float32)}
    path = tmp_path / "tower.npz"
    save_weights(str(path), pretrained)
    prog = bwplan.compile(TWO_TOWERS, target="reference")
    head_before = prog.params["head.weight"].copy()
    loaded = prog.load_weights(str(path), rename={"left/*": "tower/*", "right/*": "tower/*"},
                               skip=["head.*"])
    assert loaded == {"left/h.weight": "tower/h.weight", "left/h.bias": "tower/h.bias",
                      "right/h.weight": "tower/h.weight", "right/h.bias": "tower/h.bias"}
    assert np.array_equal(prog.params["left/h.bias"], prog.params["right/h.bias"])
    # independent copies: distinct arrays that train apart
    assert prog.params["left/h.weight"] is not prog.params["right/h.weight"]
    assert np.array_equal(prog.params["head.weight"], head_before)


def test_every_problem_is_reported_at_once(tmp_path):
    path = tmp_path / "bad.npz"
    save_weights(str(path), {"left/h.weight": np.zeros((5, 6), np.float32),
                             "extra": np.zeros(3, np.float32)})
    prog = bwplan.compile(TWO_TOWERS, target="reference")
    before = {k: v.copy() for k, v in prog.params.items()}
    with pytest.raises(WeightsError) as info:
        prog.load_weights(str(path))
    text = info.value.message
    assert "left/h.weight: the net needs shape [4, 6], 'left/h.weight' in the file has [5, 6]" \
        in text
    assert "right/h.bias: no array 'right/h.bias'" in text
    assert text.startswith(f"{len(prog.params)} parameter(s)")
    assert "extra" in info.value.hint
    # nothing was half-loaded
    assert all(np.array_equal(prog.params[k], before[k]) for k in before)


def test_unreadable_weight_files(tmp_path):
    prog = bwplan.compile(TWO_TOWERS, target="reference")
    with pytest.raises(FileError, match="no such weight file"):
        prog.load_weights(str(tmp_path / "missing.npz"))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(FileError, match="not a readable"):
        prog.load_weights(str(junk))


def test_interrupted_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    save_weights(str(path), {"a": np.ones(3, np.float32)})
    original = path.read_bytes()

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        save_weights(str(path), {"a": np.zeros(3, np.float32)})
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.npz"]
    params = {"a": np.zeros(3, np.float32)}
    load_into(params, str(path))
    assert params["a"].tolist() == [1, 1, 1]
