"""The compiled artifact of a network, as data: the files `bwplan compile` writes and the
manifest that describes them. Nothing here writes a file or prints; the CLI writes
`Artifact.files` (with fsutil.write_atomic) and reports from `Artifact.manifest`.

    host_artifact(prog)          plan.json, schedule.json, the network file as read,
                                 manifest.json (cpu / reference)
    cuda_artifact(prog, arch)    the same with <stem>.cu, the CUDA source of the kernels
                                 the program launches, and <stem>.cubin where nvcc is
                                 found; every launch of a step planned and checked against
                                 the device limits on the way (no GPU needed)
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bwplan.errors import BwError
from bwplan.explain.json_report import render_json
from bwplan.frontend.load import read_text
from bwplan.lower.program_json import render_program_json
from bwplan.source import Span

Source = tuple[str, str | bytes]    # a network file: (its name, its content)


@dataclass(frozen=True)
class Artifact:
    files: tuple[tuple[str, str | bytes], ...]    # (file name, content), in their order
    manifest: Mapping                              # also among the files, as manifest.json

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.files)


def _json(doc) -> str:
    return json.dumps(doc, indent=1) + "\n"


def source_file(prog, source: Source | None = None) -> Source:
    """The network file the artifact keeps: `source` when given, else the file the net was
    compiled from, as read (an ONNX model is binary: its bytes)."""
    if source is not None:
        return source
    path = prog.module.path
    if path == "<source>":
        raise BwError(Span.synthetic("artifact"), "the net was compiled from source text, "
                      "so there is no network file to keep in the artifact",
                      "pass source=(file name, text)")
    content = Path(path).read_bytes() if path.endswith(".onnx") else read_text(path)
    return Path(path).name, content


def _common() -> dict:
    import bwplan
    return {"schema": "bwplan.artifact/1", "version": bwplan.__version__}


def host_artifact(prog, source: Source | None = None) -> Artifact:
    """The artifact of a CompiledNet for a host target: its plan and schedule as JSON,
    its network file and a manifest naming the (op, component) kernels the step runs."""
    program = prog.program
    source_name, original = source_file(prog, source)
    kernels = sorted({f"{prog.net.layer(s.layer).op}:{s.component}"
                      for s in program.components})
    manifest = {**_common(), "target": prog.target, "pruned": program.pruned,
                "source": source_name, "rules": [list(r) for r in prog.rules],
                "kernels": kernels}
    return Artifact((("plan.json", render_json(prog.plan)),
                     ("schedule.json", render_program_json(program)),
                     (source_name, original), ("manifest.json", _json(manifest))), manifest)


def cuda_artifact(prog, arch: str = "sm_90", source: Source | None = None) -> Artifact:
    """The CUDA artifact of a CompiledNet (compiled for any target; "reference" allocates
    nothing on a device): the program's CUDA source in one translation unit, and its cubin
    with ptxas's resource figures per kernel where nvcc is found."""
    from bwplan.kernels.cuda import build
    from bwplan.kernels.cuda.limits import DEFAULT_SM_COUNT
    from bwplan.lower import cuda_launches as step_plan
    from bwplan.lower.cuda_arena import plan_arena
    from bwplan.optim import SgdSettings
    program, plan = prog.program, prog.plan
    arena = plan_arena(program)
    sizes = {name: int(math.prod(v.shape)) for name, v in prog.params.items()}
    layout = step_plan.host_layout(program, sizes, arena, DEFAULT_SM_COUNT)
    planned = step_plan.step_launches(program, layout, SgdSettings(),
                                      step_plan.segment_table(program, layout, SgdSettings()),
                                      training=True, backward=True)
    source_name, original = source_file(prog, source)
    stem = Path(source_name).stem
    title = f"{source_name}: {'pruned' if program.pruned else 'full'} backward"
    source = build.program_source(program, title)
    used = build.program_kernels(program)
    nvcc = build.find_nvcc()
    compiled = None if nvcc is None else build.compile_cubin(source, arch, nvcc, name=stem)
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
    cu_name = f"{stem}.cu"
    manifest = {**_common(), "target": "cuda", "arch": arch, "pruned": program.pruned,
                "source": source_name, "cuda_source": cu_name,
                "cubin": f"{stem}.cubin" if compiled else None,
                "rules": [list(r) for r in prog.rules],
                "arena_bytes": arena.size, "plan_peak_bytes": estimate,
                "workspace_bytes": layout.workspace_bytes,
                "launches_per_step": sum(len(p.launches) for p in planned),
                "kernels": kernels}
    files = ((cu_name, source), ("plan.json", render_json(plan)),
             ("schedule.json", render_program_json(program)), (source_name, original),
             ("manifest.json", _json(manifest)))
    if compiled is not None:
        files += ((f"{stem}.cubin", compiled.cubin),)
    return Artifact(files, manifest)
