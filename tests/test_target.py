"""The one target interface (bwplan/runtime/target.py): `CompiledNet` talks to every target
through it and never asks which one it has. The cuda target's wiring is checked here with
a stand-in for its device side (no GPU, no PyCUDA): what `CompiledNet` hands it and what it
hands back. Its kernels on a device are tests/test_cuda_gpu.py's.
"""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest

import bwplan
from bwplan.errors import BwError
from bwplan.runtime import cuda as cuda_runtime
from bwplan.runtime.executor import StepResult, StepStats
from bwplan.runtime.target import TARGETS, HostTarget, Target, target_class

ROOT = Path(__file__).parent.parent

NET = """\
input x : f32[4, 6]
input y : i64[4]
h    = linear(x, out=5)
out  = linear(h, out=3)
loss = softmax_cross_entropy(out, y)
"""


@pytest.mark.parametrize("name", list(TARGETS))
def test_every_target_provides_the_whole_interface(name):
    cls = target_class(name)
    assert cls.name == name
    methods = [n for n, v in vars(Target).items()
               if not n.startswith("_") and (callable(v) or isinstance(v, classmethod))]
    assert {"prepare", "step", "forward", "load_weights", "save_weights", "set_optimizer",
            "forget", "check_net", "gradient_stores"} <= set(methods)
    for method in methods:
        want = list(inspect.signature(getattr(Target, method)).parameters)
        assert list(inspect.signature(getattr(cls, method)).parameters) == want, method


def test_the_api_never_branches_on_the_target():
    """No comparison with a target name, no import of a target's module in bwplan/api.py."""
    tree = ast.parse((ROOT / "bwplan" / "api.py").read_text())
    names = set(TARGETS)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in names and \
                node.value != "cpu":   # compile()'s default argument
            raise AssertionError(f"api.py line {node.lineno} names target {node.value!r}")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            module = getattr(node, "module", "") or ""
            assert module not in ("bwplan.runtime.cuda", "bwplan.runtime.executor") or \
                all(a.name in ("StepResult", "StepStats") for a in node.names), node.lineno


def test_the_training_loop_does_not_import_the_api():
    tree = ast.parse((ROOT / "bwplan" / "runtime" / "train.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "bwplan.api" not in imported and "bwplan" not in imported


def test_an_unknown_target_names_the_known_ones():
    with pytest.raises(BwError) as err:
        bwplan.compile(NET, target="tpu")
    assert "unknown target 'tpu'" in str(err.value)
    assert err.value.hint == "targets: cpu, reference, cuda"


def test_host_targets_make_parameters_only_when_read():
    prog = bwplan.compile(NET, target="reference")
    assert isinstance(prog.runtime, HostTarget) and prog.runtime._params is None
    assert set(prog.params) == set(prog.net.params)
    assert prog.params is prog.runtime.params


def test_a_host_step_writes_its_gradients_into_the_targets_stores():
    """What data parallelism reads and repoints: the arrays the step returns as grads."""
    prog = bwplan.compile(NET, target="reference")
    stores = prog.runtime.gradient_stores()
    prog.step(_batch())
    assert set(prog.grads) == set(prog.net.params)
    assert all(prog.grads[p] is stores.grads[p] for p in prog.grads)
    assert prog.runtime.gradient_stores().grads is stores.grads


# ---- the cuda target's wiring, with its device side stood in for -----------------------
class _Params:
    """Stands in for CudaParams: the 'device' copy is a dict of arrays."""

    def __init__(self, dev, params):
        self.device_copy = {k: np.array(v) for k, v in params.items()}
        self.uploads = 0

    def upload(self, params):
        self.uploads += 1
        self.device_copy = {k: np.array(v) for k, v in params.items()}

    def download(self):
        return {k: v + 1.0 for k, v in self.device_copy.items()}   # "updated" on the device


class _Executor:
    """Stands in for CudaExecutor: records what it was given."""

    made: list = []

    def __init__(self, program, state, settings, seed=0):
        self.program, self.state, self.settings, self.seed = program, state, settings, seed
        self.runs = []
        _Executor.made.append(self)

    def set_optimizer(self, settings):
        self.settings = settings

    def run(self, batch, training=True, forward_only=False):
        self.runs.append((training, forward_only))
        return StepResult(2.5, {"loss": 2.5}, {}, StepStats())

    def grads(self):
        return {p: np.zeros(1, np.float32) for p in ("h.weight",)}


@pytest.fixture
def fake_device(monkeypatch):
    _Executor.made = []
    monkeypatch.setattr(cuda_runtime, "device", lambda: None)
    monkeypatch.setattr(cuda_runtime, "CudaParams", _Params)
    monkeypatch.setattr(cuda_runtime, "CudaExecutor", _Executor)


def _batch(n=4):
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((n, 6)).astype(np.float32),
            "y": rng.integers(0, 3, n)}


def test_cuda_target_steps_on_the_device_and_brings_params_back(fake_device, tmp_path):
    prog = bwplan.compile(NET, target="cuda", seed=7)
    assert isinstance(prog.runtime, cuda_runtime.CudaTarget)
    assert prog.optimizer.update is None      # the update runs on the device
    before = {k: v.copy() for k, v in prog.params.items()}
    prog.set_optimizer(lr=0.5, momentum=0.0)
    assert prog.step(_batch()) == 2.5
    ex, = _Executor.made
    assert ex.seed == 7 and ex.settings.lr == 0.5 and ex.runs == [(True, False)]
    assert set(prog.grads) == {"h.weight"} and prog.steps_taken == 1
    for name, value in prog.params.items():   # the host view is the device's after a step
        np.testing.assert_array_equal(value, before[name] + 1.0)
    prog.set_optimizer(lr=0.1)
    assert ex.settings.lr == 0.1               # prepared executors follow the optimizer
    prog.step(_batch(2))                       # another batch size: another executor
    assert len(_Executor.made) == 2 and _Executor.made[1].settings.lr == 0.1
    assert prog.forward(_batch()) == {"loss": 2.5}
    with pytest.raises(BwError, match="returns losses and metrics only"):
        prog.forward(_batch(), outputs=["h"])
    with pytest.raises(BwError, match="cpu-target option"):
        prog.run_step(_batch(), capture=("h",))
    path = tmp_path / "w.npz"
    prog.save_weights(str(path))
    uploads = prog.runtime.state.uploads
    again = bwplan.compile(NET, target="cuda")
    again.load_weights(str(path))
    assert again.runtime.state.uploads == uploads + 1
    for name, value in prog.params.items():
        np.testing.assert_array_equal(again.runtime.state.device_copy[name], value)


def test_the_cuda_target_gives_data_parallelism_host_arrays_and_a_device_update(
        fake_device):
    """Its gradient buckets visit the host for MPI (tests/test_cuda_mpi.py runs it); the
    update of a rank without samples is the device's, not the host optimizer's."""
    prog = bwplan.compile(NET, target="cuda")
    stores = prog.runtime.gradient_stores()
    assert stores.grads == {} and stores.scaled == {}
    assert stores.device_update is not None
    assert HostTarget("reference", dict).gradient_stores().device_update is None


def test_cuda_target_takes_row_frozen_parameters(fake_device):
    """The device gets the pruned program, whose dW of h.weight runs over rows 2:5 only
    (its launches are checked in test_cuda_host.py, on a GPU in test_cuda_gpu.py)."""
    prog = bwplan.compile(NET, target="cuda", freeze=["h.weight[0:2]"])
    prog.step(_batch())
    ex, = _Executor.made
    step, = [s for s in ex.program.backward if s.param == "h.weight"]
    assert ex.program.dw_rows(step) == ((2, 5),)
