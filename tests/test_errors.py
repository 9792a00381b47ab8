"""Every bad input ends in one clear error with a position and exit status 2, never a
traceback: hand-written cases for each error class, then fuzzing with mutated and
grammar-generated text."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bwplan.cli.main import main
from bwplan.errors import BwError
from bwplan.frontend.load import load_bw_text
from bwplan.frontend.parse_bw import parse_bw

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.bw"))
HEAD = re.compile(r"^(\S+?):(\d+):(\d+): error: .+")


def run_cli(tmp_path, text: str, *args: str, name: str = "net.bw"):
    path = tmp_path / name
    path.write_text(text)
    return path


CASES = {
    "unclosed call": ("input x : f32[2, 3]\ny = relu(x\n", 2, 9, "never closed"),
    "unknown op": ("input x : f32[2, 3]\ny = rleu(x)\n", 2, 5, "unknown op 'rleu'"),
    "unknown layer": ("input x : f32[2, 3]\ny = relu(z)\n", 2, 10, "unknown layer 'z'"),
    "redefined": ("input x : f32[2, 3]\ny = relu(x)\ny = relu(x)\n", 3, 1, "already defined"),
    "unknown attribute": ("input x : f32[2, 3]\ny = linear(x, out=3, bais=true)\n", 2, 22,
                          "unknown attribute of linear 'bais'"),
    "missing attribute": ("input x : f32[2, 3]\ny = linear(x)\n", 2, 5, "needs the attribute"),
    "attribute type": ("input x : f32[2, 3]\ny = linear(x, out=1.5)\n", 2, 15,
                       "must be an integer"),
    "shape mismatch": ("input x : f32[2, 3]\ninput y : f32[2, 4]\nz = add(x, y)\n", 3, 5,
                       "add"),
    "conv on 2-D": ("input x : f32[2, 3]\ny = conv2d(x, out=2, kernel=3)\n", 2, 5, "NCHW"),
    "cycle": ("input x : f32[2, 3]\na = add(x, b)\nb = relu(a)\n", 2, 1, "feed each other"),
    "shared shape": ("input x : f32[2, 3]\nparam w : f32[4, 3]\ny = linear(x, out=5, weight=w)\n",
                     3, 22, "declared f32[4, 3]"),
    "unknown type": ("input x : f31[2]\n", 1, 11, "unknown element type"),
    "bad setting": ("input x : f32[2, 3]\ny = linear(x, out=3) lr=fast\n", 2, 22, "number"),
    "unknown slot": ("input x : f32[2, 3]\ny = linear(x, out=3) gamma.lr=1\n", 2, 22,
                     "param slot"),
    "self-sharing circle": ("input x : f32[2, 3]\na = linear(x, out=3) shares b\n"
                            "b = linear(x, out=3) shares a\n", 3, 22, "circle"),
    "metric weight": ("input x : f32[2, 3]\ninput y : i64[2]\nacc = accuracy(x, y) weight=1\n",
                      3, 22, "metric"),
    "decay mismatch": ("input x : f32[2, 3]\na = linear(x, out=3) decay=1\n"
                       "b = linear(x, out=3) shares a decay=0\n", 3, 22, "decay"),
    "block arity": ("input x : f32[2, 3]\nblock t(u) {\n v = relu(u)\n return v\n}\n"
                    "y = t(x, x)\n", 6, 5, "tensor input"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_error_cases(tmp_path, capsys, name):
    text, line, col, fragment = CASES[name]
    path = run_cli(tmp_path, text)
    assert main(["explain", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    first = err.splitlines()[0]
    m = HEAD.match(first)
    assert m, first
    assert (int(m.group(2)), int(m.group(3))) == (line, col), first
    assert fragment in err
    # the source line and a caret under the column follow
    lines = err.splitlines()
    caret = next(l for l in lines if set(l.strip()) == {"^"})
    assert caret.index("^") - 2 == col - 1


def test_unreadable_files(tmp_path, capsys):
    assert main(["explain", str(tmp_path / "missing.bw")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "latin1.bw"
    bad.write_bytes(b"input x : f32[2]\n# caf\xe9\n")
    assert main(["explain", str(bad)]) == 2
    assert "UTF-8" in capsys.readouterr().err
    assert main(["explain", str(tmp_path)]) == 2


def test_unknown_name_suggests(tmp_path, capsys):
    path = run_cli(tmp_path, "input image : f32[2, 3]\ny = relu(imgae)\n")
    assert main(["explain", str(path)]) == 2
    assert "did you mean 'image'?" in capsys.readouterr().err


def test_several_errors_reported_together(tmp_path, capsys):
    path = run_cli(tmp_path, "input x : f32[2, 3]\na = relu(q)\nb = relu(r)\n")
    assert main(["explain", str(path)]) == 2
    err = capsys.readouterr().err
    assert "'q'" in err and "'r'" in err
    assert err.index("'q'") < err.index("'r'")


def _mutations():
    texts = [p.read_text() for p in EXAMPLES]
    alphabet = st.sampled_from(list("()[]{},=:#\n -_./0123456789abcxyz\"") + ["frozen",
                               "stop_gradient(", "shares ", "block ", "return ", "input ",
                               "param ", "f32[", "out=", "weight=", "lr=", "1e9", "-1"])

    @st.composite
    def mutated(draw):
        text = draw(st.sampled_from(texts))
        for _ in range(draw(st.integers(1, 4))):
            if not text:
                break
            i = draw(st.integers(0, len(text) - 1))
            j = min(len(text), i + draw(st.integers(0, 12)))
            text = text[:i] + draw(st.one_of(st.just(""), alphabet)) + text[j:]
        return text

    return mutated()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_mutated_sources_fail_cleanly(text):
    try:
        load_bw_text(text, "fuzz.bw")
    except BwError as err:
        assert err.span.path == "fuzz.bw"
        assert err.span.line >= 1, err


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_random_text_fails_cleanly(text):
    try:
        load_bw_text(text, "fuzz.bw")
    except BwError:
        pass


def test_cli_never_prints_traceback_on_mutations(tmp_path, capsys):
    """A deterministic sample through the real command line, checking the message form."""
    import random
    rng = random.Random(7)
    texts = [p.read_text() for p in EXAMPLES]
    path = tmp_path / "m.bw"
    for _ in range(60):
        text = rng.choice(texts)
        i = rng.randrange(len(text))
        text = text[:i] + rng.choice(["", "(", ")", "=", "x", "\n", ",", "[", "@"]) + \
            text[i + rng.randrange(1, 6):]
        path.write_text(text)
        rc = main(["explain", str(path)])
        out = capsys.readouterr()
        assert rc in (0, 2)
        assert "Traceback" not in out.err
        if rc == 2:
            assert HEAD.match(out.err.splitlines()[0]), out.err


# The grammar, as a generator of programs that parse: element types are drawn from the ones
# that exist and tensor arguments come before keyword arguments (rules the parser enforces
# after the grammar); everything else is the grammar itself.
_GENERATION_EDITS = {
    'tensor_type: NAME "["': 'tensor_type: DTYPE "["',
    "_arguments: _argument (\",\" _argument)* \",\"?":
        "_arguments: _tensor_argument (\",\" _tensor_argument)* (\",\" kwarg)* \",\"?"
        " | kwarg (\",\" kwarg)* \",\"?\n_tensor_argument: tensor_arg | stopped_arg",
}


def _grammar_programs():
    from hypothesis.extra.lark import from_lark
    from lark import Lark

    from bwplan.ir.types import DTYPE_BYTES
    from bwplan.resources import resource_dir
    text = (resource_dir("grammar") / "bw.lark").read_text()
    for real, generating in _GENERATION_EDITS.items():
        assert real in text, f"the grammar no longer has {real!r}: update the generator"
        text = text.replace(real, generating)
    text += "\nDTYPE: " + " | ".join(f'"{d}"' for d in sorted(DTYPE_BYTES)) + "\n"
    grammar = Lark(text, parser="lalr")
    # names and keywords are separated by spaces so that they do not run together
    keywords = {t.name: st.just(f" {t.pattern.value} ") for t in grammar.terminals
                if t.pattern.type == "str" and t.pattern.value.isidentifier()}
    return from_lark(grammar, explicit={
        **keywords,
        "COMMENT": st.just(" "),
        "NAME": st.sampled_from(["x", "y", "conv1/a", "l.2", "relu", "linear", "x"]).map(
            lambda n: f" {n} "),
        "DTYPE": st.sampled_from(sorted(DTYPE_BYTES)).map(lambda n: f" {n} "),
        # from 1: a dimension must be positive, and the parser checks it
        "INT": st.integers(1, 9).map(str),
        # numbers the parser accepts (it refuses a too large integer where it reads it)
        "SIGNED_NUMBER": st.one_of(st.integers(-99, 99).map(str),
                                   st.sampled_from(["0.5", "-1.25", "1e-3", ".5", "+2"])),
    })


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(_grammar_programs())
def test_grammar_generated_programs_parse_and_load_or_fail_cleanly(text):
    parse_bw(text, "gen.bw")   # a program the grammar generates parses: no error at all
    try:
        load_bw_text(text, "gen.bw")
    except BwError:
        pass
