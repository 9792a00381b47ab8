"""SSD's MultiBoxLoss on the cuda target without a GPU: the lowering's own launches of a
tiny net's loss layer (its forward's six kernels, the seed, both dX with their scale
kernel), at the layout's addresses, run by tests/cuda_model.py's model of each kernel
(its block and thread structure where a tie depends on it), against the cpu target: the
same decisions (labels equal, codes equal), the loss and both gradients within 1e-6, and
the cpu target's weight gradients of the layers that feed loc and conf.

Ties are made on purpose: duplicated priors (equal overlaps: the lower prior is matched),
conf rows equal for every prior (equal mining scores: the lower priors are kept), and
more priors than a block has threads (the strided scans and the chunked compactions run
more than once).
"""
from __future__ import annotations

import numpy as np
import pytest

import bwplan
from bwplan.kernels.cpu import loss as cpu_loss
from bwplan.lower import cuda_launches as step_plan
from bwplan.lower.cuda_arena import plan_arena
from bwplan.kernels.cuda import limits
from bwplan.lower.program import aux as aux_id, grad, value
from bwplan.optim import SgdSettings
from bwplan.plan.components import op_ctx
from bwplan.runtime.backend import BACKENDS
from bwplan.runtime.executor import Executor
from cuda_model import ByteMemory, MultiboxModel
from op_cases.loss import prior_grid

NET = """\
input x : f32[{n}, 5]
input priors : f32[1, 2, {p4}]
input boxes : f32[1, 1, {g}, 8]
loc = linear(x, out={p4})
conf = linear(x, out={pc})
loss = multibox_loss(loc, conf, priors, boxes, num_classes={c}, match_type={match}, \
mining_type={mining}, normalization={norm}, loc_weight=2.0, use_difficult_gt=false)
"""


def _priors(side: int, duplicated: int) -> np.ndarray:
    """A side x side grid of priors, its first `duplicated` boxes repeated at the end."""
    grid = prior_grid(side).reshape(2, -1, 4)
    grid = np.concatenate([grid, grid[:, :duplicated]], axis=1)
    return grid.reshape(1, 2, -1).astype(np.float32)


def _boxes(n: int, c: int, rng) -> np.ndarray:
    rows = []
    for item in range(n):
        for _ in range(2):
            lo = rng.uniform(0.05, 0.5, 2)
            rows.append([item, rng.integers(1, c), 0, *lo, *(lo + rng.uniform(0.25, 0.45, 2)),
                         0])
    rows[-1][7] = 1                    # difficult: skipped (use_difficult_gt=false)
    rows.append([-1] * 8)              # padding
    return np.array(rows, np.float32).reshape(1, 1, -1, 8)


CASES = [  # (images, grid side, duplicated priors, classes, match, mining, norm, conf)
    (2, 3, 3, 3, "PER_PREDICTION", "MAX_NEGATIVE", "VALID", "random"),
    (2, 3, 3, 3, "BIPARTITE", "MAX_NEGATIVE", "FULL", "equal"),
    (1, 4, 0, 2, "PER_PREDICTION", "NONE", "BATCH_SIZE", "random"),
    (2, 33, 40, 3, "PER_PREDICTION", "MAX_NEGATIVE", "VALID", "equal"),   # P > 1024
    (1, 33, 40, 4, "BIPARTITE", "MAX_NEGATIVE", "VALID", "random"),
]


def multibox_net(n, side, dup, c, match, mining, norm, conf):
    """(the tiny net's text, a batch, its parameters) for one row of CASES; the tests on a
    GPU (test_cuda_gpu.py) run the same nets."""
    rng = np.random.default_rng(side + dup)
    priors = _priors(side, dup)
    p = priors.shape[2] // 4
    boxes = _boxes(n, c, rng)
    text = NET.format(n=n, p4=4 * p, pc=p * c, g=boxes.shape[2], c=c, match=match,
                      mining=mining, norm=norm)
    params = {k: v.copy() for k, v in bwplan.compile(text, target="cpu").params.items()}
    if conf == "equal":      # every prior scores its classes alike: the mining ties
        w = params["conf.weight"].reshape(p, c, 5)
        w[:] = w[:1]
        params["conf.bias"].reshape(p, c)[:] = params["conf.bias"].reshape(p, c)[:1]
    batch = {"x": rng.standard_normal((n, 5)).astype(np.float32), "priors": priors,
             "boxes": boxes}
    return text, batch, params


@pytest.mark.parametrize("n,side,dup,c,match,mining,norm,conf", CASES)
def test_the_device_model_decides_and_scores_as_the_cpu_target(n, side, dup, c, match,
                                                                mining, norm, conf):
    text, batch, params = multibox_net(n, side, dup, c, match, mining, norm, conf)
    priors, boxes = batch["priors"], batch["boxes"]
    p = priors.shape[2] // 4
    prog = bwplan.compile(text, target="cpu")
    program, net = prog.program, prog.net
    grads: dict = {}
    cpu = Executor(program, BACKENDS["cpu"]()).run(batch, params, grads, training=True,
                                                   capture=("loc", "conf"))

    # the cpu target's decisions and gradients at the same inputs
    layer = net.layer("loss")
    ctx = op_ctx(net, layer)
    inputs = [cpu.values["loc"], cpu.values["conf"], priors, boxes]
    out = np.zeros((), np.float32)
    aux = {"targets": np.zeros((n, p, 4), np.float32), "labels": np.zeros((n, p), np.float32)}
    cpu_loss.multibox_loss_fwd(ctx, inputs, {}, out, aux, True, None)
    assert (aux["labels"] >= 0).any() and (aux["labels"] == 0).any() == (mining != "NONE")
    saved = {"loc": inputs[0], "conf": inputs[1], **aux}
    seed = np.ones((), np.float32)
    want_dloc, want_dconf = np.empty_like(inputs[0]), np.empty_like(inputs[1])
    cpu_loss.multibox_loss_dx_loc(ctx, saved, seed, 0, want_dloc)
    cpu_loss.multibox_loss_dx_conf(ctx, saved, seed, 1, want_dconf)

    # the lowering's launches of the loss layer, run by the model
    sizes = {k: int(v.size) for k, v in params.items()}
    layout = step_plan.host_layout(program, sizes, plan_arena(program),
                                   limits.DEFAULT_SM_COUNT)
    s = SgdSettings()
    planned = step_plan.step_launches(program, layout, s,
                                      step_plan.segment_table(program, layout, s),
                                      training=True, backward=True)
    mem = ByteMemory()
    mem.add(layout.arena_base, layout.arena.size)
    mem.add(layout.workspace, layout.workspace_bytes)
    for name, array in (("loc", inputs[0]), ("conf", inputs[1]), ("priors", priors),
                        ("boxes", boxes)):
        mem.view(layout.addr(value(name)), np.float32, array.size)[:] = array.reshape(-1)
    model = MultiboxModel(mem)
    for item in planned:
        if item.layer == "loss":
            for launch in item.launches:
                model.run(launch)
    forward = ["multibox_gather_gt", "multibox_overlaps", "multibox_bipartite",
               "multibox_score", "multibox_mine", "multibox_loss_fwd", "fill"]
    assert model.launched[:7] == forward
    assert sorted(zip(model.launched[7::2], model.launched[8::2])) == [
        ("multibox_grad_scale", "multibox_loss_dx_conf"),
        ("multibox_grad_scale", "multibox_loss_dx_loc")]

    def read(buffer, shape):
        return mem.view(layout.addr(buffer), np.float32, int(np.prod(shape))).reshape(shape)

    labels = read(aux_id("loss", "labels"), (n, p))
    assert np.array_equal(labels, aux["labels"]), "the decisions differ from the cpu's"
    if conf == "equal":      # every candidate ties: some kept, some not, by prior order
        assert all((img == 0).any() and (img == -1).any() for img in labels)
    np.testing.assert_allclose(read(aux_id("loss", "targets"), (n, p, 4)), aux["targets"],
                               rtol=1e-6, atol=0)
    got_loss = float(read(value("loss"), (1,))[0])
    np.testing.assert_allclose(got_loss, cpu.losses["loss"], rtol=1e-6)
    np.testing.assert_allclose(got_loss, float(out), rtol=1e-6)
    dloc = read(grad("loc"), want_dloc.shape)
    dconf = read(grad("conf"), want_dconf.shape)
    np.testing.assert_allclose(dloc, want_dloc, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dconf, want_dconf, rtol=1e-6, atol=1e-9)
    # and the cpu target's own gradients of the layers feeding loc and conf
    x = batch["x"].astype(np.float64)
    np.testing.assert_allclose(dloc.astype(np.float64).T @ x, grads["loc.weight"], rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(dconf.astype(np.float64).T @ x, grads["conf.weight"],
                               rtol=1e-5, atol=1e-7)


def test_compile_for_cuda_writes_the_multibox_kernels(tmp_path, capsys, monkeypatch):
    """`bwplan compile --target cuda` of the tiny net (nvcc left out: test_cuda_compile.py
    compiles these kernels)."""
    from bwplan.cli.main import main
    from bwplan.kernels.cuda import build
    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    text, _, _ = multibox_net(*CASES[0])
    path = tmp_path / "mbox.bw"
    path.write_text(text)
    assert main(["compile", str(path), "--target", "cuda", "-o", str(tmp_path / "o")]) == 0
    source = (tmp_path / "o" / "mbox.cu").read_text()
    assert 'extern "C" __global__ void __launch_bounds__(LOSS_THREADS)\nmultibox_mine(' in source
    assert "Traceback" not in capsys.readouterr().err
