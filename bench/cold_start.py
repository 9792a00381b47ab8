"""Cold start: how long the README's pretraining command takes to reach the end of its first
step when Numba's disk cache is empty (target: <= 15 s), and how long once the cache is
warm.

Each run is a fresh `bwplan train ... --profile` process with NUMBA_CACHE_DIR pointed at a
new empty folder; the command's own "first step:" line gives the wall time since the
process started, its CPU time (user + system, every thread: the figure that moves least
with the load on a shared machine) and the time it spent compiling kernels. A last run
reuses the cache the first one filled (the warm start). Prints one line per run, the
median and spread (min-max) of each figure, and the load average before and after.

    python -m bench.cold_start [--runs 3] [--net examples/digits_pretrain.bw]
        [--data FILE.npz] [--epochs 1] [--target cpu] [--json FILE]

Without --data, the digits 0-4 set is exported first (`bwplan data digits`, which needs
scikit-learn), as the README does.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "examples" / "digits_pretrain.bw"
TARGET_SECONDS = 15.0

_FIRST_STEP = re.compile(r"first step: ended (?:(?P<wall>[\d.]+) s after the process "
                         r"started, )?(?P<cpu>[\d.]+) s of CPU time \(user \+ system\); "
                         r"(?P<compile>[\d.]+) s of it compiling (?P<kernels>\d+) kernel")


@dataclass(frozen=True, slots=True)
class Run:
    """One process's figures at the end of its first step."""
    cache: str          # "cold" (an empty cache) or "warm" (the cache a cold run filled)
    wall: float | None  # seconds since the process started; None without /proc
    cpu: float
    compiling: float
    kernels: int


def parse_first_step(text: str, cache: str) -> Run:
    """The figures of `train --profile`'s "first step:" line in `text`."""
    m = _FIRST_STEP.search(text)
    if m is None:
        raise ValueError("no 'first step:' line in the command's output:\n" + text[-2000:])
    wall = float(m["wall"]) if m["wall"] is not None else None
    return Run(cache, wall, float(m["cpu"]), float(m["compile"]), int(m["kernels"]))


def train_command(net: Path, data: Path, out: Path, epochs: int, target: str) -> list[str]:
    return [sys.executable, "-m", "bwplan", "train", str(net), "--data", str(data),
            "--epochs", str(epochs), "--lr", "0.05", "--target", target, "--out", str(out),
            "--profile"]


def run_once(command: list[str], cache_dir: Path, cache: str) -> Run:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in
                                        env.get("PYTHONPATH", "").split(os.pathsep) if p])
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr}")
    return parse_first_step(done.stdout, cache)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def measure(net: Path, data: Path | None, runs: int, epochs: int, target: str) -> dict:
    """`runs` cold runs, then one warm run on the first cold run's cache."""
    with tempfile.TemporaryDirectory(prefix="bwplan-cold-") as tmp:
        tmp_path = Path(tmp)
        if data is None:
            data = tmp_path / "digits_a.npz"
            subprocess.run([sys.executable, "-m", "bwplan", "data", "digits", "--classes",
                            "0-4", "-o", str(data)], check=True, capture_output=True,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
        command = train_command(net, data, tmp_path / "out.npz", epochs, target)
        load_start = os.getloadavg()
        results = []
        for k in range(runs):
            cache_dir = tmp_path / f"cache{k}"
            cache_dir.mkdir()
            results.append(run_once(command, cache_dir, "cold"))
            print(_row(k + 1, results[-1]), flush=True)
        results.append(run_once(command, tmp_path / "cache0", "warm"))
        print(_row("warm", results[-1]), flush=True)
        load_end = os.getloadavg()
    return {"net": str(net), "epochs": epochs, "target": target,
            "load_average_start": load_start, "load_average_end": load_end,
            "runs": [asdict(r) for r in results]}


def _row(label, r: Run) -> str:
    wall = f"{r.wall:.2f} s" if r.wall is not None else "n/a"
    return (f"run {label}: first step at {wall} wall, {r.cpu:.2f} s CPU, {r.compiling:.2f} s "
            f"compiling {r.kernels} kernel specialisations")


def summary(doc: dict) -> list[str]:
    cold = [Run(**r) for r in doc["runs"] if r["cache"] == "cold"]
    warm = [Run(**r) for r in doc["runs"] if r["cache"] == "warm"]
    walls = [r.wall for r in cold if r.wall is not None]
    lines = [f"cold start, {len(cold)} runs, median (min-max):"]
    if walls:
        met = "met" if statistics.median(walls) <= TARGET_SECONDS else "NOT met"
        lines.append(f"  wall to the first step  {spread(walls)}  "
                     f"(target <= {TARGET_SECONDS:.0f} s: {met})")
    lines += [f"  CPU to the first step   {spread([r.cpu for r in cold])}",
              f"  compiling               {spread([r.compiling for r in cold])}, "
              f"{statistics.median([r.kernels for r in cold]):.0f} kernel specialisations"]
    for r in warm:
        lines.append("  warm cache: " + _row("", r).split(": ", 1)[1])
    lines.append("  load average (1, 5, 15 min) "
                 + ", ".join(f"{v:.2f}" for v in doc["load_average_start"]) + " before, "
                 + ", ".join(f"{v:.2f}" for v in doc["load_average_end"]) + " after")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cold_start",
                                description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="cold runs, each with an empty cache")
    p.add_argument("--net", type=Path, default=PRETRAIN)
    p.add_argument("--data", type=Path, help="default: the digits 0-4 set, exported first")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--target", default="cpu", choices=("cpu", "reference"))
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    print(f"load average at the start: {load()}", flush=True)
    doc = measure(args.net.resolve(), args.data.resolve() if args.data else None,
                  args.runs, args.epochs, args.target)
    print("\n".join(summary(doc)))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
