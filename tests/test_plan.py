"""Planner decisions on hand-written nets: the precision bar for frozen layers in the middle,
kept tensors, memory and FLOP figures computed by hand, updates, the frozen prefix, the
pitfall warnings and freezing policies."""
from __future__ import annotations

from pathlib import Path

import pytest

from bwplan import apply_policy, load, load_bw_text, make_plan
from bwplan.errors import BwError

EXAMPLES = Path(__file__).parents[1] / "examples"


def plan_of(text: str):
    return make_plan(load_bw_text(text, "t.bw"))


def codes(plan):
    return {f.code for f in plan.findings}


def test_frozen_conv_in_the_middle_keeps_weights_not_its_input():
    plan = make_plan(load(str(EXAMPLES / "middle_frozen.bw")))
    conv2 = plan.layer("conv2")
    assert conv2.dx[0].needed                      # the gradient flows through conv2 ...
    assert not any(d.needed for d in conv2.dw)     # ... but its weights do not train
    assert conv2.keeps == ()                       # and it keeps nothing for its backward
    assert "pool1" not in plan.kept                # 0 bytes of its input activation
    assert "pool1" in plan.full_kept               # which the unpruned backward keeps
    assert plan.summary.planned_kept_bytes < plan.summary.full_kept_bytes
    # conv1 below still trains
    assert all(d.needed for d in plan.layer("conv1").dw)


def test_case_a_frozen_prefix_runs_no_backward_below_the_head():
    plan = make_plan(load(str(EXAMPLES / "frozen_backbone.bw")))
    below = ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3", "pool3",
             "flat"]
    for name in below:
        assert not plan.layer(name).has_backward, name
    assert not plan.layer("fc1").dx[0].needed
    assert plan.layer("fc1").dx[0].reason.code == "dx_nothing_upstream_trains"
    assert set(plan.kept) == {"flat", "relu4", "loss:prob", "label"}
    assert plan.prefix.layers == tuple(below) and plan.prefix.cacheable
    assert plan.prefix.boundary == ("flat",)
    assert [p for p, _ in plan.allreduce] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


def test_propagate_down_false_keeps_weight_gradient_only():
    plan = make_plan(load(str(EXAMPLES / "seed_inception_branch.bw")))
    proj = plan.layer("test/pool_proj")
    assert [d.needed for d in proj.dw] == [True, True]
    assert not proj.dx[0].needed and proj.dx[0].reason.code == "dx_stop_gradient"
    assert not plan.layer("test/pool").has_backward
    assert plan.layer("test/pool").dx[0].reason.code == "dx_no_gradient_above"
    assert plan.layer("pool2/3x3_s2").has_backward


SMALL = """
input x : f32[2, 8]
input y : i64[2]
a = linear(x, out=8) frozen
b = relu(a)
c = linear(b, out=4)
loss = softmax_cross_entropy(c, y)
"""


def test_flops_kept_bytes_and_peak_by_hand():
    plan = plan_of(SMALL)
    s = plan.summary
    # forward: a 2*2*8*8 + 16, relu 16, c 2*2*8*4 + 8, loss 5*8
    assert s.fwd_flops == (256 + 16) + 16 + (128 + 8) + 40
    # planned backward: c dW 128 + c db 8 + loss dX 2*8; full adds a dW, a db, c dX, relu dX
    assert s.planned_bwd_flops == 128 + 8 + 16
    assert s.full_bwd_flops == s.planned_bwd_flops + 256 + 16 + 128 + 16
    assert {k: v.nbytes for k, v in plan.kept.items()} == {"b": 64, "loss:prob": 32, "y": 16}
    # forward: inputs 80, +a 64 = 144, +b 64 = 208, -a = 144, +c 32 = 176,
    # +loss 4 + prob 32 = 212, -c = 180; seed d(loss) +4 = 184; backward: +dc 32 = 216
    # (peak), -prob -y -d(loss) = 164, -b
    assert s.planned_peak_bytes == 216


def test_shared_parameter_gradients_per_use():
    plan = plan_of("""
input x : f32[2, 4]
input y : i64[2]
param w : f32[4, 4]
a = linear(x, out=4, weight=w, bias=false)
b = linear(a, out=4, weight=w, bias=false) weight.lr=0
c = linear(b, out=4, weight=w, bias=false) weight.lr=0.5
loss = softmax_cross_entropy(c, y)
""")
    assert [plan.layer(n).dw[0].needed for n in "abc"] == [True, False, True]
    (update,) = [u for u in plan.updates if u.param == "w"]
    assert update.kind == "sgd"
    assert [(t.layer, t.lr_mult, t.computed) for t in update.terms] == [
        ("a", 1.0, True), ("b", 0.0, False), ("c", 0.5, True)]
    assert "gradient multiplier" in update.text
    assert "shared_per_use_lr" in codes(plan)
    assert plan.allreduce[0] == ("w", 64)


def test_decay_without_gradient_is_flagged():
    plan = plan_of("""
input x : f32[2, 4]
input y : i64[2]
a = linear(x, out=4)
b = linear(stop_gradient(a), out=4)
loss = softmax_cross_entropy(b, y)
""")
    kinds = {u.param: u.kind for u in plan.updates}
    assert kinds["a.weight"] == "decay_only" and kinds["b.weight"] == "sgd"
    assert "decay_without_gradient" in codes(plan)
    # freezing a removes the warning: frozen means no update at all
    frozen = make_plan(apply_policy(plan.net, [("freeze", "a")]))
    assert "decay_without_gradient" not in codes(frozen)
    assert {u.param: u.kind for u in frozen.updates}["a.weight"] == "none"


def test_pitfalls_table():
    plan = plan_of("""
input x : f32[2, 4]
input y : i64[2]
a = linear(x, out=4) frozen
dead = linear(x, out=3)
b = linear(stop_gradient(a), out=4) frozen
bad = softmax_cross_entropy(b, stop_gradient(y))
zero = softmax_cross_entropy(a, y) weight=0
""")
    found = codes(plan)
    assert {"output_reaches_no_loss", "loss_reaches_nothing", "cut_not_differentiable",
            "cut_nothing_trains", "loss_weight_zero"} <= found
    assert not plan.layer("dead").forward.needed
    assert plan.summary.planned_bwd_flops == 0
    assert plan.allreduce == ()


def test_batchnorm_freezing():
    text = """
input x : f32[4, 3, 8, 8]
input y : i64[4]
bn = batchnorm(x, affine=true)
c = conv2d(bn, out=4, kernel=3)
g = global_avgpool(c)
loss = softmax_cross_entropy(g, y)
"""
    live = plan_of(text)
    assert not live.prefix.cacheable or "bn" not in live.prefix.layers
    frozen = make_plan(apply_policy(load_bw_text(text, "t.bw"), [("freeze", "bn")]))
    assert frozen.net.layer("bn").attrs["global_stats"] is True
    assert "frozen_batchnorm" in codes(frozen)
    assert frozen.prefix.layers == ("bn",) and frozen.prefix.cacheable
    stats = [d for u, d in zip(frozen.net.layer("bn").params, frozen.layer("bn").dw)
             if u.slot in ("mean", "var")]
    assert stats and all(d.reason.code == "dw_statistics" for d in stats)
    # a batchnorm left in batch mode under a frozen layer blocks the cache and is flagged
    mixed = plan_of(text.replace("bn = batchnorm(x, affine=true)",
                                 "f = conv2d(x, out=3, kernel=1) frozen\nbn = batchnorm(f)"))
    assert "batchnorm_stats_in_frozen_region" in codes(mixed)
    assert not mixed.prefix.cacheable and mixed.prefix.blockers == ("bn",)


def test_dropout_blocks_the_prefix_cache():
    plan = plan_of("""
input x : f32[2, 4]
input y : i64[2]
a = linear(x, out=4) frozen
d = dropout(a, p=0.5)
b = linear(d, out=4)
loss = softmax_cross_entropy(b, y)
""")
    assert plan.prefix.layers == ("a", "d")
    assert not plan.prefix.cacheable and plan.prefix.blockers == ("d",)


def test_policy_rules_apply_in_order():
    net = load(str(EXAMPLES / "cnn_small.bw"))
    plan = make_plan(apply_policy(net, [("freeze", "conv*"), ("unfreeze", "conv3")]))
    assert [any(d.needed for d in plan.layer(n).dw) for n in ("conv1", "conv2", "conv3")] == [
        False, False, True]
    plan2 = make_plan(apply_policy(net, [("unfreeze", "conv3"), ("freeze", "conv*")]))
    assert not any(d.needed for d in plan2.layer("conv3").dw)
    assert "--freeze 'conv*'" in plan2.layer("conv1").dw[0].reason.text
    with pytest.raises(BwError, match="matches no layer"):
        apply_policy(net, [("freeze", "cnov*")])


def test_unfreeze_restores_written_multipliers():
    net = load_bw_text("""
input x : f32[2, 4]
input y : i64[2]
a = linear(x, out=4) frozen bias.lr=2
loss = softmax_cross_entropy(a, y)
""", "t.bw")
    assert [u.lr_mult for u in net.layer("a").params] == [0.0, 0.0]
    thawed = apply_policy(net, [("unfreeze", "a")])
    assert [u.lr_mult for u in thawed.layer("a").params] == [1.0, 2.0]


def test_input_gradient_on_request():
    text = """
input x : f32[2, 4]{grad}
input y : i64[2]
a = linear(x, out=4) frozen
loss = softmax_cross_entropy(a, y)
"""
    plain = plan_of(text.format(grad=""))
    asked = plan_of(text.format(grad=" grad"))
    assert plain.summary.planned_bwd_flops == 0
    assert asked.layer("a").dx[0].needed and not asked.layer("a").dw[0].needed


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.bw")))
def test_examples_plan_consistently(example):
    plan = make_plan(load(str(EXAMPLES / example)))
    s = plan.summary
    assert 0 <= s.planned_bwd_flops <= s.full_bwd_flops
    assert 0 <= s.planned_kept_bytes <= s.full_kept_bytes
    assert s.planned_peak_bytes <= s.full_peak_bytes
    assert s.planned_dx <= s.full_dx and s.planned_dw <= s.full_dw
    for lp in plan.layers:
        for d in lp.dx + lp.dw + (lp.forward,):
            assert d.reason.text and d.reason.code
