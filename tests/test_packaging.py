"""The package as a user installs it: a built wheel carries the grammars and every CUDA
source and reads a .bw and a prototxt with no checkout beside it; the command line has
--version, forwards bench options, and every option says what it does and its default."""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bwplan.cli.main import main, parser

ROOT = Path(__file__).resolve().parents[1]

PROTOTXT = """name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 4 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def _can_build_wheels_here() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    version = tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())
    if version >= (70, 1):    # bdist_wheel is part of setuptools from 70.1 on
        return True
    try:
        import wheel  # noqa: F401
    except ImportError:
        return False
    return version >= (64, 0)


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # build with the setuptools at hand when it can make wheels (no download); else let pip
    # fetch pyproject.toml's build requirements, as a user's pip install does
    isolation = ["--no-build-isolation"] if _can_build_wheels_here() else []
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation,
                        "-w", str(out), str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    wheel, = out.glob("bwplan-*.whl")
    site = out / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    return site


def test_wheel_carries_the_grammars_and_every_cuda_source(unpacked_wheel):
    data = unpacked_wheel / "bwplan" / "_data"
    for folder, patterns in {"grammar": ["*.lark"], "cuda": ["*.cu", "*.cuh"]}.items():
        expected = sorted(p.name for pat in patterns for p in (ROOT / folder).glob(pat))
        assert expected and sorted(p.name for p in (data / folder).iterdir()) == expected


def test_installed_wheel_explains_a_bw_and_a_prototxt_without_the_checkout(
        unpacked_wheel, tmp_path):
    (tmp_path / "tiny.prototxt").write_text(PROTOTXT)
    (tmp_path / "net.bw").write_text((ROOT / "examples" / "frozen_backbone.bw").read_text())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(unpacked_wheel)
    # one interpreter for both files (each start imports numba): the command line's main
    probe = ("import sys, bwplan.resources as r; from bwplan.cli.main import main\n"
             "print(r.resource_dir('grammar'), r.resource_dir('cuda'))\n"
             "sys.exit(main(['explain', 'tiny.prototxt']) or main(['explain', 'net.bw']))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    found, tables = r.stdout.split("\n", 1)
    assert all(Path(p).is_relative_to(unpacked_wheel) for p in found.split())
    assert tables.count("\nlayer ") == 2 and str(ROOT) not in r.stdout + r.stderr


def test_version(capsys):
    import bwplan
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == \
        f"bwplan {bwplan.__version__}"


def test_bench_forwards_its_options(monkeypatch):
    import bench.__main__ as suite
    seen = []
    monkeypatch.setattr(suite, "main", lambda argv: seen.append(argv) or 0)
    assert main(["bench", "--quick", "--nets", "cnn_small"]) == 0
    assert main(["bench", "--", "--quick"]) == 0
    assert seen == [["--quick", "--nets", "cnn_small"], ["--quick"]]


def test_other_commands_still_reject_unknown_options(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["explain", "examples/cnn_small.bw", "--quick"])
    assert stop.value.code == 2 and "unrecognized arguments: --quick" in capsys.readouterr().err


def _commands():
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices.items()


@pytest.mark.parametrize("name,command", list(_commands()), ids=[n for n, _ in _commands()])
def test_every_option_has_help_with_its_default(name, command):
    text = command.format_help()
    for action in command._actions:
        assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        meaningful = action.default not in (None, [], argparse.SUPPRESS) and \
            action.default is not False and action.option_strings
        if meaningful:
            assert f"default: {action.default}" in " ".join(text.split()), \
                (name, action.option_strings)


def test_no_test_skips_for_a_missing_part_of_bwplan_or_of_what_it_requires():
    """A broken bwplan module or a missing required package must fail, not skip: only
    optional pieces (torch, onnx, pycuda, scikit-learn, ...) may skip."""
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    required = {re.split(r"[<>=!~ \[]", line.strip())[0].replace("-", "_")
                for line in cfg["options"]["install_requires"].splitlines() if line.strip()}
    skipped = {(p.name, m.group(1)) for p in (ROOT / "tests").glob("*.py")
               for m in re.finditer(r"importorskip\(\s*[\"']([\w.]+)", p.read_text())}
    wrong = {(f, m) for f, m in skipped if m.split(".")[0] in required | {"bwplan"}}
    assert not wrong, f"importorskip of a required module: {sorted(wrong)}"
