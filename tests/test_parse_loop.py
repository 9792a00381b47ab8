"""The parse loop (bwplan/frontend/lalr_loop.py) runs Lark's own tables, lexers and
callbacks: on every text it must give exactly what Lark's parse gives (the same AST, spans
included), or decline where Lark raises so that Lark's own error is reported."""
import random
from pathlib import Path

import pytest
from hypothesis import given, settings

from bwplan.errors import BwSyntaxError
from bwplan.frontend.lalr_loop import REJECTED
from bwplan.frontend.parse_bw import _building_parser, _loop, parse_bw
from test_errors import _grammar_programs

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.bw"))


def _both(text: str, path: str = "t.bw"):
    """(Lark's result or exception, the loop's result or exception) for one text."""
    parser, postlex, to_ast = _building_parser()
    postlex.path = to_ast.path = path
    out = []
    for parse in (parser.parse, _loop(parser).parse):
        try:
            out.append(parse(text))
        except Exception as err:   # compared below: the same error from both, or none
            out.append(err)
    return out


def _agree(text: str) -> None:
    lark, loop = _both(text)
    if isinstance(lark, Exception):
        assert loop is REJECTED or (type(loop) is type(lark) and str(loop) == str(lark)), text
    else:
        assert loop == lark, text


@settings(max_examples=60, deadline=None)
@given(_grammar_programs())
def test_grammar_generated_programs_give_lark_s_ast(text):
    _agree(text)


@pytest.mark.parametrize("path", EXAMPLES[:6], ids=lambda p: p.name)
def test_examples_and_their_corruptions_agree_with_lark(path):
    text = path.read_text()
    _agree(text)
    rng = random.Random(path.name)
    for _ in range(40):
        i = rng.randrange(len(text))
        _agree(text[:i] + rng.choice(["(", ")", "]", ",", "=", "\n", " frozen ", "x", ""])
               + text[i + rng.randrange(0, 4):])


def test_keywords_are_names_where_the_grammar_takes_a_name():
    # `frozen`, `grad` and `shares` are keywords only where the grammar accepts them, as in
    # Lark's contextual lexer
    text = ("input x : f32[2, 3] grad\ninput frozen : f32[2, 3]\n"
            "grad = add(x, frozen) frozen\nshares = relu(grad) shares grad  # comment\n")
    lark, loop = _both(text)
    assert not isinstance(lark, Exception) and loop == lark
    assert [s.name for s in loop.statements] == ["x", "frozen", "grad", "shares"]


def test_a_text_the_loop_declines_gets_lark_s_error():
    with pytest.raises(BwSyntaxError, match="never closed"):
        parse_bw("input x : f32[2, 3]\ny = relu(x\n", "t.bw")
    with pytest.raises(BwSyntaxError) as err:
        parse_bw("input x : f32[2, 3]\ny relu(x)\n", "t.bw")
    assert err.value.span.line == 2
