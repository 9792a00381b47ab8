"""The CUDA sources with nvcc (no GPU needed): every kernel file compiles for sm_90, every
kernel the registry names is a function symbol of its file's cubin, nothing spills or
exceeds the device's per-block limits, `bwplan compile --target cuda` writes the sources
and the resource table, and a frozen backbone's program carries no dW kernel of a frozen
layer. Each file is compiled once per session, all in parallel.
"""
from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bwplan.kernels.cuda import build

if build.find_nvcc() is None:
    pytest.skip("nvcc not found", allow_module_level=True)

import bwplan  # noqa: E402
from bwplan.cli.main import main  # noqa: E402
from bwplan.kernels.cuda import limits  # noqa: E402

ARCH = "sm_90"
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="session")
def cubins(tmp_path_factory) -> dict[str, build.Compiled]:
    """file -> its compiled cubin and ptxas report, each file as written (with its
    #include of common.cuh)."""
    where = tmp_path_factory.mktemp("cubins")
    files = build.source_files()

    def one(name: str) -> build.Compiled:
        text = (build.source_dir() / name).read_text()
        return build.compile_cubin(text, ARCH, workdir=str(where), name=Path(name).stem,
                                   include=(str(build.source_dir()),))
    with ThreadPoolExecutor(max_workers=len(files)) as pool:
        return dict(zip(files, pool.map(one, files)))


@pytest.mark.parametrize("name", build.source_files())
def test_every_kernel_file_compiles_for_sm90(cubins, name):
    compiled = cubins[name]
    assert compiled.cubin[:4] == b"\x7fELF"
    declared = build.kernels_in_sources()[name]
    assert declared <= set(compiled.resources), declared - set(compiled.resources)
    assert "warning" not in compiled.log.lower(), compiled.log


def test_every_registered_kernel_is_a_symbol_of_its_cubin(cubins):
    for source, kernel in sorted(build.op_kernel_names()):
        symbols = build.cubin_functions(cubins[source].cubin)
        assert kernel in symbols, f"{kernel} is not in {source}'s cubin"
        assert kernel in cubins[source].resources


@pytest.mark.parametrize("name", build.source_files())
def test_kernels_fit_the_device_without_spilling(cubins, name):
    for r in cubins[name].resources.values():
        assert r.spill_stores == 0 and r.spill_loads == 0 and r.stack == 0, r
        assert r.shared <= limits.MAX_SHARED_PER_BLOCK, r
        assert r.registers <= 255, r
        # the GEMM kernels run 256 threads per block, and two blocks must fit an SM
        if r.kernel.endswith(("_fwd", "_dx", "_dw")) and r.shared > 4096:
            assert r.registers * limits.GEMM_THREADS * 2 <= limits.MAX_REGISTERS_PER_SM, r


@pytest.fixture(scope="module")
def frozen_backbone_compiled(tmp_path_factory):
    """`bwplan compile` of frozen_backbone for cuda, run once (nvcc takes seconds): the
    folder it wrote and what it printed."""
    import contextlib
    import io
    out = tmp_path_factory.mktemp("cuda") / "fb"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["compile", str(ROOT / "examples/frozen_backbone.bw"), "--target", "cuda",
                   "-o", str(out)])
    assert rc == 0
    return out, printed.getvalue()


def test_compile_command_writes_sources_and_reports_resources(frozen_backbone_compiled):
    out, text = frozen_backbone_compiled
    for name in ("frozen_backbone.cu", "frozen_backbone.cubin", "plan.json", "schedule.json",
                 "manifest.json"):
        assert (out / name).exists(), name
    assert re.search(r"^kernel\s+file\s+regs\s+smem", text, re.M), text
    assert re.search(r"^conv2d_fwd\s+conv\.cu\s+\d+\s+\d+", text, re.M), text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arch"] == ARCH and manifest["cubin"] == "frozen_backbone.cubin"
    assert all("registers" in k and "shared_bytes" in k for k in manifest["kernels"])


def test_frozen_backbone_program_has_no_dw_kernel_of_a_frozen_layer(frozen_backbone_compiled):
    prog = bwplan.compile(str(ROOT / "examples/frozen_backbone.bw"), target="reference")
    frozen = {l.name for l in prog.net.layers if l.frozen}
    assert frozen == {"conv1", "conv2", "conv3"}
    source = build.program_source(prog.program)
    for layer in frozen:
        assert f"{layer} dw:" not in source and f"{layer} dx:" not in source
    assert not re.search(r"void (__launch_bounds__\(\w+\)\s*)?conv2d_d[wxb]\(", source)
    out, _ = frozen_backbone_compiled   # the cubin of the same program, by the command line
    # the same source but for its title line
    assert (out / "frozen_backbone.cu").read_text().split("\n", 1)[1] == \
        source.split("\n", 1)[1]
    symbols = build.cubin_functions((out / "frozen_backbone.cubin").read_bytes())
    assert "conv2d_fwd" in symbols and "linear_dw" in symbols
    assert not {"conv2d_dw", "conv2d_dx", "conv2d_db"} & symbols
    # the unpruned program of the same net does run the convolutions' backward
    full = bwplan.compile(str(ROOT / "examples/frozen_backbone.bw"), target="reference",
                          prune=False)
    assert "conv2d_dw" in build.program_kernels(full.program)["conv.cu"]


def test_a_whole_program_source_compiles(tmp_path):
    prog = bwplan.compile(str(ROOT / "examples/resnet_mini.bw"), target="reference")
    compiled = build.compile_cubin(build.program_source(prog.program), ARCH,
                                   workdir=str(tmp_path))
    used = {k for ks in build.program_kernels(prog.program).values() for k in ks}
    assert used <= build.cubin_functions(compiled.cubin)


def test_nvcc_failure_is_an_internal_error_with_its_output(tmp_path):
    from bwplan.errors import InternalError
    with pytest.raises(InternalError) as info:
        build.compile_cubin('extern "C" __global__ void k() { undeclared(); }', ARCH,
                            workdir=str(tmp_path))
    assert "undeclared" in info.value.context


@pytest.mark.parametrize("name,freeze,sliced", [
    ("class_incremental", [], {"linear_dw_rows"}),
    ("cnn_small", ["conv2.weight[0:16, 40:50]", "conv2.bias[0:16]"], {"conv2d_dw_rows"}),
])
def test_a_partly_frozen_programs_source_compiles_with_its_sliced_kernels(name, freeze, sliced,
                                                                         tmp_path):
    prog = bwplan.compile(str(ROOT / f"examples/{name}.bw"), target="reference",
                          freeze=freeze)
    assert any(p.frozen_rows for p in prog.net.params.values())
    compiled = build.compile_cubin(build.program_source(prog.program), ARCH,
                                   workdir=str(tmp_path))
    symbols = build.cubin_functions(compiled.cubin)
    assert sliced <= symbols and "fill" in symbols
    assert "warning" not in compiled.log.lower(), compiled.log
    for kernel in sliced:
        r = compiled.resources[kernel]
        assert r.spill_stores == 0 and r.stack == 0, r
