"""What `bwplan compile net.bw --target cuda -o DIR` prints about the CUDA artifact it
wrote (bwplan/artifacts.py `cuda_artifact`: the CUDA source of the kernels the program
launches, with common.cuh, in one translation unit; the plan and the schedule as JSON, the
network source and a manifest). Every launch of the step is planned and checked
against the device limits on the way, so a layer the kernels cannot run is reported here,
not on a GPU. Where nvcc is found, the source is compiled for `--arch` (a cubin beside it)
and ptxas's registers, shared memory, stack and spills are printed per kernel; without
nvcc the sources are still written. `--profile` runs one step on random data on the GPU
(PyCUDA needed). Needs no GPU otherwise.
"""
from __future__ import annotations

import sys
from pathlib import Path

from bwplan.explain.units import flops


def report(prog, artifact, args, out_dir: Path) -> None:
    program, manifest = prog.program, artifact.manifest
    kernels = manifest["kernels"]
    print(f"wrote {out_dir}/: {', '.join(artifact.names)}")
    print(f"emitted: {len(program.forward)} forward, "
          f"{sum(1 for x in program.backward if x.phase == 'dx')} dX and "
          f"{sum(1 for x in program.backward if x.phase == 'dw')} dW steps "
          f"({flops(program.flops('dx') + program.flops('dw'))} backward), "
          f"{len(kernels)} distinct kernels, "
          f"{manifest['launches_per_step']} launches per step")
    print(f"device memory: {manifest['arena_bytes']:,} bytes of activations in one "
          f"allocation (plan: {manifest['plan_peak_bytes']:,}), "
          f"{manifest['workspace_bytes']:,} of workspace (split-K sums, SSD's matching)")
    if manifest["cubin"] is None:
        print("nvcc not found: the CUDA source was written but not compiled")
    else:
        print(f"nvcc ({args.arch}): " + ("resource usage per kernel" if kernels else ""))
        print(_table(kernels))
    if getattr(args, "profile", False):
        _profile(prog)


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
    from bwplan.runtime.cuda import CudaExecutor
    from bwplan.runtime.data import random_batch
    executor = CudaExecutor(prog.program, prog.params)
    print("profile: one step on random data", file=sys.stderr)
    batch = random_batch(prog.net)
    executor.run(batch)
    result = executor.run(batch)
    t = executor.timing
    print(f"profile: loss {result.loss:.4g}; {t.ms:.3f} ms on the device, "
          f"{t.device_launches} launches, {t.arena_bytes:,} bytes of activations")
