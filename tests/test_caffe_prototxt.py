"""Protobuf text syntax and the Caffe schema: every written form parses, every mistake is a
BwSyntaxError or CaffeError at the right line and column, and mutated prototxt text never
makes the importer raise anything but a BwError."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bwplan.caffe.importer import import_caffe_text
from bwplan.caffe.model import read_net
from bwplan.caffe.prototxt import Ident, Message, parse_prototxt
from bwplan.errors import BwError, BwSyntaxError, CaffeError

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "caffe"


def test_every_form_of_field():
    msg = parse_prototxt("""# a comment
name: "n" 'et'   # adjacent strings concatenate
layer { top: "a", bottom: 'b'; propagate_down:false }
layer: < name: "c" >
shape { dim: [1, 2, 3] }
x: -inf y: 1.5e3f z: 0x1F w: -2 v: .5
""", "f.prototxt")
    assert msg.first("name").value == "net"
    layer = msg.all("layer")
    assert len(layer) == 2 and isinstance(layer[1].value, Message)
    assert layer[0].value.first("propagate_down").value == Ident("false")
    assert [f.value for f in msg.first("shape").value.all("dim")] == [1, 2, 3]
    values = [msg.first(k).value for k in "xyzwv"]
    assert values == [Ident("-inf"), 1500.0, 31, -2, 0.5]
    top = layer[0].value.first("top")
    assert (top.span.line, top.span.col, top.value_span.col) == (3, 9, 14)


def test_escapes():
    assert parse_prototxt(r'a: "x\"y\n\101\x42"').first("a").value == 'x"y\nAB'


@pytest.mark.parametrize("text, line, col, words", [
    ('layer {\n  name "x"\n}', 2, 8, "expected ':'"),
    ("layer {\n  name: }", 2, 9, "expected a value"),
    ('layer {\n  name: "x"\n', 1, 7, "never closed"),
    ("a: 1\n}", 2, 1, "never opened"),
    ('a: "abc\n', 1, 4, "never closed"),
    ("a: @", 1, 4, ""),
    ("a { b: 1 >", 1, 10, "unexpected '>'"),
])
def test_syntax_errors_have_a_position(text, line, col, words):
    with pytest.raises(BwSyntaxError) as info:
        parse_prototxt(text, "f.prototxt")
    err = info.value
    assert (err.span.path, err.span.line, err.span.col) == ("f.prototxt", line, col)
    assert words in err.message


@pytest.mark.parametrize("text, words, line", [
    ('layer { name: "a" typo: 1 }', 'no field named "typo"', 1),
    ('layer { name: "a" param { lr_mul: 0 } }', "did you mean 'lr_mult'?", 1),
    ('layer {\n name: "a"\n name: "b" }', "specified multiple times", 3),
    ('layer { name: 3 }', "must be a quoted string", 1),
    ('layer { param { lr_mult: "x" } }', "must be a number", 1),
    ('layer { propagate_down: maybe }', "must be true or false", 1),
    ('layer { include { phase: TRAINING } }', "must be one of TRAIN, TEST", 1),
    ('layer { convolution_param { num_output: -1 } }', "non-negative integer", 1),
    ('layer { convolution_param { num_output: 1.5 } }', "non-negative integer", 1),
    ('layer { param: 3 }', "must be a message", 1),
])
def test_schema_errors_point_at_the_field(text, words, line):
    with pytest.raises(CaffeError) as info:
        read_net(text, "f.prototxt")
    assert words in str(info.value) + (info.value.hint or "")
    assert info.value.span.line == line


def test_fork_parameters_are_accepted_and_types_are_reported_by_the_importer():
    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 '
            'dim: 3 dim: 4 dim: 4 } } }\nlayer { name: "p" type: "Upsample3D" bottom: "x" '
            'bottom: "x" top: "p" upsample_param { scale: 2 } }\n')
    net = read_net(text, "f.prototxt")
    assert net.layers[1].type == "Upsample3D"
    with pytest.raises(CaffeError) as info:
        import_caffe_text(text, "f.prototxt")
    assert "'Upsample3D', which bwplan does not import" in info.value.message
    assert (info.value.span.line, info.value.span.col) == (2, 19)


# ---- fuzzing ------------------------------------------------------------------------------
SEED = (CORPUS / "lenet_accuracy_in_train.prototxt")
PIECES = ["{", "}", ":", '"', "'", "<", ">", "[", "]", ",", ";", "-", "0", "1.5", "x",
          "layer", "bottom", "top", "param", "lr_mult", "name", "type", '"Input"',
          '"Slice"', "loss_weight: 1", "propagate_down: false", "include { phase: TEST }",
          "\n", " ", "#"]


def _seed_text() -> str:
    if SEED.is_file():
        return SEED.read_text()
    return ('layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 '
            'dim: 3 } shape { dim: 2 } } }\nlayer { name: "fc" type: "InnerProduct" bottom: '
            '"x" top: "fc" inner_product_param { num_output: 4 } }\nlayer { name: "loss" '
            'type: "SoftmaxWithLoss" bottom: "fc" bottom: "y" top: "loss" }\n')


@st.composite
def mutated(draw):
    text = _seed_text()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = min(len(text), i + draw(st.integers(0, 40)))
        piece = draw(st.sampled_from(PIECES + [""]))
        text = text[:i] + piece + text[j:]
    return text


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_prototxt_gives_only_bwplan_errors(text):
    try:
        import_caffe_text(text, "fuzz.prototxt")
    except BwError as err:
        assert err.message
