"""Data-parallel training over MPI: `mpiexec -n 2` in a subprocess gives the parameters of a
one-process run over the same global batches, sends only the planned gradients, and a rank
that fails ends the job with its rank and cause. The bucket plan and `explain
--data-parallel` need no MPI; the rest skips without mpi4py or mpiexec.

Tolerance: two ranks sum two half-batch gradients where one process sums the whole batch,
so float32 rounding differs; after every run here |w_2 - w_1| <= 1e-6 + 1e-5 * |w_1|.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bwplan
from bwplan.lower.buckets import gradient_buckets
from bwplan.lower.schedule import lower

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120
RTOL, ATOL = 1e-5, 1e-6

try:
    import mpi4py  # noqa: F401
    HAVE_MPI = shutil.which("mpiexec") is not None
except ImportError:
    HAVE_MPI = False
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="needs mpi4py and mpiexec "
                               '(pip install -e ".[mpi]")')

# a frozen layer, two trained ones, a shared weight whose uses differ in lr (so the update
# reads the lr-weighted sum), and a decay-only layer whose output reaches no loss
NET = """\
input x : f32[8, 6]
input y : i64[8]
param w : f32[6, 6]
a = linear(x, out=6) frozen
r = relu(a)
s1 = linear(r, out=6, weight=w)
s2 = linear(s1, out=6, weight=w) weight.lr=0.5
b = linear(s2, out=8)
c = linear(b, out=4)
loss = softmax_cross_entropy(c, y)
unused = linear(x, out=3)
"""


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)
    env.pop("PMI_SIZE", None)
    return env


def _run(argv: list[str], ranks: int = 0, timeout: int = TIMEOUT_S, **env):
    cmd = (["mpiexec", "-n", str(ranks)] if ranks else []) + argv
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=_env(**env), cwd=ROOT)


def _train(net: Path, data: Path, out: Path, ranks: int = 0, *extra: str, **env):
    argv = [sys.executable, "-m", "bwplan", "train", str(net), "--data", str(data),
            "--out", str(out), "--target", "reference", "--batch", "8", "--epochs", "2",
            "--lr", "0.1", "--weight-decay", "0.01", *extra]
    return _run(argv, ranks, **env)


def _net_and_data(tmp_path, name: str, source: str, classes: int, seed: int):
    """The net's file and 27 samples for it: the last global batch of 3 splits 2 + 1,
    weighted by shard size."""
    net = tmp_path / f"{name}.bw"
    net.write_text(source)
    rng = np.random.default_rng(seed)
    data = tmp_path / f"{name}.npz"
    np.savez(data, x=rng.standard_normal((27, 6)).astype(np.float32),
             y=rng.integers(0, classes, 27))
    return net, data, tmp_path


@pytest.fixture
def files(tmp_path):
    return _net_and_data(tmp_path, "net", NET, 4, 1)


def _close(a: Path, b: Path) -> float:
    wa, wb = np.load(a), np.load(b)
    assert sorted(wa.files) == sorted(wb.files)
    worst = 0.0
    for k in wa.files:
        np.testing.assert_allclose(wb[k], wa[k], rtol=RTOL, atol=ATOL, err_msg=k)
        worst = max(worst, float(np.max(np.abs(wb[k] - wa[k]), initial=0)))
    return worst


# ---- the bucket plan (no MPI) ----------------------------------------------------------------
def test_buckets_hold_the_planned_gradients_latest_first(files):
    net, _, _ = files
    prog = bwplan.compile(str(net), target="reference")
    buckets = gradient_buckets(prog.program, cap_bytes=100)
    sent = [p for b in buckets.buckets for p in (e.param for e in b.entries)]
    assert set(sent) == {p for p, _ in prog.plan.allreduce}
    assert "a.weight" not in sent and "unused.weight" not in sent   # frozen, decay-only
    assert sent[:2] == ["c.weight", "c.bias"]                        # the last layer first
    steps = [b.ready_after for b in buckets.buckets]
    assert steps == sorted(steps)
    assert all(b.nbytes <= 100 or len(b.entries) == 1 for b in buckets.buckets)
    assert buckets.nbytes == prog.plan.summary.allreduce_bytes
    sources = {e.param: e.source for b in buckets.buckets for e in b.entries}
    assert sources["w"] == "scaled" and sources["b.weight"] == "grads"
    # the unpruned program computes a.weight's gradient too; it still does not travel
    full = gradient_buckets(lower(prog.plan, prune=False), cap_bytes=100)
    assert [e.param for b in full.buckets for e in b.entries] == sent


def test_explain_data_parallel_lists_the_buckets(files):
    net, _, _ = files
    plain = _run([sys.executable, "-m", "bwplan", "explain", str(net)])
    shown = _run([sys.executable, "-m", "bwplan", "explain", str(net), "--data-parallel",
                  "--bucket-kib", "1"])
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(plain.stdout)       # the usual report is unchanged
    extra = shown.stdout[len(plain.stdout):]
    assert "data-parallel" in extra and "bucket 0" in extra and "c.weight" in extra
    assert "a.weight" not in extra
    doc = json.loads(_run([sys.executable, "-m", "bwplan", "explain", str(net), "--format",
                           "json", "--data-parallel"]).stdout)
    learnable = sum(p["bytes"] for p in doc["net"]["params"] if p["learnable"])
    assert doc["data_parallel"]["bytes"] == doc["allreduce"]["bytes"] < learnable
    assert doc["data_parallel"]["learnable_bytes"] == learnable


# a class-incremental head: rows 0:7 of c (7 old classes) kept, 3 new ones train
ROWS_NET = """\
input x : f32[8, 6]
input y : i64[8]
h = linear(x, out=6)
r = relu(h)
c = linear(r, out=10)
loss = softmax_cross_entropy(c, y)
"""
ROWS_FREEZE = ("c.weight[0:7]", "c.bias[0:7]")


@pytest.fixture
def rows_files(tmp_path):
    return _net_and_data(tmp_path, "rows", ROWS_NET, 10, 2)


def test_buckets_carry_only_the_trainable_rows(rows_files):
    net, _, _ = rows_files
    whole = gradient_buckets(bwplan.compile(str(net), target="reference").program)
    prog = bwplan.compile(str(net), target="reference", freeze=ROWS_FREEZE)
    sliced = gradient_buckets(prog.program)
    entries = {e.param: e for b in sliced.buckets for e in b.entries}
    assert entries["c.weight"].rows == ((7, 10),) and entries["c.bias"].rows == ((7, 10),)
    assert entries["c.weight"].size == 3 * 6 and entries["c.weight"].nbytes == 3 * 6 * 4
    assert entries["h.weight"].rows == () and entries["h.weight"].size == 36
    # 7 of c's 10 rows (7*6 weights + 7 biases, float32) stay home
    assert sliced.nbytes == whole.nbytes - (7 * 6 + 7) * 4
    assert sliced.nbytes == prog.plan.summary.allreduce_bytes
    offsets = [(e.offset, e.size) for b in sliced.buckets for e in b.entries]
    assert all(o + n == o2 for (o, n), (o2, _) in zip(offsets, offsets[1:]))   # packed
    shown = _run([sys.executable, "-m", "bwplan", "explain", str(net), "--data-parallel",
                  "--freeze", ROWS_FREEZE[0], "--freeze", ROWS_FREEZE[1]])
    assert shown.returncode == 0, shown.stderr
    flat = " ".join(shown.stdout.split())     # the lines wrap at 100 columns
    assert "252 B all-reduced per step (every learnable parameter: 448 B)" in flat, flat
    assert "c.weight[7:10], c.bias[7:10]" in flat
    assert max(map(len, shown.stdout.splitlines())) <= 100
    doc = json.loads(_run([sys.executable, "-m", "bwplan", "explain", str(net), "--format",
                           "json", "--data-parallel", "--freeze", ROWS_FREEZE[0]]).stdout)
    sent = {e["param"]: e for b in doc["data_parallel"]["buckets"] for e in b["params"]}
    assert sent["c.weight"]["rows"] == [[7, 10]] and sent["c.weight"]["bytes"] == 72
    assert sent["c.bias"]["rows"] == []


# ---- two processes -------------------------------------------------------------------------
@needs_mpi
def test_two_ranks_send_only_trainable_rows_and_match_one_process(rows_files):
    net, data, tmp = rows_files
    freeze = [a for rule in ROWS_FREEZE for a in ("--freeze", rule)]
    one = _train(net, data, tmp / "one.npz", 0, *freeze)
    assert one.returncode == 0, one.stderr
    two = _train(net, data, tmp / "two.npz", 2, *freeze)
    assert two.returncode == 0, two.stderr
    # 4 gradients, 252 B where the whole head would be 448 B
    assert "1 bucket, 4 gradients, 252 B per step (all learnable parameters: 448 B)" \
        in two.stderr, two.stderr
    _close(tmp / "one.npz", tmp / "two.npz")
    initial = bwplan.compile(str(net), target="reference").params
    w1, w2 = np.load(tmp / "one.npz"), np.load(tmp / "two.npz")
    for k in ("c.weight", "c.bias"):
        assert np.array_equal(w2[k][:7], initial[k][:7]), k    # the old rows, exactly
        assert np.array_equal(w2[k][:7], w1[k][:7]), k
        assert not np.allclose(w2[k][7:], initial[k][7:]), k   # the new rows trained
    # the last global batch of 25 samples holds one: rank 1 sends zeros for its rows
    arrays = dict(np.load(data))
    small = tmp / "rows25.npz"
    np.savez(small, **{k: v[:25] for k, v in arrays.items()})
    one = _train(net, small, tmp / "one25.npz", 0, *freeze)
    two = _train(net, small, tmp / "two25.npz", 2, *freeze)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    _close(tmp / "one25.npz", tmp / "two25.npz")


@needs_mpi
def test_two_ranks_match_one_process_pruned_and_unpruned(files):
    net, data, tmp = files
    one = _train(net, data, tmp / "one.npz")
    assert one.returncode == 0, one.stderr
    two = _train(net, data, tmp / "two.npz", 2, "--profile")
    assert two.returncode == 0, two.stderr
    _close(tmp / "one.npz", tmp / "two.npz")
    # rank 0 alone prints: one summary line, one profile
    assert two.stdout.count("done:") == 1 and two.stdout.count("data-parallel:") == 1
    assert "1 bucket, 7 gradients, 560 B per step" in two.stderr
    full = _train(net, data, tmp / "full.npz", 2, "--no-prune")
    assert full.returncode == 0, full.stderr
    a, b = np.load(tmp / "two.npz"), np.load(tmp / "full.npz")
    for k in a.files:   # the same buckets, the same sums: bit-identical
        assert np.array_equal(a[k], b[k]), k


@needs_mpi
def test_a_rank_without_samples_in_the_last_batch_sends_zeros(files):
    net, data, tmp = files
    arrays = dict(np.load(data))
    small = tmp / "d25.npz"      # the last global batch holds one sample: rank 1 gets none
    np.savez(small, **{k: v[:25] for k, v in arrays.items()})
    one = _train(net, small, tmp / "one.npz")
    two = _train(net, small, tmp / "two.npz", 2)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    _close(tmp / "one.npz", tmp / "two.npz")


@needs_mpi
def test_schedule_rebuilds_the_buckets_and_still_matches(files):
    net, data, tmp = files
    schedule = tmp / "schedule.txt"
    schedule.write_text("2 unfreeze a\n")
    one = _train(net, data, tmp / "one.npz", 0, "--schedule", str(schedule))
    two = _train(net, data, tmp / "two.npz", 2, "--schedule", str(schedule))
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert "gradient buckets rebuilt" in two.stderr
    _close(tmp / "one.npz", tmp / "two.npz")


@needs_mpi
def test_batchnorm_statistics_are_averaged_so_ranks_agree(tmp_path):
    net = tmp_path / "bn.bw"
    net.write_text("input x : f32[8, 4]\ninput y : i64[8]\nh = linear(x, out=6)\n"
                   "n = batchnorm(h)\nc = linear(n, out=3)\n"
                   "loss = softmax_cross_entropy(c, y)\n")
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.standard_normal((16, 4)).astype(np.float32) * 3 + 1,
             y=rng.integers(0, 3, 16))
    two = _train(net, data, tmp_path / "two.npz", 2)
    assert two.returncode == 0, two.stderr     # the final check found identical ranks
    w = np.load(tmp_path / "two.npz")
    assert not np.allclose(w["n.mean"], 0)


@needs_mpi
def test_batch_that_does_not_divide_is_an_error(files):
    net, data, tmp = files
    bad = _train(net, data, tmp / "x.npz", 2, "--batch", "7")
    assert bad.returncode == 2
    assert "does not divide evenly among 2 processes" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp / "x.npz").exists()


@needs_mpi
def test_bad_labels_on_one_shard_end_the_job_before_training(files):
    net, data, tmp = files
    arrays = dict(np.load(data))
    # the first global batch as train() draws it (seed 0); rank 1 takes its second half
    first = np.sort(np.random.default_rng(0).permutation(27)[:8])
    arrays["y"] = arrays["y"].copy()
    arrays["y"][first[4:]] = 9
    bad = tmp / "bad.npz"
    np.savez(bad, **arrays)
    run = _train(net, bad, tmp / "x.npz", 2)
    assert run.returncode != 0
    # train checks every label before the first step, so each rank finds the bad ones in
    # the whole file and whichever reports first names itself; faults that only one
    # rank meets are test_a_failing_rank_ends_the_job's
    assert re.search(r"rank [01] of 2 failed", run.stderr) and "label 9" in run.stderr, \
        run.stderr
    assert not (tmp / "x.npz").exists()


SCRIPT = """\
import os, signal, sys, time
import numpy as np
import bwplan
from bwplan.runtime.distributed import DataParallel, guarded, world

def main():
    comm = world()
    prog = bwplan.compile(sys.argv[1], target="reference")
    prog.set_optimizer(lr=0.1)
    dp = DataParallel(prog, comm)
    dp.synchronise()
    rng = np.random.default_rng(0)
    for step in range(4):
        batch = {"x": rng.standard_normal((8, 6)).astype(np.float32),
                 "y": rng.integers(0, 4, 8)}
        if step == 2 and comm.rank == 1:
            if sys.argv[2] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if sys.argv[2] == "stall":
                time.sleep(60)
            if sys.argv[2] == "raise":
                raise RuntimeError("disk on fire")
        prog.step(dp.local(batch))
    dp.check_parameters("the trained parameters")
    print("finished", flush=True)
    return 0

sys.exit(guarded(world(), main))
"""


@needs_mpi
@pytest.mark.parametrize("fault", ["raise", "kill", "stall"])
def test_a_failing_rank_ends_the_job(files, fault):
    net, _, tmp = files
    script = tmp / "dp.py"
    script.write_text(SCRIPT)
    run = _run([sys.executable, str(script), str(net), fault], 2, timeout=60,
               BWPLAN_MPI_TIMEOUT="5")
    assert run.returncode != 0 and "finished" not in run.stdout
    if fault == "raise":
        assert "rank 1 of 2 failed: RuntimeError: disk on fire" in run.stderr
    if fault == "kill":     # mpiexec ends the job and names the process
        assert "BAD TERMINATION" in run.stdout + run.stderr
    if fault == "stall":
        assert "rank 0 of 2 failed" in run.stderr and "stopped answering" in run.stderr


@needs_mpi
def test_python_api_step_matches(files):
    net, _, tmp = files
    script = tmp / "ok.py"
    script.write_text(SCRIPT)
    run = _run([sys.executable, str(script), str(net), "none"], 2)
    assert run.returncode == 0 and run.stdout.count("finished") == 1, run.stderr


@needs_mpi
def test_digits_finetune_on_the_cpu_target_sends_only_the_head(tmp_path):
    """The README's fine-tune, on the Numba kernels, from the same random backbone."""
    pytest.importorskip("sklearn")
    data = tmp_path / "digits.npz"
    made = _run([sys.executable, "-m", "bwplan", "data", "digits", "--classes", "5-9",
                 "-o", str(data)])
    assert made.returncode == 0, made.stderr
    argv = [sys.executable, "-m", "bwplan", "train", str(ROOT / "examples" /
            "digits_finetune.bw"), "--data", str(data), "--epochs", "1", "--lr", "0.05"]
    one = _run(argv + ["--out", str(tmp_path / "one.npz")], timeout=240)
    two = _run(argv + ["--out", str(tmp_path / "two.npz")], 2, timeout=240)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert "1 bucket, 2 gradients, 1.27 KiB per step (all learnable parameters: " \
           "148.27 KiB)" in two.stderr
    _close(tmp_path / "one.npz", tmp_path / "two.npz")
