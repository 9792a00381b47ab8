"""The CUDA kernels and runtime on a GPU: skipped as a whole without PyCUDA or a GPU.

Per op (shapes and attributes from the Hypothesis strategies of the op rows, op_cases): the
forward kernel's output and aux buffers, then every dX and dW kernel fed the GPU
forward's own saved values, each against the NumPy reference run in float64 on the same
values; every gradient kernel again with `accumulate` (it must add, not overwrite).
Outputs start as NaN (integers as INT_MAX), so an unwritten element fails. Tolerance:
|got - ref| <= TOL + |ref| * EPS with TOL = EPS = 1e-4, float32 throughout (the GEMMs are
FP32 FFMA; there is no TF32 path to loosen it for).

The sliced dW kernels of a partly frozen parameter (linear_dw_rows, conv2d_dw_rows, and
the bias kernels on a slice) against the reference's trainable rows, their frozen rows
left as the NaN they started with; and 5 training steps with frozen rows on target
"cuda" against target "cpu", the frozen rows bit-identical.

Then the multi-block paths tiny cases miss: GEMMs with several tiles in M and N, split-K
dW, grid-stride loops on a device that pretends to have one multiprocessor; batchnorm's
running statistics; dropout's masks; and 5 training steps of every example (batch 4) on
target "cuda" against target "reference" (losses, metrics and parameters), with the
device arena equal to the plan's peak estimate.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("pycuda.driver")

from bwplan.runtime.cuda import CudaUnavailable, device  # noqa: E402

try:
    DEV = device()
except CudaUnavailable as err:  # no driver or no GPU
    pytest.skip(str(err), allow_module_level=True)

import pycuda.driver as cuda  # noqa: E402

import bwplan  # noqa: E402
from bwplan import ops as registry  # noqa: E402
from bwplan.kernels import cuda as table  # noqa: E402
from bwplan.kernels.cuda import build  # noqa: E402
from bwplan.kernels.cuda.limits import Env  # noqa: E402
from bwplan.ops.reference import grad_index, make_ctx, run_forward, saved_values  # noqa: E402
from bwplan.runtime.cuda import CudaExecutor  # noqa: E402
from bwplan.optim import SgdSettings  # noqa: E402
import closeness as close  # noqa: E402
from op_cases import ROWS, Case  # noqa: E402
from op_cases.draw import valid as _valid  # noqa: E402

CASES = {name: row.cases for name, row in ROWS.items()}

SEED = 11
TOL = EPS = 1e-4
SETTINGS = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
KERNELS = DEV.kernels(build.full_source())
ROOT = Path(__file__).parent.parent
# examples whose every tensor fits the comparisons (no dropout: masks differ by design)
EXAMPLES = sorted(ROOT.glob("examples/*.bw"))


def assert_close(got, ref, what: str, tol: float = TOL, eps: float = EPS) -> None:
    close.assert_close(got, ref, what, tol, eps)


# ---- device memory for one op ----------------------------------------------------------------
class Mem:
    """Device copies of host arrays, kept alive for the test."""

    def __init__(self) -> None:
        self.keep = []

    def up(self, host: np.ndarray) -> int:
        host = np.ascontiguousarray(host)
        buf = cuda.mem_alloc(max(host.nbytes, 1))
        if host.nbytes:
            cuda.memcpy_htod(buf, host)
        self.keep.append(buf)
        return int(buf)

    def poisoned(self, shape, dtype) -> int:
        a = np.empty(shape, dtype)
        a.fill(np.nan if a.dtype.kind == "f" else np.iinfo(a.dtype).max)
        return self.up(a)

    @staticmethod
    def down(ptr: int, shape, dtype) -> np.ndarray:
        out = np.empty(shape, dtype)
        if out.nbytes:
            cuda.memcpy_dtoh(out, ptr)
        return out


def run(launches) -> None:
    for launch in launches:
        KERNELS.launch(launch)
    cuda.Context.synchronize()


def _np(dtype: str):
    return {"f32": np.float32, "f64": np.float64, "i32": np.int32, "i64": np.int64,
            "u8": np.uint8}[dtype]


def _cast(a):
    a = np.asarray(a)
    return np.ascontiguousarray(a, np.float32) if a.dtype.kind == "f" else np.ascontiguousarray(a)


class GpuRun:
    """One op through its CUDA kernels (float32) and its references (float64)."""

    def __init__(self, name: str, case: Case, training: bool = True, keep=None,
                 sm_count: int | None = None) -> None:
        self.op = op = registry.OPS[name]
        self.mem = mem = Mem()
        self.training = training
        self.inputs = [_cast(x) for x in case.inputs]
        self.params = {k: _cast(v) for k, v in case.params.items()}
        ref_inputs = [np.asarray(x, np.float64) if x.dtype.kind == "f" else x
                      for x in self.inputs]
        ref_params = {k: v.astype(np.float64) for k, v in self.params.items()}
        self.ctx = make_ctx(op, case.attrs, self.inputs)
        self.ref_ctx = make_ctx(op, case.attrs, ref_inputs)
        self.ref_inputs, self.ref_params = ref_inputs, ref_params
        self.ref_out, self.ref_aux = run_forward(op, case.attrs, ref_inputs, ref_params,
                                                 training, np.random.default_rng(SEED))
        kept = set(self.ref_aux) if keep is None else set(keep)
        counter = mem.up(np.array([SEED], np.uint64))
        fwd = table.entry(name, "fwd")   # a forward with state of its own (SSD's matching)
        ws = fwd.workspace(self.ctx, Env(sm_count or DEV.sm_count)) if fwd.workspace else 0
        self.env = Env(sm_count or DEV.sm_count,
                       mem.up(np.zeros(ws // 4 + 1, np.float32)) if ws else 0, ws, counter, 3)
        self.in_ptrs = [mem.up(x) for x in self.inputs]
        self.param_ptrs = {k: mem.up(v) for k, v in self.params.items()}
        out_t = self.ctx.out
        self.out_ptr = mem.poisoned(out_t.shape, _np(out_t.dtype))
        self.aux_ptrs, aux_types = {}, {}
        for spec in op.aux:
            if spec.name in kept:
                t = spec.type(self.ctx)
                aux_types[spec.name] = t
                self.aux_ptrs[spec.name] = mem.poisoned(t.shape, _np(t.dtype))
        run(table.launches(table.entry(name, "fwd"), self.ctx, self.in_ptrs, self.param_ptrs,
                           self.out_ptr, self.aux_ptrs, training, self.env))
        self.out = mem.down(self.out_ptr, out_t.shape, _np(out_t.dtype))
        self.aux = {k: mem.down(p, aux_types[k].shape, _np(aux_types[k].dtype))
                    for k, p in self.aux_ptrs.items()}
        self.params_after = {k: mem.down(p, self.params[k].shape, np.float32)
                             for k, p in self.param_ptrs.items()}
        if name == "dropout" and training:
            # the mask is the GPU's own draw: the reference uses it
            mask = self.aux.get("mask")
            if mask is not None:
                self.ref_aux = {"mask": mask}
                self.ref_out = ref_inputs[0] * mask / (1.0 - case.attrs["p"])

    def check_forward(self) -> None:
        name = self.op.name
        assert_close(self.out, self.ref_out, f"{name} forward out")
        for key, value in self.aux.items():
            assert_close(value, self.ref_aux[key], f"{name} forward aux {key}")

    def _device_saved(self, saved: dict) -> dict:
        out = {}
        for k, v in saved.items():
            out[k] = [self.mem.up(_cast(x)) for x in v] if isinstance(v, list) else \
                self.mem.up(_cast(v))
        return out

    def check_grads(self) -> None:
        op, mem = self.op, self.mem
        rng = np.random.default_rng(SEED + 1)
        dout = _cast(rng.standard_normal(np.shape(self.ref_out)))
        dout_ptr = mem.up(dout)
        for rule in op.grads:
            saved = saved_values(op, rule, self.ctx, self.inputs, self.params, self.out,
                                 self.aux)
            ref_saved = saved_values(op, rule, self.ref_ctx, self.ref_inputs, self.ref_params,
                                     self.ref_out, self.ref_aux)
            dsaved = self._device_saved(saved)
            for component, index, shape in self._targets(rule):
                e = table.entry(op.name, component)
                ws = e.workspace(self.ctx, self.env) if e.workspace else 0
                env = Env(self.env.sm_count, mem.up(np.zeros(ws // 4 + 1, np.float32)), ws,
                          self.env.counter, 0)
                ref_index = grad_index(op, rule.wrt, index) if component.startswith("dx") else 0
                ref = rule.reference(self.ref_ctx, ref_saved, dout.astype(np.float64),
                                     ref_index)
                got = mem.poisoned(shape, np.float32)
                for accumulate, factor in ((False, 1.0), (True, 2.0)):
                    if component.startswith("dw:"):
                        args = (self.ctx, dsaved, dout_ptr, got, accumulate, env)
                    else:
                        args = (self.ctx, dsaved, dout_ptr, index, got, accumulate, env)
                    run(table.launches(e, *args))
                    what = f"{op.name} {component}[{index}]" + (" accumulate" if accumulate
                                                                 else "")
                    assert_close(mem.down(got, shape, np.float32), factor * np.asarray(ref),
                                 what)

    def _targets(self, rule):
        op = self.op
        if op.slot(rule.wrt) is not None:
            if rule.wrt in {s.name for s in op.param_slots(self.ctx.attrs)}:
                yield f"dw:{rule.wrt}", 0, self.params[rule.wrt].shape
            return
        for i, x in enumerate(self.inputs):
            if op.port_for(i).name == rule.wrt:
                yield f"dx:{rule.wrt}", i, x.shape


def draw(data, name: str, strategy=None) -> Case:
    return _valid(name, data.draw(strategy or CASES[name], label=name))


# ---- every op ----------------------------------------------------------------------------
# every op the cuda target runs (a row's `no_cuda` says why one has no CUDA kernels)
@pytest.mark.parametrize("name", sorted(n for n in registry.OPS if not ROWS[n].no_cuda))
@SETTINGS
@given(data=st.data())
def test_kernels_match_references(name, data):
    gpu = GpuRun(name, draw(data, name))
    gpu.check_forward()
    gpu.check_grads()


@pytest.mark.parametrize("name", ["batchnorm", "dropout"])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_inference_mode_matches_reference(name, data):
    gpu = GpuRun(name, draw(data, name), training=False)
    gpu.check_forward()


WITH_AUX = sorted(name for name, op in registry.OPS.items() if op.aux and not ROWS[name].no_cuda)


@pytest.mark.parametrize("name", WITH_AUX)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_forward_without_aux_gives_the_same_output(name, data):
    case = draw(data, name)
    full, bare = GpuRun(name, case), GpuRun(name, case, keep=())
    assert not bare.aux
    assert np.array_equal(full.out, bare.out, equal_nan=True)


# ---- the multi-block paths -----------------------------------------------------------------
def _normal(rng, *shape):
    return rng.standard_normal(shape)


@pytest.mark.parametrize("attrs,shape", [
    (dict(out=140, kernel=3, pad=1), (6, 5, 20, 20)),                # 2 M tiles, split dW
    (dict(out=66, kernel=(3, 2), stride=2, groups=3, dilation=(1, 2), pad=(1, 0)),
     (5, 6, 23, 19)),
    (dict(out=130, kernel=1, bias=False), (2, 130, 15, 9)),          # 2 x 3 tiles in dX
])
def test_conv2d_multi_tile_and_split_k(attrs, shape):
    rng = np.random.default_rng(5)
    c, groups = shape[1], attrs.get("groups", 1)
    kh, kw = (attrs["kernel"],) * 2 if isinstance(attrs["kernel"], int) else attrs["kernel"]
    params = {"weight": _normal(rng, attrs["out"], c // groups, kh, kw)}
    if attrs.get("bias", True):
        params["bias"] = _normal(rng, attrs["out"])
    gpu = GpuRun("conv2d", Case(attrs, [_normal(rng, *shape)], params))
    e = table.entry("conv2d", "dw:weight")
    assert e.workspace(gpu.ctx, gpu.env) > 0 or shape[0] == 2   # the split path runs
    gpu.check_forward()
    gpu.check_grads()


@pytest.mark.parametrize("b,k,o", [(300, 70, 130), (1000, 3, 5), (3, 200, 1)])
def test_linear_multi_tile_and_split_k(b, k, o):
    rng = np.random.default_rng(6)
    params = {"weight": _normal(rng, o, k), "bias": _normal(rng, o)}
    gpu = GpuRun("linear", Case(dict(out=o), [_normal(rng, b, k)], params))
    gpu.check_forward()
    gpu.check_grads()


@pytest.mark.parametrize("name,case", [
    ("relu", Case(dict(negative_slope=0.1), [np.linspace(-3, 3, 50_001)])),
    ("maxpool", Case(dict(kernel=3, stride=2, pad=1, ceil=True),
                     [np.random.default_rng(1).permutation(3 * 5 * 31 * 29).reshape(
                         3, 5, 31, 29) * 0.01])),
    ("avgpool", Case(dict(kernel=2, stride=1, pad=1, ceil=False),
                     [np.random.default_rng(2).standard_normal((4, 3, 30, 30))])),
    ("softmax_cross_entropy", Case({}, [np.random.default_rng(3).standard_normal((300, 7, 5)),
                                        np.random.default_rng(3).integers(0, 7, (300, 5))])),
    ("lrn", Case(dict(size=5, alpha=0.5, beta=0.75, k=1.5),
                 [np.random.default_rng(4).standard_normal((2, 9, 40, 40))])),
    ("batchnorm", Case(dict(affine=True), [np.random.default_rng(5).standard_normal(
        (8, 3, 33, 17)) * 3 + 2], {"mean": np.zeros(3), "var": np.ones(3),
                                   "weight": np.full(3, 1.5), "bias": np.full(3, -0.5)})),
])
def test_grid_stride_loops_cover_large_tensors(name, case):
    """sm_count 1 caps the grid at a few blocks, so every block loops many times."""
    gpu = GpuRun(name, case, sm_count=1)
    gpu.check_forward()
    gpu.check_grads()


def test_batchnorm_updates_running_statistics():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 3, 5, 2)) * 2 + 1).astype(np.float32)
    mean0, var0 = rng.standard_normal(3), np.full(3, 0.5)
    gpu = GpuRun("batchnorm", Case(dict(momentum=0.9), [x], {"mean": mean0, "var": var0}))
    xs = np.moveaxis(x.astype(np.float64), 1, 0).reshape(3, -1)
    m = xs.shape[1]
    assert_close(gpu.params_after["mean"], 0.9 * mean0 + 0.1 * xs.mean(axis=1), "mean")
    assert_close(gpu.params_after["var"], 0.9 * var0 + 0.1 * xs.var(axis=1) * m / (m - 1),
                 "var")
    frozen = GpuRun("batchnorm", Case(dict(global_stats=True), [x],
                                      {"mean": mean0, "var": var0}))
    assert np.array_equal(frozen.params_after["mean"], mean0.astype(np.float32))


def test_dropout_masks_keep_the_expected_fraction_and_change_with_the_counter():
    x = np.ones((200, 500), np.float32)
    gpu = GpuRun("dropout", Case(dict(p=0.3), [x]))
    mask = gpu.aux["mask"]
    assert abs(mask.mean() - 0.7) < 0.01
    np.testing.assert_allclose(gpu.out, mask / 0.7, rtol=1e-6)
    again = GpuRun("dropout", Case(dict(p=0.3), [x]))
    assert np.array_equal(again.aux["mask"], mask)        # same counter, same mask
    other = Env(DEV.sm_count, 0, 0, gpu.mem.up(np.array([SEED + 1], np.uint64)), 3)
    out = gpu.mem.poisoned(x.shape, np.float32)
    run(table.launches(table.entry("dropout", "fwd"), gpu.ctx, gpu.in_ptrs, {}, out, {},
                       True, other))
    assert not np.array_equal(Mem.down(out, x.shape, np.float32), gpu.out)


# ---- training steps ------------------------------------------------------------------------
def _with_batch(text: str, n: int) -> str:
    return re.sub(r"(input \S+ : \w+\[)(\d+)", lambda m: m.group(1) + str(n), text)


def _batch(prog, rng) -> dict[str, np.ndarray]:
    batch = {}
    for inp in prog.net.inputs:
        if inp.type.dtype.startswith("i"):
            users = [prog.net.layer(e.dst) for e in prog.net.consumers(inp.name)]
            classes = min(prog.net.tensor_type(u.inputs[0].src).shape[1] for u in users)
            batch[inp.name] = rng.integers(0, classes, inp.type.shape).astype(
                np.dtype(inp.type.dtype.replace("i", "int")))
        else:
            batch[inp.name] = rng.standard_normal(inp.type.shape).astype(np.float32)
    return batch


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
@pytest.mark.parametrize("prune", [True, False])
def test_five_training_steps_match_the_reference_target(path, prune):
    """The first step's gradients agree to float32 accuracy (1e-4, relative norms); then
    the losses of every step to 1e-3, and each parameter's change over the 5 steps to
    5e-2. Two float32 runs drift apart as rounding differences flip relu and max-pool
    decisions and momentum carries them on: after 5 steps of resnet_mini at batch 4 the
    stem's change differs by ~2e-2 between this target and the reference, whose own
    single step already differs from a float64 computation by ~6e-4 in stage 1. The
    single-step check is the one that sees kernel errors."""
    text = _with_batch(path.read_text(), 4)
    ref = bwplan.compile(text, target="reference", prune=prune)
    s = SgdSettings(lr=0.01, momentum=0.9, weight_decay=5e-4)
    ref.set_optimizer(s.lr, s.momentum, s.weight_decay)
    before = {k: v.copy() for k, v in ref.params.items()}
    gpu = CudaExecutor(ref.program, {k: v.copy() for k, v in ref.params.items()}, s,
                       source="full")
    rng = np.random.default_rng(0)
    for step in range(5):
        batch = _batch(ref, rng)
        want = ref.run_step(batch)
        got = gpu.run(batch)
        for name, value in {**want.losses, **want.metrics}.items():
            got_value = {**got.losses, **got.metrics}[name]
            assert abs(got_value - value) <= 1e-4 + 1e-3 * abs(value), (step, name, got_value,
                                                                         value)
        assert got.stats.launched == want.stats.launched
        assert got.stats.flops == want.stats.flops
        if step == 0:
            grads = gpu.grads()
            assert set(grads) == set(ref.grads)
            for name, value in ref.grads.items():
                assert _rel(grads[name], value) < 1e-4, (name, _rel(grads[name], value))
    params = gpu.state.download()
    for name, value in ref.params.items():
        change = _rel(params[name] - before[name], value - before[name])
        assert change < 5e-2, (name, change)
    summary = ref.plan.summary
    estimate = summary.planned_peak_bytes if prune else summary.full_peak_bytes
    assert abs(gpu.timing.arena_bytes - estimate) <= 0.10 * estimate
    assert gpu.timing.ms > 0


def _rel(got, want) -> float:
    want = np.asarray(want, np.float64)
    return float(np.linalg.norm(np.asarray(got, np.float64) - want)
                 / max(np.linalg.norm(want), 1e-30))


WEIGHTED = """\
input x : f32[4, 6]
input y : i64[4]
h    = linear(x, out=5)
pen  = mul(h, h) weight=0.01
out  = linear(h, out=3)
loss = softmax_cross_entropy(out, y)
"""


@pytest.mark.parametrize("source", [str(ROOT / "examples" / "digits_pretrain.bw"), WEIGHTED])
def test_compile_api_trains_on_the_gpu(source, tmp_path):
    """bwplan.compile(target="cuda") end to end: steps (at a batch size other than the
    declared one), grads, params, forward, and weights saved and loaded back."""
    ref = bwplan.compile(source, target="reference")
    gpu = bwplan.compile(source, target="cuda")
    for prog in (ref, gpu):
        prog.set_optimizer(0.05, 0.9, 1e-3)
    rng = np.random.default_rng(3)
    batch = {}
    for inp in ref.net.inputs:
        shape = (4,) + inp.type.shape[1:]
        batch[inp.name] = (rng.integers(0, 3, shape) if inp.type.dtype == "i64"
                           else rng.standard_normal(shape).astype(np.float32))
    for _ in range(3):
        want, got = ref.step(batch), gpu.step(batch)
        assert abs(got - want) <= 1e-4 * max(1.0, abs(want)), (got, want)
    assert set(gpu.grads) == set(ref.grads)
    for name, value in ref.params.items():
        assert_close(gpu.params[name], value, name, tol=1e-4, eps=1e-3)
    out = gpu.forward(batch)
    assert set(out) >= {"loss"}
    path = tmp_path / "w.npz"
    gpu.save_weights(str(path))
    again = bwplan.compile(source, target="cuda")
    again.load_weights(str(path))
    assert abs(float(again.forward(batch)["loss"]) - float(out["loss"])) < 1e-5


# ---- partly frozen parameters ----------------------------------------------------------------
@pytest.mark.parametrize("name,attrs,shape,rows", [
    ("linear", dict(out=300), (5, 70), ((0, 10), (100, 300))),          # 4 x 2 tiles
    ("linear", dict(out=130), (1000, 3), ((0, 5), (70, 130))),          # split-K per range
    ("linear", dict(out=1010), (8, 16), ((1000, 1010),)),
    ("conv2d", dict(out=140, kernel=3, pad=1), (6, 5, 20, 20), ((0, 3), (60, 140))),
    ("conv2d", dict(out=6, kernel=(3, 2), stride=2, dilation=(1, 2)), (2, 3, 9, 8),
     ((5, 6),)),
])
@pytest.mark.parametrize("sm_count", [1, None])
def test_sliced_dw_kernels_write_only_the_trainable_rows(name, attrs, shape, rows, sm_count):
    """dW and dB over the trainable rows against the float64 reference's rows; every
    frozen row keeps the NaN it started with (the kernels never touch it), and with
    `accumulate` the trainable rows double."""
    rng = np.random.default_rng(8)
    op = registry.OPS[name]
    x = rng.standard_normal(shape).astype(np.float32)
    ctx = make_ctx(op, attrs, [x])
    dout = rng.standard_normal(ctx.out.shape).astype(np.float32)
    mem = Mem()
    x_ptr, dout_ptr = mem.up(x), mem.up(dout)
    mask = np.zeros(ctx.attrs["out"], bool)
    for a, b in rows:
        mask[a:b] = True
    sms = sm_count or DEV.sm_count
    for slot in ("weight", "bias"):
        e = table.entry(name, f"dw:{slot}")
        ws = e.rows_workspace(ctx, rows, Env(sms)) if e.rows_workspace else 0
        env = Env(sms, mem.up(np.zeros(ws // 4 + 1, np.float32)), ws, 0, 0)
        pshape = next(tuple(p.shape(ctx)) for p in op.param_slots(ctx.attrs) if p.name == slot)
        ref = np.asarray(op.grad_for(slot).reference(ctx, {"x": x.astype(np.float64)},
                                                     dout.astype(np.float64), 0))
        got = mem.poisoned(pshape, np.float32)
        for accumulate, factor in ((False, 1.0), (True, 2.0)):
            run(table.rows_launches(e, ctx, {"x": x_ptr}, dout_ptr, got, accumulate, rows,
                                    env))
            out = Mem.down(got, pshape, np.float32)
            assert np.isnan(out[~mask]).all(), f"{name} {slot}: a frozen row was written"
            assert_close(out[mask], factor * ref.reshape(pshape)[mask],
                         f"{name} {slot} rows {rows} accumulate={accumulate}")


ROWS_CONV = """\
input x : f32[4, 3, 6, 6]
input y : i64[4]
conv = conv2d(x, out=8, kernel=3, pad=1)
r    = relu(conv)
pool = global_avgpool(r)
fc   = linear(pool, out=5)
loss = softmax_cross_entropy(fc, y)
"""


@pytest.mark.parametrize("source,freeze", [
    (str(ROOT / "examples" / "class_incremental.bw"), []),
    (ROWS_CONV, ["conv.weight[0:2, 5:7]", "conv.bias[0:2, 5:7]", "fc.weight[1:3]"]),
])
def test_sliced_training_on_the_gpu_matches_the_cpu_target(source, freeze, tmp_path):
    """5 steps with momentum and weight decay, bwplan.compile(target="cuda") against
    target "cpu" from the same weights: the frozen rows bit-identical on the device, the
    first step's gradients (frozen rows zero on both) to 1e-4, the losses to 1e-3, each
    parameter's change to 5e-2 (see the five-steps test above for why not tighter)."""
    cpu = bwplan.compile(source, target="cpu", freeze=freeze)
    gpu = bwplan.compile(source, target="cuda", freeze=freeze)
    path = tmp_path / "w.npz"
    cpu.save_weights(str(path))
    gpu.load_weights(str(path))
    before = {k: v.copy() for k, v in cpu.params.items()}
    frozen = {k: p.frozen_rows for k, p in cpu.net.params.items() if p.frozen_rows}
    assert frozen
    for prog in (cpu, gpu):
        prog.set_optimizer(0.1, 0.9, 0.01)
    rng = np.random.default_rng(2)
    for step in range(5):
        batch = _batch(cpu, rng)
        want, got = cpu.step(batch), gpu.step(batch)
        assert abs(got - want) <= 1e-4 + 1e-3 * abs(want), (step, got, want)
        assert gpu.last_stats.launched == cpu.last_stats.launched
        assert gpu.last_stats.flops == cpu.last_stats.flops
        if step == 0:
            assert set(gpu.grads) == set(cpu.grads)
            for name, value in cpu.grads.items():
                assert _rel(gpu.grads[name], value) < 1e-4, name
                for a, b in frozen.get(name, ()):
                    assert not gpu.grads[name][a:b].any(), (name, "frozen rows' gradient")
    for name, value in cpu.params.items():
        got = gpu.params[name]
        for a, b in frozen.get(name, ()):
            assert np.array_equal(got[a:b], before[name][a:b]), (name, "frozen rows moved")
        assert _rel(got - before[name], value - before[name]) < 5e-2, name


# ---- SSD's MultiBoxLoss: the device decides as the cpu target does -----------------------
from test_cuda_multibox_host import CASES as MULTIBOX_CASES, multibox_net  # noqa: E402


@pytest.mark.parametrize("n,side,dup,c,match,mining,norm,conf", MULTIBOX_CASES)
def test_multibox_kernels_decide_and_score_as_the_cpu_kernels(n, side, dup, c, match, mining,
                                                              norm, conf):
    """The tiny nets of test_cuda_multibox_host.py (ties made on purpose, more priors than
    a block has threads): the device's labels and codes equal the cpu kernels', the loss
    and both gradients within 1e-6."""
    from bwplan.kernels.cpu import loss as cpu_loss
    from bwplan.plan.components import op_ctx
    from bwplan.runtime.backend import BACKENDS
    from bwplan.runtime.executor import Executor
    text, batch, params = multibox_net(n, side, dup, c, match, mining, norm, conf)
    prog = bwplan.compile(text, target="cpu")
    values = Executor(prog.program, BACKENDS["cpu"]()).run(batch, params, {}, training=True,
                                                           capture=("loc", "conf")).values
    layer = prog.net.layer("loss")
    ctx = op_ctx(prog.net, layer)
    inputs = [values["loc"], values["conf"], batch["priors"], batch["boxes"]]
    p = batch["priors"].shape[2] // 4
    want = np.zeros((), np.float32)
    aux = {"targets": np.zeros((n, p, 4), np.float32), "labels": np.zeros((n, p), np.float32)}
    cpu_loss.multibox_loss_fwd(ctx, inputs, {}, want, aux, True, None)
    mem = Mem()
    e = table.entry("multibox_loss", "fwd")
    ws = e.workspace(ctx, Env(DEV.sm_count))
    env = Env(DEV.sm_count, mem.poisoned((ws // 4 + 1,), np.float32), ws, 0, 0)
    out = mem.poisoned((1,), np.float32)
    got_aux = {k: mem.poisoned(v.shape, np.float32) for k, v in aux.items()}
    run(table.launches(e, ctx, [mem.up(x) for x in inputs], {}, out, got_aux, True, env))
    labels = Mem.down(got_aux["labels"], (n, p), np.float32)
    assert np.array_equal(labels, aux["labels"]), "the device's decisions differ"
    np.testing.assert_allclose(Mem.down(got_aux["targets"], (n, p, 4), np.float32),
                               aux["targets"], rtol=1e-6)
    np.testing.assert_allclose(Mem.down(out, (1,), np.float32)[0], float(want), rtol=1e-6)
    saved = {"loc": inputs[0], "conf": inputs[1], **aux}
    dsaved = {k: mem.up(v) for k, v in saved.items()}
    seed = np.ones((1,), np.float32)
    for component, index, kernel in (("dx:loc", 0, cpu_loss.multibox_loss_dx_loc),
                                     ("dx:conf", 1, cpu_loss.multibox_loss_dx_conf)):
        ref = np.empty_like(inputs[index])
        kernel(ctx, saved, seed.reshape(()), index, ref)
        e = table.entry("multibox_loss", component)
        env = Env(DEV.sm_count, mem.poisoned((4,), np.float32), 8, 0, 0)
        got = mem.poisoned(ref.shape, np.float32)
        run(table.launches(e, ctx, dsaved, mem.up(seed), index, got, False, env))
        np.testing.assert_allclose(Mem.down(got, ref.shape, np.float32), ref, rtol=1e-6,
                                   atol=1e-9, err_msg=component)


@pytest.mark.parametrize("case", [c for c in MULTIBOX_CASES if c[0] == 1])
def test_multibox_net_trains_on_the_gpu_as_on_the_cpu(case, tmp_path):
    """Three SGD steps of the tiny nets of one image (the priors' batch of 1 is the net's)
    on target "cuda" and target "cpu": the losses within 1e-6, the parameters within
    1e-5."""
    text, batch, params = multibox_net(*case)
    cpu, gpu = bwplan.compile(text, target="cpu"), bwplan.compile(text, target="cuda")
    cpu.params = params
    cpu.save_weights(str(tmp_path / "w.npz"))
    gpu.load_weights(str(tmp_path / "w.npz"))      # onto the device
    for prog in (cpu, gpu):
        prog.set_optimizer(0.05, 0.9, 1e-3)
    for _ in range(3):
        want, got = cpu.step(batch), gpu.step(batch)
        assert abs(got - want) <= 1e-6 * max(1.0, abs(want)), (got, want)
    for name, value in cpu.params.items():
        np.testing.assert_allclose(gpu.params[name], value, rtol=1e-5, atol=1e-6,
                                   err_msg=name)
