"""`isthmus demo`: the end-to-end demo on built-in data (`demo.run_demo`), an HTML report."""

from __future__ import annotations

from . import _common as c


def cmd_demo(args) -> None:
    from ..demo import run_demo

    path = run_demo(
        c.new_output(args.out, [], adds=True),
        seed=args.seed,
        quick=args.quick,
        pdf=args.pdf,
        command=["isthmus", *args.argv],
    )
    print(f"report: {path.resolve()}")  # the last line: the page to open


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="end-to-end demo on built-in data; writes an HTML report",
        description="Train nets on mnist1d, connect them, write DIR/report.html.",
    )
    p.add_argument("--out", default="demo", help="output folder [demo]")
    c.add_seed(p)
    p.add_argument("--quick", action="store_true", help="smaller settings (used by the tests)")
    c.add_pdf(p)
    p.set_defaults(fn=cmd_demo)
