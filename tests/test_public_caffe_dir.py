"""Opt-in check of a directory of real Caffe prototxts, as a user runs bwplan on them.

Set BWPLAN_PUBLIC_CAFFE_DIR to a directory: every *.prototxt below it (solver files aside) is
checked through the CLI. A file may carry a sidecar `F.args` (or `F` without its suffix plus
`.args`) holding extra command-line flags; only `--input-shape NAME=DIMS` is allowed there,
since a public net must import with no other flag. Per file:

- `explain F` exits 0, and so does `explain --caffe F`;
- `explain --freeze '<first layer with a trainable param>*' F` exits 0 and shows that layer
  frozen, none of its weight gradients computed;
- `convert F -o net.bw`, then `explain net.bw` plans the same as `explain F`: the decisions
  of `--format json` (codes and flags, not display text or source positions) are equal;
- no stderr holds a Python traceback or an internal error.

A net with a Python layer and no shapes for its tops must stop with the documented error
(exit 2, naming the layer's module and class) and nothing else is checked for it. A file that
Caffe itself rejects (an old revision with fields Caffe no longer has) carries a sidecar
`F.expect-error`: each of its lines must appear in the one-run error report of `explain F`,
which must exit 2 with every error located at file:line:col.
Unset, the test skips."""
from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest

from bwplan.cli.main import main

ROOT = os.environ.get("BWPLAN_PUBLIC_CAFFE_DIR")


def _files() -> list[Path]:
    if not ROOT:
        return []
    return sorted(p for p in Path(ROOT).rglob("*.prototxt")
                  if not p.name.startswith("solver") and "_solver" not in p.name
                  and not p.name.endswith("solver.prototxt"))


FILES = _files()


def _ids() -> list[str]:
    return [str(p.relative_to(ROOT)) for p in FILES]


def _sidecar(path: Path, suffix: str) -> Path | None:
    return next((p for p in (Path(f"{path}{suffix}"), path.with_suffix(suffix))
                 if p.is_file()), None)


def _sidecar_flags(path: Path) -> list[str]:
    """The flags of F.args: --input-shape only, each with its value."""
    sidecar = _sidecar(path, ".args")
    if sidecar is None:
        return []
    words = shlex.split(sidecar.read_text(), comments=True)
    flags: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("--input-shape="):
            flags += ["--input-shape", word.split("=", 1)[1]]
            i += 1
        elif word == "--input-shape" and i + 1 < len(words):
            flags += [word, words[i + 1]]
            i += 2
        else:
            pytest.fail(f"{sidecar}: only --input-shape NAME=DIMS is allowed, not {word!r}")
    return flags


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(argv)
    out = capsys.readouterr()
    for line in out.err.splitlines():
        assert "Traceback (most recent call last)" not in line, out.err
        assert not line.startswith("internal error"), out.err
    return status, out.out, out.err


def _decisions(plan: dict) -> dict:
    """What a plan decides, without display text or where a setting is written."""
    def grads(entries, key):
        return [(e[key], e.get("needed"), e.get("code"), e.get("lr_mult"),
                 e.get("stop_gradient")) for e in entries]
    layers = [(l["name"], l["op"], tuple(l["shape"]), l["dtype"], l["frozen"],
               l["loss_weight"], json.dumps(l["mode"], sort_keys=True),
               l["forward"]["needed"], l["forward"]["code"],
               grads(l["dx"], "input"), grads(l["dw"], "param"),
               json.dumps(l["keeps"], sort_keys=True), json.dumps(l["flops"]))
              for l in plan["layers"]]
    net = plan["net"]
    return {
        "inputs": json.dumps(net["inputs"], sort_keys=True),
        "params": json.dumps(net["params"], sort_keys=True),
        "layers": layers,
        "kept": json.dumps(plan["kept"], sort_keys=True),
        "summary": json.dumps(plan["summary"], sort_keys=True),
        "updates": [(u["param"], u["kind"], u["decay_mult"], u["decay_lr_mult"],
                     json.dumps(u["rows"]), json.dumps(u["uses"], sort_keys=True))
                    for u in plan["updates"]],
        "frozen_prefix": (plan["frozen_prefix"] or {}).get("layers"),
    }


def _first_trainable_layer(plan: dict) -> str | None:
    learnable = {p["name"] for p in plan["net"]["params"] if p["learnable"]}
    return next((l["name"] for l in plan["layers"]
                 if any(d["param"] in learnable for d in l["dw"])), None)


def _glob_literal(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _has_python_layer(text: str) -> bool:
    return re.search(r"""\btype\s*:\s*["']?Python["']?""", text) is not None


@pytest.mark.skipif(not ROOT, reason="BWPLAN_PUBLIC_CAFFE_DIR is not set")
@pytest.mark.parametrize("path", FILES, ids=_ids())
def test_public_prototxt(path: Path, tmp_path, capsys):
    flags = _sidecar_flags(path)
    status, out, err = _run(capsys, ["explain", "--format", "json", str(path), *flags])
    expected = _sidecar(path, ".expect-error")
    if expected is not None:
        assert status == 2, f"{path} imports, but {expected.name} expects an error"
        for line in filter(None, map(str.strip, expected.read_text().splitlines())):
            assert line in err, err
        assert re.search(r"\S+:\d+:\d+: error: ", err.splitlines()[0]), err
        return
    if status != 0 and _has_python_layer(path.read_text(errors="replace")) \
            and "Python layer" in err:
        # the documented refusal: one located error naming the layer's module and class
        assert status == 2, err
        assert re.search(r"\S+:\d+:\d+: error: Python layer '[^']+' runs Python code", err), err
        return
    assert status == 0, err
    plan = json.loads(out)

    status, out, err = _run(capsys, ["explain", str(path), *flags])
    assert status == 0, err
    status, out, err = _run(capsys, ["explain", "--caffe", str(path), *flags])
    assert status == 0, err

    layer = _first_trainable_layer(plan)
    if layer is not None:
        pattern = _glob_literal(layer) + "*"
        status, out, err = _run(capsys, ["explain", "--format", "json", "--freeze", pattern,
                                         str(path), *flags])
        assert status == 0, err
        frozen = next(l for l in json.loads(out)["layers"] if l["name"] == layer)
        assert frozen["frozen"], f"--freeze {pattern!r} leaves {layer} unfrozen"
        assert not any(d["needed"] for d in frozen["dw"]), frozen["dw"]
        assert all(d["lr_mult"] == 0 for d in frozen["dw"]), frozen["dw"]

    bw = tmp_path / "net.bw"
    status, out, err = _run(capsys, ["convert", str(path), *flags, "-o", str(bw)])
    assert status == 0, err
    status, out, err = _run(capsys, ["explain", "--format", "json", str(bw)])
    assert status == 0, err
    assert _decisions(json.loads(out)) == _decisions(plan)
