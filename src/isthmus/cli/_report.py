"""`isthmus report DIR`: any result folder as one self-contained HTML page (`report.write_report`)."""

from __future__ import annotations

from . import _common as c


def cmd_report(args) -> None:
    from ..report import write_report

    path = write_report(args.dir, out=args.out, overwrite=args.overwrite)
    print(f"report: {path.resolve()}")


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page of any result folder",
        description="Write DIR/report.html (or --out FILE): the result's main numbers as tables, "
        "its figures embedded, the command that made it and its settings, links to its JSON files "
        "and to the runs it was computed from. The kind of result is read from the files present.",
    )
    p.add_argument(
        "dir",
        help="a result folder (train, connect, tree, surface, align, stability, "
        "hessian, subspace, ensemble, study, wedges, counterexample, demo, sweep)",
    )
    c.add_output(
        p,
        "the HTML file to write (an existing one only with --overwrite, and only "
        "if isthmus report wrote it) [DIR/report.html]",
        required=False,
    )
    p.set_defaults(fn=cmd_report)
