"""`bwplan compile net.bw --target cpu -o DIR`: write the compiled artifact — the plan
(JSON), the schedule of the step (JSON), the network source, and a manifest — and print
what was emitted and what was skipped."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bwplan.cli.options import add_network_arguments, load_network
from bwplan.cli.report import profile_lines, program_lines
from bwplan.explain.json_report import plan_to_dict
from bwplan.explain.units import flops
from bwplan.fsutil import write_atomic
from bwplan.frontend.load import read_text


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_network_arguments(p)
    p.add_argument("--target", choices=("cpu", "cuda", "reference"), default="cpu",
                   help="what to compile for")
    p.add_argument("-o", "--output", metavar="DIR", required=True,
                   help="folder to write the program to")
    p.add_argument("--no-prune", action="store_true", help="emit the full backward")
    p.add_argument("--arch", default="sm_90", help="CUDA architecture to check against")
    p.add_argument("--profile", action="store_true",
                   help="run one step on random data and print what it launched")


def schedule_to_dict(program) -> dict:
    def step(s):
        return {"phase": s.phase, "layer": s.layer, "component": str(s.component),
                "index": s.index, "param": s.param, "scale": s.scale,
                "target": s.param if s.target is None else str(s.target),
                "accumulate": s.accumulate, "aux": list(s.aux),
                "reads": [str(b) for b in s.reads], "flops": s.flops,
                "frees": [str(b) for b in s.frees]}
    return {"schema": "bwplan.schedule/1", "pruned": program.pruned,
            "forward": [step(s) for s in program.forward],
            "backward": [step(s) for s in program.backward],
            "seeds": [{"layer": s.layer, "weight": s.weight} for s in program.seeds],
            "kept": sorted(str(b) for b in program.kept),
            "losses": [{"layer": n, "weight": w} for n, w in program.losses],
            "metrics": list(program.metrics)}


def run(args) -> int:
    import bwplan
    out = Path(args.output)
    if args.target == "cuda":
        from bwplan.cli.compile_cuda import run_cuda
        return run_cuda(args, out)
    prog = bwplan.compile(load_network(args), target=args.target, rules=args.rules,
                          prune=not args.no_prune)
    program = prog.program
    write_atomic(out / "plan.json", json.dumps(plan_to_dict(prog.plan), indent=1) + "\n")
    write_atomic(out / "schedule.json", json.dumps(schedule_to_dict(program), indent=1) + "\n")
    source_name = Path(args.file).name
    # an ONNX model is binary: the artifact keeps the file as it was read
    original = (Path(args.file).read_bytes() if args.file.endswith(".onnx")
                else read_text(args.file))
    write_atomic(out / source_name, original)
    kernels = sorted({f"{prog.net.layer(s.layer).op}:{s.component}"
                      for s in program.components})
    manifest = {"schema": "bwplan.artifact/1", "version": bwplan.__version__,
                "target": args.target, "pruned": program.pruned, "source": source_name,
                "rules": [list(r) for r in args.rules], "kernels": kernels}
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    s = prog.plan.summary
    print(f"wrote {out}/: plan.json, schedule.json, {source_name}, manifest.json")
    print(f"emitted: {len(program.forward)} forward, "
          f"{sum(1 for x in program.backward if x.phase == 'dx')} dX and "
          f"{sum(1 for x in program.backward if x.phase == 'dw')} dW kernels "
          f"({flops(program.flops('dx') + program.flops('dw'))} backward; the full backward "
          f"is {s.full_dx} dX + {s.full_dw} dW, {flops(s.full_bwd_flops)})")
    skipped = program_lines(program) if program.pruned else []
    if skipped:
        print("skipped:")
        print("\n".join(skipped))
    if args.profile:
        prog.run_step(_random_batch(prog))
        print("\n".join(profile_lines(prog)))
    return 0


def _random_batch(prog):
    import numpy as np
    from bwplan.runtime.backend import numpy_dtype
    rng = np.random.default_rng(0)
    batch = {}
    for inp in prog.net.inputs:
        dtype = numpy_dtype(inp.type.dtype)
        if np.issubdtype(dtype, np.integer):
            users = prog.net.consumers(inp.name)
            high = 2
            for e in users:
                out = prog.net.layer(e.dst)
                high = max(high, prog.net.tensor_type(out.inputs[0].src).shape[1]
                           if len(prog.net.tensor_type(out.inputs[0].src).shape) > 1 else 2)
            batch[inp.name] = rng.integers(0, high, inp.type.shape).astype(dtype)
        else:
            batch[inp.name] = rng.standard_normal(inp.type.shape).astype(dtype)
    print("profile: one step on random data", file=sys.stderr)
    return batch
