"""The benchmark: for each network and freezing scenario, the FLOP model's figures, the
kernels launched, and measured step times and memory of bwplan pruned, bwplan unpruned
(`--no-prune`) and PyTorch (default NCHW eager, channels_last eager, torch.compile) on the
same machine, in one process, interleaved with rotated start order; bwplan pruned against
PyTorch at its best (the fastest variant) and against default eager as paired ratios."""
from __future__ import annotations

import os

import numpy as np

import bwplan
from bench.measure import interleaved
from bench.nets import scenario_rules
from bwplan.runtime.backend import numpy_dtype

LR, MOMENTUM, DECAY = 0.01, 0.9, 5e-4


def random_batch(net, seed: int = 0, batch_mult: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch = {}
    for inp in net.inputs:
        shape = (inp.type.shape[0] * batch_mult,) + inp.type.shape[1:]
        dtype = numpy_dtype(inp.type.dtype)
        if np.issubdtype(dtype, np.integer):
            batch[inp.name] = rng.integers(0, _classes(net, inp.name), shape).astype(dtype)
        else:
            batch[inp.name] = rng.standard_normal(shape).astype(dtype)
    return batch


def _held_bytes(plan, batch) -> int:
    """Bytes live at the end of every forward whatever the plan keeps: the batch inputs the
    backward does not read, and the step's outputs."""
    inputs = sum(v.nbytes for k, v in batch.items() if k not in plan.kept)
    outputs = sum(plan.net.layer(n).out.nbytes for n in plan.outputs if n not in plan.kept)
    return inputs + outputs


def _classes(net, label: str) -> int:
    """Labels index the class dimension of the logits their consumers compare them with."""
    sizes = [net.tensor_type(net.layer(e.dst).inputs[0].src).shape[1]
             for e in net.consumers(label)]
    return min(sizes) if sizes else 2


def compiled(bench_net, rules, prune, target, caffe_options=None):
    prog = bwplan.compile(str(bench_net.path), target=target, rules=rules, prune=prune,
                          seed=0, caffe_options=caffe_options)
    prog.set_optimizer(LR, MOMENTUM, DECAY)
    return prog


def run_case(bench_net, scenario: str, target: str, warmup: int, repeats: int,
             with_torch: bool, batch_mult: int = 1) -> dict:
    base = bwplan.compile(str(bench_net.path), target="reference")
    rules = scenario_rules(base.net, scenario)
    pruned = compiled(bench_net, rules, True, target)
    full = compiled(bench_net, rules, False, target)
    batch = random_batch(pruned.net, batch_mult=batch_mult)
    plan = pruned.plan
    if batch_mult != 1:
        plan = pruned._executor(batch, "train").program.plan
    s = plan.summary

    phases: dict[str, dict[str, list[float]]] = {"pruned": {}, "full": {}}

    def step(prog, key):
        def run():
            result = prog.run_step(batch)
            for phase, sec in result.stats.seconds.items():
                phases[key].setdefault(phase, []).append(sec)
        return run

    runs = {"pruned": step(pruned, "pruned"), "full": step(full, "full")}
    peers = torch_peers(pruned.net, base.params, batch, warmup) if with_torch else {}
    for variant, (peer, tbatch) in peers.items():
        runs[f"torch_{variant}"] = (lambda p, b: lambda: p.step(b))(peer, tbatch)
    peer = peers["eager"][0] if "eager" in peers else None
    load_start = os.getloadavg()
    times = interleaved(runs, warmup, repeats)
    load_end = os.getloadavg()
    pr, fu = pruned.last_stats, full.last_stats

    def median(key, phase):
        values = phases[key][phase][warmup:]
        return float(np.median(values)) if values else 0.0

    flop_step = (s.full_bwd_flops - s.planned_bwd_flops) / max(1, s.fwd_flops + s.full_bwd_flops)
    flop_bwd = (s.full_bwd_flops - s.planned_bwd_flops) / max(1, s.full_bwd_flops)
    t_pruned, t_full = times["pruned"].median, times["full"].median
    bwd_pruned, bwd_full = median("pruned", "backward"), median("full", "backward")
    row = {
        "net": bench_net.name, "scenario": scenario, "target": target,
        "batch": next(iter(batch.values())).shape[0],
        "flops": {"forward": s.fwd_flops, "backward_full": s.full_bwd_flops,
                  "backward_planned": s.planned_bwd_flops},
        "kernels": {"pruned": dict(pr.launched), "full": dict(fu.launched)},
        "rounds": repeats, "load_average": {"start": list(load_start), "end": list(load_end)},
        "step_ms": {k: {"median": t.median * 1e3, "min": t.low * 1e3, "max": t.high * 1e3,
                        "cpu_median": t.cpu_median * 1e3}
                    for k, t in times.items()},
        "forward_ms": {"pruned": median("pruned", "forward") * 1e3,
                       "full": median("full", "forward") * 1e3},
        "backward_ms": {"pruned": bwd_pruned * 1e3, "full": bwd_full * 1e3},
        "peak_bytes": {"pruned": pr.peak_bytes, "full": fu.peak_bytes,
                       "planned_estimate": s.planned_peak_bytes},
        # live when the forward ends, less the batch and the losses: what survives for the
        # backward, measured, against the plan's kept bytes
        "kept_measured": pr.after_forward_bytes - _held_bytes(plan, batch),
        "kept_bytes": {"planned": s.planned_kept_bytes, "full": s.full_kept_bytes,
                       "torch_saved": peer.saved_bytes if peer else None},
        "saving": {
            "flop_step": flop_step, "measured_step": (t_full - t_pruned) / t_full,
            "flop_backward": flop_bwd,
            "measured_backward": (bwd_full - bwd_pruned) / bwd_full if bwd_full else 0.0,
        },
        "forward_share": median("pruned", "forward") / t_pruned if t_pruned else 0.0,
    }
    sv = row["saving"]
    sv["efficiency_step"] = sv["measured_step"] / flop_step if flop_step > 0.01 else None
    sv["efficiency_backward"] = (sv["measured_backward"] / flop_bwd if flop_bwd > 0.01
                                 else None)
    if peers:
        row.update(torch_comparison(times, list(peers)))
    if peers and target == "cpu":
        # the same comparison with each contestant alone in its own process: bwplan pruned
        # against the PyTorch variant that won above
        best = row["torch_best"]
        for who in ("torch", "bwplan"):
            alone = run_alone(who, bench_net, rules, batch_mult, warmup, repeats, best)
            row["step_ms"][f"{who}_alone"] = {k: v * 1e3 for k, v in alone.items()}
        row["vs_torch_alone"] = (row["step_ms"]["bwplan_alone"]["median"] /
                                 row["step_ms"]["torch_alone"]["median"])
    return row


def torch_peers(net, params, batch, warmup: int) -> dict:
    """variant -> (peer, its batch) for every PyTorch variant that runs here, each warmed
    up by `warmup` + 1 steps of its own (torch.compile compiles on the first ones). A
    variant that fails (torch.compile without a working C++ compiler) is left out, with a
    line on stderr saying why."""
    import sys
    from bench.torch_peer import VARIANTS, TorchPeer
    peers = {}
    for variant in VARIANTS:
        try:
            peer = TorchPeer(net, params, LR, MOMENTUM, DECAY, variant)
            tbatch = peer.batch(batch)
            for _ in range(warmup + 1):
                peer.step(tbatch)
        except Exception as exc:  # noqa: BLE001 - a peer we cannot run is reported, not fatal
            print(f"    PyTorch {variant} left out: {type(exc).__name__}: "
                  f"{str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
            continue
        peers[variant] = (peer, tbatch)
    return peers


def torch_comparison(times, variants: list[str]) -> dict:
    """bwplan pruned against PyTorch at its best (the variant with the lowest median wall
    time) and against default eager: paired per-round ratios of wall and of CPU time."""
    from bench.measure import Ratio
    best = min(variants, key=lambda v: times[f"torch_{v}"].median)
    pr = times["pruned"]

    def ratios(variant):
        t = times[f"torch_{variant}"]
        return {"wall": vars(Ratio.of(pr.samples, t.samples)),
                "cpu": vars(Ratio.of(pr.cpu, t.cpu))}

    out = {"torch_best": best, "vs_torch_best": ratios(best)}
    if "eager" in variants:
        out["vs_torch_eager"] = ratios("eager")
    return out


def run_alone(who, bench_net, rules, batch_mult, warmup, repeats, variant="eager") -> dict:
    """One contestant timed in its own process (see bench/alone.py), both with OpenMP's
    passive wait policy: a spinning policy is fast on idle cores and several times slower
    when they are shared, which made the column measure the neighbours."""
    import json
    import subprocess
    import sys
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    threads = os.environ.get("BENCH_THREADS", str(os.cpu_count()))
    out = subprocess.run(
        [sys.executable, "-m", "bench.alone", who, str(bench_net.path), json.dumps(rules),
         str(batch_mult), str(warmup), str(repeats), threads, variant],
        env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cache_case(bench_net, target: str, batches: int = 4) -> dict | None:
    """Epoch time for the head scenario with and without the frozen-prefix cache."""
    from bwplan.runtime.data import Dataset
    from bwplan.runtime.train import train
    base = bwplan.compile(str(bench_net.path), target="reference")
    rules = scenario_rules(base.net, "head")
    prog = compiled(bench_net, rules, True, target)
    if not prog.plan.prefix.cacheable or not prog.plan.prefix.layers:
        return None
    one = random_batch(prog.net)
    n = next(iter(one.values())).shape[0]
    arrays = {k: np.concatenate([random_batch(prog.net, seed=i)[k] for i in range(batches)])
              for k in one}
    data = Dataset(arrays, {})
    plain = [r.seconds for r in train(compiled(bench_net, rules, True, target), data, 3, n)]
    cached = [r.seconds for r in train(prog, data, 3, n, cache_frozen=True)]
    return {"net": bench_net.name, "epoch_s_uncached": plain[1:],
            "epoch_s_first_cached": cached[0], "epoch_s_cached": cached[1:],
            "prefix_layers": len(prog.plan.prefix.layers)}


def gradual_case(bench_net, target: str) -> dict:
    """Unfreeze one more unit per stage, in a fresh process so that kernel counts start at
    zero: re-plan time, and how many kernel specialisations each stage had to compile or
    load that earlier stages had not (see bench/gradual.py)."""
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "bench.gradual", str(bench_net.path), target],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


CAFFE_TIME_CASES = (("full", [], "time_base_cifar10_quick.log"),
                    ("conv1 frozen", [("freeze", "conv1")], "time_cifar10_quick_freeze_k1.log"),
                    ("convs frozen", [("freeze", "conv*")],
                     "time_cifar10_quick_freeze_all_conv.log"))


def caffe_time(bench_net, target: str = "cpu", repeats: int = 5) -> dict:
    """bwplan's forward and backward times next to `caffe time`'s averages for the same
    prototxt and batch (Caffe's figures come from its logs: another run, same kind of
    2-core machine)."""
    import re
    out = []
    folder = bench_net.caffe_time_log.parent
    for label, rules, log_name in CAFFE_TIME_CASES:
        log = folder / log_name
        if not log.exists():
            continue
        text = log.read_text()
        fwd = float(re.search(r"Average Forward pass: ([\d.]+) ms", text).group(1))
        bwd = float(re.search(r"Average Backward pass: ([\d.]+) ms", text).group(1))
        prog = compiled(bench_net, rules, True, target)
        batch = random_batch(prog.net)
        for _ in range(2):
            prog.run_step(batch)
        f, b = [], []
        for _ in range(repeats):
            st = prog.run_step(batch).stats
            f.append(st.seconds["forward"])
            b.append(st.seconds["backward"])
        out.append({"case": label, "batch": next(iter(batch.values())).shape[0],
                    "caffe_forward_ms": fwd, "caffe_backward_ms": bwd,
                    "bwplan_forward_ms": float(np.median(f)) * 1e3,
                    "bwplan_backward_ms": float(np.median(b)) * 1e3})
    return {"net": bench_net.name, "cases": out}
