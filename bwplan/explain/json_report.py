"""`bwplan explain --format json`: the plan as a stable JSON document (docs/json-schema.md).
Bump SCHEMA when a field changes meaning or disappears; adding fields keeps the version."""
from __future__ import annotations

import dataclasses
import json

from bwplan.plan.decisions import Decision
from bwplan.plan.modes import LayerMode
from bwplan.plan.plan import Plan

SCHEMA = "bwplan.plan/1"


def _decision(d: Decision) -> dict:
    return {"needed": d.needed, "code": d.reason.code, "text": d.reason.text,
            "via": list(d.reason.via)}


def _mode(mode: LayerMode | None) -> dict | None:
    """A layer's running mode: the op's mode object's fields (batchnorm: `stats`,
    `update_stats`) and whether its scale/shift trains, and in which layer."""
    if mode is None:
        return None
    return {**dataclasses.asdict(mode.mode), "scale_shift": mode.scale_shift,
            "scale_shift_in": mode.scale_shift_in or None}


def _rows(rows) -> list[list[int]]:
    return [[a, b] for a, b in rows]


def plan_to_dict(plan: Plan) -> dict:
    net = plan.net
    layers = []
    for lp in plan.layers:
        layer = net.layer(lp.name)
        layers.append({
            "name": lp.name, "op": lp.op, "at": str(layer.span),
            "shape": list(layer.out.shape), "dtype": layer.out.dtype,
            "frozen": layer.frozen, "loss_weight": layer.loss_weight,
            "mode": _mode(lp.mode),
            "forward": _decision(lp.forward),
            "dx": [{"input": e.src, "index": e.index, "stop_gradient": e.stop_gradient,
                    **_decision(d)} for e, d in zip(layer.inputs, lp.dx)],
            "dw": [{"param": u.param, "slot": u.slot, "lr_mult": u.lr_mult,
                    "decay_mult": u.decay_mult, **_decision(d)}
                   for u, d in zip(layer.params, lp.dw)],
            "keeps": list(lp.keeps),
            "flops": {"forward": lp.fwd_flops, "backward": lp.bwd_flops,
                      "backward_full": lp.full_bwd_flops},
        })
    s = plan.summary
    p = plan.prefix
    return {
        "schema": SCHEMA,
        "net": {"name": net.name, "path": net.path,
                "inputs": [{"name": i.name, "dtype": i.type.dtype, "shape": list(i.type.shape),
                            "grad": i.requires_grad} for i in net.inputs],
                "params": [{"name": q.name, "dtype": q.type.dtype, "shape": list(q.type.shape),
                            "learnable": q.learnable, "bytes": q.type.nbytes,
                            "frozen_rows": _rows(q.frozen_rows)}
                           for q in net.params.values()]},
        "layers": layers,
        "kept": [{"name": v.name, "kind": v.kind, "bytes": v.nbytes,
                  "readers": list(v.readers)} for v in plan.kept.values()],
        "summary": {
            "forward_flops": s.fwd_flops,
            "backward_flops": {"full": s.full_bwd_flops, "planned": s.planned_bwd_flops},
            "kept_bytes": {"full": s.full_kept_bytes, "planned": s.planned_kept_bytes},
            "peak_activation_bytes": {"full": s.full_peak_bytes,
                                      "planned": s.planned_peak_bytes},
            "dx_components": {"full": s.full_dx, "planned": s.planned_dx},
            "dw_components": {"full": s.full_dw, "planned": s.planned_dw},
        },
        "frozen_prefix": {"layers": list(p.layers), "boundary": list(p.boundary),
                          "boundary_bytes": p.boundary_bytes, "flops": p.flops,
                          "cacheable": p.cacheable, "blockers": list(p.blockers),
                          "reason": p.reason},
        "updates": [{"param": u.param, "kind": u.kind, "decay_mult": u.decay_mult,
                     "decay_lr_mult": u.decay_lr_mult, "text": u.text,
                     "rows": _rows(u.rows),
                     "uses": [{"layer": t.layer, "lr_mult": t.lr_mult,
                               "computed": t.computed} for t in u.terms]}
                    for u in plan.updates],
        "allreduce": {"bytes": s.allreduce_bytes,
                      "params": [{"param": n, "bytes": b} for n, b in plan.allreduce]},
        "findings": [{"code": f.code, "severity": f.severity, "at": str(f.span),
                      "text": f.text, "fix": f.fix} for f in plan.findings],
    }


def render_json(plan: Plan) -> str:
    return json.dumps(plan_to_dict(plan), indent=1) + "\n"
