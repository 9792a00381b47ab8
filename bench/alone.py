"""One contestant timed in a process of its own, so that no other thread pool shares its
cores or its OpenMP runtime: PyTorch with OpenMP's default wait policy (its best), bwplan
with the passive policy its kernels set. Prints one JSON object: median, min and max step
seconds.

    python -m bench.alone torch|bwplan NET_PATH RULES_JSON BATCH_MULT WARMUP REPEATS THREADS
"""
from __future__ import annotations

import json
import sys
import time


def main(argv) -> int:
    who, path, rules, mult, warmup, repeats, threads = argv
    rules = [tuple(r) for r in json.loads(rules)]
    import bwplan
    from bench.suite import DECAY, LR, MOMENTUM, random_batch
    if who == "torch":
        import torch
        torch.set_num_threads(int(threads))
        from bench.torch_peer import TorchPeer, torch_batch
        prog = bwplan.compile(path, target="reference", rules=rules)
        batch = torch_batch(random_batch(prog.net, batch_mult=int(mult)))
        peer = TorchPeer(prog.net, prog.params, LR, MOMENTUM, DECAY)

        def step():
            peer.step(batch)
    else:
        from bwplan.kernels.cpu.threads import configure
        configure(int(threads))
        prog = bwplan.compile(path, target="cpu", rules=rules)
        prog.set_optimizer(LR, MOMENTUM, DECAY)
        batch = random_batch(prog.net, batch_mult=int(mult))

        def step():
            prog.step(batch)
    samples = []
    for i in range(int(warmup) + int(repeats)):
        start = time.perf_counter()
        step()
        if i >= int(warmup):
            samples.append(time.perf_counter() - start)
    samples.sort()
    print(json.dumps({"median": samples[len(samples) // 2], "min": samples[0],
                      "max": samples[-1]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
