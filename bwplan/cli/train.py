"""`bwplan train net.bw --data FILE.npz ...`: fine-tune for real with the planned backward,
print progress, a summary, and optionally a loss-curve PNG."""
from __future__ import annotations

import argparse
import sys

from bwplan.cli.options import add_network_arguments, caffe_options
from bwplan.cli.progress import Progress
from bwplan.errors import BwError
from bwplan.source import Span


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_network_arguments(p)
    p.add_argument("--data", required=True, metavar="FILE.npz",
                   help="arrays named after the net's inputs; validation arrays as val/<input>")
    p.add_argument("--weights", metavar="FILE.npz", help="initial (pretrained) weights")
    p.add_argument("--rename", action="append", default=[], metavar="NET=FILE",
                   help="load net parameters matching NET from file arrays FILE ('*' allowed)")
    p.add_argument("--skip", action="append", default=[], metavar="PATTERN",
                   help="leave parameters matching PATTERN as initialised (a new head)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", choices=("cpu", "cuda", "reference"), default="cpu")
    p.add_argument("--no-prune", action="store_true",
                   help="run the full backward (updates still masked): the baseline")
    p.add_argument("--cache-frozen", action="store_true",
                   help="compute a deterministic frozen prefix once per sample")
    p.add_argument("--unfreeze-every", type=int, default=0, metavar="K",
                   help="every K epochs unfreeze the next frozen block, from the top")
    p.add_argument("--schedule", metavar="FILE",
                   help="lines 'EPOCH freeze|unfreeze PATTERN' applied at that epoch")
    p.add_argument("--out", metavar="FILE.npz", help="write the trained weights here")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also write --out every STEPS steps, so a stopped run loses at most "
                        "that much (default 0: only at the end)")
    p.add_argument("--plot", metavar="FILE.png", help="write the loss curve here")
    p.add_argument("--profile", action="store_true",
                   help="print what the last step launched and executed")


def run(args) -> int:
    import bwplan
    from bwplan.cli.report import profile_lines
    from bwplan.runtime.data import load_dataset
    from bwplan.runtime.train import train
    from bwplan.cli.schedule import check_schedule, read_schedule
    from bwplan.fsutil import check_writable
    from bwplan.runtime.checks import check_dataset, check_options

    check_options(args.epochs, args.batch, args.seed, args.unfreeze_every, args.lr,
                  args.momentum, args.weight_decay, args.checkpoint_every)
    if args.checkpoint_every and not args.out:
        raise BwError(Span.synthetic("--checkpoint-every"), "--checkpoint-every writes the "
                      "--out file: give --out too")
    for option, path in (("--out", args.out), ("--plot", args.plot)):
        if path:
            check_writable(path, option)
    schedule = read_schedule(args.schedule) if args.schedule else None
    prog = bwplan.compile(args.file, target=args.target, rules=args.rules,
                          prune=not args.no_prune, seed=args.seed,
                          caffe_options=caffe_options(args))
    rename = dict(_pair(r) for r in args.rename)
    if args.weights:
        loaded = prog.load_weights(args.weights, rename=rename, skip=args.skip)
        print(f"loaded {len(loaded)} parameters from {args.weights}", file=sys.stderr)
    data = load_dataset(args.data, [i.name for i in prog.net.inputs])
    check_dataset(prog.net, data.train, data.val, args.data)
    if schedule is not None:
        schedule = check_schedule(schedule, prog.net, [], args.epochs)
    prog.set_optimizer(args.lr, args.momentum, args.weight_decay)
    s = prog.plan.summary
    print(f"{prog.net.name}: {len(prog.net.layers)} layers, {data.size} samples; backward "
          f"{s.planned_dx} dX + {s.planned_dw} dW of {s.full_dx} + {s.full_dw}"
          + (" (unpruned)" if args.no_prune else ""), file=sys.stderr)
    bar = Progress()
    steps = [0]

    def on_batch(e, k, n, loss, rate):
        bar.batch(e, args.epochs, k, n, loss, rate)
        steps[0] += 1
        if args.checkpoint_every and steps[0] % args.checkpoint_every == 0:
            prog.save_weights(args.out)

    def on_epoch(r):
        text = f"epoch {r.epoch}/{args.epochs}  loss {r.loss:.4f}  {r.samples / r.seconds:,.0f} " \
               f"samples/s  {r.seconds:.2f} s"
        if r.val_loss is not None:
            text += f"  val loss {r.val_loss:.4f}"
            text += "".join(f"  {k} {v:.4f}" for k, v in r.metrics.items())
        bar.epoch(text)

    history = train(prog, data, args.epochs, args.batch, args.seed, args.cache_frozen,
                    args.unfreeze_every, schedule,
                    on_batch=on_batch, on_epoch=on_epoch)
    total = sum(r.seconds for r in history)
    last = history[-1]
    print(f"done: {args.epochs} epochs in {total:.2f} s, final loss {last.loss:.4f}"
          + "".join(f", {k} {v:.4f}" for k, v in last.metrics.items()))
    if args.profile and prog.last_stats is not None:
        print("\n".join(profile_lines(prog)))
    if args.out:
        prog.save_weights(args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    if args.plot:
        from bwplan.cli.plot import plot_history
        plot_history(history, args.plot, prog.net.name)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _pair(text: str) -> tuple[str, str]:
    net, sep, file = text.partition("=")
    if not sep or not net or not file:
        raise BwError(Span.synthetic("--rename"), f"cannot read '{text}'",
                      "write NET_PATTERN=FILE_PATTERN, e.g. 'right/*=left/*'")
    return net, file
