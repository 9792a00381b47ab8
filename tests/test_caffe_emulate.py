"""The Net::Init emulation against real Caffe: every case of the corpus in ../shared/caffe
(NAME.prototxt, NAME.json = Caffe's final state, NAME.log = Caffe's log) must agree field by
field, and the rendered log lines must equal Caffe's. Then hand-written nets for the quirks
the corpus does not cover. Needs no op registry."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bwplan.caffe.emulate import emulate
from bwplan.caffe.log import backward_lines, init_lines, render_log
from bwplan.caffe.model import read_net
from bwplan.caffe.shapes import shape_string
from bwplan.errors import CaffeError

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "caffe"
CASES = sorted(p.stem for p in CORPUS.glob("*.json")) if CORPUS.is_dir() else []
needs_corpus = pytest.mark.skipif(not CASES, reason=f"Caffe corpus not found at {CORPUS}")

# Caffe rejects this one, bwplan accepts it unless strict (see test_caffe_import.py)
LR_MISMATCH = "Shared param 'conv1_w' has mismatched lr_mult."


def load(case: str):
    return read_net((CORPUS / f"{case}.prototxt").read_text(), f"{case}.prototxt")


def expected(case: str) -> dict:
    return json.loads((CORPUS / f"{case}.json").read_text())


def caffe_error(case: str) -> str | None:
    err = expected(case)["error"]
    return err.split("] ", 1)[1] if err else None


def logged(path: Path) -> list[str]:
    """The 'needs backward' lines of a Caffe log, without the glog prefix."""
    return [line.split("] ", 1)[1] for line in path.read_text().splitlines()
            if line.endswith("backward computation.")]


def _param_row(p) -> dict:
    return {"display_name": p.display_name, "lr_mult": p.lr_mult, "decay_mult": p.decay_mult,
            "lr_mult_given": p.lr_mult_given, "decay_mult_given": p.decay_mult_given,
            "propagate": p.propagate, "effective_lr_mult": p.effective_lr_mult,
            "effective_decay_mult": p.effective_decay_mult,
            "effective_lr_mult_given": p.effective_lr_mult_given,
            "effective_decay_mult_given": p.effective_decay_mult_given,
            "shared_from": None if p.shared_from is None else
            {"layer": p.shared_from[0], "param_index": p.shared_from[1]},
            "shape": shape_string(p.shape)}


@needs_corpus
@pytest.mark.parametrize("case", [c for c in CASES if not caffe_error(c)])
def test_final_state_matches_caffe(case):
    want = expected(case)
    got = emulate(load(case))
    assert [l.name for l in got.layers] == [l["name"] for l in want["layers"]]
    for g, w in zip(got.layers, want["layers"]):
        where = f"{case}: layer {g.name}"
        assert g.type == w["type"], where
        assert g.need_backward == w["need_backward"], where
        assert [(b.blob, b.propagate) for b in g.bottoms] == \
            [(b["blob"], b["propagate"]) for b in w["bottoms"]], where
        assert [(t.blob, t.loss_weight) for t in g.tops] == \
            [(t["blob"], t["loss_weight"]) for t in w["tops"]], where
        keys = _param_row(g.params[0]).keys() if g.params else ()
        assert [_param_row(p) for p in g.params] == \
            [{k: p[k] for k in keys} for p in w["params"]], where
    assert list(got.blob_need_backward.items()) == list(want["blob_need_backward"].items())
    assert dict(got.blob_loss_weight) == want["blob_loss_weight"]
    assert list(got.inputs) == want["inputs"]
    assert list(got.outputs) == want["outputs"]


@needs_corpus
@pytest.mark.parametrize("case", [c for c in CASES if not caffe_error(c)])
def test_log_lines_match_caffe(case):
    assert backward_lines(emulate(load(case))) == logged(CORPUS / f"{case}.log")


@needs_corpus
@pytest.mark.parametrize("case", [c for c in CASES if caffe_error(c)])
def test_rejected_nets_raise_caffes_message(case):
    message = caffe_error(case)
    with pytest.raises(CaffeError) as info:
        emulate(load(case))
    assert message in info.value.message
    assert info.value.span.has_position and info.value.span.path == f"{case}.prototxt"


@needs_corpus
def test_lr_mismatch_is_waived_only_when_not_strict():
    state = emulate(load("siamese_error_mismatched_lr"), strict=False)
    assert [w.code for w in state.waived] == ["shared-lr-mismatch"]
    assert LR_MISMATCH in state.waived[0].message


@needs_corpus
def test_force_backward_log_shows_values_before_forcing():
    state = emulate(load("lenet_force_backward"))
    conv1 = state.layer("conv1")
    assert conv1.need_backward and not conv1.need_backward_logged
    assert all(p.propagate for p in conv1.params)
    assert "conv1 does not need backward computation." in backward_lines(state)
    assert [b.propagate for b in state.layer("loss").bottoms] == [True, False]


@needs_corpus
def test_the_users_own_net_gives_the_users_log():
    """Two LMDB Data layers: shapes come from batch_size, crop_size and mean_value."""
    path = CORPUS / "seed_inception_branch.prototxt"
    state = emulate(read_net(path.read_text(), str(path)))
    want = logged(CORPUS / "seed_inception_branch.caffe.log")
    assert len(want) == 23
    assert backward_lines(state) == want
    data = state.layer("data")
    assert [t.shape for t in data.tops] == [(32, 3, 224, 224), (32,)]


@needs_corpus
def test_filter_lines_match_the_log():
    state = emulate(load("seed001_inception_branch"))
    log = (CORPUS / "seed001_inception_branch.log").read_text()
    for line in state.filter_log:
        assert line in log
    assert init_lines(state)[-1] == "This network produces output loss3"
    assert render_log(state).endswith("data does not need backward computation.\n")


@needs_corpus
def test_test_phase_keeps_the_test_layers():
    state = emulate(load("seed001_inception_branch"), phase="TEST")
    names = [l.name for l in state.layers]
    assert "top-1" in names and "top-5" in names
    assert state.layer("data").tops[0].shape == (50, 3, 224, 224)


# ---- hand-written nets ------------------------------------------------------------------
HEAD = """
layer { name: "in" type: "Input" top: "x" top: "y"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
"""
LOSS = 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "%s" bottom: "y" top: "loss" }\n'


def run(body: str, last: str = "fc", **kw):
    return emulate(read_net(HEAD + body + LOSS % last, "t.prototxt"), **kw)


def raises(body: str, message: str, last: str = "fc", **kw) -> CaffeError:
    with pytest.raises(CaffeError) as info:
        run(body, last, **kw)
    assert message in info.value.message, info.value.message
    return info.value


FC = 'layer { name: "fc" type: "InnerProduct" bottom: "%s" top: "fc" %s ' \
     'inner_product_param { num_output: 4 } }\n'


def test_batch_norm_rejects_a_trained_statistic():
    err = raises('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "bn" '
                 'param { lr_mult: 1 } }\n' + FC % ("bn", ""),
                 "(1 vs. 0) Cannot configure batch normalization statistics as layer "
                 "parameters.")
    assert err.span.line == 4


def test_batch_norm_with_three_specs_is_upgraded_to_lr_and_decay_zero():
    state = run('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "bn" '
                'param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 1 } }\n'
                + FC % ("bn", ""))
    bn = state.layer("bn")
    assert [(p.lr_mult, p.decay_mult, p.propagate) for p in bn.params] == [(0, 0, False)] * 3


def test_too_many_params():
    raises(FC % ("x", "param {} param {} param {}"),
           "(3 vs. 2) Too many params specified for layer fc")


def test_unknown_bottom_and_multiple_sources():
    raises(FC % ("nope", ""), "Unknown bottom blob 'nope' (layer 'fc', bottom index 0)")
    raises(FC % ("x", "") + FC % ("x", ""), "Top blob 'fc' produced by multiple sources.")


def test_loss_weight_on_a_read_top_moves_to_the_split():
    state = run(FC % ("x", "loss_weight: 0.5") +
                'layer { name: "r" type: "ReLU" bottom: "fc" top: "r" }\n', last="r")
    split = state.layer("fc_fc_0_split")
    assert [(t.blob, t.loss_weight) for t in split.tops] == \
        [("fc_fc_0_split_0", 0.5), ("fc_fc_0_split_1", 0.0)]
    assert state.layer("fc").tops[0].loss_weight == 0
    assert state.layer("r").bottoms[0].blob == "fc_fc_0_split_1"


def test_loss_layer_without_a_top_gets_an_automatic_one():
    state = emulate(read_net(HEAD + FC % ("x", "") + 'layer { name: "loss" type: '
                             '"SoftmaxWithLoss" bottom: "fc" bottom: "y" }', "t.prototxt"))
    assert [(t.blob, t.loss_weight) for t in state.layer("loss").tops] == \
        [("(automatic)", 1.0)]
    assert state.layer("fc").need_backward


def test_two_tops_on_softmax_loss_need_two_loss_weights():
    raises(FC % ("x", "") + 'layer { name: "l2" type: "SoftmaxWithLoss" bottom: "fc" '
           'bottom: "y" top: "a" top: "b" }\n',
           "(2 vs. 1) loss_weight must be unspecified or specified once per top blob.")


def test_blob_counts_are_checked():
    raises('layer { name: "e" type: "Eltwise" bottom: "x" top: "e" }\n', "(2 vs. 1) Eltwise "
           "Layer takes at least 2 bottom blob(s) as input.", last="e")


SHARE = ('layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" %s } '
         'inner_product_param { num_output: %d bias_term: false } }\n'
         'layer { name: "b" type: "InnerProduct" bottom: "x" top: "b" param { name: "w" %s } '
         'inner_product_param { num_output: %d bias_term: false } }\n'
         'layer { name: "fc" type: "Eltwise" bottom: "a" bottom: "b" top: "fc" }\n')


def test_shared_param_shapes_are_checked():
    raises(SHARE % ("", 4, "", 6), "Cannot share param 'w' owned by layer 'a' with layer "
           "'b'; shape mismatch.  Owner layer param shape is 4 192 (768); sharing layer "
           "expects shape 6 192 (1152)")
    raises(SHARE % ("", 4, "share_mode: PERMISSIVE", 6), "count mismatch")


def test_sharer_sets_the_lr_the_owner_left_unset():
    state = run(SHARE % ("", 4, "lr_mult: 0", 4))
    a, b = state.layer("a").params[0], state.layer("b").params[0]
    assert (a.propagate, a.effective_lr_mult, a.effective_lr_mult_given) == (True, 0, True)
    assert (b.propagate, b.shared_from) == (False, ("a", 0))


def test_include_exclude_rules():
    body = ('layer { name: "d" type: "Dropout" bottom: "x" top: "x" exclude { phase: TRAIN } }\n'
            'layer { name: "m" type: "ReLU" bottom: "x" top: "x" include { min_level: 1 } }\n'
            'layer { name: "s" type: "ReLU" bottom: "x" top: "x" include { stage: "deploy" } }\n'
            + FC % ("x", ""))
    state = run(body)
    assert [l.name for l in state.layers] == ["in", "fc", "loss"]
    assert [l.name for l in run(body, phase="TEST").layers] == ["in", "d", "fc", "loss"]
    raises('layer { name: "z" type: "ReLU" bottom: "x" top: "x" include { phase: TRAIN } '
           'exclude { phase: TEST } }\n' + FC % ("x", ""),
           "Specify either include rules or exclude rules; not both.")


def test_legacy_net_inputs_become_an_input_layer():
    net = read_net('input: "x" input_shape { dim: 2 dim: 5 } input: "y" input_shape { dim: 2 }'
                   + FC % ("x", "") + LOSS % "fc", "t.prototxt")
    state = emulate(net)
    assert state.layers[0].name == "input" and state.inputs == ("x", "y")
    net = read_net('input: "x" input_dim: 2 input_dim: 5 input_dim: 1 input_dim: 1 '
                   + FC % ("x", ""), "t.prototxt")
    assert emulate(net).layers[0].tops[0].shape == (2, 5, 1, 1)


def test_unknown_phase():
    with pytest.raises(CaffeError):
        run(FC % ("x", ""), phase="VAL")
