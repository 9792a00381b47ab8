"""`bwplan` entry point. Errors in the user's input print as `file:line:col: error: ...`
with the source line and a caret and exit with status 2; `--debug` shows the traceback."""
from __future__ import annotations

import argparse
import importlib
import sys

from bwplan.diagnostics import format_error
from bwplan.errors import BwError, InternalError

# command name -> (module, one-line help)
COMMANDS = {
    "explain": ("bwplan.cli.explain", "show the backward plan of a network and why"),
    "convert": ("bwplan.cli.convert", "write a Caffe .prototxt as a .bw file"),
    "compile": ("bwplan.cli.compile", "lower the plan to a program for a target and write it"),
    "train": ("bwplan.cli.train", "train or fine-tune with the planned backward"),
    "data": ("bwplan.cli.data", "export a small packaged data set for bwplan train"),
    "bench": ("bwplan.cli.bench", "run the benchmark suite (source checkout only)"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bwplan", description="Plan, explain and run the "
                                "minimal backward pass of a network.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show tracebacks")
        importlib.import_module(module).add_arguments(cmd)
        cmd.set_defaults(module=module)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return importlib.import_module(args.module).run(args)
    except BwError as err:
        if args.debug:
            raise
        print(format_error(err), file=sys.stderr)
        return 2
    except InternalError as err:
        if args.debug:
            raise
        print(f"internal error: {err} (this is a bug in bwplan; rerun with --debug)",
              file=sys.stderr)
        if err.context:
            print(err.context, file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
