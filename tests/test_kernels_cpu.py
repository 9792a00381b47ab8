"""The Numba CPU kernels against the NumPy references (bwplan/ops/reference.py).

For every op: the forward kernel's output and aux buffers, then every dX and dW kernel fed
the kernel forward's own saved values, each against the reference in float64. Kernels run
in float32 (the dtype used in training); the reference gets the same float32 values
widened, so only the kernels' arithmetic is measured, with a tolerance tol + |ref| * eps.
Output buffers start as NaN, so a kernel that leaves an element unwritten fails.

Shapes and attributes come from the Hypothesis strategies of the op rows (op_cases), plus
a conv strategy here with larger batches, a shrunken chunk size and a moved pixel
threshold, so that tiny inputs cross the chunk boundaries of the im2col loop and take
either GEMM layout. Paths the strategies rarely reach (1x1 convolutions, 2x2 max pools,
work split over the kernel workers) have tests of their own. A few float64 examples per op
check the second dtype. Numba compilation dominates the run time (about 40 s with a cold
cache on two cores, a few seconds warm), so dtypes and ranks are few; the kernels are
cached on disk.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bwplan import ops as registry  # noqa: E402
from bwplan.errors import DataError  # noqa: E402
from bwplan.kernels import cpu  # noqa: E402
from bwplan.kernels.cpu import conv as conv_kernels  # noqa: E402
from bwplan.kernels.cpu import elementwise as elementwise_kernels  # noqa: E402
from bwplan.kernels.cpu import linear as linear_kernels  # noqa: E402
from bwplan.kernels.cpu import scratch, threads  # noqa: E402
from bwplan.ops.reference import grad_index, make_ctx, run_forward, saved_values  # noqa: E402
import closeness as close  # noqa: E402
from op_cases import ROWS, Case  # noqa: E402
from op_cases.draw import normal as _normal, rng_from as _rng, valid as _valid  # noqa: E402

CASES = {name: row.cases for name, row in ROWS.items()}

SEED = 11
# float32 kernels against float64 references: |got - ref| <= TOL + |ref| * EPS
TOL = {np.float32: 2e-4, np.float64: 1e-9}
EPS = {np.float32: 2e-4, np.float64: 1e-9}
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def assert_close(got, ref, dtype, what: str) -> None:
    close.assert_close(got, ref, what, TOL[dtype], EPS[dtype])


def _cast(a, dtype):
    """A C-contiguous copy, in `dtype` if it is floating; a 0-d array stays 0-d (a scalar
    bias), which np.ascontiguousarray would make 1-d."""
    a = np.asarray(a)
    return np.array(a, dtype if a.dtype.kind == "f" else a.dtype, order="C")


def _empty(shape, dtype) -> np.ndarray:
    a = np.empty(shape, dtype)
    if a.dtype.kind == "f":
        a.fill(np.nan)
    else:
        a.fill(np.iinfo(a.dtype).max)
    return a


def _np_dtype(name: str):
    return {"f32": np.float32, "f64": np.float64, "i32": np.int32, "u8": np.uint8}[name]


def kernel(op, component: str):
    return cpu.get(op.kernels["cpu"][component])


class Run:
    """One op run through its kernels (in `dtype`) and through its references (in float64,
    on the same values)."""

    def __init__(self, name: str, case: Case, dtype=np.float32, training: bool = True,
                 keep: frozenset[str] | None = None):
        self.op = op = registry.OPS[name]
        self.dtype, self.training = dtype, training
        self.inputs = [_cast(x, dtype) for x in case.inputs]
        self.params = {k: _cast(v, dtype) for k, v in case.params.items()}
        self.ref_inputs = [_cast(x, np.float64) for x in self.inputs]
        self.ref_params = {k: _cast(v, np.float64) for k, v in self.params.items()}
        self.ctx = make_ctx(op, case.attrs, self.inputs)
        self.ref_ctx = make_ctx(op, case.attrs, self.ref_inputs)
        self.ref_out, self.ref_aux = run_forward(
            op, case.attrs, self.ref_inputs, self.ref_params, training,
            np.random.default_rng(SEED))
        kept = set(self.ref_aux) if keep is None else keep
        self.aux = {}
        for spec in op.aux:
            if spec.name in kept:
                t = spec.type(self.ctx)
                self.aux[spec.name] = _empty(t.shape, _np_dtype(t.dtype))
        self.out = _empty(self.ctx.out.shape, _np_dtype(self.ctx.out.dtype))
        # the kernel may update stored statistics in place; the reference must not see it
        self.kernel_params = {k: v.copy() for k, v in self.params.items()}
        kernel(op, "fwd")(self.ctx, self.inputs, self.kernel_params, self.out, self.aux,
                          training, np.random.default_rng(SEED))

    def check_forward(self) -> None:
        name = self.op.name
        assert_close(self.out, self.ref_out, self.dtype, f"{name} forward out")
        for key, value in self.aux.items():
            assert_close(value, self.ref_aux[key], self.dtype, f"{name} forward aux {key}")

    def targets(self, rule):
        """(component, index, shape, dtype) of every gradient the rule gives."""
        op, ctx = self.op, self.ctx
        if op.slot(rule.wrt) is not None:
            if rule.wrt in {s.name for s in op.param_slots(ctx.attrs)}:
                p = self.params[rule.wrt]
                yield f"dw:{rule.wrt}", 0, p.shape, p.dtype
            return
        for i, x in enumerate(self.inputs):
            if op.port_for(i).name == rule.wrt:
                yield f"dx:{rule.wrt}", i, x.shape, x.dtype

    def check_grads(self) -> None:
        op = self.op
        rng = np.random.default_rng(SEED + 1)
        dout = _cast(rng.standard_normal(np.shape(self.ref_out)), self.dtype)
        for rule in op.grads:
            saved = saved_values(op, rule, self.ctx, self.inputs, self.params, self.out,
                                 self.aux)
            ref_saved = saved_values(op, rule, self.ref_ctx, self.ref_inputs,
                                     self.ref_params, self.ref_out, self.ref_aux)
            for component, i, shape, dtype in self.targets(rule):
                got = _empty(shape, dtype)
                if component.startswith("dw:"):
                    kernel(op, component)(self.ctx, saved, dout, got)
                else:
                    kernel(op, component)(self.ctx, saved, dout, i, got)
                index = grad_index(op, rule.wrt, i) if component.startswith("dx:") else 0
                ref = rule.reference(self.ref_ctx, ref_saved, dout.astype(np.float64), index)
                assert_close(got, ref, self.dtype, f"{op.name} {component}[{i}]")


def draw(data, name: str, strategy=None) -> Case:
    return _valid(name, data.draw(strategy or CASES[name], label=name))


# ---- every op, float32 -----------------------------------------------------------------
GENERIC = sorted(set(registry.OPS) - {"conv2d"})  # conv2d has its own strategy below


@pytest.mark.parametrize("name", GENERIC)
@SETTINGS
@given(data=st.data())
def test_kernels_match_references(name, data):
    run = Run(name, draw(data, name))
    run.check_forward()
    run.check_grads()


@st.composite
def conv_case(draw):
    """Batches of up to 5 samples with 1 to 3 groups; `chunk` is the samples per chunk."""
    rng = _rng(draw)
    groups = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    attrs = dict(out=groups * draw(st.integers(1, 3)), kernel=(kh, kw),
                 stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))), pad=(ph, pw),
                 dilation=(dh, dw), groups=groups, bias=draw(st.booleans()))
    c = groups * draw(st.integers(1, 3))
    h = max(1, dh * (kh - 1) + 1 - 2 * ph) + draw(st.integers(0, 4))
    w = max(1, dw * (kw - 1) + 1 - 2 * pw) + draw(st.integers(0, 4))
    n = draw(st.integers(1, 5))
    params = {"weight": _normal(rng, attrs["out"], c // groups, kh, kw)}
    if attrs["bias"]:
        params["bias"] = _normal(rng, attrs["out"])
    return Case(attrs, [_normal(rng, n, c, h, w)], params), draw(st.integers(1, n))


def _chunk_bytes(name: str, case: Case, samples: int) -> int:
    """A CHUNK_BYTES that gives `samples` samples per chunk for this case in float32."""
    ctx = make_ctx(registry.OPS[name], case.attrs, [x.astype(np.float32) for x in case.inputs])
    g = conv_kernels.geometry(ctx)
    return samples * max(g.k, g.o) * g.p * 4


class conv_limits:
    """Within it, conv2d chunks `samples` samples of `case` at a time, and multiplies
    sample by sample (`per_sample`) or over the chunk, whatever the image size."""

    def __init__(self, case: Case, samples: int, per_sample: bool):
        self.limits = (_chunk_bytes("conv2d", case, samples), 1 if per_sample else 1 << 30)

    def __enter__(self):
        self.saved = conv_kernels.CHUNK_BYTES, conv_kernels.PER_SAMPLE_PIXELS
        conv_kernels.CHUNK_BYTES, conv_kernels.PER_SAMPLE_PIXELS = self.limits

    def __exit__(self, *exc):
        conv_kernels.CHUNK_BYTES, conv_kernels.PER_SAMPLE_PIXELS = self.saved


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_conv2d_matches_reference_across_chunks(data):
    case, samples = data.draw(conv_case(), label="conv2d")
    _valid("conv2d", case)
    with conv_limits(case, samples, data.draw(st.booleans(), label="per_sample")):
        run = Run("conv2d", case)
        run.check_forward()
        run.check_grads()


@pytest.mark.parametrize("groups,bias,per_sample", [
    (1, True, True), (2, False, True), (3, True, True), (1, True, False)])
def test_conv2d_1x1_takes_its_input_as_columns(groups, bias, per_sample):
    rng = np.random.default_rng(4)
    attrs = dict(out=3 * groups, kernel=1, groups=groups, bias=bias)
    params = {"weight": _normal(rng, 3 * groups, 2, 1, 1)}
    if bias:
        params["bias"] = _normal(rng, 3 * groups)
    case = Case(attrs, [_normal(rng, 5, 2 * groups, 4, 3)], params)
    with conv_limits(case, 2, per_sample):
        run = Run("conv2d", case)
        run.check_forward()
        run.check_grads()


class winograd_from(conv_limits):
    """Within it, conv2d takes Winograd F(2x2, 3x3) from `channels` channels, with chunks
    of `samples` samples."""

    def __init__(self, channels: int, case: Case, samples: int):
        self.channels, self.case, self.samples = channels, case, samples

    def __enter__(self):
        from bwplan.kernels.cpu import winograd
        ctx = make_ctx(registry.OPS["conv2d"], self.case.attrs,
                       [x.astype(np.float32) for x in self.case.inputs])
        g = conv_kernels.geometry(ctx)
        th, tw = winograd.tiles(g.ho, g.wo)
        self.saved = (conv_kernels.WINOGRAD_MIN_CHANNELS, winograd.CHUNK_BYTES,
                      winograd.DW_CHUNK_BYTES)
        conv_kernels.WINOGRAD_MIN_CHANNELS = self.channels
        winograd.CHUNK_BYTES = winograd.DW_CHUNK_BYTES = \
            self.samples * 16 * max(g.c, g.o) * th * tw * 4

    def __exit__(self, *exc):
        from bwplan.kernels.cpu import winograd
        (conv_kernels.WINOGRAD_MIN_CHANNELS, winograd.CHUNK_BYTES,
         winograd.DW_CHUNK_BYTES) = self.saved


@st.composite
def winograd_case(draw):
    """Stride-1 3x3 convolutions, any padding up to 2, odd and even output sizes."""
    rng = _rng(draw)
    pad = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    attrs = dict(out=draw(st.integers(1, 4)), kernel=3, pad=pad, bias=draw(st.booleans()))
    c = draw(st.integers(1, 4))
    h = 3 - 2 * pad[0] + draw(st.integers(max(0, 2 * pad[0] - 2), 6))
    w = 3 - 2 * pad[1] + draw(st.integers(max(0, 2 * pad[1] - 2), 6))
    n = draw(st.integers(1, 4))
    params = {"weight": _normal(rng, attrs["out"], c, 3, 3)}
    if attrs["bias"]:
        params["bias"] = _normal(rng, attrs["out"])
    return Case(attrs, [_normal(rng, n, c, h, w)], params), draw(st.integers(1, n))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_conv2d_winograd_matches_reference_across_chunks(data):
    """F(2x2, 3x3)'s forward, dX and dW against the float64 direct convolution, to the
    float32 tolerance every kernel here meets (see winograd.py on its error bound)."""
    case, samples = data.draw(winograd_case(), label="conv2d")
    _valid("conv2d", case)
    with winograd_from(1, case, samples):
        run = Run("conv2d", case)
        assert conv_kernels._setup(run.ctx, 4)[0].winograd
        run.check_forward()
        run.check_grads()


def test_conv2d_takes_winograd_for_wide_stride_1_3x3_layers_only():
    def geometry(c, o, kernel=3, stride=1, groups=1):
        x = np.zeros((2, c, 8, 8), np.float32)
        return conv_kernels.geometry(make_ctx(registry.OPS["conv2d"], dict(
            out=o, kernel=kernel, stride=stride, pad=1, groups=groups), [x]))
    wide = conv_kernels.WINOGRAD_MIN_CHANNELS
    assert geometry(wide, wide).winograd
    assert not geometry(3, 32).winograd           # the first layer: im2col
    assert not geometry(wide, wide, kernel=1).winograd
    assert not geometry(wide, wide, stride=2).winograd
    assert not geometry(2 * wide, 2 * wide, groups=2).winograd


@pytest.fixture
def two_workers():
    """The kernel workers at two threads, as `threads.configure` sets them on two cores."""
    before = threads.set_width(2)
    yield
    threads.set_width(before)


@pytest.mark.parametrize("attrs,shape", [
    (dict(out=4, kernel=3, pad=1), (7, 3, 6, 5)),
    (dict(out=6, kernel=3, stride=2, pad=1, groups=3), (6, 3, 7, 7)),
    (dict(out=4, kernel=1), (5, 2, 4, 4)),
])
@pytest.mark.parametrize("per_sample", [True, False, "winograd"])
def test_conv2d_gives_the_same_bits_on_one_thread_or_two(two_workers, attrs, shape,
                                                        per_sample):
    """Chunks depend on the shapes only, and the dW parts add up in chunk order."""
    rng = np.random.default_rng(5)
    params = {"weight": _normal(rng, attrs["out"], shape[1] // attrs.get("groups", 1),
                                attrs["kernel"], attrs["kernel"]),
              "bias": _normal(rng, attrs["out"])}
    case = Case(attrs, [_normal(rng, *shape)], params)
    results = []
    limits = winograd_from(1, case, 2) if per_sample == "winograd" else \
        conv_limits(case, 2, per_sample)
    with limits:
        for width in (1, 2):
            threads.set_width(width)
            run = Run("conv2d", case)
            dout = _cast(rng.standard_normal(run.out.shape), np.float32) if not results \
                else results[0][3]
            dx, dw = np.empty_like(run.inputs[0]), np.empty_like(run.params["weight"])
            kernel(run.op, "dx:x")(run.ctx, {"weight": run.params["weight"]}, dout, 0, dx)
            kernel(run.op, "dw:weight")(run.ctx, {"x": run.inputs[0]}, dout, dw)
            results.append((run.out, dx, dw, dout))
    for what, a, b in zip(("out", "dx", "dw"), results[0], results[1]):
        assert np.array_equal(a, b), f"{what} differs between one thread and two"


def test_for_each_runs_every_task_once_and_raises_the_first_error(two_workers):
    seen = []
    threads.for_each(50, seen.append)
    assert sorted(seen) == list(range(50))

    def nested(i):  # a call from a task runs on that task's thread
        inner = []
        threads.for_each(3, inner.append)
        seen.append((i, sorted(inner)))

    seen.clear()
    threads.for_each(4, nested)
    assert sorted(seen) == [(i, [0, 1, 2]) for i in range(4)]

    def failing(i):
        if i == 7:
            raise ValueError("task 7")

    with pytest.raises(ValueError, match="task 7"):
        threads.for_each(20, failing)
    threads.for_each(2, seen.append)  # the workers are still there after a failure


def test_conv2d_chunks_partition_the_batch():
    g = conv_kernels.Geometry(7, 2, 4, 4, 3, 3, 3, 1, 1, 1, 1, 1, 1, 4, 4, 1)
    saved_limit = conv_kernels.CHUNK_BYTES
    conv_kernels.CHUNK_BYTES = 3 * g.k * g.p * 4
    try:
        assert list(conv_kernels.chunks(g, 4)) == [(0, 3), (3, 3), (6, 1)]
    finally:
        conv_kernels.CHUNK_BYTES = saved_limit


@pytest.mark.parametrize("name", ["linear", "relu", "add"])
@settings(max_examples=10, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # one width for every example
@given(data=st.data())
def test_kernels_match_references_in_blocks_on_two_workers(two_workers, name, data):
    """GEMMs and elementwise loops cut into blocks as large tensors are, on tiny ones."""
    case = draw(data, name)
    saved = (linear_kernels.FLOPS_PER_BLOCK, linear_kernels.MIN_WIDTH,
             elementwise_kernels.PARALLEL_ELEMENTS)
    linear_kernels.FLOPS_PER_BLOCK, linear_kernels.MIN_WIDTH = 1, 1
    elementwise_kernels.PARALLEL_ELEMENTS = 2
    try:
        run = Run(name, case)
        run.check_forward()
        run.check_grads()
    finally:
        (linear_kernels.FLOPS_PER_BLOCK, linear_kernels.MIN_WIDTH,
         elementwise_kernels.PARALLEL_ELEMENTS) = saved


# ---- the second dtype --------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(registry.OPS))
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_kernels_work_in_float64(name, data):
    run = Run(name, draw(data, name), dtype=np.float64)
    run.check_forward()
    run.check_grads()


# ---- modes and aux buffers ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["batchnorm", "dropout"])
@SETTINGS
@given(data=st.data())
def test_inference_mode_matches_reference(name, data):
    run = Run(name, draw(data, name), training=False)
    run.check_forward()
    assert not run.aux


WITH_AUX = sorted(name for name, op in registry.OPS.items() if op.aux)


@pytest.mark.parametrize("name", WITH_AUX)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_forward_without_aux_gives_the_same_output(name, data):
    """A forward asked for no aux buffer (the backward will not run) takes its own path,
    and still writes the same output; dropout still draws the same mask."""
    case = draw(data, name)
    full = Run(name, case)
    bare = Run(name, case, keep=frozenset())
    assert not bare.aux
    assert np.array_equal(full.out, bare.out, equal_nan=True)


def test_dropout_mask_depends_only_on_the_generator_state():
    op = registry.OPS["dropout"]
    x = np.ones((3, 50), np.float32)
    ctx = make_ctx(op, {"p": 0.4}, [x])
    fwd = kernel(op, "fwd")
    outs, masks = [], []
    for keep in (True, False, True):
        out, aux = np.empty_like(x), {"mask": np.empty(x.shape, np.uint8)} if keep else {}
        fwd(ctx, [x], {}, out, aux, True, np.random.default_rng(5))
        outs.append(out)
        masks.extend(aux.values())
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    assert np.array_equal(masks[0], masks[1])
    assert np.array_equal(masks[0].astype(bool), outs[0] != 0)
    other = np.empty_like(x)
    fwd(ctx, [x], {}, other, {}, True, np.random.default_rng(6))
    assert not np.array_equal(other, outs[0])


@pytest.mark.parametrize("attrs", [dict(kernel=3, stride=2, pad=1, ceil=True),
                                   dict(kernel=2, ceil=False)])
def test_maxpool_without_argmax_takes_its_own_path_to_the_same_output(attrs):
    op = registry.OPS["maxpool"]
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 7)).astype(np.float32)
    ctx = make_ctx(op, attrs, [x])
    with_arg, without = _empty(ctx.out.shape, np.float32), _empty(ctx.out.shape, np.float32)
    arg = _empty(ctx.out.shape, np.int32)
    kernel(op, "fwd")(ctx, [x], {}, with_arg, {"argmax": arg}, True, None)
    kernel(op, "fwd")(ctx, [x], {}, without, {}, True, None)
    assert np.array_equal(with_arg, without)
    expected, aux = run_forward(op, attrs, [x.astype(np.float64)], {})
    assert np.array_equal(arg, aux["argmax"])
    assert_close(with_arg, expected, np.float32, "maxpool")


@pytest.mark.parametrize("name,attrs,inputs", [
    ("maxpool", dict(kernel=3, stride=2, pad=1, ceil=True), 1),
    ("maxpool", dict(kernel=2, ceil=False), 1),  # 2x2 loops, an odd height left over
    ("maxpool", dict(kernel=2, ceil=True), 1),  # an overhanging window: general loops
    ("maxpool", dict(kernel=3, stride=2, ceil=True), 1),  # 3x3 loops, a clipped column
    ("maxpool", dict(kernel=3, stride=2, ceil=False), 1),
    ("global_maxpool", {}, 1),
    ("maximum", {}, 3),
])
def test_max_ties_go_to_the_first_candidate_as_in_the_reference(name, attrs, inputs):
    """The strategies draw distinct values; here most windows hold ties."""
    rng = np.random.default_rng(2)
    xs = [rng.integers(0, 2, (2, 2, 7, 6)).astype(np.float32) for _ in range(inputs)]
    run = Run(name, Case(attrs, xs))
    assert np.array_equal(run.aux["argmax"], run.ref_aux["argmax"])
    run.check_forward()
    run.check_grads()


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5, 2), (1, 2, 1, 1)])
def test_batchnorm_updates_running_statistics(shape):
    op = registry.OPS["batchnorm"]
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    c = shape[1]
    mean0, var0 = rng.standard_normal(c).astype(np.float32), np.full(c, 0.5, np.float32)
    attrs = dict(momentum=0.9)
    ctx = make_ctx(op, attrs, [x])
    params = {"mean": mean0.copy(), "var": var0.copy()}
    kernel(op, "fwd")(ctx, [x], params, np.empty_like(x), {}, True, None)
    # by hand: m values per channel, unbiased variance (a factor 1 when m = 1)
    xs = np.moveaxis(x.astype(np.float64), 1, 0).reshape(c, -1)
    m = xs.shape[1]
    batch_var = xs.var(axis=1) * (m / (m - 1) if m > 1 else 1.0)
    assert_close(params["mean"], 0.9 * mean0 + 0.1 * xs.mean(axis=1), np.float32, "mean")
    assert_close(params["var"], 0.9 * var0 + 0.1 * batch_var, np.float32, "var")
    # frozen (global statistics) or inference: the stored statistics stay as they are
    for attrs, training in ((dict(global_stats=True), True), ({}, False)):
        ctx = make_ctx(op, attrs, [x])
        before = {k: v.copy() for k, v in params.items()}
        kernel(op, "fwd")(ctx, [x], params, np.empty_like(x), {}, training, None)
        assert all(np.array_equal(before[k], params[k]) for k in params)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32])
def test_embed_takes_integer_or_float_indices_and_refuses_one_out_of_range(dtype):
    rng = np.random.default_rng(6)
    x = np.array([[3, 0, 3], [1, 1, 2]]).astype(dtype)
    params = {"weight": _normal(rng, 4, 5), "bias": _normal(rng, 5)}
    run = Run("embed", Case(dict(num_output=5, input_dim=4), [x], params))
    assert run.out.dtype == np.float32
    run.check_forward()
    run.check_grads()
    bad = np.array([0, 4]).astype(dtype)
    ctx = make_ctx(run.op, dict(num_output=5, input_dim=4), [bad])
    with pytest.raises(DataError, match="embed index 4 at position 1 is outside"):
        kernel(run.op, "fwd")(ctx, [bad], run.params, np.empty((2, 5), np.float32), {}, True,
                              None)


def test_loss_labels_outside_the_classes_are_refused():
    op = registry.OPS["softmax_cross_entropy"]
    logits = np.zeros((2, 3), np.float32)
    label = np.array([1, 3], np.int32)
    ctx = make_ctx(op, {}, [logits, label])
    from bwplan.errors import DataError
    with pytest.raises(DataError, match="outside the 3 classes"):
        kernel(op, "fwd")(ctx, [logits, label], {}, np.empty((), np.float32), {}, True,
                          None)


def test_scratch_buffers_are_reused_between_calls():
    op = registry.OPS["conv2d"]
    x = np.ones((2, 3, 8, 8), np.float32)
    attrs = dict(out=4, kernel=3, pad=1)
    ctx = make_ctx(op, attrs, [x])
    params = {"weight": np.ones((4, 3, 3, 3), np.float32), "bias": np.zeros(4, np.float32)}
    out = np.empty(ctx.out.shape, np.float32)
    kernel(op, "fwd")(ctx, [x], params, out, {}, True, None)
    held = scratch.held_bytes()
    kernel(op, "fwd")(ctx, [x], params, out, {}, True, None)
    assert scratch.held_bytes() == held > 0
    assert out[0, 0, 4, 4] == 27 and out[0, 0, 0, 0] == 12  # 3x3x3 ones; a padded corner


def test_conv2d_winograd_dw_parts_stay_bounded_on_wide_layers():
    from bwplan.kernels.cpu import winograd
    # 512 -> 512 channels at 7x7, batch 64: a [16, 512, 512] part is 16 MiB
    parts = winograd.chunks(64, 512, 512, 7, 7, 4, winograd.DW_CHUNK_BYTES, dw=True)
    assert len(parts) * 16 * 512 * 512 * 4 <= winograd.DW_PARTS_BYTES
    assert sum(nb for _, nb in parts) == 64
    narrow = winograd.chunks(64, 32, 64, 16, 16, 4, winograd.DW_CHUNK_BYTES, dw=True)
    assert narrow == winograd.chunks(64, 32, 64, 16, 16, 4, winograd.DW_CHUNK_BYTES)


# ---- Winograd F(2x2, 5x5) -------------------------------------------------------------------
# float32 error of winograd5's forward, dX and dW over the largest |result|, against a
# float64 convolution, on layers of unit-variance inputs and weights scaled by 1/sqrt(25C)
# (winograd5.py states the measured figures: up to 1.2e-5)
WINOGRAD5_ERROR = 5e-5


class winograd5_from:
    """Within it, conv2d takes Winograd F(2x2, 5x5) from `channels` channels, its dW at
    every width, with chunks of `samples` samples (of `case`, float32)."""

    def __init__(self, channels: int, case: Case | None = None, samples: int = 1):
        self.channels, self.case, self.samples = channels, case, samples

    def __enter__(self):
        from bwplan.kernels.cpu import winograd5
        self.saved = (conv_kernels.WINOGRAD5_MIN_CHANNELS, conv_kernels.WINOGRAD5_DW_MIN_WIDTH,
                      winograd5.CHUNK_BYTES, winograd5.DW_CHUNK_BYTES)
        conv_kernels.WINOGRAD5_MIN_CHANNELS, conv_kernels.WINOGRAD5_DW_MIN_WIDTH = \
            self.channels, 1
        if self.case is not None:
            ctx = make_ctx(registry.OPS["conv2d"], self.case.attrs,
                           [x.astype(np.float32) for x in self.case.inputs])
            g = conv_kernels.geometry(ctx)
            th, tw = winograd5.tiles(g.ho, g.wo)
            winograd5.CHUNK_BYTES = winograd5.DW_CHUNK_BYTES = \
                self.samples * 36 * max(g.c, g.o) * th * winograd5.pitch(tw) * 4

    def __exit__(self, *exc):
        from bwplan.kernels.cpu import winograd5
        (conv_kernels.WINOGRAD5_MIN_CHANNELS, conv_kernels.WINOGRAD5_DW_MIN_WIDTH,
         winograd5.CHUNK_BYTES, winograd5.DW_CHUNK_BYTES) = self.saved


@st.composite
def winograd5_case(draw):
    """Stride-1 5x5 convolutions, padding 0 to 4, odd and even output sizes."""
    rng = _rng(draw)
    pad = (draw(st.integers(0, 4)), draw(st.integers(0, 4)))
    attrs = dict(out=draw(st.integers(1, 4)), kernel=5, pad=pad, bias=draw(st.booleans()))
    c = draw(st.integers(1, 4))
    h = max(1, 5 - 2 * pad[0]) + draw(st.integers(0, 5))
    w = max(1, 5 - 2 * pad[1]) + draw(st.integers(0, 5))
    n = draw(st.integers(1, 4))
    params = {"weight": _normal(rng, attrs["out"], c, 5, 5)}
    if attrs["bias"]:
        params["bias"] = _normal(rng, attrs["out"])
    return Case(attrs, [_normal(rng, n, c, h, w)], params), draw(st.integers(1, n))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_conv2d_winograd5_matches_reference_across_chunks(data):
    """F(2x2, 5x5)'s forward, dX and dW against the float64 direct convolution."""
    case, samples = data.draw(winograd5_case(), label="conv2d")
    _valid("conv2d", case)
    with winograd5_from(1, case, samples):
        run = Run("conv2d", case)
        g = conv_kernels._setup(run.ctx, 4)[0]
        assert g.winograd5 and g.winograd5_dw
        run.check_forward()
        run.check_grads()


def test_winograd5_transforms_compose_to_a_5_tap_correlation():
    """The 1-D identity behind the 2-D one, in float64: A^T [(G g) . (B^T d)] gives
    y_i = sum_k g_k d_(i+k), for i = 0, 1."""
    from bwplan.kernels.cpu import winograd5
    rng = np.random.default_rng(7)
    for _ in range(20):
        d, g = rng.standard_normal(6), rng.standard_normal(5)
        prod = [a * b for a, b in zip(winograd5._g.py_func(*g), winograd5._bt.py_func(*d))]
        y = winograd5._at.py_func(*prod)
        assert np.allclose(y, [g @ d[0:5], g @ d[1:6]], rtol=1e-12, atol=1e-12)
        # the transposes: <B^T d, v> = <d, B v>, <G g, u> = <g, G^T u>, <A^T m, p> = <m, A p>
        v, u, p = rng.standard_normal(6), rng.standard_normal(6), rng.standard_normal(2)
        assert np.isclose(np.dot(winograd5._bt.py_func(*d), v),
                          np.dot(d, winograd5._b.py_func(*v)))
        assert np.isclose(np.dot(winograd5._g.py_func(*g), u),
                          np.dot(g, winograd5._gt.py_func(*u)))
        assert np.isclose(np.dot(winograd5._at.py_func(*v), p),
                          np.dot(v, winograd5._a.py_func(*p)))


@pytest.mark.parametrize("c,o,size,pad", [(32, 32, 16, 2), (32, 64, 8, 2), (16, 16, 12, 0),
                                          (16, 16, 12, 4)])
def test_conv2d_winograd5_float32_error_stays_within_its_bound(c, o, size, pad):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, c, size, size))
    w = rng.standard_normal((o, c, 5, 5)) / np.sqrt(25 * c)
    attrs = dict(out=o, kernel=5, pad=pad, bias=False)
    with winograd5_from(16):
        run = Run("conv2d", Case(attrs, [x], {"weight": w}))
        assert conv_kernels._setup(run.ctx, 4)[0].winograd5
        dy = rng.standard_normal(run.out.shape).astype(np.float32)
        dx, dw = np.empty_like(run.inputs[0]), np.empty_like(run.params["weight"])
        kernel(run.op, "dx:x")(run.ctx, {"weight": run.params["weight"]}, dy, 0, dx)
        kernel(run.op, "dw:weight")(run.ctx, {"x": run.inputs[0]}, dy, dw)
    rule_x, rule_w = run.op.grad_for("x"), run.op.grad_for("weight")
    ref_saved = {"x": run.ref_inputs[0], "weight": run.ref_params["weight"]}
    refs = (run.ref_out, rule_x.reference(run.ref_ctx, ref_saved, dy.astype(np.float64), 0),
            rule_w.reference(run.ref_ctx, ref_saved, dy.astype(np.float64), 0))
    for what, got, ref in zip(("out", "dx", "dw"), (run.out, dx, dw), refs):
        error = np.abs(got - ref).max() / np.abs(ref).max()
        assert error <= WINOGRAD5_ERROR, f"{what}: {error:.2e}"


def test_conv2d_takes_winograd5_for_wide_stride_1_5x5_layers_only():
    def geometry(c, o, size=16, kernel=5, stride=1, pad=2, groups=1):
        x = np.zeros((2, c, size, size), np.float32)
        return conv_kernels.geometry(make_ctx(registry.OPS["conv2d"], dict(
            out=o, kernel=kernel, stride=stride, pad=pad, groups=groups), [x]))
    wide = conv_kernels.WINOGRAD5_MIN_CHANNELS
    assert geometry(wide, wide).winograd5 and geometry(wide, wide).winograd5_dw
    assert geometry(32, 64, size=8).winograd5                 # cifar10_quick's conv3:
    assert not geometry(32, 64, size=8).winograd5_dw          # dW on im2col
    assert not geometry(3, 32, size=32).winograd5             # the first layer: im2col
    assert not geometry(wide, wide, kernel=3).winograd5
    assert not geometry(wide, wide, stride=2).winograd5
    assert not geometry(wide, wide, pad=5, size=8).winograd5  # dX needs pad <= 4
    assert not geometry(2 * wide, 2 * wide, groups=2).winograd5


def test_conv2d_winograd5_gives_the_same_bits_on_one_thread_or_two(two_workers):
    rng = np.random.default_rng(9)
    attrs = dict(out=3, kernel=5, pad=(2, 1))
    case = Case(attrs, [_normal(rng, 5, 2, 7, 6)],
                {"weight": _normal(rng, 3, 2, 5, 5), "bias": _normal(rng, 3)})
    results = []
    with winograd5_from(1, case, 2):
        for width in (1, 2):
            threads.set_width(width)
            run = Run("conv2d", case)
            dout = results[0][3] if results else \
                _cast(rng.standard_normal(run.out.shape), np.float32)
            dx, dw = np.empty_like(run.inputs[0]), np.empty_like(run.params["weight"])
            kernel(run.op, "dx:x")(run.ctx, {"weight": run.params["weight"]}, dout, 0, dx)
            kernel(run.op, "dw:weight")(run.ctx, {"x": run.inputs[0]}, dout, dw)
            results.append((run.out, dx, dw, dout))
    for what, a, b in zip(("out", "dx", "dw"), results[0], results[1]):
        assert np.array_equal(a, b), f"{what} differs between one thread and two"


CIFAR_LIKE = """\
input image : f32[2, 3, 16, 16]
input label : i64[2]

conv1 = conv2d(image, out=16, kernel=5, pad=2)
pool1 = maxpool(conv1, kernel=3, stride=2)
relu1 = relu(pool1)
conv2 = conv2d(relu1, out=16, kernel=5, pad=2)
relu2 = relu(conv2)
flat  = flatten(relu2)
fc    = linear(flat, out=4)
loss  = softmax_cross_entropy(fc, label)
"""


def test_5x5_layers_train_bit_identically_pruned_or_not():
    """With conv1 frozen, the pruned run skips conv1's dW and conv2's dX (F(2x2, 5x5) at 16
    channels, as its forward and dW are): pruning changes what runs, never how a kept
    kernel computes, so the parameters after two steps agree bit for bit."""
    import bwplan
    runs = []
    with winograd5_from(16):
        conv2 = make_ctx(registry.OPS["conv2d"], dict(out=16, kernel=5, pad=2),
                         [np.zeros((2, 16, 8, 8), np.float32)])
        assert conv_kernels.geometry(conv2).winograd5_dw
        for prune in (True, False):
            prog = bwplan.compile(CIFAR_LIKE, target="cpu", rules=[("freeze", "conv1")],
                                  prune=prune, seed=0)
            prog.set_optimizer(0.01, 0.9, 5e-4)
            rng = np.random.default_rng(4)
            for _ in range(2):
                prog.run_step({"image": rng.standard_normal((2, 3, 16, 16)).astype(
                    np.float32), "label": rng.integers(0, 4, 2)})
            runs.append(prog)
    pruned, full = runs
    assert pruned.last_stats.launched["dx"] < full.last_stats.launched["dx"]
    for k, v in full.params.items():
        assert np.array_equal(pruned.params[k], v), k
