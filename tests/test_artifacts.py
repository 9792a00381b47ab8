"""The compiled artifact as data (bwplan/artifacts.py): the files `bwplan compile` writes
come from library functions, and the command writes exactly those."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import bwplan
from bwplan.artifacts import cuda_artifact, host_artifact
from bwplan.cli.main import main
from bwplan.errors import BwError
from bwplan.kernels.cuda import build

ROOT = Path(__file__).parent.parent
NET = ROOT / "examples/frozen_backbone.bw"
TEXT = "input x : f32[2, 3]\ninput t : f32[2, 4]\nfc = linear(x, out=4)\n" \
       "loss = euclidean_loss(fc, t)\n"


def test_the_command_writes_the_library_artifact(tmp_path, capsys):
    prog = bwplan.compile(str(NET), target="cpu", freeze=["conv*"])
    artifact = host_artifact(prog)
    assert artifact.names == ("plan.json", "schedule.json", "frozen_backbone.bw",
                              "manifest.json")
    assert main(["compile", str(NET), "--freeze", "conv*", "-o", str(tmp_path)]) == 0
    capsys.readouterr()
    for name, content in artifact.files:
        assert (tmp_path / name).read_text() == content, name
    files = dict(artifact.files)
    assert files["plan.json"] == prog.plan_json()
    assert files["schedule.json"] == prog.program_json()
    manifest = json.loads(files["manifest.json"])
    assert manifest == artifact.manifest and manifest["rules"] == [["freeze", "conv*"]]
    steps = json.loads(prog.program_json())["backward"]
    assert steps and not any(s["phase"] == "dw" and s["layer"].startswith("conv")
                             for s in steps)


def test_a_net_from_source_text_needs_its_source_given():
    prog = bwplan.compile(TEXT, target="reference")
    with pytest.raises(BwError, match="compiled from source text"):
        host_artifact(prog)
    artifact = host_artifact(prog, source=("net.bw", TEXT))
    assert dict(artifact.files)["net.bw"] == TEXT
    assert artifact.manifest["source"] == "net.bw"
    assert artifact.manifest["kernels"] == sorted(
        ["euclidean_loss:fwd", "euclidean_loss:dx:a", "linear:fwd", "linear:dw:weight",
         "linear:dw:bias"])


def test_the_cuda_artifact_without_nvcc(monkeypatch):
    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    prog = bwplan.compile(TEXT, target="reference")
    artifact = cuda_artifact(prog, "sm_90", source=("net.bw", TEXT))
    assert artifact.names == ("net.cu", "plan.json", "schedule.json", "net.bw",
                              "manifest.json")
    files, manifest = dict(artifact.files), artifact.manifest
    assert manifest["cubin"] is None and manifest["target"] == "cuda"
    # each buffer is placed at an aligned offset: a tiny net's arena is above its peak
    assert manifest["arena_bytes"] >= manifest["plan_peak_bytes"] > 0
    kernels = [k["kernel"] for k in manifest["kernels"]]
    assert "linear_fwd" in kernels and "sgd_update" in kernels
    assert all(re.search(rf"\b{k}\(", files["net.cu"]) for k in kernels)
    assert json.loads(files["manifest.json"]) == manifest
