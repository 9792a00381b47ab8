"""`bwplan data digits --classes 0-4 -o digits.npz`: a small real data set that ships with
scikit-learn, exported in the form `bwplan train` reads (image, label, val/image,
val/label)."""
from __future__ import annotations

import argparse
import sys

from bwplan.errors import BwError
from bwplan.source import Span


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=("digits",), help="the data set")
    p.add_argument("--classes", default="0-9", help="e.g. 0-4 or 5,6,7")
    p.add_argument("--val", type=float, default=0.2, help="validation fraction")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("-o", "--output", required=True, metavar="FILE.npz",
                   help="where to write the arrays")


def parse_classes(text: str) -> list[int]:
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.partition("-")
            out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise BwError(Span.synthetic("--classes"), f"cannot read '{text}'",
                      "write a range like 0-4 or a list like 5,6,7") from None
    if not out or any(c < 0 or c > 9 for c in out) or len(set(out)) != len(out):
        raise BwError(Span.synthetic("--classes"), f"'{text}' must name distinct digits 0-9")
    return out


def run(args) -> int:
    from bwplan.runtime.data import digits, save_arrays
    classes = parse_classes(args.classes)
    arrays = digits(classes, args.val, args.seed)
    save_arrays(args.output, arrays)
    print(f"wrote {args.output}: {len(arrays['label'])} training and "
          f"{len(arrays['val/label'])} validation images of digits "
          f"{','.join(map(str, classes))} (labels 0-{len(classes) - 1})", file=sys.stderr)
    return 0
