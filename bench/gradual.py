"""Gradual unfreezing in a fresh process: stage k unfreezes the k top units (block instances
or parameterised layers); each stage re-plans and runs one step. Counts, per stage, the
Numba specialisations present after it (compiled, or loaded from the on-disk cache) that
were not there before, so a stage that only reuses kernels earlier stages used shows 0.
Prints one JSON object.

    python -m bench.gradual NET_PATH TARGET
"""
from __future__ import annotations

import gc
import json
import sys
import time


def specialisations() -> int:
    from numba.core.dispatcher import Dispatcher
    return sum(len(d.overloads) for d in gc.get_objects() if isinstance(d, Dispatcher))


def main(argv) -> int:
    path, target = argv
    import bwplan
    from bench.suite import DECAY, LR, MOMENTUM, random_batch
    from bwplan.runtime.train import unfreeze_units
    prog = bwplan.compile(path, target=target, rules=[("freeze", "*")])
    prog.set_optimizer(LR, MOMENTUM, DECAY)
    batch = random_batch(prog.net)
    units = unfreeze_units(prog)
    stages = []
    for k in range(len(units) + 1):
        rules = [("freeze", "*")] + [("unfreeze", u) for u in units[:k]]
        start = time.perf_counter()
        prog.replan(rules)
        replan = time.perf_counter() - start
        before = specialisations()
        start = time.perf_counter()
        prog.run_step(batch)
        first = time.perf_counter() - start
        stages.append({"unfrozen": units[:k], "replan_ms": replan * 1e3,
                       "first_step_ms": first * 1e3,
                       "new_compilations": specialisations() - before,
                       "dw_kernels": prog.last_stats.launched["dw"]})
    from pathlib import Path
    print(json.dumps({"net": Path(path).stem, "stages": stages}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
