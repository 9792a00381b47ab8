"""`bwplan train net.bw --data FILE.npz ...`: fine-tune for real with the planned backward,
print progress, a summary, and optionally a loss-curve PNG."""
from __future__ import annotations

import argparse
import sys

from bwplan.cli.options import add_network_arguments, load_network
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
    p.add_argument("--epochs", type=int, default=1, help="passes over the data")
    p.add_argument("--batch", type=int, default=64, help="samples per step")
    p.add_argument("--lr", type=float, default=0.01, help="learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initialisation and the shuffling")
    p.add_argument("--target", choices=("cpu", "cuda", "reference"), default="cpu",
                   help="where to run")
    p.add_argument("--no-prune", action="store_true",
                   help="run the full backward (updates still masked): the baseline")
    p.add_argument("--cache-frozen", action="store_true",
                   help="compute a deterministic frozen prefix once per sample")
    p.add_argument("--unfreeze-every", type=int, default=0, metavar="K",
                   help="every K epochs unfreeze the next frozen block, from the top "
                   "(0: never)")
    p.add_argument("--schedule", metavar="FILE",
                   help="lines 'EPOCH freeze|unfreeze PATTERN' applied at that epoch")
    p.add_argument("--out", metavar="FILE.npz", help="write the trained weights here")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also write --out every STEPS steps, so a stopped run loses at most "
                        "that much (default 0: only at the end)")
    p.add_argument("--plot", metavar="FILE.png", help="write the loss curve here")
    p.add_argument("--profile", action="store_true",
                   help="print what the last step launched and executed")
    p.add_argument("--bucket-kib", type=int, default=256, metavar="KIB",
                   help="under mpiexec: the largest gradient bucket one all-reduce sends")


def run(args) -> int:
    from bwplan.runtime.distributed import guarded, world
    comm = world()   # several processes under mpiexec: data-parallel
    if comm is not None and not getattr(args, "rank_guarded", False):
        args.rank_guarded = True
        return guarded(comm, run, args, debug=getattr(args, "debug", False))
    import bwplan
    from bwplan.cli import train_report
    from bwplan.cli.report import profile_lines, warning_lines
    from bwplan.runtime.data import load_dataset
    from bwplan.runtime.compiling import process_age, watch
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
    prog = bwplan.compile(load_network(args), target=args.target, rules=args.rules,
                          prune=not args.no_prune, seed=args.seed)
    rename = dict(_pair(r) for r in args.rename)
    loaded = {}
    if args.weights:
        loaded = prog.load_weights(args.weights, rename=rename, skip=args.skip)
        print(f"loaded {len(loaded)} parameters from {args.weights}", file=sys.stderr)
    data = load_dataset(args.data, [i.name for i in prog.net.inputs],
                        {i.name: i.type.shape for i in prog.net.inputs},
                        frozenset(i.name for i in prog.net.inputs if not i.batched))
    check_dataset(prog.net, data.train, data.val, args.data)
    if schedule is not None:
        schedule = check_schedule(schedule, prog.net, [], args.epochs)
    prog.set_optimizer(args.lr, args.momentum, args.weight_decay)
    dp = None
    if comm is not None:
        from bwplan.runtime.distributed import attach
        dp, data = attach(prog, comm, data, args.batch, args.bucket_kib << 10)
    for line in (warning_lines(train_report.shown_findings(prog.plan, args.weight_decay),
                               prog.warnings)
                 + train_report.run_warnings(prog, set(loaded), args.cache_frozen)):
        print(line, file=sys.stderr)
    print(train_report.header(prog, data.size, not args.no_prune), file=sys.stderr)
    bar = Progress()
    trained = [train_report.trained_layers(prog)]

    def on_stage(epoch, new_rules):
        bar.epoch(train_report.stage_line(prog, epoch, new_rules, trained[0],
                                          not args.no_prune))
        trained[0] = train_report.trained_layers(prog)
    steps = [0]
    first_step: list = []   # (wall since start or None, CPU, compile s, kernels compiled)

    def on_batch(e, k, n, loss, rate):
        if not first_step:
            first_step.extend((*process_age(), watch().seconds, watch().count))
        bar.batch(e, args.epochs, k, n, loss, rate)
        steps[0] += 1
        if args.checkpoint_every and steps[0] % args.checkpoint_every == 0:
            prog.save_weights(args.out)

    def on_epoch(r):
        running = max(1e-9, r.seconds - r.compile_seconds)   # compiling is not throughput
        text = f"epoch {r.epoch}/{args.epochs}  loss {r.loss:.4f}  {r.samples / running:,.0f} " \
               f"samples/s  {r.seconds:.2f} s"
        if r.compile_seconds >= 0.05:
            text += f" ({r.compile_seconds:.1f} s of it compiling kernels)"
        if r.val_loss is not None:
            text += f"  val loss {r.val_loss:.4f}"
            text += "".join(f"  {k} {v:.4f}" for k, v in r.metrics.items())
        bar.epoch(text)

    watch().on_compiled = bar.compiling
    try:
        history = train(prog, data, args.epochs, args.batch, args.seed, args.cache_frozen,
                        args.unfreeze_every, schedule, on_batch=on_batch,
                        on_epoch=on_epoch, on_stage=on_stage)
    except KeyboardInterrupt:
        bar.epoch("interrupted: " + (f"{args.out} was not written" if args.out
                                     else "no weights saved (no --out given)"))
        return 130
    finally:   # the watcher outlives this command; its stream may not
        watch().on_compiled = None
    total = sum(r.seconds for r in history)
    last = history[-1]
    print(f"done: {args.epochs} epochs in {total:.2f} s, final loss {last.loss:.4f}"
          + "".join(f", {k} {v:.4f}" for k, v in last.metrics.items()))
    if dp is not None:   # --out only from a state every rank agrees on
        dp.check_parameters("the trained parameters")
    if args.profile and first_step:
        print(train_report.first_step_line(*first_step))
    if args.profile and last.full_step is not None:
        size = min(args.batch, data.size)
        print("\n".join(profile_lines(prog, last.full_step, f"one step of {size} samples:")
                        + (dp.profile_lines() if dp else [])))
    if dp is not None and dp.comm.rank != 0:
        return 0
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
