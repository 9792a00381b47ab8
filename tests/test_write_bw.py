"""write_bw: a flat module written as .bw text re-parses to the same Net. Every net of the
Caffe corpus makes the round trip prototxt -> .bw -> Net."""
from __future__ import annotations

from pathlib import Path

import pytest

from bwplan import ops as registry
from bwplan.caffe.importer import caffe_module, import_caffe_text
from bwplan.errors import BwError
from bwplan.frontend import ast
from bwplan.frontend.load import load_bw_text
from bwplan.frontend.parse_bw import parse_bw
from bwplan.frontend.write_bw import write_bw
from bwplan.ir.types import TensorType
from bwplan.source import Span

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "caffe"
CASES = sorted(p.stem for p in CORPUS.glob("*.prototxt")) if CORPUS.is_dir() else []
REJECTED = {"lenet_error_loss_weight_on_inplace_top", "lenet_error_propdown_count",
            "siamese_error_mismatched_decay"}
S = Span("t.bw", 1, 1, 1, 2)


def summary(net):
    """Everything about a Net except where it was written."""
    return (
        [(i.name, i.type, i.requires_grad) for i in net.inputs],
        sorted((p.name, p.type, p.learnable) for p in net.params.values()),
        [(l.name, l.op, dict(l.attrs), [(e.src, e.index, e.stop_gradient) for e in l.inputs],
          [(u.param, u.slot, u.lr_mult, u.decay_mult) for u in l.params], l.out,
          l.loss_weight, l.frozen) for l in net.layers])


@pytest.mark.skipif(not CASES, reason=f"Caffe corpus not found at {CORPUS}")
@pytest.mark.parametrize("case", [c for c in CASES if c not in REJECTED])
def test_corpus_round_trip(case):
    path = CORPUS / f"{case}.prototxt"
    _, flat, _ = caffe_module(path.read_text(), str(path))
    missing = sorted({s.call.op for s in flat.module.statements
                      if isinstance(s, ast.LayerStmt) and registry.get(s.call.op) is None})
    if missing:
        pytest.skip(f"ops not registered yet: {', '.join(missing)}")
    result = import_caffe_text(path.read_text(), str(path))
    text = write_bw(result.module, [f"converted from {path.name}"])
    assert summary(load_bw_text(text, f"{case}.bw")) == summary(result.net)


def test_statements_and_values():
    module = ast.Module("t.bw", (
        ast.InputDecl("x", TensorType("f32", (2, 3)), True, S),
        ast.InputDecl("y", TensorType("i64", (2,)), False, S),
        ast.ParamDecl("w/shared", TensorType("f32", (4, 3)), (), S),
        ast.LayerStmt("fc-1", ast.Call("linear", (ast.Arg("x", True, S),), (
            ast.KwArg("out", 4, S), ast.KwArg("weight", ast.NameRef("w/shared", S), S)), S, S),
            (ast.Modifier("weight.lr", 0.5, S), ast.Modifier("bias.decay", 0, S)), S, S),
        ast.LayerStmt("p", ast.Call("maxpool", (ast.Arg("fc-1", False, S),), (
            ast.KwArg("kernel", (3, 1), S), ast.KwArg("ceil", True, S),
            ast.KwArg("eps", 1e-05, S), ast.KwArg("mode", "a b", S)), S, S),
            (ast.Modifier("frozen", None, S),), S, S),
    ))
    text = write_bw(module, ["header"])
    assert text == (
        "# header\n"
        "input x: f32[2, 3] grad\n"
        "input y: i64[2]\n"
        "param w/shared: f32[4, 3]\n"
        "fc-1 = linear(stop_gradient(x), out=4, weight=w/shared) weight.lr=0.5 bias.decay=0\n"
        'p = maxpool(fc-1, kernel=[3, 1], ceil=true, eps=1e-05, mode="a b") frozen\n')
    reparsed = parse_bw(text, "t.bw")
    assert [getattr(s, "name") for s in reparsed.statements] == ["x", "y", "w/shared", "fc-1",
                                                                 "p"]
    assert reparsed.statements[4].call.kwargs[0].value == (3, 1)


@pytest.mark.parametrize("stmt, words", [
    (ast.InputDecl("conv 1", TensorType("f32", (2,)), False, S), "'conv 1'"),
    (ast.InputDecl("1x", TensorType("f32", (2,)), False, S), "'1x'"),
    (ast.LayerStmt("input", ast.Call("relu", (ast.Arg("x", False, S),), (), S, S), (), S, S),
     "keyword"),
    (ast.LayerStmt("y", ast.Call("relu", (ast.Arg("x:0", False, S),), (), S, S), (), S, S),
     "'x:0'"),
    (ast.LayerStmt("y", ast.Call("relu", (ast.Arg("x", False, S),),
                                 (ast.KwArg("a", float("nan"), S),), S, S), (), S, S), "nan"),
    (ast.LayerStmt("y", ast.Call("relu", (ast.Arg("x", False, S),),
                                 (ast.KwArg("a", 'say "hi"', S),), S, S), (), S, S), "quote"),
])
def test_names_bw_cannot_spell_are_errors(stmt, words):
    with pytest.raises(BwError) as info:
        write_bw(ast.Module("t.bw", (stmt,)))
    assert words in info.value.message
    assert info.value.span == S


def test_caffe_names_that_bw_cannot_spell():
    text = ('layer { name: "in" type: "Input" top: "my data" input_param { shape { dim: 2 '
            'dim: 3 } } }\n')
    _, flat, _ = caffe_module(text, "t.prototxt")
    with pytest.raises(BwError) as info:
        write_bw(flat.module)
    assert "'my data'" in info.value.message and info.value.span.line == 1
