"""Golden files: each example's source together with its expected `bwplan explain` output.
A change in a decision, a reason or a figure shows up as a readable diff.

Regenerate after an intended change with:
    BWPLAN_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest

from bwplan.cli.main import main

ROOT = Path(__file__).parents[1]
GOLDEN = Path(__file__).parent / "golden"
SOURCE_MARK = "#### source\n"
OUTPUT_MARK = "#### bwplan explain\n"
CASES = {p.stem: ["explain", f"examples/{p.name}"]
         for p in sorted((ROOT / "examples").glob("*.bw"))}
CASES["middle_frozen.why_conv2"] = ["explain", "examples/middle_frozen.bw", "--why", "conv2"]
CASES["middle_frozen.why_conv2.wide"] = ["explain", "examples/middle_frozen.bw", "--why",
                                        "conv2", "--wide"]
CASES["seed_inception_branch.wide"] = ["explain", "examples/seed_inception_branch.bw", "--wide"]
CASES["cnn_small.freeze_convs"] = ["explain", "examples/cnn_small.bw", "--freeze", "conv*",
                                   "--unfreeze", "conv3"]


def _explain(args: list[str]) -> str:
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out):
            assert main(args) == 0
    finally:
        os.chdir(cwd)
    return out.getvalue()


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name):
    args = CASES[name]
    source = (ROOT / args[1]).read_text()
    expected_file = GOLDEN / f"{name}.txt"
    actual = SOURCE_MARK + source + OUTPUT_MARK + "$ bwplan " + " ".join(args) + "\n" + \
        _explain(args)
    if os.environ.get("BWPLAN_UPDATE_GOLDEN"):
        expected_file.write_text(actual)
    assert expected_file.exists(), "no golden file; run with BWPLAN_UPDATE_GOLDEN=1"
    expected = expected_file.read_text()
    assert expected.split(OUTPUT_MARK)[0] == SOURCE_MARK + source, \
        f"{args[1]} changed since its golden file was written"
    assert actual == expected
