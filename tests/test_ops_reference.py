"""The NumPy references of every op: each gradient reference, fed only the values its rule
declares, against central finite differences; forwards against the shape rule, against the
op's PyTorch translation (and the benchmark peer's), and against Caffe's loops written out.

The cases come from each op's row (tests/op_cases): shapes and attributes from Hypothesis,
array values from a NumPy generator seeded by Hypothesis, so examples stay small and fast.
Everything runs in float64.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bwplan import ops as registry
from bwplan.ops.opdef import GradRule, zero_flops
from bwplan.ops.reference import (full_attrs, grad_index, make_ctx, run_forward, run_grad,
                                  saved_values, tensor_type)
from op_cases import ROWS, draw_case
from op_cases.draw import valid
from op_cases.loss import labelled_case
from op_cases.spatial_norm import lrn_within_case

FD_EPS = 1e-6
DROPOUT_SEED = 7
WITH_GRADS = sorted(name for name, op in registry.OPS.items() if op.grads)


# ---- gradients against finite differences ----------------------------------------------
class _Recording(dict):
    """A dict that remembers which keys a reference read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def _forward(op, case, inputs, params):
    return run_forward(op, case.attrs, inputs, params, training=True,
                       rng=np.random.default_rng(DROPOUT_SEED))


def _numeric_grad(f, value: np.ndarray) -> np.ndarray:
    """Central differences of the scalar f() with respect to `value`, edited in place."""
    grad = np.zeros_like(value)
    flat, gflat = value.reshape(-1), grad.reshape(-1)
    for j in range(flat.size):
        keep = flat[j]
        flat[j] = keep + FD_EPS
        up = f()
        flat[j] = keep - FD_EPS
        down = f()
        flat[j] = keep
        gflat[j] = (up - down) / (2 * FD_EPS)
    return grad


def _targets(op, ctx, rule, inputs, params):
    """(index passed to the reference, array the gradient is taken against) per target."""
    if op.slot(rule.wrt) is not None:
        if op.slot(rule.wrt) in op.param_slots(ctx.attrs):
            yield 0, params[rule.wrt]
        return
    for i, x in enumerate(inputs):
        if op.port_for(i).name == rule.wrt:
            yield grad_index(op, rule.wrt, i), x


@pytest.mark.parametrize("name", WITH_GRADS)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_grad_reference_matches_finite_differences(name, data):
    op = registry.OPS[name]
    case = draw_case(data, name)
    inputs = [x.copy() for x in case.inputs]
    params = {k: v.copy() for k, v in case.params.items()}
    ctx = make_ctx(op, case.attrs, inputs)
    out, aux = _forward(op, case, inputs, params)
    weights = np.random.default_rng(1).standard_normal(np.shape(out))

    def objective():
        again, again_aux = _forward(op, case, inputs, params)
        for key, value in aux.items():
            if key == "mask":  # dropout: the same mask for every perturbed forward
                assert np.array_equal(again_aux[key], value)
        return float(np.sum(again * weights))

    for rule in op.grads:
        for index, target in _targets(op, ctx, rule, inputs, params):
            saved = _Recording(saved_values(op, rule, ctx, inputs, params, out, aux))
            got = rule.reference(ctx, saved, weights, index)
            unread = rule.needs_for(ctx.attrs) - saved.read
            assert not unread, f"{name}.{rule.wrt} declares {sorted(unread)} but never reads"
            assert np.shape(got) == target.shape
            expected = _numeric_grad(objective, target)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} d/d{rule.wrt}[{index}]")


def test_run_grad_passes_the_input_position_of_a_variadic_port():
    op = registry.OPS["concat"]
    xs = [np.zeros((2, 1)), np.ones((2, 3)), np.full((2, 2), 2.0)]
    ctx = make_ctx(op, {}, xs)
    out, aux = run_forward(op, {}, xs, {})
    for i, x in enumerate(xs):
        assert run_grad(op, "xs", ctx, xs, {}, out, aux, out, index=i).tolist() == x.tolist()


def test_saved_values_holds_exactly_the_declared_needs():
    op = registry.OPS["batchnorm"]
    x = np.arange(12.0).reshape(3, 4)
    params = {"mean": np.zeros(4), "var": np.ones(4), "weight": np.ones(4),
              "bias": np.zeros(4)}
    for global_stats in (False, True):
        attrs = dict(affine=True, global_stats=global_stats)
        ctx = make_ctx(op, attrs, [x])
        out, aux = run_forward(op, attrs, [x], params)
        saved = saved_values(op, op.grad_for("x"), ctx, [x], params, out, aux)
        assert set(saved) == op.grad_for("x").needs_for(ctx.attrs)
    op = registry.OPS["mul"]
    a, b = np.ones(3), np.full(3, 2.0)
    ctx = make_ctx(op, {}, [a, b])
    saved = saved_values(op, op.grad_for("a"), ctx, [a, b], {}, a * b, {})
    assert list(saved) == ["b"] and saved["b"] is b


def test_saved_values_gives_a_variadic_port_as_a_list():
    op = registry.OPS["concat"]
    xs = [np.zeros((1, 2)), np.ones((1, 3))]
    ctx = make_ctx(op, {}, xs)
    rule = GradRule("xs", frozenset({"xs", "out"}), zero_flops)
    saved = saved_values(op, rule, ctx, xs, {}, "the output", {})
    assert saved["out"] == "the output"
    assert len(saved["xs"]) == 2 and all(a is b for a, b in zip(saved["xs"], xs))


# ---- forwards against the shape rule -----------------------------------------------------
@pytest.mark.parametrize("name", sorted(registry.OPS))
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_forward_agrees_with_shape_rule_and_aux_specs(name, data):
    op = registry.OPS[name]
    case = draw_case(data, name)
    ctx = make_ctx(op, case.attrs, case.inputs)
    out, aux = _forward(op, case, case.inputs, case.params)
    assert tensor_type(out) == ctx.out
    declared = {a.name for a in op.aux if a.nbytes(ctx) > 0}
    assert set(aux) == declared
    for spec in op.aux:
        if spec.name in aux:
            assert aux[spec.name].nbytes == spec.nbytes(ctx), spec.name


# ---- hand-checked facts ------------------------------------------------------------------
def test_accuracy_counts_ties_against_the_true_class():
    op = registry.OPS["accuracy"]
    logits = np.array([[1.0, 2.0, 2.0], [3.0, 1.0, 0.0]])
    label = np.array([1, 0], dtype=np.int32)
    assert run_forward(op, dict(top_k=1), [logits, label], {})[0] == 0.5
    assert run_forward(op, dict(top_k=2), [logits, label], {})[0] == 1.0


@pytest.mark.parametrize("match_type, labels, loss", [
    # B overlaps the box by 2/3: matched per prediction (threshold 0.5), so C alone is a
    # negative; bipartite leaves B unmatched, but 2/3 is above neg_overlap: not mined
    ("PER_PREDICTION", [1, 1, 0], (1.5 + 3 * np.log(2)) / 2),
    ("BIPARTITE", [1, -1, 0], 2 * np.log(2)),
])
def test_multibox_matches_mines_and_scores_a_worked_example(match_type, labels, loss):
    from bwplan.kernels.cpu import get
    from bwplan.ops.opdef import OpCtx
    op = registry.OPS["multibox_loss"]
    priors = [[0, 0, .5, .5], [.1, 0, .6, .5], [.5, .5, 1, 1]]     # A, B, C
    prior = np.array([sum(priors, []), [0.1, 0.1, 0.2, 0.2] * 3]).reshape(1, 2, 12)
    gt = np.array([0, 1, 0, 0, 0, .5, .5, 0], dtype=np.float64).reshape(1, 1, 1, 8)
    loc, conf = np.zeros((1, 12)), np.zeros((1, 6))
    attrs = dict(num_classes=2, match_type=match_type)
    out, aux = run_forward(op, attrs, [loc, conf, prior, gt], {})
    assert aux["labels"].tolist() == [labels]
    # B's box centre is 0.1 left of its own: (-0.1 / 0.5) / 0.1 = -2, smooth L1 1.5
    if labels[1] == 1:
        assert aux["targets"][0, 1].tolist() == pytest.approx([-2, 0, 0, 0])
    assert float(out) == pytest.approx(loss)
    ctx = make_ctx(op, attrs, [loc, conf, prior, gt])
    got, kept = np.zeros(()), {"targets": np.zeros((1, 3, 4)), "labels": np.zeros((1, 3))}
    get(op.kernels["cpu"]["fwd"])(OpCtx(ctx.attrs, ctx.inputs, ctx.out),
                                  [loc, conf, prior, gt], {}, got, kept, True, None)
    assert float(got) == pytest.approx(loss) and kept["labels"].tolist() == [labels]


def test_argmax_gives_a_tie_to_the_larger_index_and_lays_out_like_caffe():
    op = registry.OPS["argmax"]
    x = np.array([[3.0, 5.0, 5.0, 1.0], [2.0, 2.0, 0.0, 7.0]])
    out, _ = run_forward(op, dict(top_k=3, out_max_val=True), [x], {})
    # no axis: (N, 2, top_k), the indices then the values
    assert out.shape == (2, 2, 3)
    assert out[0].tolist() == [[2, 1, 0], [5, 5, 3]]
    assert out[1].tolist() == [[3, 1, 0], [7, 2, 2]]
    out, _ = run_forward(op, dict(axis=0), [x], {})
    assert out.tolist() == [[0, 0, 0, 1]]
    out, _ = run_forward(op, dict(axis=1, out_max_val=True), [x], {})
    assert out.tolist() == [[5], [7]]


def test_reduction_mean_divides_the_coefficient_by_the_reduced_count():
    op = registry.OPS["reduction"]
    x = np.arange(24.0).reshape(2, 3, 4)
    out, _ = run_forward(op, dict(operation="MEAN", axis=1, coeff=2.0), [x], {})
    assert np.allclose(out, 2.0 * x.reshape(2, 12).mean(axis=1))
    out, _ = run_forward(op, dict(operation="SUMSQ", axis=-1), [x], {})
    assert out.shape == (2, 3) and np.allclose(out, (x * x).sum(axis=2))
    assert run_forward(op, {}, [x], {})[0].shape == ()


@settings(max_examples=20, deadline=None)
@given(case=labelled_case())
def test_infogain_with_the_identity_is_the_softmax_cross_entropy(case):
    """Caffe's InfogainLoss with H = I and VALID normalization is SoftmaxWithLoss."""
    c = case.inputs[0].shape[1]
    want, _ = run_forward(registry.OPS["softmax_cross_entropy"], {}, case.inputs, {})
    got, _ = run_forward(registry.OPS["infogain_loss"], {}, case.inputs,
                         {"infogain": np.eye(c)})
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_sigmoid_cross_entropy_divides_as_caffes_normalization_says():
    op = registry.OPS["sigmoid_cross_entropy_loss"]
    x = np.array([[0.0, 100.0, -100.0], [1.0, 2.0, 3.0]])
    t = np.array([[1.0, 1.0, 0.0], [-1.0, -1.0, 0.5]])
    per = np.array([np.log(2.0), 0.0, 0.0, 0.0, 0.0, 3 - 1.5 + np.log1p(np.exp(-3.0))])
    for mode, divisor in [("BATCH_SIZE", 2), ("FULL", 6), ("VALID", 4), ("NONE", 1)]:
        got, _ = run_forward(op, dict(normalization=mode), [x, t], {})
        assert np.isclose(got, per.sum() / divisor), mode


def test_dropout_keeps_the_expected_fraction_and_scales_it():
    op = registry.OPS["dropout"]
    x = np.ones((100, 100))
    out, aux = run_forward(op, dict(p=0.25), [x], {}, rng=np.random.default_rng(0))
    kept = aux["mask"].astype(bool)
    assert abs(kept.mean() - 0.75) < 0.02
    assert np.allclose(out[kept], 1 / 0.75) and np.all(out[~kept] == 0)
    out, aux = run_forward(op, dict(p=0.25), [x], {}, training=False)
    assert np.array_equal(out, x) and aux == {}


def test_dropout_needs_a_generator_when_training():
    with pytest.raises(ValueError, match="random generator"):
        run_forward(registry.OPS["dropout"], {}, [np.ones(3)], {})


def test_batchnorm_uses_stored_statistics_at_inference():
    op = registry.OPS["batchnorm"]
    x = np.arange(8.0).reshape(4, 2)
    params = {"mean": np.array([1.0, 2.0]), "var": np.array([3.0, 8.0])}
    out, aux = run_forward(op, dict(eps=1.0), [x], params, training=False)
    assert np.allclose(out, (x - params["mean"]) / np.sqrt(params["var"] + 1.0))
    assert aux == {}


def _caffe_pool(x, kernel, stride, pad, out_hw, mode):
    """Caffe's PoolingLayer::Forward_cpu loops, written out literally."""
    n, c, h, w = x.shape
    out = np.zeros((n, c) + tuple(out_hw))
    for ph in range(out_hw[0]):
        for pw in range(out_hw[1]):
            hstart, wstart = ph * stride[0] - pad[0], pw * stride[1] - pad[1]
            if mode == "max":
                hend, wend = min(hstart + kernel[0], h), min(wstart + kernel[1], w)
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                out[:, :, ph, pw] = x[:, :, hstart:hend, wstart:wend].max(axis=(2, 3))
            else:
                hend = min(hstart + kernel[0], h + pad[0])
                wend = min(wstart + kernel[1], w + pad[1])
                size = (hend - hstart) * (wend - wstart)
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                hend, wend = min(hend, h), min(wend, w)
                out[:, :, ph, pw] = x[:, :, hstart:hend, wstart:wend].sum(axis=(2, 3)) / size
    return out


@pytest.mark.parametrize("name,mode", [("maxpool", "max"), ("avgpool", "ave")])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_pooling_matches_caffe_loops(name, mode, data):
    op = registry.OPS[name]
    case = draw_case(data, name)
    if name == "avgpool":
        case.attrs["count_pad"] = True   # Caffe's divisor; the other mode is torch's below
    x = case.inputs[0] - 10.0  # all negative: a padding zero would win a wrong max
    ctx = make_ctx(op, case.attrs, [x])
    out, _ = run_forward(op, case.attrs, [x], {})
    kernel = case.attrs["kernel"]
    stride = case.attrs["stride"] or kernel
    expected = _caffe_pool(x, kernel, stride, case.attrs["pad"], ctx.out.shape[2:], mode)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(case=lrn_within_case())
def test_lrn_within_channel_is_caffes_pooling_pipeline(case):
    """Caffe builds WITHIN_CHANNEL LRN from layers: x^2, average pooling (size, stride 1,
    pad (size - 1) / 2), Power(scale alpha, shift 1, power -beta), and a product with x."""
    a, x = case.attrs, case.inputs[0]
    pad = (a["size"] - 1) // 2
    pooled = _caffe_pool(x * x, (a["size"],) * 2, (1, 1), (pad, pad), x.shape[2:], "ave")
    want = x * (1 + a["alpha"] * pooled) ** -a["beta"]
    got, _ = run_forward(registry.OPS["lrn_within_channel"], a, [x], {})
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# ---- forwards against PyTorch --------------------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    """Skips only the tests that use it: everything above needs NumPy alone."""
    return pytest.importorskip("torch")


def _t(torch, a):
    return torch.from_numpy(np.ascontiguousarray(a))


def _translation(name: str, fn=None):
    """The row's torch translation of op `name` (or `fn`, the benchmark peer's) on a case:
    the attributes with their defaults; the parameters copied, since a batchnorm's
    translation updates its running statistics in place."""
    def run(torch, case):
        attrs = dict(full_attrs(registry.OPS[name], case.attrs))
        inputs = [_t(torch, x) for x in case.inputs]
        params = {k: _t(torch, v.copy()) for k, v in case.params.items()}
        if fn is not None:
            return fn(attrs, inputs, params)
        return ROWS[name].torch(attrs, inputs, params, True)
    return run


# key: op, or op-label of one of its row's forward checks; op-peer for the benchmark's peer
TORCH = {}
for _name, _row in ROWS.items():
    for _label, _cases in _row.forward_checks().items():
        TORCH[f"{_name}-{_label}" if _label else _name] = (_cases, _translation(_name))
    if _row.peer is not None:
        TORCH[f"{_name}-peer"] = (_row.cases, _translation(_name, _row.peer))


@pytest.mark.parametrize("key", sorted(TORCH))
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_forward_matches_torch(torch, key, data):
    name = key.split("-")[0]
    strategy, run_torch = TORCH[key]
    case = valid(name, data.draw(strategy))
    out, _ = run_forward(registry.OPS[name], case.attrs, case.inputs, case.params,
                         training=True, rng=np.random.default_rng(0))
    with torch.no_grad():
        expected = run_torch(torch, case).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-10)



def test_interp_aligns_corners_like_caffe():
    # caffe_cpu_interp2: output i samples input i * (in - 1) / (out - 1)
    x = np.arange(3.0).reshape(1, 1, 1, 3)
    out, _ = run_forward(registry.OPS["interp"], dict(height=1, width=5), [x], {})
    np.testing.assert_allclose(out.ravel(), [0, 0.5, 1, 1.5, 2])


def _caffe_roi_pool(x, rois, pooled_h, pooled_w, scale):
    """ROIPoolingLayer::Forward_cpu of Fast R-CNN, transcribed loop for loop."""
    n, c, h, w = x.shape
    top = np.zeros((len(rois), c, pooled_h, pooled_w))
    for r, roi in enumerate(rois):
        b = int(roi[0])
        start_w, start_h, end_w, end_h = (int(np.sign(v * scale) * np.floor(abs(v * scale)
                                                                           + 0.5))
                                          for v in roi[1:])
        bin_h = max(end_h - start_h + 1, 1) / pooled_h
        bin_w = max(end_w - start_w + 1, 1) / pooled_w
        for ch in range(c):
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    hstart = min(max(int(np.floor(ph * bin_h)) + start_h, 0), h)
                    hend = min(max(int(np.ceil((ph + 1) * bin_h)) + start_h, 0), h)
                    wstart = min(max(int(np.floor(pw * bin_w)) + start_w, 0), w)
                    wend = min(max(int(np.ceil((pw + 1) * bin_w)) + start_w, 0), w)
                    if hend <= hstart or wend <= wstart:
                        continue
                    best = -np.inf
                    for yy in range(hstart, hend):
                        for xx in range(wstart, wend):
                            best = max(best, x[b, ch, yy, xx])
                    top[r, ch, ph, pw] = best
    return top


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_roi_pool_matches_fast_rcnns_loops(data):
    case = draw_case(data, "roi_pool")
    a = case.attrs
    out, _ = run_forward(registry.OPS["roi_pool"], a, case.inputs, {})
    want = _caffe_roi_pool(*case.inputs, a["pooled_h"], a["pooled_w"], a["spatial_scale"])
    np.testing.assert_array_equal(out, want)


def test_normalize_divides_by_the_l2_norm_at_each_position():
    x = np.array([3.0, 4.0]).reshape(1, 2, 1)
    attrs = dict(across_spatial=False, channel_shared=True, eps=0.0)
    out, aux = run_forward(registry.OPS["normalize"], attrs, [x], {"weight": np.array([2.0])})
    np.testing.assert_allclose(out.ravel(), [1.2, 1.6])
    np.testing.assert_allclose(aux["norm"].ravel(), [5.0])


def test_maxpool_mask_is_maxpools_argmax_and_max_unpool_puts_each_max_back():
    """SegNet's pool -> upsample pair: every window's max returns to where it was, every
    other cell is zero; overlapping windows' shared winner is counted once."""
    x = np.array([[[[1.0, 5.0, 2.0, 0.0],
                    [3.0, 4.0, 7.0, 6.0],
                    [9.0, 8.0, 0.5, 0.25],
                    [2.0, 1.0, 3.0, 4.0]]]])
    attrs = dict(kernel=2, stride=2)
    pooled, aux = run_forward(registry.OPS["maxpool"], attrs, [x], {})
    mask, _ = run_forward(registry.OPS["maxpool_mask"], attrs, [x], {})
    assert mask.dtype == x.dtype and np.array_equal(mask, aux["argmax"])
    assert mask[0, 0].tolist() == [[1.0, 6.0], [8.0, 15.0]]
    up, _ = run_forward(registry.OPS["max_unpool"], {}, [pooled, mask], {})
    assert np.array_equal(up, np.where(x == np.kron(pooled, np.ones((2, 2))), x, 0.0))


def test_class_weights_scale_each_term_but_not_the_count():
    """SegNet's weight_by_label_freqs: -sum w[label] log p[label] / (counted positions)."""
    op = registry.OPS["softmax_cross_entropy"]
    logits = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, -1.0]])
    label = np.array([0, 1, -1])
    loss, _ = run_forward(op, dict(class_weights=(0.5, 3.0)), [logits, label], {})
    assert np.isclose(loss, (0.5 + 3.0) * np.log(2.0) / 2)
    plain, _ = run_forward(op, {}, [logits, label], {})
    assert np.isclose(plain, np.log(2.0))
