"""`bwplan bench [--quick] ...`: runs the benchmark suite of a source checkout
(`python -m bench`) with the options given; the suite is not part of the installed
package."""
from __future__ import annotations

import argparse
import sys

from bwplan.errors import BwError
from bwplan.resources import resource_dir
from bwplan.source import Span


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("every other option goes to the suite, e.g. bwplan bench --quick "
                "(see python -m bench --help in a checkout)")
    p.set_defaults(forwards_options=True, forwarded=[])


def run(args) -> int:
    try:
        checkout = resource_dir("bench").parent
    except FileNotFoundError:
        raise BwError(Span.synthetic("bench"), "the benchmark suite ships with the source "
                      "checkout, not with the installed package",
                      "clone the repository and run: python -m bench --quick") from None
    sys.path.insert(0, str(checkout))
    from bench.__main__ import main
    return main(list(args.forwarded))
