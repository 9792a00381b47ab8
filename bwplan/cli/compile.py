"""`bwplan compile net.bw --target cpu -o DIR`: write the compiled artifact — the plan
(JSON), the schedule of the step (JSON), the network source, and a manifest — and print
what was emitted and what was skipped. The artifact itself is built by bwplan/artifacts.py;
`--target cuda` adds the CUDA source (cli/compile_cuda.py prints its report)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bwplan.cli.options import add_network_arguments, load_network
from bwplan.cli.report import in_place_lines, profile_lines, program_lines, warning_lines
from bwplan.explain.units import flops
from bwplan.fsutil import write_atomic


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


def run(args) -> int:
    import bwplan
    from bwplan.artifacts import cuda_artifact, host_artifact
    out = Path(args.output)
    # the CUDA artifact needs no device: its net is compiled for the NumPy references
    prog = bwplan.compile(load_network(args), rules=args.rules, prune=not args.no_prune,
                          target="reference" if args.target == "cuda" else args.target)
    artifact = cuda_artifact(prog, args.arch) if args.target == "cuda" else host_artifact(prog)
    for line in warning_lines((), prog.warnings):
        print(line, file=sys.stderr)
    for name, content in artifact.files:
        write_atomic(out / name, content)
    if args.target == "cuda":
        from bwplan.cli.compile_cuda import report
        report(prog, artifact, args, out)
        return 0
    program = prog.program
    s = prog.plan.summary
    print(f"wrote {out}/: {', '.join(artifact.names)}")
    print(f"emitted: {len(program.forward)} forward, "
          f"{sum(1 for x in program.backward if x.phase == 'dx')} dX and "
          f"{sum(1 for x in program.backward if x.phase == 'dw')} dW kernels "
          f"({flops(program.flops('dx') + program.flops('dw'))} backward; the full backward "
          f"is {s.full_dx} dX + {s.full_dw} dW, {flops(s.full_bwd_flops)})")
    for line in in_place_lines(program):
        print(line)
    skipped = program_lines(program) if program.pruned else []
    if skipped:
        print("skipped:")
        print("\n".join(skipped))
    if args.profile:
        from bwplan.runtime.data import random_batch
        print("profile: one step on random data", file=sys.stderr)
        prog.run_step(random_batch(prog.net))
        print("\n".join(profile_lines(prog)))
    return 0
