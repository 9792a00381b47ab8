"""Training runs against PyTorch (tests/torch_oracle.py), for every example net and freezing
scenario, the stop-gradient and shared-weight nets among them, and for two nets of our own
that cover every other op and the decay-only updates.

For each case both start from the same parameters and see the same batches:

* the gradients of the first step agree to 1e-4 relative (||a - b|| / ||b||). bwplan's
  `.grads[p]` is the raw gradient summed over the uses of p whose gradient is computed,
  which are the uses with lr multiplier > 0 that reach a loss; the oracle records each such
  use's raw gradient in a hook, and the comparison is with their sum. The set of parameters
  with a gradient must agree too (a frozen or decay-only parameter has none);
* the loss (and every loss term and metric) of each of 3 steps of SGD with momentum and
  weight decay agrees (from the second step on, the momentum term takes part);
* after the 3 steps every parameter that trains agrees to 1e-4 relative, in float32, and
  so do the running statistics of a batchnorm that uses batch statistics; every parameter
  that must not change (frozen, or statistics read in global mode) is bit-identical to its
  initial value.

The oracle runs in float64. Before each step bwplan's own forward values are handed to it,
and it follows them only at kink decisions that float32 cannot settle (a pre-activation
within 1e-5 of its tensor's scale from 0, two nearly equal maxima): without this, one ReLU
whose input rounds to the other side of 0 moves a gradient by ~1e-3 of its norm, which
happened in about half of the seeds tried. Over 10 seeds of every case below the largest
error left was 1e-5.

The oracle's own pooling and LRN are checked first against direct transcriptions of Caffe's
loops, since every comparison below trusts them.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch loads: see torch_oracle
torch = pytest.importorskip("torch")

import bwplan  # noqa: E402
from bwplan import ops as registry  # noqa: E402
from test_pruning_equivalence import (BATCH, CASES, LR, MOMENTUM, NETS, TARGETS,  # noqa: E402
                                      WEIGHT_DECAY, batch_size, compile_case, make_batch,
                                      middle_layer, never_change, require_target,
                                      scenario_rules)
from torch_oracle import (DECIDING_OPS, OPS, TorchNet, avgpool, caffe_pool_len,  # noqa: E402
                          lrn, maxpool)

STEPS = 3
RTOL = 1e-4
# A tensor whose exact value is 0 or nearly (the gradient of a bias that a batch
# normalisation follows, a zero-initialised bias that then gets no gradient) holds rounding
# noise on both sides; its error is measured against this fraction of the norm of every
# gradient of the step, or of every parameter's whole change, taken together.
FLOOR = 1e-6


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """torch's worker threads and NumPy's BLAS threads spin against each other on a small
    machine (a 20 ms step takes 1.5 s); one torch thread is plenty for these sizes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def norm(arrays) -> float:
    """The Euclidean norm of several arrays taken together."""
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays))


def assert_close(what: str, got: np.ndarray, want: np.ndarray, rtol: float = RTOL,
                 atol: float = 0.0) -> None:
    """||got - want|| <= rtol * ||want|| + atol, showing the worst elements otherwise."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    err = float(np.linalg.norm((got - want).ravel()))
    bound = rtol * float(np.linalg.norm(want.ravel())) + atol
    if not err <= bound:
        diff = np.abs(got - want).ravel()
        worst = np.argsort(diff)[::-1][:5]
        rows = ", ".join(f"[{np.unravel_index(i, want.shape)}] {got.ravel()[i]:.7g} vs "
                         f"{want.ravel()[i]:.7g}" for i in worst)
        pytest.fail(f"{what}: ||bwplan - torch|| = {err:.3g} > {bound:.3g}; worst: {rows}")


def assert_scalar_close(what: str, got: float, want: float) -> None:
    assert abs(got - want) <= RTOL * abs(want) + 1e-6, f"{what}: bwplan {got} vs torch {want}"


# ---- the oracle's own checks -------------------------------------------------------------
def caffe_pool_loops(x: np.ndarray, k: int, s: int, p: int, ceil: bool, mode: str):
    """Caffe's PoolingLayer::Forward_cpu, loop for loop (square windows)."""
    n, c, h, w = x.shape
    ho = caffe_pool_len(h, k, s, p, ceil, p > 0)
    wo = caffe_pool_len(w, k, s, p, ceil, p > 0)
    out = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            hs, ws = i * s - p, j * s - p
            he, we = min(hs + k, h + p), min(ws + k, w + p)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            window = x[:, :, hs:he, ws:we]
            if mode == "max":
                out[:, :, i, j] = window.max(axis=(2, 3))
            else:
                out[:, :, i, j] = window.sum(axis=(2, 3)) / size
    return out


GEOMETRIES = [  # (size, kernel, stride, pad, ceil)
    (5, 2, 2, 1, True),     # the last window would start in the padding: dropped
    (5, 2, 2, 0, True),     # the last window overhangs: an average divides by 1
    (6, 3, 2, 1, True),     # the last window is clipped at size + pad
    (7, 3, 2, 1, False),
    (8, 3, 1, 1, True),
    (9, 3, 2, 2, True),     # pad beyond kernel // 2, which torch's own padding refuses
    (4, 4, 1, 0, False),
]


@pytest.mark.parametrize("size,k,s,p,ceil", GEOMETRIES)
def test_oracle_pooling_is_caffes(size, k, s, p, ceil):
    x = np.random.default_rng(size * 7 + k).standard_normal((2, 3, size, size))
    attrs = {"kernel": k, "stride": s, "pad": p, "ceil": ceil}
    for fn, mode in ((maxpool, "max"), (avgpool, "ave")):
        got = fn(attrs, [torch.from_numpy(x)], {}, True).numpy()
        np.testing.assert_allclose(got, caffe_pool_loops(x, k, s, p, ceil, mode), rtol=1e-12)
        # and bwplan agrees on the output size
        net = bwplan.load_bw_text(f"input x : f64[2, 3, {size}, {size}]\n"
                                  f"y = {mode.replace('ave', 'avg')}pool(x, kernel={k}, "
                                  f"stride={s}, pad={p}, ceil={str(ceil).lower()})\n")
        assert net.layer("y").out.shape == got.shape


def test_oracle_lrn_is_caffes():
    x = np.random.default_rng(0).standard_normal((2, 7, 3, 3))
    size, alpha, beta, k = 5, 0.3, 0.75, 2.0
    want = np.empty_like(x)
    for c in range(7):   # Caffe ACROSS_CHANNELS: scale = k + alpha/size * window sum of x^2
        lo, hi = max(0, c - size // 2), min(7, c + size // 2 + 1)
        scale = k + alpha / size * (x[:, lo:hi] ** 2).sum(axis=1)
        want[:, c] = x[:, c] * scale ** -beta
    attrs = {"size": size, "alpha": alpha, "beta": beta, "k": k}
    got = lrn(attrs, [torch.from_numpy(x)], {}, True).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_every_op_has_a_translation_and_is_trained_here():
    assert set(registry.OPS) <= set(OPS), "ops the oracle cannot translate"
    used = {l.op for source in NETS.values() for l in bwplan.load_bw_text(source).layers}
    assert set(registry.OPS) <= used, f"ops no net here trains: {set(registry.OPS) - used}"


# ---- training against torch --------------------------------------------------------------
def bwplan_values(compiled, batch) -> dict[str, np.ndarray]:
    """The batch and bwplan's own forward values of every tensor a kink decision reads, in
    training mode: the oracle's hints. A training forward may update running statistics;
    they are put back, so that the step itself sees what it would have seen."""
    net = compiled.net
    names = {e.src for l in net.layers if l.op in DECIDING_OPS for e in l.inputs} - set(batch)
    statistics = {k: v.copy() for k, v in compiled.params.items() if not net.params[k].learnable}
    values = compiled.forward(batch, sorted(names), training=True)
    for k, v in statistics.items():
        compiled.params[k][...] = v
    return {**batch, **values}


def _trains(net, name: str) -> bool:
    return net.params[name].learnable and any(u.lr_mult > 0 for _, u in net.uses_of(name))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name,scenario", CASES)
def test_training_matches_torch(name, scenario, target):
    """Three steps from the same start on the same batches: losses, first gradients, final
    parameters and running statistics as the module docstring says."""
    compiled = compile_case(name, scenario, target)
    net = compiled.net
    if scenario == "middle":   # the scenario's premise: the frozen layer passes gradients on
        frozen = middle_layer(bwplan.load_bw_text(NETS[name]))
        assert any(d.needed for d in compiled.plan.layer(frozen).dx)
    initial = {k: v.copy() for k, v in compiled.params.items()}
    oracle = TorchNet(net, compiled.params)
    oracle.set_optimizer(LR, MOMENTUM, WEIGHT_DECAY)
    rng = np.random.default_rng(11)
    for step in range(STEPS):
        batch = make_batch(net, batch_size(name), rng)
        hints = bwplan_values(compiled, batch)
        got, want = compiled.run_step(batch), oracle.step(batch, hints)
        assert_scalar_close(f"step {step} loss", got.loss, want.loss)
        for term, value in got.losses.items():
            assert_scalar_close(f"step {step} {term}", value, want.losses[term])
        for metric, value in got.metrics.items():
            assert_scalar_close(f"step {step} {metric}", value, want.metrics[metric])
        if step == 0:
            assert sorted(compiled.grads) == sorted(want.raw_grads)
            floor = FLOOR * norm(want.raw_grads.values())
            for p, g in compiled.grads.items():
                assert_close(f"gradient of {p}", g, want.raw_grads[p], atol=floor)
    final = oracle.numpy_params()
    trained = [p for p in net.params if _trains(net, p)]
    floor = FLOOR * norm(final[p] - initial[p] for p in trained)
    for p in trained:
        assert_close(f"{p} after {STEPS} steps", compiled.params[p], final[p], atol=floor)
    fixed = never_change(net)
    for p in net.params:
        if not net.params[p].learnable and p not in fixed:
            assert_close(f"running statistic {p}", compiled.params[p], final[p])
    for p in fixed:
        assert np.array_equal(compiled.params[p], initial[p]), f"{p} changed"
        assert np.array_equal(final[p], initial[p]), f"the oracle changed {p}"


@pytest.mark.parametrize("target", TARGETS)
def test_decay_only_parameters_shrink_as_in_torch(target):
    """A trainable parameter that gets no gradient still decays (and one with decay 0 does
    not move): decay_only's h and aux against torch given a zero gradient."""
    compiled = compile_case("decay_only", "file", target)
    kinds = {u.param: u.kind for u in compiled.plan.updates}
    assert kinds["h.weight"] == kinds["aux.weight"] == "decay_only"
    assert kinds["side.weight"] == "none"
    initial = {k: v.copy() for k, v in compiled.params.items()}
    oracle = TorchNet(compiled.net, compiled.params)
    oracle.set_optimizer(LR, MOMENTUM, WEIGHT_DECAY)
    rng = np.random.default_rng(5)
    for _ in range(STEPS):
        batch = make_batch(compiled.net, BATCH, rng)
        compiled.run_step(batch)
        oracle.step(batch)
    final = oracle.numpy_params()
    # with no gradient, momentum SGD shrinks w by a fixed factor each step
    shrink = 1.0
    v = 0.0
    for _ in range(STEPS):
        v = MOMENTUM * v + LR * WEIGHT_DECAY * shrink
        shrink -= v
    for p in ("h.weight", "aux.weight"):
        assert_close(p, compiled.params[p], final[p])
        assert_close(p, compiled.params[p], initial[p] * shrink, rtol=1e-6)
    assert np.array_equal(compiled.params["side.weight"], initial["side.weight"])


@pytest.mark.parametrize("target", TARGETS)
def test_batchnorm_running_statistics_match_torch(target):
    """After training steps with batch statistics, the running mean and (unbiased) variance
    follow running = momentum * running + (1 - momentum) * batch, as torch's do."""
    compiled = compile_case("ops_dense", "all", target)
    oracle = TorchNet(compiled.net, compiled.params)
    oracle.set_optimizer(LR, MOMENTUM, WEIGHT_DECAY)
    rng = np.random.default_rng(2)
    for _ in range(3):
        batch = make_batch(compiled.net, BATCH, rng)
        hints = bwplan_values(compiled, batch)
        compiled.run_step(batch)
        oracle.step(batch, hints)
    final = oracle.numpy_params()
    statistics = [p for p, param in compiled.net.params.items() if not param.learnable]
    assert len(statistics) == 4     # the mean and variance of a 4-D and a 2-D batchnorm
    for p in statistics:
        assert_close(p, compiled.params[p], final[p])


WEIGHTED_LAYER = """\
input x : f32[4, 6]
input y : i64[4]
h    = linear(x, out=5)
pen  = mul(h, h) weight=0.01
out  = linear(h, out=3)
loss = softmax_cross_entropy(out, y)
"""


@pytest.mark.parametrize("target", TARGETS)
def test_weighted_layer_output_joins_the_objective(target):
    """A layer that is not a loss but carries a weight adds weight * sum(output)."""
    require_target(target, bwplan.load_bw_text(WEIGHTED_LAYER))
    compiled = bwplan.compile(WEIGHTED_LAYER, target=target)
    compiled.set_optimizer(LR, MOMENTUM, WEIGHT_DECAY)
    oracle = TorchNet(compiled.net, compiled.params)
    oracle.set_optimizer(LR, MOMENTUM, WEIGHT_DECAY)
    batch = make_batch(compiled.net, 4, np.random.default_rng(0))
    got, want = compiled.run_step(batch), oracle.step(batch)
    assert_scalar_close("loss", got.loss, want.loss)
    assert_scalar_close("pen", got.losses["pen"], want.losses["pen"])
    for p, g in compiled.grads.items():
        assert_close(f"gradient of {p}", g, want.raw_grads[p])


def test_scenarios_cover_the_settings_asked_for():
    """Shared weights with per-use multipliers, stop-gradient edges, a frozen middle layer
    and decay-only parameters are all among the cases."""
    names = {n for n, _ in CASES}
    assert {"siamese_mlp", "siamese_per_branch_lr", "inception_branch",
            "seed_inception_branch", "decay_only", "ops_dense"} <= names
    per_branch = bwplan.load_bw_text(NETS["siamese_per_branch_lr"])
    assert {u.lr_mult for _, u in per_branch.uses_of("tower_w")} == {1.0, 0.1}
    assert any(e.stop_gradient for l in bwplan.load_bw_text(NETS["inception_branch"]).layers
               for e in l.inputs)
    assert all(scenario_rules(bwplan.load_bw_text(NETS[n]), "middle") is not None
               for n in NETS if n != "decay_only")
