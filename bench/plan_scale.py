"""Planner scale benchmark: `explain` of a generated 10,000-layer network (target: under
2 s on a 2-core machine) and re-planning a 1,000-layer network after a change of its frozen
set (target: under 50 ms), as gradual unfreezing does once per stage.

    python -m bench.plan_scale [--layers 10000] [--replan-layers 1000]
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

from bwplan import apply_policy, load_bw_text, make_plan
from bwplan.cli.main import main as cli_main


def generated_net(layers: int, width: int = 64, batch: int = 32) -> str:
    """Residual MLP blocks (linear, relu, add) until `layers` layers, then a loss."""
    lines = [f"input x : f32[{batch}, {width}]", f"input y : i64[{batch}]",
             f"h0 = linear(x, out={width})"]
    prev, n, i = "h0", 1, 0
    while n < layers - 2:
        i += 1
        lines += [f"b{i}/fc = linear({prev}, out={width})", f"b{i}/act = relu(b{i}/fc)",
                  f"b{i}/sum = add(b{i}/act, {prev})"]
        prev, n = f"b{i}/sum", n + 3
    lines += [f"head = linear({prev}, out=10)", "loss = softmax_cross_entropy(head, y)"]
    return "\n".join(lines) + "\n"


def time_explain(layers: int, repeats: int = 3) -> tuple[list[float], list[float]]:
    """Wall and process CPU seconds of each `explain` (CPU time counts only this process:
    on a shared machine it moves less with the load than the wall clock does)."""
    text = generated_net(layers)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.bw"
        path.write_text(text)
        times, cpu = [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            with redirect_stdout(io.StringIO()):
                rc = cli_main(["explain", str(path), "--freeze", "b1*"])
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            assert rc == 0
    return times, cpu


def time_replan(layers: int, repeats: int = 20) -> list[float]:
    net = load_bw_text(generated_net(layers), "replan.bw")
    blocks = sorted({l.name.split("/")[0] for l in net.layers if "/" in l.name},
                    key=lambda b: int(b[1:]))
    times = []
    for k in range(repeats):
        cut = blocks[(k * len(blocks)) // repeats]
        start = time.perf_counter()
        make_plan(apply_policy(net, [("freeze", "h0"), ("freeze", f"{cut}/*")]))
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=10_000)
    p.add_argument("--replan-layers", type=int, default=1_000)
    args = p.parse_args(argv)
    explain, explain_cpu = time_explain(args.layers)
    replan = time_replan(args.replan_layers)
    e, r = statistics.median(explain), statistics.median(replan) * 1e3
    print(f"explain, {args.layers} layers: median {e:.2f} s (min {min(explain):.2f}, "
          f"max {max(explain):.2f}); target < 2 s: {'met' if e < 2 else 'NOT met'}")
    print(f"explain CPU time: median {statistics.median(explain_cpu):.2f} s "
          f"(min {min(explain_cpu):.2f}, max {max(explain_cpu):.2f})")
    print(f"re-plan, {args.replan_layers} layers: median {r:.1f} ms (min "
          f"{min(replan) * 1e3:.1f}, max {max(replan) * 1e3:.1f}); target < 50 ms: "
          f"{'met' if r < 50 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
