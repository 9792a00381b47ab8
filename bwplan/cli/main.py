"""`bwplan` entry point. Errors in the user's input print as `file:line:col: error: ...`
with the source line and a caret and exit with status 2; `--debug` shows the traceback."""
from __future__ import annotations

import argparse
import importlib
import sys

import numpy as np

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


class HelpWithDefaults(argparse.HelpFormatter):
    """Appends an option's default to its help where the default says something (not for
    flags, nor for options that are off unless given)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" in text or "default" in text or not action.option_strings
                or action.default is None or action.default is False
                or action.default == [] or action.default is argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def parser() -> argparse.ArgumentParser:
    from bwplan import __version__
    p = argparse.ArgumentParser(prog="bwplan", description="Plan, explain and run the "
                                "minimal backward pass of a network.",
                                formatter_class=HelpWithDefaults)
    p.add_argument("--version", action="version", version=f"bwplan {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text,
                             formatter_class=HelpWithDefaults)
        cmd.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show tracebacks")
        importlib.import_module(module).add_arguments(cmd)
        cmd.set_defaults(module=module)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, rest = p.parse_known_args(argv)
    if rest:
        # only a command that forwards its options (bench) takes what bwplan does not know
        if not getattr(args, "forwards_options", False):
            p.error("unrecognized arguments: " + " ".join(rest))
        args.forwarded = rest[1:] if rest[0] == "--" else rest
    try:
        # a diverging run's overflow is reported once, as its own error, by the step checks
        # (runtime/checks.py), not as NumPy's floating-point warnings on the way there
        with np.errstate(over="ignore", invalid="ignore"):
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
