"""`bwplan compile net.bw --target cuda -o DIR`: the CUDA artifact of a network.

Writes the CUDA source of the program (only the kernels its steps launch, with
common.cuh, in one translation unit), the plan and the schedule as JSON, the network
source and a manifest. Every launch of the step is planned and checked against the
device limits on the way, so a layer the kernels cannot run is reported here, not on a
GPU. Where nvcc is found, the source is compiled for `--arch` (a cubin beside it) and
ptxas's registers, shared memory, stack and spills are printed per kernel; without
nvcc the sources are still written. `--profile` runs one step on random data on the GPU
(PyCUDA needed). Needs no GPU otherwise.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from bwplan.cli.options import load_network
from bwplan.explain.json_report import plan_to_dict
from bwplan.explain.units import flops
from bwplan.fsutil import write_atomic
from bwplan.frontend.load import read_text
from bwplan.kernels.cuda import build
from bwplan.lower import cuda_launches as step_plan
from bwplan.lower.cuda_arena import plan_arena
from bwplan.kernels.cuda.limits import DEFAULT_SM_COUNT
from bwplan.runtime.optimizer import SgdSettings


def run_cuda(args, out_dir: Path) -> int:
    import bwplan
    from bwplan.cli.compile import schedule_to_dict
    prog = bwplan.compile(load_network(args), target="reference", rules=args.rules,
                          prune=not args.no_prune)
    program, plan = prog.program, prog.plan
    arena = plan_arena(program)
    sizes = {name: int(math.prod(v.shape)) for name, v in prog.params.items()}
    layout = step_plan.host_layout(program, sizes, arena, DEFAULT_SM_COUNT)
    planned = step_plan.step_launches(program, layout, SgdSettings(),
                                      step_plan.segment_table(program, layout, SgdSettings()),
                                      training=True, backward=True)
    stem = Path(args.file).stem
    title = f"{Path(args.file).name}: {'pruned' if program.pruned else 'full'} backward"
    source = build.program_source(program, title)
    used = build.program_kernels(program)

    source_name = Path(args.file).name
    cu_name = f"{stem}.cu"
    write_atomic(out_dir / cu_name, source)
    write_atomic(out_dir / "plan.json", json.dumps(plan_to_dict(plan), indent=1) + "\n")
    write_atomic(out_dir / "schedule.json",
                 json.dumps(schedule_to_dict(program), indent=1) + "\n")
    # an ONNX model is binary: the artifact keeps the file as it was read
    original = (Path(args.file).read_bytes() if args.file.endswith(".onnx")
                else read_text(args.file))
    write_atomic(out_dir / source_name, original)

    nvcc = build.find_nvcc()
    compiled = None
    if nvcc is not None:
        compiled = build.compile_cubin(source, args.arch, nvcc, workdir=str(out_dir),
                                       name=stem)
    kernels = [{"file": f, "kernel": k, "used_by": users,
                **({} if compiled is None or k not in compiled.resources else {
                    "registers": compiled.resources[k].registers,
                    "shared_bytes": compiled.resources[k].shared,
                    "stack_bytes": compiled.resources[k].stack,
                    "spill_bytes": compiled.resources[k].spill_stores
                    + compiled.resources[k].spill_loads})}
               for f, ks in used.items() for k, users in ks.items()]
    summary = plan.summary
    estimate = summary.planned_peak_bytes if program.pruned else summary.full_peak_bytes
    manifest = {"schema": "bwplan.artifact/1", "version": bwplan.__version__,
                "target": "cuda", "arch": args.arch, "pruned": program.pruned,
                "source": source_name, "cuda_source": cu_name,
                "cubin": f"{stem}.cubin" if compiled else None,
                "rules": [list(r) for r in args.rules],
                "arena_bytes": arena.size, "plan_peak_bytes": estimate,
                "workspace_bytes": layout.workspace_bytes,
                "launches_per_step": sum(len(p.launches) for p in planned),
                "kernels": kernels}
    write_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=1) + "\n")

    written = f"{cu_name}, plan.json, schedule.json, {source_name}, manifest.json"
    print(f"wrote {out_dir}/: {written}" + (f", {stem}.cubin" if compiled else ""))
    print(f"emitted: {len(program.forward)} forward, "
          f"{sum(1 for x in program.backward if x.phase == 'dx')} dX and "
          f"{sum(1 for x in program.backward if x.phase == 'dw')} dW steps "
          f"({flops(program.flops('dx') + program.flops('dw'))} backward), "
          f"{sum(len(ks) for ks in used.values())} distinct kernels, "
          f"{manifest['launches_per_step']} launches per step")
    print(f"device memory: {arena.size:,} bytes of activations in one allocation "
          f"(plan: {estimate:,}), {layout.workspace_bytes:,} of split-K workspace")
    if compiled is None:
        print("nvcc not found: the CUDA source was written but not compiled")
    else:
        print(f"nvcc ({args.arch}): " + ("resource usage per kernel" if kernels else ""))
        print(_table(kernels))
    if getattr(args, "profile", False):
        _profile(prog)
    return 0


def _table(kernels: list[dict]) -> str:
    rows = [("kernel", "file", "regs", "smem", "stack", "spills", "steps")]
    for k in kernels:
        rows.append((k["kernel"], k["file"], str(k.get("registers", "?")),
                     str(k.get("shared_bytes", "?")), str(k.get("stack_bytes", "?")),
                     str(k.get("spill_bytes", "?")), str(len(k["used_by"]))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                     for r in rows)


def _profile(prog) -> None:
    """One step on random data on the GPU (needs PyCUDA and a GPU)."""
    from bwplan.cli.compile import _random_batch
    from bwplan.runtime.cuda import CudaExecutor
    executor = CudaExecutor(prog.program, prog.params)
    batch = _random_batch(prog)
    executor.run(batch)
    result = executor.run(batch)
    t = executor.timing
    print(f"profile: loss {result.loss:.4g}; {t.ms:.3f} ms on the device, "
          f"{t.device_launches} launches, {t.arena_bytes:,} bytes of activations")
