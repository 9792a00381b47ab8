"""What `bwplan train` tells besides the losses: the plan's warnings, a frozen part left
random, a --cache-frozen that cannot cache, the stages of gradual unfreezing, the backward a
--no-prune run executes, a --profile of a full batch, and what an interrupt left unsaved.
Tiny nets on the reference target, so that nothing waits for compiled kernels."""
from __future__ import annotations

import numpy as np
import pytest

import bwplan.runtime.train as runtime_train
from bwplan.cli.main import main

# fc1 is frozen below a trained head; side gets no gradient (stop_gradient) yet decays
NET = """\
input x : f32[4, 6]
input y : i64[4]

fc1  = linear(x, out=5) frozen
r1   = relu(fc1)
side = linear(x, out=5)
r2   = relu(side)
m    = add(r1, stop_gradient(r2))
head = linear(m, out=3)
loss = softmax_cross_entropy(head, y)
acc  = accuracy(head, y)
"""


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)

    def data(n):
        return {"x": rng.standard_normal((n, 6)).astype(np.float32),
                "y": rng.integers(0, 3, n).astype(np.int64)}
    train, val = data(10), data(4)
    np.savez(tmp_path / "d.npz", **train, **{f"val/{k}": v for k, v in val.items()})
    np.savez(tmp_path / "d8.npz", **{k: v[:8] for k, v in train.items()})
    (tmp_path / "net.bw").write_text(NET)
    return tmp_path


def train(files, capsys, *extra, data="d.npz"):
    rc = main(["train", str(files / "net.bw"), "--data", str(files / data), "--target",
               "reference", "--batch", "4", *extra])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_train_prints_the_plans_warnings(files, capsys):
    rc, _, err = train(files, capsys, "--weight-decay", "0.01")
    assert rc == 0
    assert "net.bw:6:1: warning: side.weight receives no gradient, yet weight decay" in err
    assert "  fix: freeze the layer" in err
    rc, _, err = train(files, capsys)   # no decay at all: nothing shrinks
    assert rc == 0 and "receives no gradient" not in err


def test_frozen_part_left_random_is_reported_unless_weights_give_it(files, capsys):
    rc, _, err = train(files, capsys)
    assert rc == 0 and "2 frozen parameter(s) keep their random initial values (no " \
        "--weights given): fc1.weight, fc1.bias" in err
    np.savez(files / "w.npz", **{"fc1.weight": np.zeros((5, 6), np.float32),
                                  "fc1.bias": np.zeros(5, np.float32)})
    rc, _, err = train(files, capsys, "--weights", str(files / "w.npz"), "--skip", "side.*",
                       "--skip", "head.*")
    assert rc == 0 and "random initial values" not in err


def test_cache_frozen_of_a_prefix_holding_the_loss_trains(files, capsys):
    rc, out, err = train(files, capsys, "--freeze", "*", "--epochs", "2", "--cache-frozen")
    assert rc == 0, err
    assert "done: 2 epochs" in out


def test_cache_frozen_with_nothing_to_cache_says_so(files, capsys):
    rc, _, err = train(files, capsys, "--unfreeze", "*", "--cache-frozen")
    assert rc == 0 and "warning: --cache-frozen has nothing to cache" in err


def test_gradual_unfreezing_reports_each_stage(files, capsys, tmp_path):
    (tmp_path / "s.txt").write_text("2 unfreeze fc1\n")
    rc, _, err = train(files, capsys, "--epochs", "3", "--schedule", str(tmp_path / "s.txt"),
                       "--plot", str(tmp_path / "loss.png"))
    assert rc == 0
    assert "net: 8 layers, 10 samples; backward 1 dX + 2 dW of 4 + 4\n" in err
    stage = next(line for line in err.splitlines() if line.startswith("epoch 2: "))
    assert stage == "epoch 2: unfreeze fc1: unfroze fc1; backward 4 dX + 4 dW of 4 + 4"
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_stage_marks_of_the_plot():
    from bwplan.cli.plot import stage_marks
    from bwplan.runtime.train import EpochRecord
    history = [EpochRecord(1, 1.0, 1.0, 4, rules=(("freeze", "*"),)),
               EpochRecord(2, 1.0, 1.0, 4, rules=(("freeze", "*"),)),
               EpochRecord(3, 1.0, 1.0, 4, rules=(("freeze", "*"), ("unfreeze", "fc1")))]
    assert stage_marks(history) == [(3, "unfreeze fc1")]


def test_no_prune_header_shows_the_backward_it_runs(files, capsys):
    rc, _, err = train(files, capsys, "--no-prune")
    assert rc == 0
    assert "backward 4 dX + 4 dW, unpruned (the plan needs 1 + 2)" in err, err


def test_profile_reports_a_full_batch(files, capsys):
    # 10 samples in batches of 4 end with a batch of 2; 8 samples end with a full one
    rc, out10, _ = train(files, capsys, "--profile")
    rc8, out8, _ = train(files, capsys, "--profile", data="d8.npz")
    assert rc == rc8 == 0
    profile10 = out10[out10.index("one step of 4 samples:"):]
    profile8 = out8[out8.index("one step of 4 samples:"):]
    assert profile10 == profile8


def test_interrupt_says_what_was_not_saved(files, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(runtime_train, "train", interrupted)
    rc, _, err = train(files, capsys, "--out", str(files / "out.npz"))
    assert rc == 130 and err.strip().splitlines()[-1] == \
        f"interrupted: {files / 'out.npz'} was not written"
    assert not (files / "out.npz").exists()
    rc, _, err = train(files, capsys)
    assert rc == 130 and err.strip().splitlines()[-1] == \
        "interrupted: no weights saved (no --out given)"


def test_compiling_is_announced_and_left_out_of_the_epoch_throughput(files):
    import io

    from numba import njit

    from bwplan import compile as compile_net
    from bwplan.cli.progress import Progress
    from bwplan.runtime.compiling import watch
    from bwplan.runtime.data import load_dataset

    @njit(cache=False)
    def fresh_kernel(x):   # a new function: numba compiles it on the first call
        return x + 1

    prog = compile_net(str(files / "net.bw"), target="reference")
    prog.set_optimizer(0.01, 0.9, 0.0)
    data = load_dataset(str(files / "d.npz"), ["x", "y"])
    stream = io.StringIO()
    bar = Progress(stream)
    watch().on_compiled = bar.compiling
    try:
        history = runtime_train.train(prog, data, 2, 4,
                                      on_batch=lambda *a: fresh_kernel(1.0))
    finally:
        watch().on_compiled = None
    assert history[0].compile_seconds > 0 and history[1].compile_seconds == 0
    assert history[0].compile_seconds < history[0].seconds
    assert stream.getvalue() == "compiling kernels (first run only)…\n"
