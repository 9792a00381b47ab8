"""One contestant timed in a process of its own, so that no other thread pool shares its
cores or its OpenMP runtime. The suite runs both with OMP_WAIT_POLICY=PASSIVE: OpenMP's
default (spinning) policy is fast on idle cores but was 4-20x slower when the cores were
shared, so it timed the neighbours rather than PyTorch. VARIANT is one of the PyTorch
peer's (bench/torch_peer.py; ignored for bwplan). Prints one JSON object: median, min and
max step seconds, and the median of the process CPU time per step.

    python -m bench.alone torch|bwplan NET_PATH RULES_JSON BATCH_MULT WARMUP REPEATS THREADS
                          [VARIANT]
"""
from __future__ import annotations

import json
import statistics
import sys
import time


def main(argv) -> int:
    who, path, rules, mult, warmup, repeats, threads = argv[:7]
    variant = argv[7] if len(argv) > 7 else "eager"
    rules = [tuple(r) for r in json.loads(rules)]
    import bwplan
    from bench.suite import DECAY, LR, MOMENTUM, random_batch
    from bwplan.kernels.cpu.threads import configure
    configure(int(threads))
    if who == "torch":
        import torch
        torch.set_num_threads(int(threads))
        from bench.torch_peer import TorchPeer
        prog = bwplan.compile(path, target="reference", rules=rules)
        peer = TorchPeer(prog.net, prog.params, LR, MOMENTUM, DECAY, variant)
        batch = peer.batch(random_batch(prog.net, batch_mult=int(mult)))

        def step():
            peer.step(batch)
    else:
        prog = bwplan.compile(path, target="cpu", rules=rules)
        prog.set_optimizer(LR, MOMENTUM, DECAY)
        batch = random_batch(prog.net, batch_mult=int(mult))

        def step():
            prog.step(batch)
    samples, cpu = [], []
    for i in range(int(warmup) + 1 + int(repeats)):
        c0, start = time.process_time(), time.perf_counter()
        step()
        if i > int(warmup):
            samples.append(time.perf_counter() - start)
            cpu.append(time.process_time() - c0)
    samples.sort()
    print(json.dumps({"median": samples[len(samples) // 2], "min": samples[0],
                      "max": samples[-1], "cpu_median": statistics.median(cpu)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
