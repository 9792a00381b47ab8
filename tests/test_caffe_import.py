"""Caffe nets imported into bwplan's IR: the mapping table, training settings, names, shapes
and warnings, and the rule that bwplan's own plan never computes a gradient Caffe skips.

Building the IR needs the op registry: a test whose net uses an op that is not registered
skips with the op's name, and the emulation tests (test_caffe_emulate.py) do not depend on
it."""
from __future__ import annotations

from pathlib import Path

import pytest

from bwplan import ops as registry
from bwplan.caffe.importer import caffe_module, import_caffe_text
from bwplan.cli.main import main
from bwplan.errors import CaffeError, MultipleErrors
from bwplan.plan.plan import make_plan
from bwplan.frontend import ast
from bwplan.plan.plan import make_plan

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "caffe"
CASES = sorted(p.stem for p in CORPUS.glob("*.prototxt")) if CORPUS.is_dir() else []
needs_corpus = pytest.mark.skipif(not CASES, reason=f"Caffe corpus not found at {CORPUS}")
REJECTED = {"lenet_error_loss_weight_on_inplace_top", "lenet_error_propdown_count",
            "siamese_error_mismatched_decay"}


def require_ops(module: ast.Module) -> None:
    missing = sorted({s.call.op for s in module.statements if isinstance(s, ast.LayerStmt)
                      and registry.get(s.call.op) is None})
    if missing:
        pytest.skip(f"ops not registered yet: {', '.join(missing)}")


def imported(text: str, path: str = "t.prototxt", **kw):
    _, flat, _ = caffe_module(text, path, **kw)
    require_ops(flat.module)
    return import_caffe_text(text, path, **kw)


def corpus(case: str, **kw):
    path = CORPUS / f"{case}.prototxt"
    return imported(path.read_text(), str(path), **kw)


@needs_corpus
@pytest.mark.parametrize("case", [c for c in CASES if c not in REJECTED])
def test_every_corpus_net_imports(case):
    result = corpus(case)
    names = [l.name for l in result.net.layers]
    mapped = [n for caffe in result.layer_map.values() for n in caffe]
    assert sorted(mapped) == sorted(names)
    assert sorted(result.layer_map) == sorted({l.name for l in result.caffe.layers})
    for layer in result.caffe.layers:
        if layer.type == "Split":
            assert result.layer_map[layer.name] == ()


@needs_corpus
@pytest.mark.parametrize("case", [c for c in CASES if c not in REJECTED])
def test_bwplan_never_computes_a_gradient_caffe_skips(case):
    result = corpus(case)
    plan = make_plan(result.net)
    for layer in result.caffe.layers:
        for ir_name in result.layer_map.get(layer.name, ()) if layer.source else ():
            lp, ir = plan.layer(ir_name), result.net.layer(ir_name)
            where = f"{case}: {layer.name} -> {ir_name}"
            if not layer.need_backward:
                assert not lp.has_backward, where
            for edge, decision in zip(ir.inputs, lp.dx):
                caffe_bottom = layer.bottoms[min(edge.index, len(layer.bottoms) - 1)]
                if not caffe_bottom.propagate:
                    assert not decision.needed, f"{where}: dX {edge.src}"
            slots = {"weight": 0, "bias": 1}
            for use, decision in zip(ir.params, lp.dw):
                caffe_param = layer.params[slots.get(use.slot, 0)] if layer.params else None
                if caffe_param is not None and not caffe_param.propagate:
                    assert not decision.needed, f"{where}: dW {use.slot}"


@needs_corpus
def test_settings_carry_over():
    result = corpus("seed001_inception_branch")
    net = result.net
    proj = net.layer("test/pool_proj")
    assert [e.stop_gradient for e in proj.inputs] == [True]
    assert [(u.slot, u.lr_mult, u.decay_mult) for u in proj.params] == \
        [("weight", 1, 1), ("bias", 2, 0)]
    assert net.input("data").type.dtype == "f32" and net.input("label").type.dtype == "i64"
    # in place: the ReLU's output is what the pooling reads
    assert [e.src for e in net.layer("pool1/3x3_s2").inputs] == ["conv1/relu_7x7"]
    assert net.layer("loss3").loss_weight == 1


@needs_corpus
def test_shared_params_follow_caffes_effective_lr():
    result = corpus("siamese_shared_frozen_owner_only")
    net = result.net
    uses = {name: use.lr_mult for name, use in net.uses_of("conv1_w")}
    assert uses == {"conv1": 0, "conv1_p": 0}
    assert net.params["conv1_w"].type.shape == (20, 1, 5, 5)
    assert [w.code for w in result.warnings] == ["caffe-unused-param-grad"]
    assert net.input("sim").type.dtype == "i64"


@needs_corpus
def test_mismatched_lr_is_per_use_unless_strict():
    result = corpus("siamese_error_mismatched_lr")
    uses = {name: use.lr_mult for name, use in result.net.uses_of("conv1_w")}
    assert uses == {"conv1": 1, "conv1_p": 0}
    assert "caffe-rejects-shared-lr" in [w.code for w in result.warnings]
    with pytest.raises(CaffeError) as info:
        corpus("siamese_error_mismatched_lr", strict=True)
    assert "Shared param 'conv1_w' has mismatched lr_mult." in info.value.message


@needs_corpus
def test_force_backward_marks_float_inputs():
    result = corpus("lenet_force_backward")
    assert result.net.input("data").requires_grad
    assert not result.net.input("label").requires_grad
    assert [w.code for w in result.warnings] == ["caffe-force-backward"]


@needs_corpus
def test_difference_warnings():
    assert [w.code for w in corpus("lenet_propdown_true_on_data").warnings] == \
        ["caffe-propagate-down-true"]
    warnings = corpus("bn_on_data_no_param_specs").warnings
    assert [w.code for w in warnings] == ["caffe-batchnorm-statistics"] * 2
    first = warnings[0]
    assert first.span.line > 0 and "bn0" in first.text and "lr_mult: 0" in first.fix


@needs_corpus
def test_data_layer_shapes_and_overrides():
    path = CORPUS / "seed_inception_branch.prototxt"
    text = path.read_text()
    net = imported(text, str(path)).net
    assert net.input("data").type.shape == (32, 3, 224, 224)
    assert imported(text, phase="TEST").net.input("data").type.shape == (50, 3, 224, 224)
    net = imported(text, input_shapes={"data": (8, 3, 224, 224), "label": (8,)}).net
    assert net.input("data").type.shape == (8, 3, 224, 224)


# ---- hand-written nets ------------------------------------------------------------------
DATA = ('layer { name: "d" type: "Data" top: "data" top: "label" data_param { batch_size: 4 '
        '} }\nlayer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
        'inner_product_param { num_output: 3 } }\nlayer { name: "loss" type: '
        '"SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }\n')


def test_unknown_data_shape_asks_for_input_shape():
    with pytest.raises(CaffeError) as info:
        caffe_module(DATA, "t.prototxt")
    assert "--input-shape data=" in info.value.hint
    assert info.value.span.line == 1
    net = imported(DATA, input_shapes={"data": (4, 1, 5, 5)}).net
    assert net.input("data").type.shape == (4, 1, 5, 5)
    assert (net.input("label").type.dtype, net.input("label").type.shape) == ("i64", (4,))
    with pytest.raises(CaffeError) as info:
        caffe_module(DATA, "t.prototxt", input_shapes={"dat": (4, 1, 5, 5)})
    assert "'dat'" in info.value.message and "data, label" in info.value.hint


HEAD = ('layer { name: "data" type: "Input" top: "data" top: "label" input_param { '
        'shape { dim: 2 dim: 4 dim: 6 dim: 6 } shape { dim: 2 } } }\n')
LOSS = ('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "%s" bottom: "label" '
        'top: "loss" }\n')


def test_layer_table_rows():
    body = (
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
        'param { lr_mult: 0 } convolution_param { num_output: 4 kernel_h: 3 kernel_w: 1 '
        'pad_h: 1 group: 2 bias_term: false } }\n'
        'layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }\n'
        'layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { '
        'bias_term: true } }\n'
        'layer { name: "ave" type: "Pooling" bottom: "conv" top: "ave" pooling_param { '
        'pool: AVE kernel_size: 2 stride: 2 } }\n'
        'layer { name: "gmax" type: "Pooling" bottom: "ave" top: "gmax" pooling_param { '
        'pool: MAX global_pooling: true } }\n'
        'layer { name: "lrn" type: "LRN" bottom: "ave" top: "lrn" }\n'
        'layer { name: "cat" type: "Concat" bottom: "ave" bottom: "lrn" top: "cat" '
        'concat_param { concat_dim: 1 } }\n'
        'layer { name: "sum" type: "Eltwise" bottom: "ave" bottom: "lrn" top: "sum" '
        'eltwise_param { coeff: 1 coeff: -1 } }\n'
        'layer { name: "prod" type: "Eltwise" bottom: "ave" bottom: "lrn" top: "prod" '
        'eltwise_param { operation: PROD } }\n'
        'layer { name: "max" type: "Eltwise" bottom: "sum" bottom: "prod" top: "max" '
        'eltwise_param { operation: MAX } }\n'
        'layer { name: "flat" type: "Flatten" bottom: "max" top: "flat" }\n'
        'layer { name: "drop" type: "Dropout" bottom: "flat" top: "flat" dropout_param { '
        'dropout_ratio: 0.3 } }\n'
        'layer { name: "sig" type: "Sigmoid" bottom: "flat" top: "sig" }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "sig" top: "fc" '
        'inner_product_param { num_output: 3 } }\n')
    net = imported(HEAD + body + LOSS % "fc").net
    ops = {l.name: l.op for l in net.layers}
    assert ops == {"conv": "conv2d", "bn": "batchnorm", "sc": "scale", "ave": "avgpool",
                   "gmax": "global_maxpool", "lrn": "lrn", "cat": "concat", "sum": "add",
                   "prod": "mul", "max": "maximum", "flat": "flatten", "drop": "dropout",
                   "sig": "sigmoid", "fc": "linear", "loss": "softmax_cross_entropy"}
    conv = net.layer("conv")
    assert (conv.attrs["kernel"], conv.attrs["pad"], conv.attrs["groups"]) == \
        ((3, 1), (1, 0), 2)
    assert [(u.slot, u.lr_mult) for u in conv.params] == [("weight", 0)]
    assert net.layer("ave").attrs["ceil"] and net.layer("ave").out.shape == (2, 4, 3, 3)
    assert net.layer("lrn").attrs["alpha"] == 1.0
    assert net.layer("sum").attrs["coeffs"] == (1.0, -1.0)
    assert net.layer("drop").attrs["p"] == pytest.approx(0.3)
    assert not net.layer("bn").attrs["global_stats"]
    assert [u.slot for u in net.layer("bn").params] == ["mean", "var"]
    test = imported(HEAD + body + LOSS % "fc", phase="TEST").net
    assert test.layer("bn").attrs["global_stats"]


def test_slice_becomes_one_layer_per_top_and_names_stay_unique():
    body = ('layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "fc" top: "c" '
            'slice_param { slice_point: 1 slice_point: 3 } }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "c" top: "out" '
            'inner_product_param { num_output: 3 } }\n')
    result = imported(HEAD + body + LOSS % "out")
    assert result.layer_map["s"] == ("a", "fc_2", "c")
    assert result.layer_map["fc"] == ("fc",)
    begins = [(l.attrs["begin"], l.attrs["end"]) for l in result.net.layers[:3]]
    assert begins == [(0, 1), (1, 3), (3, 4)]
    assert [e.src for e in result.net.layer("fc").inputs] == ["c"]


@pytest.mark.parametrize("body, words", [
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { '
     'pool: STOCHASTIC kernel_size: 2 } }\n', "STOCHASTIC"),
    ('layer { name: "p" type: "Interp" bottom: "data" bottom: "data" top: "p" '
     'interp_param { height: 3 width: 3 } }\n', "second bottom"),
    ('layer { name: "p" type: "InnerProduct" bottom: "data" top: "p" inner_product_param { '
     'num_output: 2 axis: 2 } }\n', "axis"),
    ('layer { name: "p" type: "Convolution" bottom: "data" top: "p" convolution_param { '
     'num_output: 2 } }\n', "needs kernel_size"),
    ('layer { name: "p" type: "SPP" bottom: "data" top: "p" }\n', "does not import"),
])
def test_unsupported_settings_are_clear_errors(body, words):
    with pytest.raises(CaffeError) as info:
        caffe_module(HEAD + body + LOSS % "p", "t.prototxt")
    assert words in info.value.message
    assert info.value.span.line == 2


def test_a_loss_without_a_top_is_still_the_loss():
    body = ('layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
            'inner_product_param { num_output: 3 } }\n'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" }\n')
    result = imported(HEAD + body)
    assert result.net.layer("loss").loss_weight == 1
    assert result.caffe.layer("fc").need_backward


def test_a_second_top_is_refused():
    body = ('layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
            'inner_product_param { num_output: 3 } }\n'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" '
            'top: "loss" top: "prob" loss_weight: 1 loss_weight: 0 }\n')
    with pytest.raises(CaffeError) as info:
        caffe_module(HEAD + body, "t.prototxt")
    assert "2 tops" in info.value.message and info.value.span.line == 3


# ---- one run reports everything; Python layers --------------------------------------------
FORK = HEAD + (
    'layer { name: "up" type: "Upsample2" bottom: "data" top: "up" }\n'
    'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { '
    'pool: STOCHASTIC kernel_size: 2 } }\n'
    'layer { name: "q" type: "Pooling" bottom: "p" top: "q" pooling_param { '
    'kernel_size: 2 fancy_mode: true } }\n'
    'layer { name: "f" type: "Frobnicate" bottom: "q" top: "f" }\n') + LOSS % "f"


def test_every_unsupported_type_and_field_is_reported_in_one_run():
    with pytest.raises(MultipleErrors) as info:
        caffe_module(FORK, "t.prototxt")
    found = [(e.span.line, e.message) for e in info.value.errors]
    assert [line for line, _ in found] == [2, 3, 4, 5]
    assert "'Upsample2', which bwplan does not import" in found[0][1]
    assert "STOCHASTIC" in found[1][1]
    assert 'no field named "fancy_mode"' in found[2][1]
    assert "'Frobnicate'" in found[3][1]


def test_the_cli_prints_all_of_them_and_exits_2(tmp_path, capsys):
    path = tmp_path / "fork.prototxt"
    path.write_text(FORK)
    assert main(["explain", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count(": error: ") == 4 and "Traceback" not in err
    assert f"{path}:4:" in err


PYTHON = HEAD + (
    'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
    'convolution_param { num_output: 4 kernel_size: 3 } }\n'
    'layer { name: "prop" type: "Python" bottom: "conv" bottom: "label" top: "rois" '
    'top: "extra" python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" } }\n'
    'layer { name: "fc" type: "InnerProduct" bottom: "rois" top: "fc" '
    'inner_product_param { num_output: 3 } }\n'
    'layer { name: "fc2" type: "InnerProduct" bottom: "conv" top: "fc2" '
    'inner_product_param { num_output: 3 } }\n'
    'layer { name: "sum" type: "Eltwise" bottom: "fc" bottom: "fc2" top: "sum" }\n'
    'layer { name: "sink" type: "Silence" bottom: "extra" }\n') + LOSS % "sum"


def test_a_python_layer_is_an_error_naming_its_module_and_class():
    with pytest.raises(CaffeError) as info:
        caffe_module(PYTHON, "t.prototxt")
    err = info.value
    assert "'prop'" in err.message and "'rpn.proposal_layer'" in err.message
    assert "'ProposalLayer'" in err.message
    assert "--input-shape rois=N,C,H,W --input-shape extra=" in err.hint
    assert (err.span.line, err.span.col) == (3, 22)


def test_a_python_layer_with_given_top_shapes_is_a_stop_point():
    result = imported(PYTHON, input_shapes={"rois": (2, 5), "extra": (2,)})
    net = result.net
    assert net.input("rois").type.shape == (2, 5) and not net.has_layer("prop")
    assert "caffe-python-layer-stop" in [w.code for w in result.warnings]
    plan = make_plan(net)
    # conv trains through fc2; nothing reaches it through the Python layer
    assert plan.layer("conv").dw[0].needed and plan.layer("fc").dw[0].needed
    assert not plan.layer("fc").dx[0].needed
    # Caffe itself propagates through Python layers: --caffe still emulates it
    assert result.caffe.layer("prop").need_backward


def test_caffe_view_still_emulates_a_net_bwplan_cannot_plan(tmp_path, capsys):
    path = tmp_path / "py.prototxt"
    path.write_text(PYTHON)
    assert main(["explain", str(path), "--caffe"]) == 0
    out = capsys.readouterr().out.splitlines()
    decisions = [line for line in out if not line.startswith("#")]
    assert "prop needs backward computation." in decisions
    assert "conv needs backward computation." in decisions
    assert any("cannot plan this net (1 problem)" in line for line in out)
    assert any(":3:22: Python layer 'prop'" in line for line in out)


# ---- defects seen on public nets ------------------------------------------------------------
def _bn_chain(n: int, loss: bool) -> str:
    body = ('layer { name: "conv" type: "Convolution" bottom: "data" top: "x" '
            'convolution_param { num_output: 4 kernel_size: 1 } }\n')
    body += "".join(f'layer {{ name: "bn{i}" type: "BatchNorm" bottom: "x" top: "x" }}\n'
                    for i in range(n))
    body += ('layer { name: "fc" type: "InnerProduct" bottom: "x" top: "fc" '
             'inner_product_param { num_output: 3 } }\n')
    return HEAD + body + (LOSS % "fc" if loss else "")


def test_a_deploy_net_without_a_loss_gets_no_batchnorm_warning():
    state, _, warnings = caffe_module(_bn_chain(2, loss=False), "t.prototxt")
    assert not any(ls.need_backward for ls in state.layers)
    assert "caffe-batchnorm-statistics" not in [w.code for w in warnings]
    _, _, warnings = caffe_module(_bn_chain(2, loss=True), "t.prototxt")
    assert [w.code for w in warnings] == ["caffe-batchnorm-statistics"] * 2


SHARED = HEAD + (
    'layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" '
    'lr_mult: 0 } param { name: "b" lr_mult: 0 } inner_product_param { num_output: 3 } }\n'
    'layer { name: "b" type: "InnerProduct" bottom: "data" top: "b" param { name: "w" %s} '
    'param { name: "b" %s} inner_product_param { num_output: 3 } }\n'
    'layer { name: "s" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }\n') + LOSS % "s"


def test_the_unused_gradient_warning_matches_what_the_plan_computes():
    # the sharer gives no lr_mult: Caffe computes and drops its gradient, bwplan skips it
    result = imported(SHARED % ("", ""))
    assert "caffe-unused-param-grad" in [w.code for w in result.warnings]
    assert not make_plan(result.net).layer("b").dw[0].needed
    # the sharer gives its own lr_mult (Caffe rejects the net): bwplan trains that use,
    # so no warning may say it skips the gradient
    result = imported(SHARED % ("lr_mult: 1 ", "lr_mult: 2 "))
    codes = [w.code for w in result.warnings]
    assert "caffe-unused-param-grad" not in codes and "caffe-rejects-shared-lr" in codes
    assert make_plan(result.net).layer("b").dw[0].needed


def test_repeated_warnings_are_grouped_where_they_are_printed(tmp_path, capsys):
    path = tmp_path / "bn.prototxt"
    path.write_text(_bn_chain(7, loss=True))
    assert main(["explain", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("warning: Caffe marks") == 1
    assert "7 like it (caffe-batchnorm-statistics): bn0, bn1, bn2, bn3, bn4 and 2 more" in out
    assert main(["explain", str(path), "--format", "json"]) == 0
    import json
    found = json.loads(capsys.readouterr().out)["findings"]
    assert [f["code"] for f in found].count("caffe-batchnorm-statistics") == 7
    assert main(["explain", str(path), "--caffe"]) == 0
    assert capsys.readouterr().out.count("warning: Caffe marks") == 1


def test_a_new_batch_size_carries_over_to_the_label():
    text = HEAD + ('layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
                   'inner_product_param { num_output: 3 } }\n') + LOSS % "fc"
    result = imported(text, input_shapes={"data": (5, 4, 6, 6)})
    assert result.net.input("label").type.shape == (5,)
    # a blob given explicitly keeps what was given
    result = imported(text, input_shapes={"data": (5, 4, 6, 6), "label": (5,)})
    assert result.net.input("label").type.shape == (5,)
    net = imported(DATA, input_shapes={"data": (4, 1, 5, 5)}).net   # same batch: unchanged
    assert net.input("label").type.shape == (4,)


# ---- the forks' types: emulated from their catalogue rows --------------------------------------
SEGNET_LIKE = HEAD + (
    'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" param { lr_mult: 0 } '
    'param { lr_mult: 0 } convolution_param { num_output: 4 kernel_size: 1 } }\n'
    'layer { name: "bn" type: "BN" bottom: "conv" top: "conv" }\n'
    'layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" top: "mask" '
    'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
    'layer { name: "up" type: "Upsample" bottom: "pool" bottom: "mask" top: "up" '
    'upsample_param { scale: 2 } }\n'
    'layer { name: "fc" type: "InnerProduct" bottom: "up" top: "fc" param { lr_mult: 0 } '
    'param { lr_mult: 0 } inner_product_param { num_output: 3 } }\n') + LOSS % "fc"


def test_fork_types_are_emulated_with_their_param_blobs():
    from bwplan.caffe.importer import caffe_state
    state, _ = caffe_state(SEGNET_LIKE, "t.prototxt")
    need = {ls.name: ls.need_backward for ls in state.layers}
    # BN's scale and shift train (two blobs nobody wrote): Caffe runs backward down to BN
    assert need["bn"] and need["up"] and need["fc"] and not need["conv"]
    assert [p.shape for p in state.layer("bn").params] == [(1, 4, 1, 1)] * 2
    assert state.layer("up").tops[0].shape == (2, 4, 6, 6)


def test_segnet_pooling_mask_top_and_upsample_import():
    """Pooling's second top becomes a maxpool_mask of the same bottom and window; Upsample
    becomes max_unpool at Caffe's top shape; no gradient flows into the mask."""
    result = imported(SEGNET_LIKE)
    net, state = result.net, result.caffe
    pool, mask, up = net.layer("pool"), net.layer("mask"), net.layer("up")
    assert (pool.op, mask.op, up.op) == ("maxpool", "maxpool_mask", "max_unpool")
    assert mask.attrs == pool.attrs
    assert [e.src for e in mask.inputs] == [e.src for e in pool.inputs] == ["bn"]
    assert mask.out.shape == state.layer("pool").tops[1].shape
    assert [e.src for e in up.inputs] == ["pool", "mask"] and up.out.shape == state.layer("up").tops[0].shape
    assert result.layer_map["pool"] == ("pool", "mask")
    plan = make_plan(net)
    assert plan.layer("up").dx[0].needed and not plan.layer("up").dx[1].needed
    # a size that is no multiple of the input's is written out
    sized = SEGNET_LIKE.replace("upsample_param { scale: 2 }",
                                "upsample_param { upsample_h: 7 upsample_w: 6 }")
    assert imported(sized).net.layer("up").attrs["size"] == (7, 6)
    # Caffe writes a mask for MAX pooling only
    with pytest.raises(CaffeError) as info:
        imported(SEGNET_LIKE.replace("pool: MAX", "pool: AVE"))
    assert "2 tops" in info.value.message

def test_segnet_class_weighting_becomes_class_weights():
    loss = ('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" '
            'top: "loss" loss_param { weight_by_label_freqs: true %s } }\n')
    body = SEGNET_LIKE.replace(LOSS % "fc", "")
    net = imported(body + loss % "class_weighting: 0.5 class_weighting: 2 "
                   "class_weighting: 1").net
    assert net.layer("loss").attrs["class_weights"] == (0.5, 2.0, 1.0)
    assert imported(SEGNET_LIKE).net.layer("loss").attrs["class_weights"] == ()
    with pytest.raises(CaffeError) as info:
        imported(body + loss % "class_weighting: 0.5")
    assert "3 classes, 1 given" in info.value.message

def test_pooling_ceil_mode_of_the_forks():
    body = ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { '
            'pool: MAX kernel_size: 3 stride: 2 %s } }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "p" top: "fc" '
            'inner_product_param { num_output: 3 } }\n')
    floor = imported(HEAD + body % "ceil_mode: false" + LOSS % "fc").net.layer("p")
    ceil = imported(HEAD + body % "" + LOSS % "fc").net.layer("p")
    assert (floor.out.shape, ceil.out.shape) == ((2, 4, 2, 2), (2, 4, 3, 3))
    assert not floor.attrs["ceil"] and ceil.attrs["ceil"]


def test_activation_rows():
    body = ''.join(
        f'layer {{ name: "{n}" type: "{t}" bottom: "{b}" top: "{n}" {extra} }}\n'
        for n, t, b, extra in (
            ("elu", "ELU", "data", "elu_param { alpha: 0.5 }"),
            ("pow", "Power", "elu", "power_param { power: 2 shift: 1 }"),
            ("abs", "AbsVal", "pow", ""), ("bnll", "BNLL", "abs", ""),
            ("exp", "Exp", "bnll", "exp_param { base: 2 }"),
            ("log", "Log", "exp", "log_param { scale: 0.5 }"),
            ("prelu", "PReLU", "log", "param { lr_mult: 2 } prelu_param { "
             "channel_shared: true }"),
            ("fc", "InnerProduct", "prelu", "inner_product_param { num_output: 3 }")))
    net = imported(HEAD + body + LOSS % "fc").net
    ops = [l.op for l in net.layers]
    assert ops[:7] == ["elu", "power", "absval", "bnll", "exp", "log", "prelu"]
    assert net.layer("elu").attrs["alpha"] == 0.5
    assert (net.layer("pow").attrs["power"], net.layer("pow").attrs["shift"]) == (2.0, 1.0)
    assert net.layer("exp").attrs["base"] == 2.0 and net.layer("log").attrs["scale"] == 0.5
    prelu = net.layer("prelu")
    assert prelu.attrs["channel_shared"] and [(u.slot, u.lr_mult) for u in prelu.params] == \
        [("weight", 2)]


def test_threshold_is_a_stop_point():
    body = ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
            'convolution_param { num_output: 4 kernel_size: 1 } }\n'
            'layer { name: "t" type: "Threshold" bottom: "conv" top: "t" '
            'threshold_param { threshold: 0.5 } }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "t" top: "fc" '
            'inner_product_param { num_output: 3 } }\n')
    result = imported(HEAD + body + LOSS % "fc")
    plan = make_plan(result.net)
    assert result.net.layer("t").attrs["threshold"] == 0.5
    assert not plan.layer("t").dx[0].needed and not plan.layer("conv").dw[0].needed


def test_crop_and_permute_rows():
    body = ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
            'convolution_param { num_output: 4 kernel_size: 3 } }\n'
            'layer { name: "wide" type: "Convolution" bottom: "data" top: "wide" '
            'convolution_param { num_output: 4 kernel_size: 1 } }\n'
            'layer { name: "crop" type: "Crop" bottom: "wide" bottom: "conv" top: "crop" '
            'crop_param { axis: 2 offset: 1 } }\n'
            'layer { name: "perm" type: "Permute" bottom: "crop" top: "perm" '
            'permute_param { order: 0 order: 2 order: 3 order: 1 } }\n'
            'layer { name: "perm2" type: "Permute" bottom: "perm" top: "perm2" '
            'permute_param { order: 0 order: 3 } }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "perm2" top: "fc" '
            'inner_product_param { num_output: 3 } }\n')
    result = imported(HEAD + body + LOSS % "fc")
    # SSD's order names some axes; the others follow in their order
    assert result.net.layer("perm2").attrs["perm"] == (0, 3, 1, 2)
    net = result.net
    assert (net.layer("crop").op, net.layer("crop").attrs["offset"]) == ("crop", (1,))
    assert net.layer("crop").out.shape == (2, 4, 4, 4)
    assert (net.layer("perm").op, net.layer("perm").attrs["perm"]) == ("transpose",
                                                                       (0, 2, 3, 1))
    assert result.caffe.layer("perm").tops[0].shape == net.layer("perm").out.shape
    plan = make_plan(net)
    # the reference input gives only the size: no gradient into conv through it
    assert plan.layer("crop").dx[0].needed and not plan.layer("crop").dx[1].needed
    assert plan.layer("wide").dw[0].needed and not plan.layer("conv").dw[0].needed


def test_deconvolution_row_as_fcn_uses_it():
    body = ('layer { name: "score" type: "Convolution" bottom: "data" top: "score" '
            'convolution_param { num_output: 3 kernel_size: 1 } }\n'
            'layer { name: "up" type: "Deconvolution" bottom: "score" top: "up" '
            'param { lr_mult: 0 } convolution_param { num_output: 3 kernel_size: 4 '
            'stride: 2 group: 3 bias_term: false } }\n'
            'layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "crop" }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "crop" top: "fc" '
            'inner_product_param { num_output: 3 } }\n')
    result = imported(HEAD + body + LOSS % "fc")
    up = result.net.layer("up")
    assert (up.op, up.attrs["groups"], up.attrs["bias"]) == ("deconv2d", 3, False)
    assert up.out.shape == result.caffe.layer("up").tops[0].shape == (2, 3, 14, 14)
    assert [p.shape for p in result.caffe.layer("up").params] == [(3, 1, 4, 4)]
    assert result.net.params[up.params[0].param].type.shape == (3, 1, 4, 4)
    plan = make_plan(result.net)
    # the fixed bilinear upsampling still passes the gradient down to score
    assert not plan.layer("up").dw[0].needed and plan.layer("up").dx[0].needed
    assert plan.layer("score").dw[0].needed


def test_prior_box_is_a_stop_point_and_argmax_stops_the_gradient():
    body = ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
            'convolution_param { num_output: 4 kernel_size: 3 } }\n'
            'layer { name: "prior" type: "PriorBox" bottom: "conv" bottom: "data" '
            'top: "prior" prior_box_param { min_size: 30 max_size: 60 aspect_ratio: 2 '
            'flip: true } }\n'
            'layer { name: "arg" type: "ArgMax" bottom: "conv" top: "arg" }\n'
            'layer { name: "cat" type: "Concat" bottom: "prior" bottom: "prior" '
            'top: "cat" concat_param { axis: 2 } }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" '
            'inner_product_param { num_output: 3 } }\n'
            'layer { name: "sink" type: "Silence" bottom: "cat" bottom: "arg" }\n')
    result = imported(HEAD + body + LOSS % "fc")
    # 4x4 positions, 1 + 2 aspect ratios + 1 max size = 4 priors, 4 numbers each
    assert result.net.input("prior").type.shape == (1, 2, 4 * 4 * 4 * 4)
    assert [w.code for w in result.warnings].count("caffe-stop-point") == 1
    assert not result.net.has_layer("prior")
    arg = result.net.layer("arg")
    assert arg.op == "argmax" and arg.out.shape == result.caffe.layer("arg").tops[0].shape
    assert not make_plan(result.net).layer("arg").dx[0].needed


def test_reduction_bias_tile_rows():
    body = ('layer { name: "b1" type: "Bias" bottom: "data" top: "b1" param { lr_mult: 3 } }\n'
            'layer { name: "t" type: "Tile" bottom: "b1" top: "t" tile_param { axis: 1 '
            'tiles: 2 } }\n'
            'layer { name: "r" type: "Reduction" bottom: "t" top: "r" reduction_param { '
            'operation: SUMSQ axis: 2 coeff: 0.5 } }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "r" top: "fc" '
            'inner_product_param { num_output: 3 } }\n')
    result = imported(HEAD + body + LOSS % "fc")
    net = result.net
    assert [(u.slot, u.lr_mult) for u in net.layer("b1").params] == [("bias", 3)]
    assert net.layer("t").out.shape == (2, 8, 6, 6) and net.layer("t").attrs["tiles"] == 2
    r = net.layer("r")
    assert (r.op, r.attrs["operation"], r.attrs["axis"], r.attrs["coeff"]) == \
        ("reduction", "SUMSQ", 2, 0.5)
    assert r.out.shape == (2, 8) == result.caffe.layer("r").tops[0].shape


def _fork_bn(extra: str, params: str = "") -> str:
    body = ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
            'convolution_param { num_output: 4 kernel_size: 1 } }\n'
            f'layer {{ name: "bn" type: "BN" bottom: "conv" top: "conv" {params} '
            f'bn_param {{ {extra} }} }}\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" '
            'inner_product_param { num_output: 3 } }\n')
    return HEAD + body + LOSS % "fc"


def test_the_forks_bn_is_batchnorm_then_scale():
    # SegNet, bn_mode LEARN: batch statistics, then a learned scale and shift
    net = imported(_fork_bn('scale_filler { type: "constant" value: 1 }')).net
    norm, bn = net.layer("bn_norm"), net.layer("bn")
    assert (norm.op, bn.op, bn.attrs["bias"]) == ("batchnorm", "scale", True)
    assert norm.attrs["eps"] == 1e-9 and not norm.attrs["global_stats"]
    assert [e.src for e in bn.inputs] == ["bn_norm"]
    assert [e.src for e in net.layer("fc").inputs] == ["bn"]
    # SegNet's inference nets: a per-channel scale and shift only
    net = imported(_fork_bn("bn_mode: INFERENCE")).net
    assert not net.has_layer("bn_norm") and net.layer("bn").op == "scale"
    # PSPNet: four blobs, the statistics stored and frozen; lr_mult by blob
    params = 'param { lr_mult: 0 } param { lr_mult: 2 } param { lr_mult: 0 } param { lr_mult: 0 }'
    result = imported(_fork_bn("frozen: true momentum: 0.95", params))
    norm, bn = result.net.layer("bn_norm"), result.net.layer("bn")
    assert norm.attrs["global_stats"] and norm.attrs["momentum"] == 0.95
    assert [(u.slot, u.lr_mult) for u in bn.params] == [("weight", 0), ("bias", 2)]
    assert result.layer_map["bn"] == ("bn_norm", "bn")
    plan = make_plan(result.net)
    assert not plan.layer("bn").dw[0].needed and plan.layer("bn").dw[1].needed


def test_interp_rows_take_caffes_output_size():
    def net(param):
        body = ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
                'convolution_param { num_output: 4 kernel_size: 3 } }\n'
                f'layer {{ name: "up" type: "Interp" bottom: "conv" top: "up" '
                f'interp_param {{ {param} }} }}\n'
                'layer { name: "fc" type: "InnerProduct" bottom: "up" top: "fc" '
                'inner_product_param { num_output: 3 } }\n')
        return imported(HEAD + body + LOSS % "fc")
    # conv leaves 4x4; zoom 2 gives 4 + 3 * 1 = 7 (corners aligned); shrink 2 gives 2
    for param, size in (("zoom_factor: 2", 7), ("shrink_factor: 2", 2),
                        ("height: 5 width: 5", 5)):
        result = net(param)
        up = result.net.layer("up")
        assert (up.op, up.attrs["height"], up.attrs["width"]) == ("interp", size, size)
        assert result.caffe.layer("up").tops[0].shape == up.out.shape
    with pytest.raises(CaffeError) as info:
        net("zoom_factor: 2 pad_beg: -1")
    assert "pad_beg" in info.value.message


def test_roi_pooling_row_behind_a_python_proposal_layer():
    body = ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
            'convolution_param { num_output: 4 kernel_size: 1 } }\n'
            'layer { name: "prop" type: "Python" bottom: "conv" top: "rois" python_param { '
            'module: "rpn.proposal_layer" layer: "ProposalLayer" } }\n'
            'layer { name: "pool" type: "ROIPooling" bottom: "conv" bottom: "rois" '
            'top: "pool" roi_pooling_param { pooled_w: 2 pooled_h: 3 spatial_scale: 0.5 } }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" '
            'inner_product_param { num_output: 3 } }\n')
    text = HEAD + body + LOSS % "fc"
    result = imported(text.replace('shape { dim: 2 } } }', 'shape { dim: 7 } } }'),
                      input_shapes={"rois": (7, 5)})
    pool = result.net.layer("pool")
    assert (pool.op, pool.attrs["pooled_h"], pool.attrs["spatial_scale"]) == \
        ("roi_pool", 3, 0.5)
    assert pool.out.shape == (7, 4, 3, 2) == result.caffe.layer("pool").tops[0].shape
    plan = make_plan(result.net)
    assert plan.layer("pool").dx[0].needed and not plan.layer("pool").dx[1].needed
    assert plan.layer("conv").dw[0].needed


def test_normalize_row():
    body = ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
            'convolution_param { num_output: 4 kernel_size: 1 } }\n'
            'layer { name: "norm" type: "Normalize" bottom: "conv" top: "norm" '
            'param { lr_mult: 2 } norm_param { across_spatial: false channel_shared: false '
            'scale_filler { type: "constant" value: 20 } } }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "norm" top: "fc" '
            'inner_product_param { num_output: 3 } }\n')
    result = imported(HEAD + body + LOSS % "fc")
    norm = result.net.layer("norm")
    assert norm.op == "normalize" and not norm.attrs["across_spatial"]
    assert not norm.attrs["channel_shared"]
    assert [(u.slot, u.lr_mult) for u in norm.params] == [("weight", 2)]
    assert result.net.params[norm.params[0].param].type.shape == (4,)
    assert [p.shape for p in result.caffe.layer("norm").params] == [(4,)]


def test_loss_rows_of_the_catalogue():
    def net(loss):
        body = ('layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
                'inner_product_param { num_output: 3 } }\n'
                'layer { name: "fc2" type: "InnerProduct" bottom: "data" top: "fc2" '
                'inner_product_param { num_output: 3 } }\n')
        return imported(HEAD + body + loss).net.layer("loss")
    loss = net('layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "fc" '
               'bottom: "fc2" top: "loss" loss_param { normalize: true } }\n')
    assert (loss.op, loss.attrs["normalization"]) == ("sigmoid_cross_entropy_loss", "VALID")
    loss = net('layer { name: "loss" type: "HingeLoss" bottom: "fc" bottom: "label" '
               'top: "loss" hinge_loss_param { norm: L2 } }\n')
    assert (loss.op, loss.attrs["norm"]) == ("hinge_loss", "L2")
    loss = net('layer { name: "loss" type: "InfogainLoss" bottom: "fc" bottom: "label" '
               'top: "loss" infogain_loss_param { source: "h.binaryproto" } }\n')
    assert loss.op == "infogain_loss"
    loss = net('layer { name: "loss" type: "SmoothL1Loss" bottom: "fc" bottom: "fc2" '
               'top: "loss" smooth_l1_loss_param { sigma: 3 } }\n')
    assert (loss.op, loss.attrs["sigma"]) == ("smooth_l1_loss", 3.0)


def test_mvn_lrn_within_channel_and_embed_rows():
    body = ('layer { name: "mvn" type: "MVN" bottom: "data" top: "mvn" mvn_param { '
            'across_channels: true } }\n'
            'layer { name: "lrn" type: "LRN" bottom: "mvn" top: "lrn" lrn_param { '
            'local_size: 3 alpha: 0.00005 norm_region: WITHIN_CHANNEL } }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "lrn" top: "fc" '
            'inner_product_param { num_output: 3 } }\n'
            'layer { name: "emb" type: "Embed" bottom: "label" top: "emb" embed_param { '
            'num_output: 3 input_dim: 10 } }\n'
            'layer { name: "sum" type: "Eltwise" bottom: "fc" bottom: "emb" top: "sum" }\n')
    net = imported(HEAD + body + LOSS % "sum").net
    assert net.layer("mvn").op == "mvn" and net.layer("mvn").attrs["across_channels"]
    lrn = net.layer("lrn")
    assert (lrn.op, lrn.attrs["size"], lrn.attrs["alpha"]) == ("lrn_within_channel", 3, 5e-5)
    emb = net.layer("emb")
    assert (emb.op, emb.attrs["input_dim"]) == ("embed", 10)
    assert net.input("label").type.dtype == "i64"
