"""`bwplan convert model.prototxt -o model.bw`: a Caffe net (or an ONNX model) written in
the .bw language, with the same layers, shapes, sharing and training settings. An ONNX
model's weights are not part of the .bw text: `bwplan.compile("model.onnx")` loads them."""
from __future__ import annotations

import argparse
import sys

from bwplan.cli.options import load_network
from bwplan.errors import BwError
from bwplan.fsutil import write_atomic
from bwplan.ir.build import build
from bwplan.source import Span


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a Caffe .prototxt")
    p.add_argument("-o", "--output", metavar="FILE.bw", help="write here instead of stdout")
    p.add_argument("--phase", choices=("train", "test"), default="train",
                   help="Caffe phase to convert")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=N,C,H,W",
                   help="shape of a Caffe data blob that the prototxt does not give")
    p.add_argument("--caffe-strict", action="store_true",
                   help="reject what Caffe rejects (shared params with different lr_mult)")
    p.add_argument("--loss", metavar="LOSS", default=None,
                   help="for an ONNX model: the loss to attach (see bwplan explain --help); "
                   "default: none")


def run(args) -> int:
    from bwplan.frontend.write_bw import write_bw
    if not args.file.endswith((".onnx", ".prototxt", ".pbtxt")):
        raise BwError(Span.whole(args.file), "convert reads Caffe .prototxt and ONNX .onnx "
                      "files")
    loaded = load_network(args)
    net = build(loaded.module)   # what the .bw text builds; rejects what bwplan cannot run
    text = write_bw(loaded.module)
    if args.output:
        write_atomic(args.output, text)
        print(f"wrote {args.output}: {len(net.layers)} layers, "
              f"{len(net.params)} parameters", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
