"""Options shared by commands that read a network: freezing rules in command-line order,
Caffe phase and input shapes; `load_network`, the file of a command read with them."""
from __future__ import annotations

import argparse

from bwplan.errors import BwError
from bwplan.source import Span


class _Ordered(argparse.Action):
    """Collects --freeze/--unfreeze into one list in the order they were given."""

    def __call__(self, parser, namespace, values, option_string=None):
        rules = list(getattr(namespace, "rules", None) or [])
        rules.append((self.dest, values))
        namespace.rules = rules


def add_network_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a .bw file or a Caffe .prototxt")
    p.add_argument("--freeze", action=_Ordered, metavar="PATTERN", default=None,
                   help="freeze the layers whose names match this glob, or rows of one "
                        "parameter: 'fc8.weight[0:1000]' (repeatable)")
    p.add_argument("--unfreeze", action=_Ordered, metavar="PATTERN", default=None,
                   help="unfreeze the layers whose names match this glob (repeatable)")
    p.add_argument("--phase", choices=("train", "test"), default="train",
                   help="Caffe phase to plan (default: train)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=N,C,H,W",
                   help="shape of a Caffe data blob that the prototxt does not give, or of "
                   "an ONNX input with dynamic axes")
    p.add_argument("--loss", metavar="LOSS", default=None,
                   help="for an ONNX model: the loss to attach to its output "
                   "(softmax_cross_entropy with a 'label' input, or euclidean_loss with a "
                   "'target' input); default: softmax_cross_entropy on an [N, classes] output")
    p.add_argument("--caffe-strict", action="store_true",
                   help="reject what Caffe rejects (shared params with different lr_mult)")
    p.set_defaults(rules=[])


def input_shapes(args) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for item in args.input_shape:
        name, _, dims = item.partition("=")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not name or not shape or any(d <= 0 for d in shape):
            raise BwError(Span.synthetic("--input-shape"), f"cannot read '{item}'",
                          "write it as NAME=N,C,H,W, e.g. data=32,3,224,224")
        shapes[name] = shape
    return shapes


def caffe_options(args) -> dict:
    return {"phase": args.phase.upper(), "input_shapes": input_shapes(args),
            "strict": args.caffe_strict}


def onnx_options(args) -> dict:
    return {"input_shapes": input_shapes(args), "loss": getattr(args, "loss", None)}


def load_network(args):
    """The command's network file through the one loader (a Loaded: the flat module, the
    importer's warnings, the file's weights); `args.file` is always a path."""
    from bwplan.frontend.load import load_module
    return load_module(args.file, caffe_options(args), onnx_options(args), from_file=True)
