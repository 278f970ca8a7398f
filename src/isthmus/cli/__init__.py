"""The `isthmus` command: one thin subcommand per library function.

Each subcommand parses its arguments, calls the library, writes files and prints a short summary.
Subcommands live in one module each (`_train`: train and eval, `_demo`, `_connect`, `_tree`,
`_surface`, `_align`, `_stability`, `_counterexample`, `_wedges`, `_hessian`, `_study`, `_subspace`); each module
has
`register(subparsers)`. User errors (`IsthmusError`) print one message and exit 2; Ctrl-C exits 130
and says how to resume.
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
    "_demo",
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
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="isthmus",
        description="Connectivity of neural-network loss landscapes: train nets, connect them, "
        "measure stability and curvature. Every command takes --seed; see README.md.",
    )
    ap.add_argument("--version", action="version", version=f"isthmus {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except IsthmusError as e:
        print(f"isthmus: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "isthmus: interrupted; what was checkpointed is kept (rerun with --resume where offered)",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
