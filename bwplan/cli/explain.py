"""`bwplan explain FILE`: the backward plan as a table, JSON or Graphviz dot; `--why NAME`
for the facts behind one layer's decisions; `--caffe` for Caffe's own log lines."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from bwplan.cli.options import add_network_arguments, caffe_options, load_network
from bwplan.cli.report import with_import_warnings
from bwplan.errors import BwError
from bwplan.explain.dot import render_dot
from bwplan.explain.json_report import render_json
from bwplan.explain.table import WIDTH, render_table
from bwplan.explain.why import render_why
from bwplan.fsutil import write_atomic
from bwplan.frontend.load import read_text
from bwplan.ir.build import build
from bwplan.plan.plan import make_plan
from bwplan.plan.policy import apply_policy
from bwplan.source import Span

RENDERERS = {"table": render_table, "json": render_json, "dot": render_dot}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_network_arguments(p)
    p.add_argument("--format", choices=sorted(RENDERERS), default="table",
                   help="table for reading, json for tools, dot for Graphviz")
    p.add_argument("--why", metavar="NAME", help="explain every decision about one layer, "
                   "input or parameter")
    p.add_argument("--caffe", action="store_true",
                   help="print Caffe's own 'needs backward computation' lines for a prototxt")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument("--data-parallel", action="store_true",
                   help="also show the gradient buckets a data-parallel step all-reduces")
    p.add_argument("--bucket-kib", type=int, default=256, metavar="KIB",
                   help="with --data-parallel: the largest bucket one all-reduce sends")
    p.add_argument("--wide", action="store_true",
                   help=f"one line per layer with its reason, however wide (the table and "
                   f"--why fit {WIDTH} columns otherwise)")


def is_caffe(path: str) -> bool:
    return path.endswith((".prototxt", ".pbtxt"))


def run(args) -> int:
    if args.caffe:
        text = caffe_report(args)
    else:
        plan = _plan(args)
        if args.why:
            text = render_why(plan, args.why, None if args.wide else WIDTH)
        elif args.format == "table":
            text = render_table(plan, None if args.wide else WIDTH)
        else:
            text = RENDERERS[args.format](plan)
        if args.data_parallel and not args.why:
            text = _with_buckets(plan, text, args)
    if args.output:
        write_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def _plan(args):
    """The plan of the file; the importer's warnings (where a Caffe net trains differently
    in Caffe; an ONNX model's notes: the loss it assumed, batch normalisation) join the
    findings after the plan's own."""
    loaded = load_network(args)
    plan = make_plan(apply_policy(build(loaded.module), args.rules))
    if not loaded.warnings:
        return plan
    return replace(plan, findings=with_import_warnings(plan.findings, loaded.warnings))


def _with_buckets(plan, text: str, args) -> str:
    """The table or JSON with the data-parallel buckets added (from the pruned Program the
    peak figures already lowered)."""
    from bwplan.explain.buckets import buckets_to_dict, render_buckets
    from bwplan.lower.buckets import gradient_buckets
    if args.bucket_kib <= 0:
        raise BwError(Span.synthetic("--bucket-kib"), "the bucket size must be positive")
    buckets = gradient_buckets(plan.program(True), args.bucket_kib << 10)
    if args.format == "json":
        import json
        from bwplan.explain.json_report import plan_to_dict
        doc = plan_to_dict(plan)
        doc["data_parallel"] = buckets_to_dict(plan, buckets)
        return json.dumps(doc, indent=1) + "\n"
    if args.format == "dot":
        raise BwError(Span.synthetic("--data-parallel"), "--data-parallel adds to the table "
                      "and the JSON report, not to dot")
    return text + "\n".join(render_buckets(plan, buckets, None if args.wide else WIDTH)) + "\n"


def caffe_report(args) -> str:
    if not is_caffe(args.file):
        raise BwError(Span.synthetic("--caffe"), "--caffe needs a Caffe .prototxt file",
                      "without --caffe, explain shows bwplan's own plan of any file")
    if args.rules:
        raise BwError(Span.synthetic("--caffe"), "--caffe shows what Caffe decides for the "
                      "file as written; --freeze/--unfreeze do not apply to it")
    other = [o for o, given in (("--format " + args.format, args.format != "table"),
                                ("--why", args.why), ("--wide", args.wide)) if given]
    if other:
        raise BwError(Span.synthetic("--caffe"), "--caffe prints Caffe's own log lines beside "
                      f"bwplan's as text; {' and '.join(other)} "
                      f"{'does' if len(other) == 1 else 'do'} not apply to it",
                      "leave out --caffe to get bwplan's plan that way")
    from bwplan.caffe.compare import render_caffe_only, render_caffe_view
    from bwplan.caffe.importer import caffe_state, import_caffe_text
    text, options = read_text(args.file), caffe_options(args)
    state, _ = caffe_state(text, args.file, **options)   # raises what Caffe rejects
    try:
        imported = import_caffe_text(text, args.file, **options)
        plan = make_plan(imported.net)
    except BwError as err:
        # Caffe's own decisions do not depend on bwplan knowing the layer types
        return render_caffe_only(state, getattr(err, "errors", (err,)))
    return render_caffe_view(imported, plan)
