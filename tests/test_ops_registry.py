"""The op registry's records are consistent: every name a gradient rule uses exists, every
gradient that can flow has a rule, shape rules give the right shapes (Caffe's ceil-mode
pooling included) and refuse bad inputs with a message, and costs are whole numbers.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from bwplan import ops as registry
from bwplan.frontend.load import load_bw_text
from bwplan.ir.types import TensorType
from bwplan.ops.opdef import ATTR_KINDS, REQUIRED, OpCtx
from bwplan.ops.reference import full_attrs

# values for required attributes, so that every op can be instantiated
REQUIRED_SAMPLES = {"out": 4, "kernel": 3, "shape": (0, -1), "begin": 0, "end": 1,
                    "tiles": 2, "perm": (0, 1, 3, 2), "num_output": 4, "input_dim": 5,
                    "height": 2, "width": 2, "pooled_h": 2, "pooled_w": 2, "num_classes": 3}


def attr_variants(op):
    """Every combination of the op's boolean attributes, other attributes at defaults."""
    flags = [a.name for a in op.attrs if a.kind == "bool"]
    base = {a.name: REQUIRED_SAMPLES[a.name] for a in op.attrs if a.default is REQUIRED}
    for values in itertools.product((False, True), repeat=len(flags)):
        yield full_attrs(op, {**base, **dict(zip(flags, values))})


ALL = sorted(registry.OPS)


def test_registry_is_keyed_by_name_and_family_module():
    for family in registry._FAMILIES:
        module = family.__name__.rsplit(".", 1)[1]
        for op in family.OPS:
            assert registry.OPS[op.name] is op
            assert op.family == module, f"{op.name} is in {module}.py, says {op.family}"


@pytest.mark.parametrize("name", ALL)
def test_names_are_distinct(name):
    op = registry.OPS[name]
    names = ([p.name for p in op.ports] + [s.name for s in op.params]
             + [a.name for a in op.aux])
    assert len(names) == len(set(names)), names
    assert "out" not in names
    assert len({r.wrt for r in op.grads}) == len(op.grads)
    assert all(not p.variadic for p in op.ports[:-1]), "only the last port may be variadic"


@pytest.mark.parametrize("name", ALL)
def test_rules_refer_only_to_existing_names(name):
    op = registry.OPS[name]
    ports = {p.name for p in op.ports}
    slots = {s.name for s in op.params}
    known = ports | slots | {a.name for a in op.aux} | {"out"}
    for attrs in attr_variants(op):
        for rule in op.grads:
            assert rule.wrt in ports | slots
            assert rule.needs_for(attrs) <= known, (rule.wrt, rule.needs_for(attrs) - known)
            enabled = {s.name for s in op.param_slots(attrs)}
            assert rule.needs_for(attrs) & slots <= enabled, f"{rule.wrt} reads a disabled slot"


@pytest.mark.parametrize("name", ALL)
def test_every_gradient_that_can_flow_has_a_rule(name):
    op = registry.OPS[name]
    wanted = ({p.name for p in op.ports if p.differentiable}
              | {s.name for s in op.params if s.learnable})
    assert {r.wrt for r in op.grads} == wanted
    if op.role == "metric":
        assert not op.grads


@pytest.mark.parametrize("name", ALL)
def test_every_op_is_documented_with_references(name):
    op = registry.OPS[name]
    assert op.doc.strip()
    assert op.forward_ref is not None
    assert all(rule.reference is not None for rule in op.grads)
    assert op.role in ("layer", "loss", "metric")


@pytest.mark.parametrize("name", ALL)
def test_attr_specs_are_well_formed(name):
    op = registry.OPS[name]
    # None: an optional setting left unset (accuracy's ignore_label, a pool's stride)
    types = {"int": (int, type(None)), "float": float, "bool": bool,
             "ints": (int, tuple, type(None)),
             "floats": tuple, "choice": str}
    for spec in op.attrs:
        assert spec.kind in ATTR_KINDS
        if spec.default is not REQUIRED:
            assert isinstance(spec.default, types[spec.kind]), spec.name
        if spec.kind == "choice":
            assert spec.default is REQUIRED or spec.default in spec.choices


# ---- shape rules ---------------------------------------------------------------------------
def f32(*shape):
    return TensorType("f32", shape)


def infer(name, attrs, *inputs):
    op = registry.OPS[name]
    return op.infer(OpCtx(full_attrs(op, attrs), inputs))


SHAPES = [
    # Caffe's GoogLeNet/ResNet pooling: ceil mode, no padding
    ("maxpool", dict(kernel=3, stride=2, ceil=True), [f32(1, 64, 112, 112)], (1, 64, 56, 56)),
    ("maxpool", dict(kernel=3, stride=2, ceil=True), [f32(1, 64, 56, 56)], (1, 64, 28, 28)),
    ("maxpool", dict(kernel=3, stride=2), [f32(1, 64, 56, 56)], (1, 64, 27, 27)),
    # padded: ceil rounds 5/2 up; the last window starts inside the image
    ("maxpool", dict(kernel=3, stride=2, pad=1, ceil=True), [f32(1, 1, 6, 6)], (1, 1, 4, 4)),
    ("maxpool", dict(kernel=3, stride=2, pad=1), [f32(1, 1, 6, 6)], (1, 1, 3, 3)),
    # padded: the window ceil mode adds would start in the padding, so Caffe drops it
    ("avgpool", dict(kernel=2, stride=2, pad=1, ceil=True), [f32(1, 1, 5, 5)], (1, 1, 3, 3)),
    ("avgpool", dict(kernel=[2, 3], stride=[1, 2], pad=[1, 0]), [f32(2, 3, 4, 7)],
     (2, 3, 5, 3)),
    ("maxpool", dict(kernel=2), [f32(1, 1, 5, 5)], (1, 1, 2, 2)),
    ("global_avgpool", {}, [f32(2, 8, 7, 5)], (2, 8, 1, 1)),
    ("global_maxpool", {}, [f32(2, 8, 7, 5)], (2, 8, 1, 1)),
    ("flatten", {}, [f32(2, 3, 4, 5)], (2, 60)),
    ("flatten", dict(axis=0, end_axis=1), [f32(2, 3, 4, 5)], (6, 4, 5)),
    ("flatten", dict(axis=-2), [f32(2, 3, 4, 5)], (2, 3, 20)),
    ("reshape", dict(shape=(0, -1)), [f32(2, 3, 4, 5)], (2, 60)),
    ("reshape", dict(shape=(-1, 0, 2, 2)), [f32(2, 3, 4)], (2, 3, 2, 2)),
    ("reshape", dict(shape=6), [f32(2, 3)], (6,)),
    ("concat", {}, [f32(2, 3, 4), f32(2, 5, 4)], (2, 8, 4)),
    ("concat", dict(axis=-1), [f32(2, 3, 4), f32(2, 3, 1), f32(2, 3, 2)], (2, 3, 7)),
    ("slice", dict(begin=1, end=3), [f32(2, 5, 4)], (2, 2, 4)),
    ("slice", dict(axis=-1, begin=0, end=1), [f32(2, 5, 4)], (2, 5, 1)),
    ("add", dict(coeffs=(1.0, -1.0)), [f32(2, 3), f32(2, 3)], (2, 3)),
    ("mul", {}, [f32(2, 3), f32(2, 3)], (2, 3)),
    ("maximum", {}, [f32(4), f32(4), f32(4)], (4,)),
    ("dropout", {}, [f32(2, 3)], (2, 3)),
    ("batchnorm", {}, [f32(2, 3)], (2, 3)),
    ("batchnorm", dict(affine=True), [f32(2, 3, 4, 4)], (2, 3, 4, 4)),
    ("scale", {}, [f32(2, 3, 4)], (2, 3, 4)),
    ("lrn", {}, [f32(2, 8, 4, 4)], (2, 8, 4, 4)),
    ("softmax", dict(axis=-1), [f32(2, 3)], (2, 3)),
    ("euclidean_loss", {}, [f32(4, 3), f32(4, 3, 1, 1)], ()),
    ("contrastive_loss", {}, [f32(4, 3), f32(4, 3), f32(4, 1, 1, 1)], ()),
    ("accuracy", dict(top_k=5), [f32(4, 10), TensorType("i32", (4,))], ()),
    ("conv2d", dict(out=8, kernel=3, stride=2, pad=1), [f32(1, 3, 32, 32)], (1, 8, 16, 16)),
    ("linear", dict(out=10), [f32(4, 3, 2, 2)], (4, 10)),
    ("elu", {}, [f32(2, 3)], (2, 3)),
    ("power", dict(power=2.0), [f32(5)], (5,)),
    ("absval", {}, [f32(2, 3, 4)], (2, 3, 4)),
    ("bnll", {}, [f32(2, 3)], (2, 3)),
    ("exp", dict(base=2.0), [f32(2, 3)], (2, 3)),
    ("log", dict(base=10.0), [f32(2, 3)], (2, 3)),
    ("prelu", {}, [f32(2, 3, 4, 4)], (2, 3, 4, 4)),
    ("prelu", dict(channel_shared=True), [f32(2, 3)], (2, 3)),
    ("threshold", dict(threshold=0.5), [f32(2, 3)], (2, 3)),
    ("reduction", {}, [f32(2, 3, 4)], ()),
    ("reduction", dict(axis=-1, operation="MEAN"), [f32(2, 3, 4)], (2, 3)),
    ("argmax", {}, [f32(2, 10)], (2, 1, 1)),
    ("argmax", dict(top_k=3, out_max_val=True), [f32(2, 3, 4, 5)], (2, 2, 3, 1)),
    ("argmax", dict(axis=1, top_k=2), [f32(2, 3, 4)], (2, 2, 4)),
    ("silence", {}, [f32(2, 3), f32(4)], (0,)),
    ("bias", {}, [f32(2, 3, 4)], (2, 3, 4)),
    ("bias_add", dict(axis=-2), [f32(2, 3, 4), f32(3, 4)], (2, 3, 4)),
    ("bias_add", {}, [f32(2, 3, 4), f32()], (2, 3, 4)),
    ("tile", dict(axis=1, tiles=3), [f32(2, 3, 4)], (2, 9, 4)),
    ("embed", dict(num_output=8, input_dim=100), [TensorType("i32", (2, 5))], (2, 5, 8)),
    ("sigmoid_cross_entropy_loss", {}, [f32(4, 3), f32(4, 3, 1)], ()),
    ("hinge_loss", {}, [f32(4, 10), TensorType("i32", (4,))], ()),
    ("infogain_loss", {}, [f32(4, 10, 2), TensorType("i32", (4, 2))], ()),
    ("infogain_loss_h", dict(axis=-1), [f32(4, 10), TensorType("i32", (4,)), f32(1, 1, 10, 10)],
     ()),
    ("smooth_l1_loss", {}, [f32(4, 8), f32(4, 8)], ()),
    ("smooth_l1_loss_weighted", {}, [f32(4, 8), f32(4, 8), f32(4, 8), f32(4, 8)], ()),
    ("mvn", dict(across_channels=True), [f32(2, 3, 4, 4)], (2, 3, 4, 4)),
    ("lrn_within_channel", dict(size=3), [f32(2, 3, 4, 4)], (2, 3, 4, 4)),
]


@pytest.mark.parametrize("name,attrs,inputs,shape", SHAPES,
                         ids=[f"{s[0]}-{i}" for i, s in enumerate(SHAPES)])
def test_shape_rule(name, attrs, inputs, shape):
    assert infer(name, attrs, *inputs).shape == shape


def test_accuracy_output_is_f32_whatever_the_logits():
    out = infer("accuracy", {}, TensorType("f64", (4, 10)), TensorType("i64", (4,)))
    assert out == TensorType("f32", ())


ERRORS = [
    ("maxpool", dict(kernel=3, pad=3), [f32(1, 1, 8, 8)], "pad 3 must be smaller"),
    ("maxpool", dict(kernel=5), [f32(1, 1, 3, 8)], "does not fit"),
    ("maxpool", dict(kernel=3), [f32(1, 8, 8)], "NCHW"),
    ("avgpool", dict(kernel=1, stride=3, ceil=True), [f32(1, 1, 5, 5)], "starts past the end"),
    ("global_avgpool", {}, [f32(2, 8)], "NCHW"),
    ("flatten", dict(axis=2, end_axis=1), [f32(2, 3, 4)], "comes before"),
    ("flatten", dict(axis=3), [f32(2, 3, 4)], "out of range"),
    ("reshape", dict(shape=(5, -1)), [f32(2, 3)], "not a multiple of 5"),
    ("reshape", dict(shape=(-1, -1)), [f32(2, 3)], "more than one -1"),
    ("reshape", dict(shape=(0, 0, 0)), [f32(2, 3)], "only 2 dimensions"),
    ("reshape", dict(shape=(4, 2)), [f32(2, 3)], "holds 8 elements"),
    ("reshape", dict(shape=(-2, 3)), [f32(2, 3)], "entry 0 is -2"),
    ("concat", {}, [f32(2, 3, 4), f32(2, 3, 5)], "differ only in dimension 1"),
    ("concat", {}, [f32(2, 3), TensorType("f64", (2, 3))], "differ only in dimension 1"),
    ("slice", dict(begin=2, end=2), [f32(2, 3)], "not a non-empty range"),
    ("slice", dict(begin=0, end=4), [f32(2, 3)], "not a non-empty range"),
    ("add", {}, [f32(2, 3), f32(3, 2)], "shapes must match"),
    ("add", dict(coeffs=(1.0,)), [f32(2), f32(2)], "1 coeffs given for 2 inputs"),
    ("mul", {}, [f32(2, 3), f32(2, 1)], "shapes must match"),
    ("maximum", {}, [f32(2)], "at least 2 inputs"),
    ("dropout", dict(p=1.0), [f32(2)], "must be in [0, 1)"),
    ("batchnorm", {}, [f32(2, 3, 4)], "[N, C] or NCHW"),
    ("batchnorm", dict(eps=0.0), [f32(2, 3)], "must be positive"),
    ("scale", {}, [f32(5)], "channels in dimension 1"),
    ("lrn", dict(size=4), [f32(1, 8, 2, 2)], "odd"),
    ("softmax", dict(axis=2), [f32(2, 3)], "out of range"),
    ("euclidean_loss", {}, [f32(4, 3), f32(3, 4)], "same batch size"),
    ("euclidean_loss", {}, [f32(4, 3), f32(4, 2)], "same number of elements"),
    ("contrastive_loss", {}, [f32(4, 3), f32(4, 3), f32(4, 2)], "one flag per sample"),
    ("accuracy", dict(top_k=11), [f32(4, 10), TensorType("i32", (4,))], "top_k=11"),
    ("accuracy", {}, [f32(4, 10), TensorType("i32", (5,))], "does not match"),
    ("exp", dict(base=0.0), [f32(2)], "base=0.0 must be positive"),
    ("log", dict(base=1.0), [f32(2)], "base=1.0 must be positive and not 1"),
    ("prelu", {}, [f32(5)], "channels in dimension 1"),
    ("reduction", dict(axis=3), [f32(2, 3, 4)], "axis=3 is out of range"),
    ("argmax", dict(top_k=4), [f32(2, 3)], "top_k=4 must be between 1 and the 3"),
    ("argmax", dict(axis=2, top_k=5), [f32(2, 3, 4)], "top_k=5"),
    ("bias", dict(axis=1, num_axes=3), [f32(2, 3, 4)], "num_axes=3 does not fit"),
    ("bias_add", {}, [f32(2, 3, 4), f32(4)], "expected the shape (3,)"),
    ("tile", dict(tiles=0), [f32(2, 3)], "tiles=0 must be at least 1"),
    ("embed", dict(num_output=0, input_dim=3), [f32(2)], "num_output=0 must be at least 1"),
    ("sigmoid_cross_entropy_loss", {}, [f32(4, 3), f32(4, 2)], "same number of elements"),
    ("hinge_loss", {}, [f32(4, 10), TensorType("i32", (5,))], "one class per sample"),
    ("infogain_loss", {}, [f32(4, 10, 2), TensorType("i32", (4,))], "8 labels"),
    ("infogain_loss_h", {}, [f32(4, 10), TensorType("i32", (4,)), f32(9, 9)],
     "must be a 10 x 10 matrix"),
    ("smooth_l1_loss_weighted", {}, [f32(4, 8), f32(4, 8), f32(4, 8), f32(4, 7)],
     "as many elements"),
    ("mvn", {}, [f32(4)], "needs [N, C, ...]"),
    ("lrn_within_channel", dict(size=2), [f32(1, 1, 4, 4)], "must be odd"),
    ("lrn_within_channel", {}, [f32(1, 4, 4)], "NCHW"),
]


@pytest.mark.parametrize("name,attrs,inputs,message", ERRORS,
                         ids=[f"{e[0]}-{i}" for i, e in enumerate(ERRORS)])
def test_shape_rule_refuses_with_a_message(name, attrs, inputs, message):
    with pytest.raises(ValueError) as info:
        infer(name, attrs, *inputs)
    assert message in str(info.value)


# ---- costs -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,attrs,inputs,shape", SHAPES,
                         ids=[f"{s[0]}-{i}" for i, s in enumerate(SHAPES)])
def test_costs_are_whole_numbers(name, attrs, inputs, shape):
    op = registry.OPS[name]
    attrs = full_attrs(op, attrs)
    ctx = OpCtx(attrs, tuple(inputs), op.infer(OpCtx(attrs, tuple(inputs))))
    costs = [op.flops(ctx)] + [r.flops(ctx) for r in op.grads] + [a.nbytes(ctx) for a in op.aux]
    assert all(type(c) is int and c >= 0 for c in costs), costs
    for slot in op.param_slots(attrs):
        assert all(type(d) is int and d > 0 for d in slot.shape(ctx))


def test_pooling_flops_count_every_window_cell():
    op = registry.OPS["maxpool"]
    attrs = full_attrs(op, dict(kernel=3, stride=2, ceil=True))
    x = f32(1, 64, 112, 112)
    ctx = OpCtx(attrs, (x,), op.infer(OpCtx(attrs, (x,))))
    assert op.flops(ctx) == 64 * 56 * 56 * 9
    assert op.aux_spec("argmax").nbytes(ctx) == 4 * 64 * 56 * 56


# ---- batchnorm's modes -----------------------------------------------------------------------
@pytest.mark.parametrize("global_stats,affine,dx,dweight", [
    (False, False, {"x", "batch_stats"}, {"x", "batch_stats"}),
    (False, True, {"x", "batch_stats", "weight"}, {"x", "batch_stats"}),
    (True, False, {"var"}, {"x", "mean", "var"}),
    (True, True, {"var", "weight"}, {"x", "mean", "var"}),
])
def test_batchnorm_needs_depend_on_mode(global_stats, affine, dx, dweight):
    op = registry.OPS["batchnorm"]
    attrs = full_attrs(op, dict(global_stats=global_stats, affine=affine))
    assert op.grad_for("x").needs_for(attrs) == dx
    assert op.grad_for("weight").needs_for(attrs) == dweight
    assert op.grad_for("bias").needs_for(attrs) == set()
    assert op.is_deterministic(attrs) == global_stats
    assert [s.name for s in op.param_slots(attrs)] == (
        ["mean", "var", "weight", "bias"] if affine else ["mean", "var"])


def test_freezing_batchnorm_switches_to_stored_statistics():
    op = registry.OPS["batchnorm"]
    frozen = op.on_freeze(full_attrs(op, {}))
    assert frozen["global_stats"] is True
    assert op.is_deterministic(frozen)
    x = f32(8, 16)
    ctx = OpCtx(frozen, (x,), x)
    assert op.aux_spec("batch_stats").nbytes(ctx) == 0
    assert op.grad_for("x").needs_for(frozen) == {"var"}


@pytest.mark.parametrize("name,deterministic", [("dropout", False), ("maxpool", True),
                                                ("lrn", True)])
def test_determinism_flags(name, deterministic):
    op = registry.OPS[name]
    assert op.is_deterministic(next(attr_variants(op))) == deterministic


def test_needs_match_the_documented_contract():
    expected = {
        ("sigmoid", "x"): {"out"}, ("tanh", "x"): {"out"}, ("maxpool", "x"): {"argmax"},
        ("avgpool", "x"): set(), ("global_avgpool", "x"): set(),
        ("global_maxpool", "x"): {"argmax"}, ("flatten", "x"): set(),
        ("reshape", "x"): set(), ("concat", "xs"): set(), ("add", "xs"): set(),
        ("mul", "a"): {"b"}, ("mul", "b"): {"a"}, ("maximum", "xs"): {"argmax"},
        ("dropout", "x"): {"mask"}, ("scale", "x"): {"weight"}, ("scale", "weight"): {"x"},
        ("scale", "bias"): set(), ("lrn", "x"): {"x", "out", "scale"},
        ("softmax", "x"): {"out"}, ("euclidean_loss", "a"): {"diff"},
        ("euclidean_loss", "b"): {"diff"}, ("slice", "x"): set(),
        ("contrastive_loss", "a"): {"diff", "dist_sq", "sim"},
        ("contrastive_loss", "b"): {"diff", "dist_sq", "sim"},
        ("elu", "x"): {"out"}, ("power", "x"): set(), ("absval", "x"): {"x"},
        ("bnll", "x"): {"out"}, ("exp", "x"): {"out"}, ("log", "x"): {"x"},
        ("prelu", "x"): {"x", "weight"}, ("prelu", "weight"): {"x"},
        ("reduction", "x"): set(), ("bias", "x"): set(), ("bias", "bias"): set(),
        ("bias_add", "x"): set(), ("bias_add", "b"): set(), ("tile", "x"): set(),
        ("embed", "weight"): {"x"}, ("embed", "bias"): set(),
        ("sigmoid_cross_entropy_loss", "logits"): {"logits", "target"},
        ("hinge_loss", "scores"): {"scores", "label"},
        ("infogain_loss", "logits"): {"prob", "label", "infogain"},
        ("infogain_loss_h", "logits"): {"prob", "label", "infogain"},
        ("smooth_l1_loss", "a"): {"diff"}, ("smooth_l1_loss", "b"): {"diff"},
        ("smooth_l1_loss_weighted", "a"): {"diff", "inside", "outside"},
        ("smooth_l1_loss_inside", "a"): {"diff", "inside"},
        ("lrn_within_channel", "x"): {"x", "out", "scale"},
    }
    for (name, wrt), needs in expected.items():
        op = registry.OPS[name]
        assert op.grad_for(wrt).needs_for(next(attr_variants(op))) == needs, (name, wrt)


@pytest.mark.parametrize("name,attrs,needs", [
    ("power", dict(power=1.0, scale=3.0), set()),        # a line
    ("power", dict(power=2.0, scale=0.0), set()),        # a constant
    ("power", dict(power=0.0), set()),
    ("power", dict(power=2.0), {"x"}),
    ("elu", dict(alpha=0.0), {"out"}),
    ("elu", dict(alpha=-0.5), {"x", "out"}),             # out > 0 no longer means x > 0
    ("reduction", dict(operation="MEAN"), set()),
    ("mvn", dict(normalize_variance=True), {"out", "std"}),
    ("mvn", dict(normalize_variance=False), set()),
    ("reduction", dict(operation="ASUM"), {"x"}),
    ("reduction", dict(operation="SUMSQ"), {"x"}),
])
def test_needs_depend_on_attributes(name, attrs, needs):
    op = registry.OPS[name]
    assert op.grad_for("x").needs_for(full_attrs(op, attrs)) == needs


@pytest.mark.parametrize("attrs,shape", [
    (dict(axis=1, num_axes=1), (3,)), (dict(axis=-2, num_axes=-1), (4, 5)),
    (dict(axis=0, num_axes=2), (2, 3)), (dict(num_axes=0), (1,)),
])
def test_learned_bias_covers_caffes_span(attrs, shape):
    op = registry.OPS["bias"]
    full = full_attrs(op, attrs)
    x = f32(2, 3, 4, 5)
    assert op.slot("bias").shape(OpCtx(full, (x,), x)) == shape


def test_an_infogain_matrix_starts_as_the_identity_and_never_trains():
    from bwplan.runtime.init import initial_params
    net = load_bw_text("input x : f32[2, 4]\ninput y : i32[2]\n"
                       "l = infogain_loss(x, y)\n")
    h = net.params["l.infogain"]
    assert not h.learnable and h.type.shape == (4, 4)
    assert (initial_params(net)["l.infogain"] == np.eye(4)).all()


def test_threshold_is_a_stop_point_of_the_plan():
    """Caffe's Threshold has no backward: its input gets no gradient, and the planner says
    why, while a sibling path still trains what is below."""
    from bwplan import make_plan
    plan = make_plan(load_bw_text(
        "input x : f32[2, 3, 4, 4]\ninput y : i64[2]\n"
        "c = conv2d(x, out=2, kernel=1)\nt = threshold(c, threshold=0.5)\n"
        "g = linear(t, out=3)\nloss = softmax_cross_entropy(g, y)\n", "t.bw"))
    dx = plan.layer("t").dx[0]
    assert not dx.needed and dx.reason.code == "dx_not_differentiable"
    assert "threshold is not differentiable" in dx.reason.text
    assert not any(d.needed for d in plan.layer("c").dw)  # nothing reaches c's weights
    assert all(d.needed for d in plan.layer("g").dw)
    assert "c" not in plan.kept and "x" not in plan.kept  # t is kept for g's dW only


# ---- through the .bw front end ---------------------------------------------------------------
def test_new_ops_build_from_bw_text():
    net = load_bw_text(
        "input x : f32[2, 3, 9, 9]\n"
        "input y : i32[2]\n"
        "c = conv2d(x, out=4, kernel=3, pad=1)\n"
        "b = batchnorm(c, affine=true) frozen\n"
        "s = scale(b, bias=true)\n"
        "n = lrn(s, size=3)\n"
        "p = maxpool(n, kernel=3, stride=2, ceil=true)\n"
        "a = avgpool(p, kernel=2, pad=1, ceil=true)\n"
        "g = global_maxpool(p)\n"
        "k = slice(p, begin=0, end=2)\n"
        "j = concat(k, k, axis=1)\n"
        "m = maximum(j, p, p)\n"
        "f = flatten(m)\n"
        "r = reshape(m, shape=[0, -1])\n"
        "e = add(f, r, coeffs=[1, 0.5])\n"
        "d = dropout(e, p=0.2)\n"
        "l = linear(d, out=5)\n"
        "loss = softmax_cross_entropy(l, y)\n"
        "acc = accuracy(l, y, top_k=2)\n")
    layers = {layer.name: layer for layer in net.layers}
    assert layers["b"].attrs["global_stats"] is True  # frozen
    assert [u.slot for u in layers["b"].params] == ["mean", "var", "weight", "bias"]
    assert layers["p"].out.shape == (2, 4, 4, 4)
    assert layers["a"].out.shape == (2, 4, 3, 3)
    assert layers["g"].out.shape == (2, 4, 1, 1)
    assert layers["j"].out.shape == (2, 4, 4, 4)
    assert layers["r"].out.shape == (2, 64)
    assert layers["acc"].out == TensorType("f32", ())
