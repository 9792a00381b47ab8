"""`bwplan train` with bad options, data, weights and schedules: one clear error, exit 2,
before the first step; a run that diverges stops at the first non-finite loss and leaves
the --out file as it was; --checkpoint-every writes --out while training."""
from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from bwplan.cli.main import main

NET = """input image : f32[8, 1, 4, 4]
input label : i64[8]
c = conv2d(image, out=2, kernel=3, pad=1)
r = relu(c)
h = linear(r, out=3)
loss = softmax_cross_entropy(h, label)
acc = accuracy(h, label)
"""


def arrays(n: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((n, 1, 4, 4)).astype(np.float32),
            "label": rng.integers(0, 3, n).astype(np.int64)}


@pytest.fixture
def setup(tmp_path):
    net = tmp_path / "net.bw"
    net.write_text(NET)
    data = tmp_path / "d.npz"
    np.savez(data, **arrays())
    return tmp_path, net, data


def train(capsys, net, data, *extra: str):
    rc = main(["train", str(net), "--data", str(data), "--target", "reference", *extra])
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if "error" in l]
    return rc, lines[0] if lines else err


@pytest.mark.parametrize("option, words", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--epochs", "-1"], "--epochs must be at least 1"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--batch", "-5"], "--batch must be at least 1"),
    (["--seed", "-1"], "--seed must be at least 0"),
    (["--unfreeze-every", "-1"], "--unfreeze-every must be at least 0"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--lr", "-0.1"], "--lr must not be negative"),
    (["--momentum", "1"], "--momentum must be in [0, 1)"),
    (["--momentum", "-0.5"], "--momentum must not be negative"),
    (["--weight-decay", "-1"], "--weight-decay must not be negative"),
    (["--checkpoint-every", "-2"], "--checkpoint-every must be at least 0"),
    (["--checkpoint-every", "2"], "give --out too"),
])
def test_bad_options(setup, capsys, option, words):
    _, net, data = setup
    rc, line = train(capsys, net, data, *option)
    assert rc == 2 and words in line, line


def _data(tmp_path, name, **arrays_):
    path = tmp_path / name
    np.savez(path, **arrays_)
    return path


@pytest.mark.parametrize("change, words", [
    (lambda a: a.update(label=np.where(np.arange(16) == 5, 7, a["label"])),
     "label 7 at index [5]: 'loss' (softmax_cross_entropy) takes classes 0-2"),
    (lambda a: a.update(label=np.where(np.arange(16) == 2, -1, a["label"])),
     "label -1 at index [2]: 'acc' (accuracy) takes classes 0-2"),
    (lambda a: a.update(image=np.float32(1.0)), "single value (0-d)"),
    (lambda a: a.update(image=a["image"][:0], label=a["label"][:0]), "the data set is empty"),
    (lambda a: a.update({"val/image": a["image"][:0], "val/label": a["label"][:0]}),
     "validation arrays (val/...) have no rows"),
    (lambda a: a["image"].__setitem__((3, 0, 1, 1), np.nan), "non-finite value (nan) at index "
     "[3, 0, 1, 1]"),
    (lambda a: a.update(image=a["image"].astype(str)), "not numbers"),
    (lambda a: a.update(image=a["image"].astype(np.complex64)), "not numbers"),
    (lambda a: a.update(image=a["image"] > 0), "holds bool values"),
    (lambda a: a.update(label=a["label"].astype(np.float32)), "which needs integers"),
])
def test_bad_data(setup, capsys, change, words):
    tmp_path, net, _ = setup
    a = arrays()
    change(a)
    rc, line = train(capsys, net, _data(tmp_path, "bad.npz", **a))
    assert rc == 2 and words in line, line


def test_loaders_read_only_the_arrays_the_net_needs(setup, capsys, monkeypatch):
    """Neither the data loader nor the weight loader decompresses an unused member."""
    from bwplan.runtime import weights
    tmp_path, net, _ = setup
    path = tmp_path / "extra.npz"
    np.savez_compressed(path, **arrays(), big=np.zeros(1_000_000, np.float32))
    w = tmp_path / "w.npz"
    np.savez_compressed(w, **{"c.weight": np.zeros((2, 1, 3, 3), np.float32),
                              "other": np.zeros(1_000_000, np.float32)})
    read = []
    real = weights.NpzArchive.read
    monkeypatch.setattr(weights.NpzArchive, "read",
                        lambda self, name: (read.append(name), real(self, name))[1])
    rc, _ = train(capsys, net, path, "--epochs", "1", "--weights", str(w), "--skip", "c.bias",
                  "--skip", "h.*")
    assert rc == 0
    assert sorted(read) == ["c.weight", "image", "label"]


def _weights(tmp_path, name: str, members: dict[str, bytes]):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in members.items():
            zf.writestr(k, v)
    return path


def _file(tmp_path, content: bytes):
    path = tmp_path / "w.npz"
    path.write_bytes(content)
    return path


def _npy(arr) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _huge_header() -> bytes:
    raw = _npy(np.zeros((2, 1, 3, 3), np.float32))
    n = int.from_bytes(raw[8:10], "little")
    header = raw[10:10 + n].decode().replace("(2, 1, 3, 3)", "(200000, 1, 3000, 3000)")
    header = header.rstrip("\n").ljust(n - 1) + "\n"
    return raw[:10] + header.encode() + raw[10 + n:]


@pytest.mark.parametrize("make, words", [
    (lambda t: _file(t, _npy(np.zeros(3))),
     "a single .npy array, not an .npz archive"),
    (lambda t: _file(t, b""), "the file is empty"),
    (lambda t: _weights(t, "w.npz", {"c.weight.npy": _npy(np.zeros((2, 1, 3, 3),
                                                                   dtype=[("a", "f4")]))}),
     "values, not numbers"),
    (lambda t: _weights(t, "w.npz", {"c.weight.npy": b"hello"}), "cannot be read"),
    (lambda t: _weights(t, "w.npz", {"c.weight.npy": _huge_header()}),
     "claims shape [200000, 1, 3000, 3000]"),
    (lambda t: _weights(t, "w.npz", {"c.weight.npy": _npy(np.full((2, 1, 3, 3), "1.5"))}),
     "values, not numbers"),
    (lambda t: _weights(t, "w.npz", {"c.weight.npy": _npy(np.full((2, 1, 3, 3), np.nan,
                                                                  np.float32))}),
     "c.weight: 'c.weight' in the file holds NaN"),
])
def test_bad_weight_files(setup, capsys, make, words):
    tmp_path, net, data = setup
    path = make(tmp_path)
    rc = main(["train", str(net), "--data", str(data), "--target", "reference",
               "--weights", str(path), "--skip", "c.bias", "--skip", "h.*"])
    err = capsys.readouterr().err
    assert rc == 2 and words in err, err


@pytest.mark.parametrize("option", [["--skip", "hed*"], ["--rename", "hed*=x*"]])
def test_patterns_that_match_nothing_are_errors(setup, capsys, option):
    tmp_path, net, data = setup
    w = tmp_path / "w.npz"
    np.savez(w, **{"c.weight": np.zeros((2, 1, 3, 3), np.float32)})
    rc, line = train(capsys, net, data, "--weights", str(w), *option)
    assert rc == 2 and "'hed*' matches no parameter" in line, line


@pytest.mark.parametrize("text, line_no, words", [
    ("1 unfreeze c\n3 unfreze h\n", 2, "expected 'EPOCH freeze|unfreeze PATTERN'"),
    ("1 freeze c\n2 unfreeze cc*\n", 2, "'cc*' matches no layer"),
    ("1 freeze c\n\n9 unfreeze c\n", 3, "comes after the last epoch (2)"),
    ("0 freeze c\n", 1, "epochs count from 1"),
])
def test_the_schedule_is_checked_before_the_first_step(setup, capsys, text, line_no, words):
    tmp_path, net, data = setup
    sched = tmp_path / "s.txt"
    sched.write_text(text)
    rc = main(["train", str(net), "--data", str(data), "--target", "reference",
               "--epochs", "2", "--schedule", str(sched)])
    err = capsys.readouterr().err
    assert rc == 2 and f"s.txt:{line_no}:" in err and words in err, err
    assert "epoch 1/2" not in err  # nothing trained


def test_divergence_stops_and_keeps_the_good_file(setup, capsys):
    tmp_path, net, data = setup
    out = tmp_path / "w.npz"
    assert main(["train", str(net), "--data", str(data), "--target", "reference",
                 "--out", str(out)]) == 0
    good = out.read_bytes()
    rc, line = train(capsys, net, data, "--lr", "1e30", "--epochs", "3", "--out", str(out))
    assert rc == 2 and "training stopped at step" in line and "(epoch" in line, line
    assert out.read_bytes() == good


def test_nan_weights_in_the_net_stop_at_step_one(setup, capsys):
    """Non-finite values in a weight file are refused at load; this covers the gradient
    check: a finite loss whose gradient overflows still stops the run."""
    from bwplan.runtime.checks import check_step
    from bwplan.errors import BwError
    with pytest.raises(BwError, match="step 4 \\(epoch 2\\).*gradient of 'w'"):
        check_step(1.0, {"w": np.array([np.inf], np.float32)}, 2, 4, 0.1)
    with pytest.raises(BwError, match="step 1 \\(epoch 1\\): the loss is nan"):
        check_step(float("nan"), {}, 1, 1, 0.1)


def test_checkpoint_every_writes_out_during_training(setup, capsys, monkeypatch):
    tmp_path, net, data = setup
    out = tmp_path / "ck.npz"
    from bwplan.runtime import weights
    writes = []
    real = weights.save_weights
    monkeypatch.setattr(weights, "save_weights", lambda p, params: (writes.append(p),
                                                                     real(p, params)))
    import bwplan.runtime.target   # the host targets save through it
    monkeypatch.setattr(bwplan.runtime.target, "save_weights", weights.save_weights)
    # 16 samples, batch 4: 4 steps per epoch, 8 in all -> checkpoints at steps 3 and 6
    assert main(["train", str(net), "--data", str(data), "--target", "reference",
                 "--epochs", "2", "--batch", "4", "--checkpoint-every", "3",
                 "--out", str(out)]) == 0
    assert len(writes) == 3 and out.exists()


def test_output_paths_are_checked_before_training(setup, capsys):
    tmp_path, net, data = setup
    for option in ("--out", "--plot"):
        rc, line = train(capsys, net, data, option, str(tmp_path / "no" / "such" / "x"))
        assert rc == 2 and "does not exist" in line and option in line, line
    rc, line = train(capsys, net, data, "--out", str(tmp_path))
    assert rc == 2 and "it is a directory" in line, line
    fifo = tmp_path / "pipe"   # stands for /dev/null, which a test must never risk
    os.mkfifo(fifo)
    rc, line = train(capsys, net, data, "--out", str(fifo))
    assert rc == 2 and "not a regular file" in line, line


@pytest.mark.parametrize("dtype", [bool, np.complex64, "U3"])
def test_the_library_refuses_non_numeric_batches(dtype):
    import bwplan
    from bwplan.errors import BwError
    prog = bwplan.compile(NET, target="reference")
    batch = arrays(8)
    batch["image"] = batch["image"].astype(dtype)
    with pytest.raises(BwError, match="must hold real numbers"):
        prog.step(batch)


@pytest.mark.parametrize("target", ["reference", "cpu"])
def test_a_step_refuses_bad_labels_before_any_kernel(target):
    """The host checks labels before a step on every target, so the CUDA loss never turns
    a bad label into a NaN loss and a wrong gradient (the reference target would read a
    wrong class for -1 without a word)."""
    import bwplan
    from bwplan.errors import BwError
    prog = bwplan.compile(NET.replace("acc = accuracy(h, label)\n", ""), target=target)
    batch = arrays(8)
    before = {k: v.copy() for k, v in prog.params.items()}
    for bad in (3, -2):
        batch["label"][4] = bad
        with pytest.raises(BwError, match=f"label {bad} at index \\[4\\]: 'loss'"):
            prog.step(batch)
    assert all(np.array_equal(before[k], prog.params[k]) for k in before)
    batch["label"][4] = -1      # the ignore label is fine
    prog.step(batch)
