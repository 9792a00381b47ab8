"""The cuda target under MPI, on the host: the lowering's data-parallel step, and the whole
step run against tests/cuda_model.py's NumPy model of the device (PyCUDA never runs here;
on a GPU, tests/test_cuda_gpu_mpi.py). In process with a one-rank stand-in communicator:
the order of launches, copies and all-reduces, and that only the plan's buckets travel;
under `mpiexec -n 2` (skipped without mpi4py): the parameters equal a one-process run of
the reference target within test_mpi's bound, |w_2 - w_1| <= 1e-6 + 1e-5 * |w_1|.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import bwplan
import cuda_model
from bwplan.kernels.cuda import limits
from bwplan.lower import cuda_launches as step_plan
from bwplan.lower.buckets import gradient_buckets
from bwplan.lower.cuda_arena import plan_arena
from bwplan.optim import SgdSettings
from bwplan.runtime.distributed import DataParallel
from test_mpi import NET, ROWS_FREEZE, ROWS_NET, _close, _net_and_data, _run, _train, \
    needs_mpi

ROOT = Path(__file__).resolve().parents[1]
BN_NET = """\
input x : f32[8, 6]
input y : i64[8]
h = linear(x, out=6)
n = batchnorm(h)
c = linear(n, out=4)
loss = softmax_cross_entropy(c, y)
"""


def _batch(rng, n=8):
    return {"x": rng.standard_normal((n, 6)).astype(np.float32), "y": rng.integers(0, 4, n)}


# ---- the lowering ----------------------------------------------------------------------------
@pytest.mark.parametrize("freeze", [(), ROWS_FREEZE])
def test_the_step_is_cut_where_each_bucket_is_complete(freeze):
    source = NET if not freeze else ROWS_NET
    prog = bwplan.compile(source, target="reference", freeze=freeze)
    program = prog.program
    sizes = {k: int(v.size) for k, v in prog.params.items()}
    layout = step_plan.host_layout(program, sizes, plan_arena(program),
                                   limits.DEFAULT_SM_COUNT)
    s = SgdSettings(lr=0.1, momentum=0.9, weight_decay=0.01)
    segments = step_plan.segment_table(program, layout, s)
    buckets = gradient_buckets(program, cap_bytes=100)
    scale = {program.seeds[0].layer: 0.25}
    step = step_plan.data_parallel_step(program, layout, s, segments, buckets, True, scale)
    whole = step_plan.step_launches(program, layout, s, segments, True, True)
    assert [(p.phase, p.layer) for p in step.compute + step.update] == \
        [(p.phase, p.layer) for p in whole]
    assert [p.phase for p in step.update] == ["update", "counter"]
    seed, = [p for p in step.compute if p.phase == "seed"]
    assert float(seed.launches[0].args[2]) == pytest.approx(0.25 * program.seeds[0].weight)
    first = len(program.forward) + len(program.seeds)
    for b in buckets.buckets:
        i, = [k for k, v in step.ready.items() if b.index in v]
        # after the launch of the bucket's last dW, which writes its last parameter
        last = program.backward[i - first]
        assert last.phase == "dw" and last.param == b.entries[-1].param
        assert step.compute[i].phase == "dw" and step.compute[i].layer == last.layer
        for e, t in zip(b.entries, step.transfers[b.index]):
            assert (t.param, t.source, t.elems) == (e.param, e.source, sizes[e.param])
            want = layout.grad(e.param) if e.source == "grads" else \
                layout.scaled_base + 4 * layout.scaled_offsets[e.param]
            assert t.device == want
    moved = {t.param for ts in step.transfers for t in ts}
    assert moved == {p for p, _ in prog.plan.allreduce}


# ---- the step against the model, one rank ------------------------------------------------------
class _Done:
    def Test(self):
        return True


class _OneRank:
    """A communicator of one process that logs into the device model's log."""

    rank, size, timeout_s = 0, 1, 5.0

    def __init__(self, log: list) -> None:
        self.log = log

    def iallreduce(self, buf):
        self.log.append(("allreduce", buf.size))
        return _Done()

    def progress(self, requests):
        pass

    def wait(self, request, what):
        return 0.0

    def check_same(self, *args, **kwargs):
        pass

    def broadcast(self, *args):
        pass


def _run_both(monkeypatch, source, steps=3, **compile_args):
    cuda_model.install(monkeypatch)
    prog = bwplan.compile(source, target="cuda", **compile_args)
    ref = bwplan.compile(source, target="reference", **compile_args)
    for p in (prog, ref):
        p.set_optimizer(lr=0.1, momentum=0.9, weight_decay=0.01)
    log: list = []
    cuda_model.ModelExecutor.shared_log = log
    dp = DataParallel(prog, _OneRank(log), cap_bytes=100)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        batch = _batch(rng)
        got = prog.run_step(dp.local(batch))
        want = ref.run_step(batch)
        assert got.loss == pytest.approx(want.loss, rel=1e-6)
    return prog, ref, dp, log


def _last_step(log):
    start = max(i for i, e in enumerate(log) if e[0] == "upload_batch")
    return log[start:]


def test_the_sequence_of_a_step_and_what_travels(monkeypatch):
    prog, ref, dp, log = _run_both(monkeypatch, NET)
    step = _last_step(log)
    kinds = [e[0] for e in step]
    finish = kinds.index("finish_compute")
    buckets = dp.bucket_plan().buckets
    outs = [e[1] for e in step if e[0] == "copy_out"]
    ins = [e[1] for e in step if e[0] == "copy_in"]
    sent = [tuple(e.param for e in b.entries) for b in buckets]
    assert outs == sent and ins == sent            # every bucket, in backward order
    moved = {p for group in outs for p in group}
    assert "a.weight" not in moved and "unused.weight" not in moved   # frozen, decay-only
    assert moved == {p for p, _ in prog.plan.allreduce}
    for b, params in zip(buckets, outs):
        i = step.index(("copy_out", params))
        # right after the launch of the bucket's last dW, before the next compute launch
        before = i - 1
        while step[before][0] == "copy_out":       # several buckets ready at one launch
            before -= 1
        assert step[before][:2] == ("launch", "dw") and i < finish
    # every bucket's all-reduce starts before the backward ends: it overlaps the backward
    reduces = [i for i, k in enumerate(kinds) if k == "allreduce"]
    assert len(reduces) == len(buckets) + 1        # and the losses'
    assert all(i < finish for i in reduces[:len(buckets) - 1])
    copy_ins = [i for i, k in enumerate(kinds) if k == "copy_in"]
    update = step.index(("launch", "update", ""))
    assert finish < min(copy_ins) and max(copy_ins) < update
    assert kinds[-1] == "synchronize"
    for name in ref.params:       # one rank: the reference target's parameters
        np.testing.assert_allclose(prog.params[name], ref.params[name], rtol=1e-6,
                                   atol=1e-7, err_msg=name)
    assert set(prog.grads) == set(moved)


def test_a_copy_queued_before_its_gradient_is_written_reads_nan(monkeypatch):
    """The model catches a wrong order: moving each copy-out one launch earlier."""
    original = step_plan.data_parallel_step

    def early(*args, **kwargs):
        step = original(*args, **kwargs)
        ready = {i - 1: v for i, v in step.ready.items()}
        return step_plan.DataParallelStep(step.compute, ready, step.transfers, step.update)

    monkeypatch.setattr(step_plan, "data_parallel_step", early)
    cuda_model.install(monkeypatch)
    prog = bwplan.compile(NET, target="cuda")
    dp = DataParallel(prog, _OneRank([]), cap_bytes=100)
    prog.run_step(dp.local(_batch(np.random.default_rng(0))))
    assert any(np.isnan(buf).any() for buf in dp.bucket_buffers())


def test_row_frozen_parameters_travel_as_their_trainable_rows(monkeypatch):
    prog, ref, dp, _ = _run_both(monkeypatch, ROWS_NET, freeze=ROWS_FREEZE)
    entries = {e.param: e for b in dp.bucket_plan().buckets for e in b.entries}
    assert entries["c.weight"].rows == ((7, 10),)
    assert sum(buf.size for buf in dp.bucket_buffers()) == sum(
        e.size for e in entries.values())
    initial = bwplan.compile(ROWS_NET, target="reference").params
    for name in ref.params:
        np.testing.assert_allclose(prog.params[name], ref.params[name], rtol=1e-6,
                                   atol=1e-7, err_msg=name)
    for k in ("c.weight", "c.bias"):
        assert np.array_equal(prog.params[k][:7], initial[k][:7]), k


def test_running_statistics_are_read_before_and_written_after_the_update(monkeypatch):
    prog, ref, dp, log = _run_both(monkeypatch, BN_NET)
    step = _last_step(log)
    kinds = [e[0] for e in step]
    read, = [e for e in step if e[0] == "read_params"]
    assert set(read[1]) == set(dp.statistics) and dp.statistics
    assert kinds.index("finish_compute") < kinds.index("read_params") < kinds.index(
        "copy_in")
    assert kinds.index("synchronize") < kinds.index("write_params")
    for name in ref.params:
        np.testing.assert_allclose(prog.params[name], ref.params[name], rtol=1e-5,
                                   atol=1e-6, err_msg=name)


# ---- two processes -----------------------------------------------------------------------------
SCRIPT = """\
import atexit, collections, json, os, sys
sys.path.insert(0, {tests!r})
import cuda_model
cuda_model.install()

def tally():   # what this rank's modelled device did, for the test to read
    made = cuda_model.ModelExecutor.made
    kinds = collections.Counter(e[0] for ex in made for e in ex.log)
    moved = sorted({{p for ex in made for e in ex.log if e[0] == "copy_out" for p in e[1]}})
    with open(f"{{sys.argv[-1]}}.{{os.environ.get('PMI_RANK', '0')}}.json", "w") as f:
        json.dump({{"executors": len(made), "kinds": kinds, "moved": moved}}, f)

atexit.register(tally)
from bwplan.cli.main import main
sys.exit(main(sys.argv[1:-1]))
"""


def _train_modelled(script, net, data, out, ranks, *extra):
    argv = [sys.executable, str(script), "train", str(net), "--data", str(data), "--out",
            str(out), "--target", "cuda", "--batch", "8", "--epochs", "2", "--lr", "0.1",
            "--weight-decay", "0.01", *extra, str(out)]
    return _run(argv, ranks)


@needs_mpi
@pytest.mark.parametrize("case", ["shared", "rows", "empty-rank"])
def test_two_ranks_on_the_modelled_device_match_one_process(tmp_path, case):
    if case == "rows":
        net, data, tmp = _net_and_data(tmp_path, "rows", ROWS_NET, 10, 2)
        extra = [a for rule in ROWS_FREEZE for a in ("--freeze", rule)]
    else:
        net, data, tmp = _net_and_data(tmp_path, "net", NET, 4, 1)
        extra = []
    profile = ["--profile"] if case == "shared" else []
    if case == "empty-rank":     # the last global batch holds one sample: rank 1 has none
        arrays = dict(np.load(data))
        data = tmp / "d25.npz"
        np.savez(data, **{k: v[:25] for k, v in arrays.items()})
    script = tmp / "modelled.py"
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests")))
    one = _train(net, data, tmp / "one.npz", 0, *extra)
    assert one.returncode == 0, one.stderr
    two = _train_modelled(script, net, data, tmp / "two.npz", 2, *extra, *profile)
    assert two.returncode == 0, two.stderr
    assert "data-parallel: 2 processes" in two.stderr
    if profile:
        assert "waiting on communication" in two.stdout, two.stdout
    _close(tmp / "one.npz", tmp / "two.npz")
    plan = bwplan.compile(str(net), target="reference",
                          freeze=ROWS_FREEZE if case == "rows" else ()).plan
    for rank in (0, 1):        # both ranks ran the modelled cuda step, buckets only
        done = json.loads((tmp / f"two.npz.{rank}.json").read_text())
        assert done["executors"] >= 1 and done["kinds"]["copy_out"] > 0, done
        assert done["kinds"]["copy_out"] == done["kinds"]["copy_in"] or case == "empty-rank"
        assert done["moved"] == sorted(p for p, _ in plan.allreduce)


@needs_mpi
def test_batchnorm_statistics_on_the_modelled_device_match_the_reference_target(tmp_path):
    """Each rank normalises its own shard, so a one-process run differs; two ranks of the
    modelled device against two ranks of the reference target, statistics averaged."""
    net, data, tmp = _net_and_data(tmp_path, "bn", BN_NET, 4, 3)
    script = tmp / "modelled.py"
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests")))
    host = _train(net, data, tmp / "host.npz", 2)
    assert host.returncode == 0, host.stderr
    dev = _train_modelled(script, net, data, tmp / "dev.npz", 2)
    assert dev.returncode == 0, dev.stderr
    _close(tmp / "host.npz", tmp / "dev.npz")
    done = json.loads((tmp / "dev.npz.1.json").read_text())
    assert done["kinds"]["read_params"] == done["kinds"]["write_params"] > 0, done
    assert not np.allclose(np.load(tmp / "dev.npz")["n.mean"], 0)
