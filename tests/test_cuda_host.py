"""The CUDA target on any machine (no nvcc, no GPU): the kernel table against the op
registry and the sources, the launch geometry of every example's step against the device
limits, the one-allocation memory plan against the plan's peak estimate, the optimizer's
segment table against the CPU optimizer, and `bwplan compile --target cuda` without nvcc.
"""
from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bwplan
from bwplan import ops as registry
from bwplan.cli.main import main
from bwplan.kernels import cuda as cuda_table
from bwplan.kernels.cuda import build, limits
from bwplan.lower import cuda_launches as step_plan
from bwplan.errors import InternalError
from bwplan.lower.cuda_arena import ALIGNMENT, plan_arena
from bwplan.kernels.cuda.default import default_launch, signatures
from bwplan.ops.reference import make_ctx
from bwplan.lower.program import grad, value
from bwplan.optim import SgdSettings
from bwplan.runtime.optimizer import Sgd
from op_cases import ROWS, draw_case

EXAMPLES = sorted(Path(__file__).parent.parent.glob("examples/*.bw"))
# ops the cuda target refuses, and why (their rows say; docs/caffe.md says so too)
NO_CUDA = {name: row.no_cuda for name, row in ROWS.items() if row.no_cuda}
ALL_OPS = sorted(set(registry.OPS) - set(NO_CUDA))


def components(op) -> set[str]:
    return {"fwd"} | {("dw:" if op.slot(r.wrt) else "dx:") + r.wrt for r in op.grads}


# ---- the registry ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_OPS)
def test_every_op_has_cuda_kernels_for_fwd_and_every_grad_rule(name):
    op = registry.OPS[name]
    assert set(op.kernels.get("cuda", {})) == components(op)


@pytest.mark.parametrize("name", ALL_OPS)
def test_every_named_cuda_kernel_exists_in_its_source(name):
    op = registry.OPS[name]
    declared = build.kernels_in_sources()
    for component, kernel_name in op.kernels["cuda"].items():
        family, _, kernel = kernel_name.partition(".")
        assert f"{family}.cu" in declared, kernel_name
        assert kernel in declared[f"{family}.cu"], kernel_name
        entry = cuda_table.entry(name, component)
        for k in entry.kernels:
            assert k in declared[entry.source], (name, component, k)
            text = (build.source_dir() / entry.source).read_text()
            assert 'extern "C" __global__' in text.split(f"// == kernel {k} ==")[1].split(
                "// == kernel")[0], k


def test_the_cpu_entries_are_kept_beside_the_cuda_ones():
    for op in registry.OPS.values():
        assert set(op.kernels) >= ({"cpu"} if op.name in NO_CUDA else {"cuda"})
        if op.name in NO_CUDA:
            assert "cuda" not in op.kernels, op.name
            continue
        if "cpu" in op.kernels:
            assert set(op.kernels["cpu"]) == set(op.kernels["cuda"]), op.name


def test_runtime_kernels_exist():
    declared = build.kernels_in_sources()[cuda_table.RUNTIME_SOURCE]
    assert set(cuda_table.RUNTIME_KERNELS) <= declared


# ---- launch arguments against the kernels' C signatures -------------------------------------
# what each C parameter type receives from the launch code
_C_TYPES = {"pointer": np.dtype(np.uintp), "float": np.dtype(np.float32),
            "double": np.dtype(np.float64),
            "int": np.dtype(np.int32), "long long": np.dtype(np.int64),
            "unsigned long long": np.dtype(np.uint64)}


def _c_types(source: str, params) -> list[np.dtype]:
    """The argument dtypes a kernel with these parameters takes; a shape struct passed by
    value (PoolShape, ConvShape: int fields; PermShape: long long arrays) takes one value
    per field, an array field one per element; ClassWeights: a float array)."""
    text = (build.source_dir() / source).read_text()
    out = []
    for p in params:
        if p.ctype in _C_TYPES:
            out.append(_C_TYPES[p.ctype])
            continue
        body = re.search(r"struct\s+%s\s*\{([^}]*)\}" % re.escape(p.ctype), text).group(1)
        body = re.sub(r"//[^\n]*", "", body)
        for decl in filter(None, (d.strip() for d in body.split(";"))):
            ctype = next(t for t in ("long long", "int", "float")
                         if decl.startswith(t + " "))
            for name in decl[len(ctype):].split(","):
                size = re.search(r"\[(\d+)\]", name)
                out += [_C_TYPES[ctype]] * (int(size.group(1)) if size else 1)
    return out


def _fake_launches(op, component, ctx, env):
    """The launches of one component, with made-up device addresses."""
    e = cuda_table.entry(op.name, component)
    addresses = iter(range(4096, 1 << 40, 4096))
    inputs = [next(addresses) for _ in ctx.inputs]
    params = {s.name: next(addresses) for s in op.param_slots(ctx.attrs)}
    aux = {a.name: next(addresses) for a in op.aux}
    kind, _, wrt = component.partition(":")
    if kind == "fwd":
        return cuda_table.launches(e, ctx, inputs, params, next(addresses), aux, True, env)
    rule = op.grad_for(wrt)
    saved = {name: next(addresses) for name in rule.needs_for(ctx.attrs)}
    if kind == "dx":
        index = next(i for i in range(len(ctx.inputs)) if op.port_for(i).name == wrt)
        return cuda_table.launches(e, ctx, saved, next(addresses), index, next(addresses),
                                   True, env)
    return cuda_table.launches(e, ctx, saved, next(addresses), next(addresses), True, env)


@pytest.mark.parametrize("name", ALL_OPS)
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_every_launch_passes_what_its_kernels_c_signature_takes(name, data):
    """Rows and default launches alike: as many arguments as the kernel's parameters, each
    of the parameter's C type (the launch code passes raw bytes; a mismatch would not be
    caught before the device)."""
    op = registry.OPS[name]
    case = draw_case(data, name)
    inputs = [x.astype(np.float32) if x.dtype.kind == "f" else x for x in case.inputs]
    ctx = make_ctx(op, case.attrs, inputs)
    env = limits.Env(sm_count=2, workspace=1 << 20, workspace_bytes=1 << 30, counter=64)
    for component in op.kernels["cuda"]:
        e = cuda_table.entry(name, component)
        for launch in _fake_launches(op, component, ctx, env):
            types = _c_types(e.source, signatures(e.source)[launch.kernel])
            assert [a.dtype for a in launch.args] == types, (component, launch.kernel)


def test_the_default_launch_binds_arguments_by_parameter_name():
    """relu's kernels have no row: their launches are the ones written out here."""
    op = registry.OPS["relu"]
    ctx = make_ctx(op, {"negative_slope": 0.25}, [np.zeros((3000, 300), np.float32)])
    env = limits.Env(sm_count=3)
    n = 3000 * 300
    fwd, = cuda_table.launches(cuda_table.entry("relu", "fwd"), ctx, [4096], {}, 8192, {},
                               True, env)
    want = limits.grid_stride("relu_fwd", n, env, np.uintp(4096), np.uintp(8192),
                              np.int64(n), np.float32(0.25))
    assert fwd == want and fwd.grid == (3 * 8 * limits.GRID_STRIDE_WAVES, 1, 1)
    dx, = cuda_table.launches(cuda_table.entry("relu", "dx:x"), ctx, {"out": 8192}, 12288,
                              0, 16384, True, env)
    assert dx == limits.grid_stride("relu_dx", n, env, np.uintp(8192), np.uintp(12288),
                                    np.uintp(16384), np.int64(n), np.float32(0.25),
                                    np.int32(1))


def test_a_default_launch_refuses_a_parameter_it_cannot_bind():
    with pytest.raises(InternalError, match="'seed' binds to nothing"):
        default_launch(registry.OPS["dropout"], "fwd", "elementwise.cu", "dropout_fwd")


# ---- launch geometry of every example ------------------------------------------------------
def compiled(path, prune=True, rules=()):
    return bwplan.compile(str(path), target="reference", prune=prune, rules=list(rules))


def layout_of(prog, sm_count=limits.DEFAULT_SM_COUNT):
    sizes = {name: int(v.size) for name, v in prog.params.items()}
    return step_plan.host_layout(prog.program, sizes, plan_arena(prog.program), sm_count)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize("sm_count", [1, limits.DEFAULT_SM_COUNT])
def test_every_launch_of_every_example_is_within_the_device_limits(path, prune, sm_count):
    prog = compiled(path, prune)
    layout = layout_of(prog, sm_count)
    settings = SgdSettings(weight_decay=5e-4)
    planned = step_plan.step_launches(prog.program, layout, settings,
                                      step_plan.segment_table(prog.program, layout, settings),
                                      training=True, backward=True)
    steps = [p for p in planned if p.phase in ("fwd", "dx", "dw")]
    assert len(steps) == len(prog.program.forward) + len(prog.program.backward)
    source = build.program_source(prog.program)
    for item in planned:
        assert item.launches, item
        for launch in item.launches:
            limits.check(launch)
            assert f"void {launch.kernel}(" in source or f"{launch.kernel}(" in source
            for arg in launch.args:
                assert isinstance(arg, np.generic), (launch.kernel, arg)


def test_split_k_fills_the_device_within_its_workspace():
    from bwplan.kernels.cuda.conv import split_k
    env = limits.Env(sm_count=132)
    assert split_k(256, 2048, 64, 1, 256 * 2048, env) == 1        # enough tiles already
    assert split_k(32, 27, 65536, 1, 32 * 27, env) > 16           # long reduction, one tile
    assert split_k(32, 27, 100, 1, 32 * 27, env) == 1             # too short to split
    big = split_k(64, 64, 10**8, 1, 2**24, env)
    assert big * 4 * 2**24 <= limits.SPLIT_K_MAX_WORKSPACE or big == 1


def test_unsupported_sizes_are_user_errors_with_a_span():
    text = ("input x : f32[70000, 1, 200, 200]\ninput y : i64[70000]\n"
            "c = conv2d(x, out=2, kernel=1)\nf = linear(c, out=2)\n"
            "loss = softmax_cross_entropy(f, y)\n")
    prog = bwplan.compile(text, target="reference")
    with pytest.raises(bwplan.errors.BwError) as info:
        layout = layout_of(prog)
        step_plan.step_launches(prog.program, layout, SgdSettings(),
                                step_plan.segment_table(prog.program, layout, SgdSettings()),
                                True, True)
    assert "32-bit" in info.value.message and info.value.span.line == 3


# ---- the memory plan -----------------------------------------------------------------------
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
@pytest.mark.parametrize("prune", [True, False])
def test_arena_never_shares_bytes_between_live_buffers(path, prune):
    prog = compiled(path, prune)
    arena = plan_arena(prog.program)
    buffers = [b for b in arena.buffers.values() if b.nbytes]
    for b in buffers:
        assert b.offset % ALIGNMENT == 0
        assert b.offset + b.nbytes <= arena.size
    for a, b in itertools.combinations(buffers, 2):
        if a.overlaps_in_time(b):
            assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset, (a, b)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
@pytest.mark.parametrize("prune", [True, False])
def test_arena_size_matches_the_plans_peak_estimate(path, prune):
    prog = compiled(path, prune)
    arena = plan_arena(prog.program)
    s = prog.plan.summary
    estimate = s.planned_peak_bytes if prune else s.full_peak_bytes
    # the arena holds the program's buffers but for the CPU's accumulation temporaries
    scratch = [b for b in prog.program.buffers if b.scratch]
    assert arena.peak_live == prog.program.peak_bytes(scratch=False)
    assert arena.peak_live <= estimate
    if not scratch:
        assert arena.peak_live == estimate
    assert arena.peak_live <= arena.size
    assert abs(arena.size - estimate) <= 0.10 * estimate, (arena.size, estimate)


def test_arena_lifetimes_follow_the_schedule():
    prog = compiled(Path(__file__).parent.parent / "examples/frozen_backbone.bw")
    arena = plan_arena(prog.program)
    bufs = arena.buffers
    image, relu1, flat = (bufs[value(n)] for n in ("image", "relu1", "flat"))
    assert image.first == 0 and image.last == arena.positions - 1
    # relu1 runs in place on conv1's output (Step.applied_by): conv1 writes relu1's buffer,
    # and its own output is no buffer; nothing below fc1 is kept
    assert value("conv1") not in bufs and relu1.first == 1
    assert grad("flat") not in bufs and grad("pool3") not in bufs
    assert flat.last > len(prog.program.forward)      # read by fc1's dW


# ---- the optimizer's segments --------------------------------------------------------------
def _apply_segments(table, params, grads, scaled, velocity, s: SgdSettings):
    """sgd_update of update.cu, in NumPy."""
    for seg in table:
        p = slice(seg["param_off"], seg["param_off"] + seg["size"])
        w = params[p]
        diff = seg["decay"] * s.weight_decay * w
        if seg["source"] >= 0:
            src = grads if seg["source"] == 0 else scaled
            q = slice(seg["source_off"], seg["source_off"] + seg["size"])
            diff = diff + seg["grad_mult"] * src[q]
        velocity[p] = s.momentum * velocity[p] + s.lr * diff
        params[p] = w - velocity[p]


@pytest.mark.parametrize("name,rules", [
    ("siamese_per_branch_lr", ()), ("frozen_backbone", ()), ("siamese_mlp", ()),
    ("middle_frozen", ()), ("cnn_small", (("freeze", "conv*"),)),
])
@pytest.mark.parametrize("prune", [True, False])
def test_segments_reproduce_the_cpu_optimizer(name, rules, prune):
    path = Path(__file__).parent.parent / f"examples/{name}.bw"
    prog = compiled(path, prune, rules)
    program = prog.program
    s = SgdSettings(lr=0.1, momentum=0.9, weight_decay=0.01)
    sizes = {k: int(v.size) for k, v in prog.params.items()}
    layout = layout_of(prog)
    table = step_plan.segment_table(program, layout, s)
    rng = np.random.default_rng(0)
    computed = {st.param for st in program.backward if st.phase == "dw"}
    grads = {p: rng.standard_normal(prog.params[p].shape).astype(np.float32) for p in computed}
    scaled = {p: rng.standard_normal(prog.params[p].shape).astype(np.float32)
              for p in computed if p in program.mixed_scale}
    host = {k: v.copy() for k, v in prog.params.items()}
    opt = Sgd(s)
    for _ in range(2):
        opt.step(program.plan.updates, host, grads, scaled)
    flat = np.zeros(sum(sizes.values()), np.float32)
    flat_g, velocity = np.zeros_like(flat), np.zeros_like(flat)
    flat_s = np.zeros(max(1, sum(sizes[p] for p in layout.scaled_offsets)), np.float32)
    for k, v in prog.params.items():
        off = layout.param_offsets[k]
        flat[off:off + v.size] = v.ravel()
        if k in grads:
            flat_g[off:off + v.size] = grads[k].ravel()
        if k in scaled:
            so = layout.scaled_offsets[k]
            flat_s[so:so + v.size] = scaled[k].ravel()
    for _ in range(2):
        _apply_segments(table, flat, flat_g, flat_s, velocity, s)
    for k, v in host.items():
        off = layout.param_offsets[k]
        np.testing.assert_allclose(flat[off:off + v.size], v.ravel(), rtol=1e-5, atol=1e-6,
                                   err_msg=k)


# ---- sources -------------------------------------------------------------------------------
def test_program_source_holds_only_the_kernels_the_program_launches():
    prog = compiled(Path(__file__).parent.parent / "examples/frozen_backbone.bw")
    source = build.program_source(prog.program)
    used = {k for ks in build.program_kernels(prog.program).values() for k in ks}
    defined = set(__import__("re").findall(r'extern "C" __global__ void (?:__launch_bounds__'
                                           r'\(\w+\)\s*)?(\w+)\(', source))
    assert defined == used
    assert "conv2d_dw" not in defined and "conv2d_dx" not in defined
    assert "#include" not in source and "#pragma once" not in source


def test_helper_sections_between_kernels_go_to_the_preamble():
    """A program with normalize but no roi_pool still gets normalize's helper, which sits
    after roi_pool's kernels in spatial.cu."""
    spatial = build.read_kernel_file("spatial.cu")
    assert "bw_group_elem(int n" in spatial.preamble and "struct BwRoi" in spatial.preamble
    assert not any("// == helpers ==" in block or "bw_group_elem(int n" in block
                   for block in spatial.kernels.values())
    assert "__global__" not in spatial.preamble


def test_ptxas_report_is_parsed_per_kernel():
    log = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k1' for 'sm_90'
ptxas info    : Function properties for k1
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 8320 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function 'k2' for 'sm_90'
ptxas info    : Function properties for k2
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 0 barriers, 380 bytes cmem[0]
"""
    r = build.parse_ptxas(log)
    assert r["k1"] == build.Resources("k1", 40, 8320, 8, 4, 4)
    assert r["k2"] == build.Resources("k2", 12, 0, 0, 0, 0)


def test_compile_cuda_without_nvcc_still_writes_the_sources(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    path = Path(__file__).parent.parent / "examples/frozen_backbone.bw"
    assert main(["compile", str(path), "--target", "cuda", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "nvcc not found" in out
    for name in ("frozen_backbone.cu", "plan.json", "schedule.json", "manifest.json",
                 "frozen_backbone.bw"):
        assert (tmp_path / name).exists(), name
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["target"] == "cuda" and manifest["cubin"] is None
    assert manifest["arena_bytes"] == manifest["plan_peak_bytes"]
    schedule = json.loads((tmp_path / "schedule.json").read_text())
    assert not any(s["phase"] == "dw" and s["layer"].startswith("conv")
                   for s in schedule["backward"])


def test_compile_cuda_reports_a_bad_network_as_a_user_error(tmp_path, capsys):
    bad = tmp_path / "bad.bw"
    bad.write_text("input x : f32[2, 3]\ny = relu(z)\n")
    assert main(["compile", str(bad), "--target", "cuda", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err


def test_the_runtime_says_what_it_needs_without_a_gpu(monkeypatch):
    import bwplan.runtime.cuda as runtime
    import builtins
    real_import = builtins.__import__

    def no_pycuda(name, *args, **kwargs):
        if name.startswith("pycuda"):
            raise ImportError("No module named 'pycuda'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pycuda)
    monkeypatch.setattr(runtime, "_DEVICE", None)
    with pytest.raises(bwplan.errors.BwError) as info:
        runtime.device()
    assert "needs a GPU and PyCUDA" in info.value.message
    assert "pip install -e '.[cuda]'" in info.value.message


def test_geometry_of_the_gemm_covers_every_output():
    """Every (m, n) of a GEMM falls in one tile of the grid, for shapes around the tile."""
    from bwplan.kernels.cuda.conv import gemm_grid
    for m, n in [(1, 1), (63, 65), (64, 64), (129, 1000)]:
        gx, gy, _ = gemm_grid(m, n)
        assert gx * limits.GEMM_TILE_N >= n > (gx - 1) * limits.GEMM_TILE_N
        assert gy * limits.GEMM_TILE_M >= m > (gy - 1) * limits.GEMM_TILE_M
    assert math.prod(limits.Launch("k", (1, 2, 3), (4, 8, 1), ()).grid) == 6


# ---- partly frozen parameters: the sliced dW and the update over slices ---------------------
# The sliced kernels cannot run here; what can be checked is everything around them: every
# rule that splits by rows has a sliced form, its launches pass what the kernels' C
# signatures take, and the launches of a whole dW step, read by a NumPy model of each kernel
# (written from its C: which rows of dY it reads, where it stores, the split-K slabs), give
# the CPU target's gradient: the trainable rows' dW, zeros elsewhere.
def _sliced(op, component) -> bool:
    kind, _, wrt = component.partition(":")
    return kind == "dw" and op.grad_for(wrt).by_rows


@pytest.mark.parametrize("name", ALL_OPS)
def test_every_rule_that_splits_by_rows_has_a_sliced_cuda_form(name):
    op = registry.OPS[name]
    declared = build.kernels_in_sources()
    for component in op.kernels["cuda"]:
        e = cuda_table.entry(name, component)
        assert (e.rows is not None) == _sliced(op, component), component
        assert set(e.rows_kernels) <= declared[e.source], component
        assert set(e.kernels_for(True)) == set(e.rows_kernels)


ROW_CASES = [   # (op, attrs, input shape, trainable rows)
    ("linear", dict(out=1010), (8, 16), ((1000, 1010),)),
    ("linear", dict(out=130), (1000, 3), ((0, 5), (70, 130))),          # split-K per range
    ("linear", dict(out=7), (4, 2, 3), ((2, 5), (6, 7))),
    ("conv2d", dict(out=20, kernel=3, pad=1), (6, 5, 20, 20), ((0, 3), (10, 20))),  # split-K
    ("conv2d", dict(out=6, kernel=(3, 2), stride=2, dilation=(1, 2)), (2, 3, 9, 8),
     ((5, 6),)),
]


def _row_ctx(name, attrs, shape):
    return make_ctx(registry.OPS[name], attrs, [np.zeros(shape, np.float32)])


@pytest.mark.parametrize("name,attrs,shape,rows", ROW_CASES)
def test_sliced_launches_pass_what_their_kernels_c_signatures_take(name, attrs, shape, rows):
    ctx = _row_ctx(name, attrs, shape)
    env = limits.Env(sm_count=132, workspace=1 << 20, workspace_bytes=1 << 30)
    for slot in ("weight", "bias"):
        e = cuda_table.entry(name, f"dw:{slot}")
        launches = cuda_table.rows_launches(e, ctx, {"x": 4096}, 8192, 1 << 30, False, rows,
                                            env)
        assert launches and all(l.kernel in e.rows_kernels for l in launches)
        for launch in launches:
            types = _c_types(e.source, signatures(e.source)[launch.kernel])
            assert [a.dtype for a in launch.args] == types, (slot, launch.kernel)


class _Memory:
    """Flat float32 device buffers at made-up addresses; an address inside a buffer (a
    pointer the launch code offset) resolves to the rest of that buffer."""

    def __init__(self) -> None:
        self.buffers: dict[int, np.ndarray] = {}
        self._next = 1 << 20

    def put(self, array: np.ndarray) -> int:
        addr = self._next
        self.buffers[addr] = np.ascontiguousarray(array, np.float32).reshape(-1).copy()
        self._next += -(-4 * max(array.size, 1) // 4096) * 4096 + 4096
        return addr

    def at(self, addr: int) -> np.ndarray:
        for base, buf in self.buffers.items():
            if base <= addr < base + 4 * buf.size:
                assert (addr - base) % 4 == 0
                return buf[(addr - base) // 4:]
        raise AssertionError(f"address {addr} is in no buffer")


def _split_range(k: int, splits: int, s: int) -> tuple[int, int]:
    """bw_split_range of common.cuh."""
    tile = limits.GEMM_TILE_K
    per = -(-(-(-k // tile)) // splits)
    return min(k, s * per * tile), min(k, (s + 1) * per * tile)


def _put(dst: np.ndarray, value: np.ndarray, accumulate: int) -> None:
    if accumulate:
        dst[:value.size] += value.reshape(-1)
    else:
        dst[:value.size] = value.reshape(-1)


def _emulate(launch, mem: _Memory, ctx) -> None:
    """What the kernel does with these arguments, read from its C source."""
    a = [int(v) if isinstance(v, np.integer) else float(v) for v in launch.args]
    if launch.kernel == "fill":
        mem.at(a[0])[:a[1]] = a[2]
    elif launch.kernel in ("linear_dw_reduce", "conv2d_dw_reduce"):
        ws, out, count, splits, acc = a
        part = mem.at(ws)[:splits * count].reshape(splits, count)
        _put(mem.at(out), part.sum(axis=0), acc)
    elif launch.kernel == "linear_db":    # one block per channel c of the pointer's view
        dout, db, b, o, acc = a
        c = launch.grid[0]
        dy = mem.at(dout)[:(b - 1) * o + c]
        _put(mem.at(db), np.array([dy[c0::o][:b].sum() for c0 in range(c)]), acc)
    elif launch.kernel == "conv2d_db":
        dout, db, n, o, hw, acc = a
        c = launch.grid[0]
        dy = mem.at(dout)
        sums = [sum(dy[(i * o + c0) * hw:(i * o + c0) * hw + hw].sum() for i in range(n))
                for c0 in range(c)]
        _put(mem.at(db), np.array(sums), acc)
    elif launch.kernel == "linear_dw_rows":
        x, dout, dw, ws, b, k, o, row0, rows, splits, acc = a
        xs = mem.at(x)[:b * k].reshape(b, k)
        dy = mem.at(dout)[:b * o].reshape(b, o)[:, row0:row0 + rows]
        for s in range(splits):
            k0, k1 = _split_range(b, splits, s)
            part = dy[k0:k1].T @ xs[k0:k1]
            if splits == 1:
                _put(mem.at(dw + 4 * row0 * k), part, acc)
            else:
                mem.at(ws + 4 * s * rows * k)[:rows * k] = part.reshape(-1)
    elif launch.kernel == "conv2d_dw_rows":
        from bwplan.ops.conv import _im2col
        x, dout, dw, ws, *shape, row0, rows, splits, acc = a
        n, c, h, w, o, ho, wo, kh, kw, *_ = shape
        cols = c * kh * kw
        im = _im2col(mem.at(x)[:n * c * h * w].reshape(n, c, h, w).astype(np.float64), ctx)
        bmat = im.transpose(0, 2, 1).reshape(n * ho * wo, cols)
        dy = mem.at(dout)[:n * o * ho * wo].reshape(n, o, ho * wo)[:, row0:row0 + rows]
        amat = dy.transpose(1, 0, 2).reshape(rows, n * ho * wo)
        for s in range(splits):
            k0, k1 = _split_range(n * ho * wo, splits, s)
            part = amat[:, k0:k1] @ bmat[k0:k1]
            if splits == 1:
                _put(mem.at(dw + 4 * row0 * cols), part, acc)
            else:
                mem.at(ws + 4 * s * rows * cols)[:rows * cols] = part.reshape(-1)
    else:
        raise AssertionError(f"no model of {launch.kernel}")


@pytest.mark.parametrize("sm_count", [1, 132])
@pytest.mark.parametrize("name,attrs,shape,rows", ROW_CASES)
def test_the_launches_of_a_sliced_dw_give_the_cpu_targets_gradient(name, attrs, shape, rows,
                                                                   sm_count):
    """Through the lowering's own dW launches (zeroing included), into a gradient that
    starts as NaN: the trainable rows hold the reference's dW, the frozen rows zeros; then
    a second use with `accumulate` adds its rows and leaves the frozen zeros alone."""
    op = registry.OPS[name]
    ctx = _row_ctx(name, attrs, shape)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    dout = rng.standard_normal(ctx.out.shape).astype(np.float32)
    mem = _Memory()
    x_at, dout_at = mem.put(x), mem.put(dout)
    env0 = limits.Env(sm_count=sm_count)
    for slot in ("weight", "bias"):
        e = cuda_table.entry(name, f"dw:{slot}")
        work = e.rows_workspace(ctx, rows, env0) if e.rows_workspace else 0
        assert e.rows_workspace is None or slot == "weight"
        ws_at = mem.put(np.full(max(work // 4, 1), np.nan, np.float32))
        env = limits.Env(sm_count=sm_count, workspace=ws_at, workspace_bytes=work)
        pshape = next(tuple(p.shape(ctx)) for p in op.param_slots(ctx.attrs)
                      if p.name == slot)
        grad_at = mem.put(np.full(int(np.prod(pshape)), np.nan, np.float32))
        want = op.grad_for(slot).reference(ctx, {"x": x.astype(np.float64)},
                                           dout.astype(np.float64), 0).reshape(pshape)
        mask = np.zeros(pshape[0], bool)
        for a, b in rows:
            mask[a:b] = True
        want = np.where(mask.reshape((-1,) + (1,) * (len(pshape) - 1)), want, 0.0)
        for accumulate, scale in ((False, 1), (True, 2)):
            launches = step_plan._dw(_FakeLayer(name), e, ctx, {"x": x_at}, dout_at, grad_at,
                                     accumulate, rows, _OneParam(pshape),
                                     _FakeLayout(pshape, env), "p")
            assert any(l.kernel in e.rows_kernels for l in launches)
            assert not any(l.kernel == "fill" for l in launches) or not accumulate
            for launch in launches:
                limits.check(launch)
                _emulate(launch, mem, ctx)
            got = mem.at(grad_at)[:want.size].reshape(pshape)
            assert not np.isnan(got).any(), (slot, "a row left unwritten")
            np.testing.assert_allclose(got, scale * want, rtol=1e-4, atol=1e-4,
                                       err_msg=f"{slot} accumulate={accumulate}")


class _FakeLayer:
    def __init__(self, name: str) -> None:
        self.name, self.op, self.span = "layer", name, None


class _OneParam:
    """The part of a Program `_dw` reads: the parameter's leading axis."""

    def __init__(self, shape) -> None:
        from types import SimpleNamespace
        self.plan = SimpleNamespace(net=SimpleNamespace(params={
            "p": SimpleNamespace(type=SimpleNamespace(shape=shape))}))


class _FakeLayout:
    def __init__(self, shape, env) -> None:
        self.param_sizes = {"p": int(np.prod(shape))}
        self._env = env

    def env(self, stream: int = 0):
        return self._env


def test_a_partly_frozen_program_launches_the_sliced_kernels_and_zeroes_frozen_rows():
    prog = compiled(Path(__file__).parent.parent / "examples/class_incremental.bw")
    layout = layout_of(prog)
    s = SgdSettings(lr=0.1, momentum=0.9, weight_decay=0.01)
    planned = step_plan.step_launches(prog.program, layout, s,
                                      step_plan.segment_table(prog.program, layout, s),
                                      training=True, backward=True)
    fc8 = [l for p in planned if p.phase == "dw" and p.layer == "fc8" for l in p.launches]
    kernels = [l.kernel for l in fc8]
    assert kernels == ["fill", "linear_dw_rows", "fill", "linear_db"]
    weight, bias = layout.grad("fc8.weight"), layout.grad("fc8.bias")
    assert fc8[0].args[0] == weight and fc8[0].args[1] == 1000 * 16   # rows 0:1000 zeroed
    assert [int(v) for v in fc8[1].args[7:9]] == [1000, 10]             # row0, rows
    assert fc8[3].grid[0] == 10 and fc8[3].args[1] == bias + 4 * 1000
    used = build.program_kernels(prog.program)["linear.cu"]
    assert used["linear_dw_rows"] == ["fc8 dw:weight"]
    assert used["linear_dw"] == ["fc7 dw:weight"]


@pytest.mark.parametrize("name,rules", [
    ("class_incremental", ()),
    ("cnn_small", (("freeze", "conv2.weight[0:16, 40:50]"), ("freeze", "conv2.bias[0:16]"),
                   ("freeze", "fc1.weight[3:9]"))),
])
def test_segments_over_slices_reproduce_the_cpu_optimizer(name, rules):
    """The update's segments of a partly frozen parameter cover its trainable rows only:
    after two steps of the update kernel's NumPy model the frozen rows are bit-identical
    and everything matches the host optimizer; the launch count is the host's."""
    path = Path(__file__).parent.parent / f"examples/{name}.bw"
    prog = compiled(path, True, rules)
    program = prog.program
    assert any(p.frozen_rows for p in prog.net.params.values())
    s = SgdSettings(lr=0.1, momentum=0.9, weight_decay=0.01)
    layout = layout_of(prog)
    table = step_plan.segment_table(program, layout, s)
    rng = np.random.default_rng(0)
    computed = {st.param for st in program.backward if st.phase == "dw"}
    grads = {p: rng.standard_normal(prog.params[p].shape).astype(np.float32) for p in computed}
    host = {k: v.copy() for k, v in prog.params.items()}
    opt = Sgd(s)
    for _ in range(2):
        launched = opt.step(program.plan.updates, host, grads, {})
    from bwplan.kernels.cuda import update
    assert update.updated_params(program, s.weight_decay) == launched
    sizes = {k: int(v.size) for k, v in prog.params.items()}
    flat = np.zeros(sum(sizes.values()), np.float32)
    flat_g, velocity = np.zeros_like(flat), np.zeros_like(flat)
    for k, v in prog.params.items():
        off = layout.param_offsets[k]
        flat[off:off + v.size] = v.ravel()
        if k in grads:
            flat_g[off:off + v.size] = grads[k].ravel()
    for _ in range(2):
        _apply_segments(table, flat, flat_g, np.zeros(1, np.float32), velocity, s)
    for k, v in host.items():
        off = layout.param_offsets[k]
        got = flat[off:off + v.size].reshape(v.shape)
        np.testing.assert_allclose(got, v, rtol=1e-5, atol=1e-6, err_msg=k)
        for a, b in prog.net.params[k].frozen_rows:
            assert np.array_equal(got[a:b], prog.params[k][a:b]), (k, "frozen rows moved")
            assert not velocity[off:off + v.size].reshape(v.shape)[a:b].any(), k
