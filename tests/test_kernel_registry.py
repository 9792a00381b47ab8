"""Every op names a CPU kernel for its forward and for each gradient rule, every name
resolves to a callable that accepts the runtime's calling convention, and neither the op
registry nor the kernel package's index imports Numba (the planner must start fast).
"""
from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from bwplan import ops as registry
from bwplan.kernels import cpu

ALL = sorted(registry.OPS)
# the runtime's calls, by component kind (see bwplan/kernels/cpu/__init__.py)
CONVENTION = {
    "fwd": ("ctx", "inputs", "params", "out", "aux", "training", "rng"),
    "dx": ("ctx", "saved", "dout", "index", "out"),
    "dw": ("ctx", "saved", "dout", "out"),
}


def expected_components(op) -> set[str]:
    """'fwd', plus 'dx:<port>' or 'dw:<slot>' for each gradient rule."""
    comps = {"fwd"}
    for rule in op.grads:
        comps.add(f"dw:{rule.wrt}" if op.slot(rule.wrt) is not None else f"dx:{rule.wrt}")
    return comps


@pytest.mark.parametrize("name", ALL)
def test_every_component_has_a_cpu_kernel(name):
    op = registry.OPS[name]
    assert set(op.kernels) >= {"cpu"}
    assert set(op.kernels["cpu"]) == expected_components(op)


@pytest.mark.parametrize("name", ALL)
def test_every_kernel_name_resolves_to_the_calling_convention(name):
    op = registry.OPS[name]
    for component, kernel_name in op.kernels["cpu"].items():
        family = kernel_name.partition(".")[0]
        assert family == op.family, f"{kernel_name} is not in the {op.family} module"
        kernel = cpu.get(kernel_name)
        assert callable(kernel)
        args = CONVENTION[component.partition(":")[0]]
        try:
            inspect.signature(kernel).bind(*args)
        except TypeError as exc:
            pytest.fail(f"{kernel_name} cannot be called as {component}{args}: {exc}")


@pytest.mark.parametrize("name", ["conv", "conv.nothing", "nowhere.conv2d_fwd",
                                  "conv._im2col", "conv.", ""])
def test_unknown_names_are_refused(name):
    with pytest.raises(KeyError):
        cpu.get(name)


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_planner_side_never_imports_numba():
    out = _run("import sys, bwplan.ops, bwplan.kernels.cpu\n"
               "print('numba' in sys.modules)")
    assert out == "False"


def test_threads_configure_sets_numba_threads_and_a_passive_wait_policy():
    out = _run("import os, numba\n"
               "from bwplan.kernels.cpu import threads\n"
               "os.environ.pop('OMP_WAIT_POLICY', None)\n"
               "n = threads.configure(1)\n"
               "print(n, numba.get_num_threads(), os.environ['OMP_WAIT_POLICY'])")
    assert out == "1 1 PASSIVE"


def test_a_thread_count_chosen_before_the_first_program_stands():
    # a one-thread benchmark configures before compiling; the runtime must not reset it
    out = _run("import numba, bwplan\n"
               "from bwplan.kernels.cpu import threads\n"
               "threads.configure(1)\n"
               "bwplan.compile('input x : f32[2, 3]\\ny = relu(x)\\n', target='cpu')\n"
               "print(numba.get_num_threads(), threads.width())")
    assert out == "1 1"
