"""The `isthmus` command: one thin subcommand per library function.

Each subcommand parses its arguments, calls the library, writes files and prints a short summary.
Subcommands live in one module each (listed in `MODULES`); each module has
`register(subparsers)`. User errors (`IsthmusError`, bad flags) print one message and exit 2; any
other failure prints one line naming it and exits 1 (the traceback only with `--debug`); Ctrl-C
exits 130 and says how to resume.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import IsthmusError
from ..version import __version__

# in the order `isthmus --help` lists them; every module must exist (a missing one is an error)
MODULES = (
    "_train",
    "_eval",
    "_demo",
    "_report",
    "_connect",
    "_tree",
    "_surface",
    "_align",
    "_stability",
    "_counterexample",
    "_wedges",
    "_hessian",
    "_study",
    "_subspace",
    "_ensemble",
    "_sweep",
    "_reproduce",
    "_instability",
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="isthmus",
        description="Connectivity of neural-network loss landscapes: train nets, connect them, "
        "measure stability and curvature. Every command takes --seed; see README.md.",
    )
    ap.add_argument("--version", action="version", version=f"isthmus {__version__}")
    ap.add_argument(
        "--debug", action="store_true", help="show the Python traceback of an unexpected failure"
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    from ..io import release_output

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a bad flag: argparse printed its message; --help/--version exit 0
        if e.code in (0, None):
            raise
        return int(e.code) if isinstance(e.code, int) else 2
    try:
        args.argv = argv  # the command as typed, for the commands that show it (the demo)
        args.fn(args)
        _record_command(argv)
    except IsthmusError as e:
        print(f"isthmus: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "isthmus: interrupted; what was checkpointed is kept (rerun with --resume where offered)",
            file=sys.stderr,
        )
        return 130
    except MemoryError:
        print("isthmus: error: out of memory; use smaller sizes or --batch-size", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - one line instead of a traceback; --debug shows it
        if args.debug:
            raise
        print(
            f"isthmus: unexpected failure: {type(e).__name__}: {e} (an input isthmus does not "
            "check yet, or a bug: rerun with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        return 1
    finally:
        release_output()
    return 0


def _record_command(argv: list[str]) -> None:
    """`command.json` (report.record_command) in every folder the finished command wrote to."""
    from ..io import held_outputs

    folders = held_outputs()
    if folders:
        from ..report import record_command

        for folder in folders:
            record_command(folder, argv)


if __name__ == "__main__":
    sys.exit(main())
