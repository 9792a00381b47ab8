"""A Program as JSON (schema bwplan.schedule/1): its steps in order with what each reads
and frees, the seeds, the kept values, the losses and metrics. The `schedule.json` of a
compiled artifact (bwplan/artifacts.py); a pure renderer, as explain/json_report.py is for
a Plan."""
from __future__ import annotations

import json

from bwplan.lower.program import Program, Step


def _step(s: Step) -> dict:
    return {"phase": s.phase, "layer": s.layer, "component": str(s.component),
            "index": s.index, "param": s.param, "scale": s.scale,
            "target": s.param if s.target is None else str(s.target),
            "accumulate": s.accumulate, "aux": list(s.aux),
            "reads": [str(b) for b in s.reads], "flops": s.flops,
            "frees": [str(b) for b in s.frees],
            # a bias gradient: the backward step whose output it sums (Step.sum_of), or -1
            "sum_of": s.sum_of,
            # an epilogue op run in place on the output of the forward step at this index,
            # which writes this layer's buffer (Step.applied_by), or -1
            "applied_by": s.applied_by}


def program_to_dict(program: Program) -> dict:
    return {"schema": "bwplan.schedule/1", "pruned": program.pruned,
            "forward": [_step(s) for s in program.forward],
            "backward": [_step(s) for s in program.backward],
            "seeds": [{"layer": s.layer, "weight": s.weight} for s in program.seeds],
            "kept": sorted(str(b) for b in program.kept),
            "losses": [{"layer": n, "weight": w} for n, w in program.losses],
            "metrics": list(program.metrics)}


def render_program_json(program: Program) -> str:
    return json.dumps(program_to_dict(program), indent=1) + "\n"
