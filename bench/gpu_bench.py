"""GPU benchmark: a training step of bwplan's CUDA target, pruned and unpruned, against
PyTorch eager on the same GPU.

For cnn_small, resnet_mini, siamese_mlp and inception_branch at `--batch-mult` times their
declared batch, and three freezing scenarios:

    full        every layer trains
    head        only the last layer with parameters trains
    mid_frozen  the middle third of the layers with parameters is frozen

it times one training step (forward, backward, SGD with momentum and weight decay) of
bwplan pruned, bwplan --no-prune and PyTorch eager (the ops as bench/torch_peer.py writes
them from the op rows: the training oracle's translations, with torch's own ReLU,
cross-entropy and pooling where they agree with Caffe's, since the oracle's padded max-pool
emulation ran 5x slower; frozen parameters with
requires_grad=False, stop_gradient as detach; float32 with TF32 off, since bwplan's
kernels are float32 FFMA), each the median of `--steps` steps timed with CUDA events after
`--warmup` steps. It reports the time pruning saves next to what the FLOP model predicts
(the backward FLOPs it skips over the unpruned step's FLOPs), bwplan's device bytes for
activations next to the plan's peak estimate, PyTorch's peak step memory, and the ratio of
bwplan's step time to PyTorch's. Results go to $OUT/gpu_bench.json when OUT is set.

    python -m bench.gpu_bench [--batch-mult 16] [--steps 15] [--warmup 5]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ("cnn_small", "resnet_mini", "siamese_mlp", "inception_branch")
SCENARIOS = ("full", "head", "mid_frozen")
SGD = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)


def with_batch(text: str, mult: int) -> str:
    return re.sub(r"(input \S+ : \w+\[)(\d+)",
                  lambda m: m.group(1) + str(int(m.group(2)) * mult), text)


def scenario_rules(net, scenario: str) -> list[tuple[str, str]]:
    """Freezing rules as exact layer names (glob characters escaped)."""
    layers = [l.name for l in net.layers if l.params]
    esc = lambda name: re.sub(r"([*?\[\]])", r"[\1]", name)  # noqa: E731
    if scenario == "full":
        return []
    if scenario == "head":
        return [("freeze", "*"), ("unfreeze", esc(layers[-1]))]
    third = len(layers) // 3
    return [("freeze", esc(name)) for name in layers[third:max(third + 1, 2 * third)]]


def random_batch(net, rng) -> dict[str, np.ndarray]:
    batch = {}
    for inp in net.inputs:
        if inp.type.dtype.startswith("i"):
            users = [net.layer(e.dst) for e in net.consumers(inp.name)]
            classes = min(net.tensor_type(u.inputs[0].src).shape[1] for u in users)
            batch[inp.name] = rng.integers(0, classes, inp.type.shape).astype(
                np.dtype(inp.type.dtype.replace("i", "int")))
        else:
            batch[inp.name] = rng.standard_normal(inp.type.shape).astype(np.float32)
    return batch


# ---- bwplan --------------------------------------------------------------------------------
def time_bwplan(text: str, rules, prune: bool, batches, args) -> dict:
    import bwplan
    from bwplan.runtime.cuda import CudaExecutor
    from bwplan.optim import SgdSettings
    prog = bwplan.compile(text, target="reference", rules=rules, prune=prune)
    ex = CudaExecutor(prog.program, prog.params, SgdSettings(**SGD), source="full")
    for i in range(args.warmup):
        ex.run(batches[i % len(batches)])
    times, losses = [], []
    for i in range(args.steps):
        result = ex.run(batches[i % len(batches)])
        times.append(ex.timing.ms)
        losses.append(result.loss)
    s = prog.plan.summary
    program = prog.program
    return {"ms": statistics.median(times), "ms_spread": max(times) - min(times),
            "arena_bytes": ex.timing.arena_bytes, "state_bytes": ex.timing.state_bytes,
            "plan_peak_bytes": s.planned_peak_bytes if prune else s.full_peak_bytes,
            "launches": ex.timing.device_launches,
            "fwd_flops": program.flops("fwd"),
            "bwd_flops": program.flops("dx") + program.flops("dw"),
            "full_bwd_flops": s.full_bwd_flops, "loss_first": losses[0],
            "loss_last": losses[-1], "finite": bool(np.isfinite(losses).all())}


# ---- PyTorch eager -------------------------------------------------------------------------
def time_torch(text: str, rules, batches, args) -> dict:
    import torch
    import bwplan
    from bwplan import ops as registry
    from bench.torch_peer import OPS as ops
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    prog = bwplan.compile(text, target="reference", rules=rules)
    net, dev = prog.net, torch.device("cuda")
    roles = {layer.op: registry.OPS[layer.op].role for layer in net.layers}
    params = {}
    for name, p in net.params.items():
        t = torch.tensor(prog.params[name], device=dev)
        trains = p.learnable and any(u.lr_mult > 0 for _, u in net.uses_of(name))
        params[name] = t.requires_grad_(trains)
    groups = []
    for name, t in params.items():
        if t.requires_grad:
            uses = [u for _, u in net.uses_of(name)]
            groups.append({"params": [t], "weight_decay": SGD["weight_decay"]
                           * uses[0].decay_mult * max(u.lr_mult for u in uses)})
    opt = torch.optim.SGD(groups, lr=SGD["lr"], momentum=SGD["momentum"])
    device_batches = [{k: torch.from_numpy(v).to(dev) for k, v in b.items()} for b in batches]

    def step(batch):
        opt.zero_grad(set_to_none=True)
        values = dict(batch)
        objective = None
        for layer in net.layers:
            xs = [values[e.src].detach() if e.stop_gradient else values[e.src]
                  for e in layer.inputs]
            ps = {u.slot: params[u.param] if u.lr_mult else params[u.param].detach()
                  for u in layer.params}
            if roles[layer.op] == "metric":
                with torch.no_grad():
                    out = ops[layer.op](layer.attrs, xs, ps)
            else:
                out = ops[layer.op](layer.attrs, xs, ps)
            values[layer.name] = out
            if layer.loss_weight != 0 and roles[layer.op] == "loss":
                term = layer.loss_weight * out
                objective = term if objective is None else objective + term
        objective.backward()
        opt.step()
        return objective

    for i in range(args.warmup):
        step(device_batches[i % len(batches)])
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(device_batches[i % len(batches)])
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return {"ms": statistics.median(times), "ms_spread": max(times) - min(times),
            "peak_step_bytes": torch.cuda.max_memory_allocated() - base}


# ---- the run -------------------------------------------------------------------------------
def run_one(name: str, scenario: str, args) -> dict:
    import bwplan
    text = with_batch((ROOT / "examples" / f"{name}.bw").read_text(), args.batch_mult)
    net = bwplan.compile(text, target="reference").net
    rules = scenario_rules(net, scenario)
    rng = np.random.default_rng(0)
    batches = [random_batch(net, rng) for _ in range(2)]
    pruned = time_bwplan(text, rules, True, batches, args)
    full = time_bwplan(text, rules, False, batches, args)
    row = {"example": name, "scenario": scenario, "rules": rules,
           "batch": next(i.type.shape[0] for i in net.inputs), "pruned": pruned,
           "no_prune": full}
    if not args.no_torch:
        row["torch"] = time_torch(text, rules, batches, args)
    step_full = full["fwd_flops"] + full["bwd_flops"]
    row["flop_saving"] = (full["bwd_flops"] - pruned["bwd_flops"]) / step_full
    row["time_saving"] = 1.0 - pruned["ms"] / full["ms"]
    return row


def table(rows: list[dict]) -> str:
    head = ("example", "scenario", "batch", "pruned ms", "no-prune ms", "torch ms",
            "saved", "FLOP model", "arena MB", "plan MB", "torch MB", "vs torch")
    lines = [head]
    for r in rows:
        t = r.get("torch", {})
        lines.append((r["example"], r["scenario"], str(r["batch"]),
                      f"{r['pruned']['ms']:.2f}", f"{r['no_prune']['ms']:.2f}",
                      f"{t['ms']:.2f}" if t else "-", f"{100 * r['time_saving']:.0f}%",
                      f"{100 * r['flop_saving']:.0f}%",
                      f"{r['pruned']['arena_bytes'] / 2**20:.1f}",
                      f"{r['pruned']['plan_peak_bytes'] / 2**20:.1f}",
                      f"{t['peak_step_bytes'] / 2**20:.1f}" if t else "-",
                      f"{r['pruned']['ms'] / t['ms']:.2f}x" if t else "-"))
    widths = [max(len(l[i]) for l in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) if i > 1 else c.ljust(w)
                               for i, (c, w) in enumerate(zip(l, widths))) for l in lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-mult", type=int, default=16)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--examples", default=",".join(EXAMPLES))
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-cudnn-benchmark", action="store_true",
                   help="let cuDNN pick convolution algorithms by heuristics, not timing")
    args = p.parse_args(argv)
    rows = []
    started = time.perf_counter()
    for name in args.examples.split(","):
        for scenario in args.scenarios.split(","):
            row = run_one(name, scenario, args)
            rows.append(row)
            print(f"{name:18s} {scenario:10s} pruned {row['pruned']['ms']:8.2f} ms  "
                  f"no-prune {row['no_prune']['ms']:8.2f} ms"
                  + (f"  torch {row['torch']['ms']:8.2f} ms" if "torch" in row else ""),
                  flush=True)
    from bwplan.runtime.cuda import device
    dev = device()
    report = {"device": dev.name, "arch": dev.arch, "sm_count": dev.sm_count,
              "batch_mult": args.batch_mult, "steps": args.steps, "sgd": SGD,
              "seconds": time.perf_counter() - started, "rows": rows}
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / "gpu_bench.json"
        out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\n{dev.name} ({dev.arch}, {dev.sm_count} SMs), batch x{args.batch_mult}, "
          f"median of {args.steps} steps (CUDA events); saved = 1 - pruned/no-prune, "
          "FLOP model = skipped backward FLOPs / unpruned step FLOPs; vs torch = "
          "pruned / torch")
    print(table(rows))
    bad = [f"{r['example']}/{r['scenario']}" for r in rows
           if not (r["pruned"]["finite"] and r["no_prune"]["finite"])]
    if bad:
        print("non-finite losses in: " + ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
