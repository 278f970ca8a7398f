"""`isthmus reproduce PAPER`: a paper's claims with verdicts (`experiments.reproduce`); parse,
call, print the report's path."""

from __future__ import annotations

from . import _common as c

PAPERS = ("kuditipudi2019", "fort2019")
DATA = ("mnist1d", "digits", "mnist", "fashion-mnist", "cifar10")


def cmd_reproduce(args) -> None:
    from ..experiments.reproduce import reproduce

    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    out = c.new_output(args.out, [], args)
    path = reproduce(
        args.paper,
        out,
        size=size,
        seed=args.seed,
        data=args.data,
        root=args.root,
        resume=args.resume,
        pdf=args.pdf,
        command=["isthmus", *args.argv],
    )
    print(f"results: {(out / 'results.json').resolve()}")
    print(f"report: {path.resolve()}")  # the last line: the page to open


def register(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="reproduce a paper's claims; writes results.json and report.html",
        description="Run a paper's experiments (docs/reproduction.md: every claim's statistic, "
        "threshold and seeds) and write every figure, OUT/results.json (claims, numbers, "
        "verdicts, settings, durations) and OUT/report.html. kuditipudi2019: dropout and noise "
        "stability, the Theorem 1 and 2 paths, the counterexample. fort2019: the wedge model, "
        "learning rate / width / L2 curvature trends, N solutions joined by a complex, ensembles.",
    )
    p.add_argument("paper", choices=PAPERS, help="which paper")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes (minutes on a laptop)")
    size.add_argument("--smoke", action="store_true", help="tiny sizes (the tests; seconds)")
    p.add_argument(
        "--data",
        choices=DATA,
        default="mnist1d",
        help="data set [mnist1d]; mnist, fashion-mnist and cifar10 are read from --root",
    )
    p.add_argument("--root", default=None, help="folder holding the files of --data")
    p.add_argument("--resume", action="store_true", help="continue OUT: finished steps are skipped")
    c.add_seed(p)
    c.add_pdf(p)
    c.add_output(p)
    p.set_defaults(fn=cmd_reproduce)
