"""Pruning changes what runs, never what is learnt.

(a) A pruned run and a `prune=False` run from the same seed and batches leave the same
    parameters, for every example and freezing scenario.
(b) The step statistics prove the skipped work was skipped: with a frozen backbone no dW of
    a frozen layer and no dX into the frozen prefix is launched (the unpruned run launches
    them), and what each run launches, and its FLOPs, is exactly what the plan says.
(c) The measured peak of live bytes stays within 10% of the plan's static estimate.

The first part of this file holds what test_train_vs_torch.py shares: the nets (every
example; the nets generated from the op rows, tests/op_cases/nets.py, in which every op
trains; and one of our own for the decay-only updates), the freezing scenarios, the
batches, and the check that a target can run a net.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import bwplan
from bwplan import ops as registry
from bwplan.errors import InternalError
from bwplan.ops.needs import Component
from bwplan.runtime.backend import BACKENDS, numpy_dtype
from op_cases.loss import prior_grid
from op_cases.nets import fixed_batches, generated_nets

# ---- nets -------------------------------------------------------------------------------
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# Trainable parameters that get no gradient: h (its only consumer stops the gradient) and
# aux (its loss has weight 0) decay only; side has decay 0 as well, so it never changes.
DECAY_ONLY = """\
input x : f32[4, 6]
input y : i64[4]

h    = linear(x, out=5)
r    = relu(h)
side = linear(x, out=5) decay=0
aux  = linear(x, out=3)
out  = linear(stop_gradient(r), out=3)
loss = softmax_cross_entropy(out, y)
l0   = softmax_cross_entropy(aux, y) weight=0
acc  = accuracy(side, y)
"""

NETS: dict[str, str] = {p.stem: p.read_text() for p in sorted(EXAMPLES.glob("*.bw"))}
# The image nets on images a quarter of the size (seed_inception_branch's last pool window
# shrunk to match): the same layers, shapes but for H and W, and decisions; the full sizes
# prove nothing more here and cost most of the time of this file and test_train_vs_torch.
SMALLER_IMAGES = {"seed_inception_branch": [("3, 224, 224]", "3, 56, 56]"),
                                            ("kernel=28,", "kernel=7,")],
                  "inception_branch": [("3, 64, 64]", "3, 32, 32]")],
                  **{name: [("3, 32, 32]", "3, 16, 16]")] for name in
                     ("cnn_small", "frozen_backbone", "middle_frozen", "resnet_mini")}}
for _name, _edits in SMALLER_IMAGES.items():
    for _full, _small in _edits:
        assert _full in NETS[_name], (_name, _full)
        NETS[_name] = NETS[_name].replace(_full, _small)
NETS["decay_only"] = DECAY_ONLY
# every op, in nets generated from its row (tests/op_cases)
NETS.update(generated_nets())

# Small batches, through the automatic re-planning for another batch size (an odd one for
# ops_dense); one sample of seed_inception_branch keeps the reference target quick.
BATCH = 2
# A net whose inputs fix the batch (SSD's priors and boxes) runs at that batch.
BATCHES = {"seed_inception_branch": 1, "ops_dense": 3, **fixed_batches()}


def batch_size(name: str) -> int:
    return BATCHES.get(name, BATCH)


LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-3
TARGETS = ("reference", "cpu")


def at_batch(source: str, n: int) -> str:
    """The same .bw source with every input's leading dimension set to n, so that the
    compiled net's own plan describes a run on a batch of n."""
    return re.sub(r"^(\s*input\s+\S+\s*:\s*\w+\[)\s*\d+", lambda m: m.group(1) + str(n),
                  source, flags=re.M)


# ---- freezing scenarios -----------------------------------------------------------------
SCENARIOS = ("file", "all", "head", "top3", "middle")


def _glob(name: str) -> str:
    """A glob matching exactly this layer name."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def trainable_layers(net) -> list[str]:
    """Layers holding a learnable parameter (not only statistics), in topological order."""
    return [l.name for l in net.layers if any(net.params[u.param].learnable for u in l.params)]


def middle_layer(net) -> str | None:
    """A parameterised layer with a parameterised layer below it along edges that carry
    gradients, the middle one of those: frozen, the gradient must flow through it."""
    trainable = set(trainable_layers(net))
    below: dict[str, bool] = {i.name: False for i in net.inputs}
    candidates = []
    for layer in net.layers:
        below[layer.name] = any(not e.stop_gradient and (below[e.src] or e.src in trainable)
                                for e in layer.inputs)
        if layer.name in trainable and below[layer.name]:
            candidates.append(layer.name)
    return candidates[(len(candidates) - 1) // 2] if candidates else None


def scenario_rules(net, scenario: str) -> list[tuple[str, str]] | None:
    """The freeze/unfreeze rules of a scenario, None where it does not apply:
    file: the file's own settings; all: everything trains; head: only the last linear
    trains; top3: only the last three parameterised layers train; middle: everything trains
    but one middle layer, through which the gradient still flows."""
    if scenario == "file":
        return []
    if scenario == "all":
        return [("unfreeze", "*")]
    if scenario == "head":
        linears = [l.name for l in net.layers if l.op == "linear"]
        return [("freeze", "*"), ("unfreeze", _glob(linears[-1]))] if linears else None
    if scenario == "top3":
        return [("freeze", "*")] + [("unfreeze", _glob(n)) for n in trainable_layers(net)[-3:]]
    middle = middle_layer(net)
    return [("unfreeze", "*"), ("freeze", _glob(middle))] if middle else None


def _signature(net) -> tuple:
    return tuple((l.name, repr(sorted(l.attrs.items())), tuple(u.lr_mult for u in l.params))
                 for l in net.layers)


def _cases() -> list[tuple[str, str]]:
    """(net, scenario) pairs; a scenario that freezes exactly what an earlier one of the
    same net does is left out (for most nets `file` and `all` coincide)."""
    cases = []
    for name, source in NETS.items():
        net = bwplan.load_bw_text(source, name)
        seen = set()
        for scenario in SCENARIOS:
            rules = scenario_rules(net, scenario)
            if rules is None:
                continue
            signature = _signature(bwplan.apply_policy(net, rules))
            if signature not in seen:
                seen.add(signature)
                cases.append((name, scenario))
    return cases


CASES = _cases()


def compile_case(name: str, scenario: str, target: str, prune: bool = True):
    """The net under the scenario's rules, seeded, with the optimizer settings used here;
    skips when the target cannot run it."""
    net = bwplan.load_bw_text(NETS[name], name)
    require_target(target, net)
    rules = scenario_rules(net, scenario)
    compiled = bwplan.compile(NETS[name], target=target, rules=rules, prune=prune, seed=0)
    compiled.set_optimizer(LR, MOMENTUM, WEIGHT_DECAY)
    return compiled


# ---- targets ----------------------------------------------------------------------------
def require_target(target: str, net) -> None:
    """Skip unless `target` has a kernel for every component of every op in `net` (call
    it before compiling for the target, which fails without its kernels)."""
    if target == "reference":
        return
    try:
        backend = BACKENDS[target]()
    except ImportError as err:
        pytest.skip(f"the {target} target cannot be imported: {err}")
    for op_name in sorted({l.op for l in net.layers}):
        op = registry.OPS[op_name]
        components = ["fwd"] + [("dx:" if r.wrt in op.port_names else "dw:") + r.wrt
                                for r in op.grads]
        for component in components:
            try:
                backend.kernel(op_name, Component.from_key(component))
            except (ImportError, KeyError, LookupError, NotImplementedError,
                    InternalError) as err:
                pytest.skip(f"the {target} target lacks {op_name} {component}: {err}")


# ---- batches ----------------------------------------------------------------------------
def _multibox_input(net, readers, rng: np.random.Generator, inp) -> np.ndarray:
    """SSD's priors (a grid of boxes 0.4 wide, one per position) or ground truth (boxes
    of image 0, labels other than the background)."""
    layer, index = next((l, i) for l, i in readers if l.op == "multibox_loss")
    if index == 2:
        out = prior_grid(int(round(np.sqrt(inp.type.shape[2] // 4))))
    else:
        g = inp.type.shape[2]
        lo = rng.uniform(0.0, 0.5, (g, 2))
        labels = rng.integers(1, layer.attrs["num_classes"], g)
        out = np.column_stack([np.zeros(g), labels, np.arange(g), lo,
                               np.minimum(lo + rng.uniform(0.2, 0.5, (g, 2)), 1.0),
                               np.zeros(g)])
    return out.reshape(inp.type.shape).astype(numpy_dtype(inp.type.dtype))


def make_batch(net, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Standard normal floats; labels drawn from the classes of the logits they label (a
    loss's ignore_label, when it is one of them, is the first sample's); contrastive flags
    with both kinds of pair."""
    batch = {}
    for inp in net.inputs:
        shape = (n,) + tuple(inp.type.shape[1:])
        readers = [(net.layer(e.dst), e.index) for e in net.consumers(inp.name)]
        pooled = [layer for layer, i in readers if layer.op == "roi_pool" and i == 1]
        if pooled:
            # valid regions: a sample of the batch, corners inside the scaled image
            _, _, h, w = net.tensor_type(pooled[0].inputs[0].src).shape
            size = np.array([w, h, w, h]) / pooled[0].attrs["spatial_scale"]
            corners = np.sort(rng.uniform(0, 1, (n, 2, 2)), axis=1).reshape(n, 4)
            rois = np.column_stack([np.arange(n), corners * size])   # x1, y1, x2, y2
            batch[inp.name] = rois.astype(numpy_dtype(inp.type.dtype))
        elif any(layer.op == "multibox_loss" and i >= 2 for layer, i in readers):
            batch[inp.name] = _multibox_input(net, readers, rng, inp)
        elif any(layer.op == "contrastive_loss" and i == 2 for layer, i in readers):
            flags = (np.arange(n) % 2 == 0).reshape(shape)
            batch[inp.name] = flags.astype(numpy_dtype(inp.type.dtype))
        elif not inp.type.is_float:
            logits = [net.tensor_type(layer.inputs[0].src) for layer, i in readers if i == 1]
            classes = min((t.shape[1] for t in logits), default=2)
            labels = rng.integers(0, classes, size=shape)
            for layer, _ in readers:
                ignore = layer.attrs.get("ignore_label")
                if isinstance(ignore, tuple):       # seg_accuracy's ignore labels
                    ignore = ignore[0] if ignore else None
                if ignore is not None and 0 <= ignore < classes:
                    labels.reshape(n, -1)[0] = ignore
            batch[inp.name] = labels.astype(numpy_dtype(inp.type.dtype))
        else:
            batch[inp.name] = rng.standard_normal(shape).astype(
                numpy_dtype(inp.type.dtype))
    return batch


def never_change(net) -> list[str]:
    """Parameters a step must leave bit-identical: learnable ones whose every use has lr
    multiplier 0, and running statistics only layers in global-statistics mode read."""
    out = []
    for name, param in net.params.items():
        uses = net.uses_of(name)
        if param.learnable:
            if all(u.lr_mult == 0 for _, u in uses):
                out.append(name)
        elif all(net.layer(layer).attrs.get("global_stats", True) for layer, _ in uses):
            out.append(name)
    return out


# ---- (a) same parameters, pruned or not --------------------------------------------------
STEPS = 3
# Pruning changes which components run, never how a kept component computes: the reference
# target must agree bit for bit. Compiled kernels are held to a tight relative tolerance in
# case a kernel's reduction order depends on its threads.
EXACT = {"reference": 0.0, "cpu": 1e-6}


def _agree(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    if tol == 0:
        return np.array_equal(a, b)
    return float(np.linalg.norm((a - b).ravel())) <= tol * float(np.linalg.norm(b.ravel()))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name,scenario", CASES)
def test_pruning_changes_no_parameter(name, scenario, target):
    pruned = compile_case(name, scenario, target, prune=True)
    full = compile_case(name, scenario, target, prune=False)
    initial = {k: v.copy() for k, v in pruned.params.items()}
    for k, v in full.params.items():
        assert np.array_equal(v, initial[k]), f"{k}: the same seed gave other initial values"
    rng = np.random.default_rng(7)
    for step in range(STEPS):
        batch = make_batch(pruned.net, batch_size(name), rng)
        a, b = pruned.run_step(batch), full.run_step(batch)
        assert a.stats.launched["dx"] + a.stats.launched["dw"] <= \
            b.stats.launched["dx"] + b.stats.launched["dw"]
        assert (a.loss == b.loss) if EXACT[target] == 0 else \
            abs(a.loss - b.loss) <= EXACT[target] * abs(b.loss) + 1e-7, f"step {step}"
    tol = EXACT[target]
    differ = [k for k in initial if not _agree(pruned.params[k], full.params[k], tol)]
    assert not differ, f"pruned and unpruned runs disagree on {differ}"
    for k in never_change(pruned.net):
        assert np.array_equal(pruned.params[k], initial[k]), f"{k} changed (pruned run)"
        assert np.array_equal(full.params[k], initial[k]), f"{k} changed (prune=False run)"


# ---- (b) the skipped kernels are not launched, and the figures match the plan ------------
def _dx_sources(net, layer_name: str, component: str) -> set[str]:
    """The tensors a dX kernel of `layer` writes into (every input bound to its port)."""
    layer = net.layer(layer_name)
    op = registry.OPS[layer.op]
    port = component.split(":", 1)[1]
    return {e.src for e in layer.inputs if op.port_for(e.index).name == port}


def _one_step(source: str, target: str, prune: bool, rules=(), n: int | None = None):
    """One training step on a batch of n (default: the declared batch size)."""
    require_target(target, bwplan.load_bw_text(source))
    compiled = bwplan.compile(source, target=target, rules=list(rules), prune=prune)
    compiled.set_optimizer(LR, MOMENTUM, WEIGHT_DECAY)
    n = compiled.net.inputs[0].type.shape[0] if n is None else n
    return compiled, compiled.run_step(make_batch(compiled.net, n, np.random.default_rng(3)))


@pytest.mark.parametrize("target", TARGETS)
def test_frozen_backbone_skips_its_backward(target):
    source = at_batch(NETS["frozen_backbone"], BATCH)
    pruned, a = _one_step(source, target, prune=True)
    full, b = _one_step(source, target, prune=False)
    net = pruned.net
    prefix = set(pruned.plan.prefix.layers)
    frozen = {l.name for l in net.layers
              if l.params and all(u.lr_mult == 0 for u in l.params)}
    assert frozen and frozen <= prefix

    def skipped_work(kernels):
        dw = [k for k in kernels if k[0] == "dw" and k[1] in frozen]
        dx = [k for k in kernels if k[0] == "dx" and (
            k[1] in prefix or _dx_sources(net, k[1], k[2]) & prefix)]
        return dw, dx

    dw, dx = skipped_work(a.stats.kernels)
    assert dw == [] and dx == [], f"pruned run launched {dw + dx}"
    # unpruned, every frozen parameter gets its dW and every gradient edge into or inside
    # the prefix its dX (none goes into the data input)
    dw, dx = skipped_work(b.stats.kernels)
    assert {(l, c) for _, l, c in dw} == {(l, f"dw:{u.slot}") for l in frozen
                                          for u in net.layer(l).params}
    into_prefix = {l.name for l in net.layers for e in l.inputs
                   if (l.name in prefix or e.src in prefix) and net.input(e.src) is None}
    assert {l for _, l, _ in dx} == into_prefix
    assert a.loss == b.loss


def _expected_kernels(plan, prune: bool) -> list[tuple[str, str]]:
    """(phase, layer) of every component the plan keeps (prune) or a fully trainable net
    would run, as a sorted multiset."""
    out = []
    for lp in plan.layers:
        if lp.forward.needed:
            out.append(("fwd", lp.name))
        dx = [d.needed for d in lp.dx] if prune else list(lp.full_dx)
        dw = [d.needed for d in lp.dw] if prune else list(lp.full_dw)
        out += [("dx", lp.name)] * sum(dx) + [("dw", lp.name)] * sum(dw)
    return sorted(out)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("prune", [True, False], ids=["pruned", "unpruned"])
@pytest.mark.parametrize("name,scenario", CASES)
def test_step_statistics_match_the_plan(name, scenario, prune, target):
    """Kernels, counts, FLOPs and peak memory of one step against the plan of the same
    batch size; a run re-planned automatically for that batch size does the same."""
    rules = scenario_rules(bwplan.load_bw_text(NETS[name], name), scenario)
    n = batch_size(name)
    compiled, result = _one_step(at_batch(NETS[name], n), target, prune, rules)
    plan, stats = compiled.plan, result.stats
    s = plan.summary
    assert sorted((p, l) for p, l, _ in stats.kernels) == _expected_kernels(plan, prune)
    assert stats.launched["dx"] == (s.planned_dx if prune else s.full_dx)
    assert stats.launched["dw"] == (s.planned_dw if prune else s.full_dw)
    bwd = s.planned_bwd_flops if prune else s.full_bwd_flops
    assert stats.flops["dx"] + stats.flops["dw"] == bwd
    assert stats.flops["fwd"] == sum(lp.fwd_flops for lp in plan.layers if lp.forward.needed)
    updated = [u for u in plan.updates if u.kind == "sgd" or (
        u.kind == "decay_only" and u.decay_lr_mult * u.decay_mult * WEIGHT_DECAY != 0)]
    assert stats.launched["update"] == len(updated)
    # (c) the measured peak of live bytes against the static estimate
    estimate = s.planned_peak_bytes if prune else s.full_peak_bytes
    assert stats.peak_bytes == estimate, (stats.peak_bytes, estimate)

    _, again = _one_step(NETS[name], target, prune, rules, n)
    assert again.stats.kernels == stats.kernels
    assert again.stats.flops == stats.flops
    assert again.stats.peak_bytes == stats.peak_bytes
