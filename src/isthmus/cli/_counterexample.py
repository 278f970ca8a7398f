"""`isthmus counterexample` (Kuditipudi et al. 2019, Theorem 4): the data set whose global minimisers
are disconnected, and the path searches between them; parse, call, write, print."""

from __future__ import annotations

from . import _common as c


def cmd_counterexample(args) -> None:
    from .. import plot
    from ..counterexample import experiment
    from ..errors import IsthmusError
    from ..io import write_json

    if args.width < 2:
        raise IsthmusError(f"--width must be >= 2 (hidden units of the student), got {args.width}")
    out = c.new_output(args.out, [], args)  # refused before seconds of computing, not after
    res = experiment(args.width, seed=args.seed, epochs=args.epochs, steps=args.steps)
    write_json(out / "counterexample.json", res)
    plot.counterexample_paths(res, out / "counterexample", args.pdf)
    for key in ("counterexample", "ordinary"):
        best = {m: r["max_loss"] for m, r in res[key].items()}
        print(
            f"{key:>14}: max loss on line {best['line']:.3g}, Bezier {best['bezier']:.3g}, "
            f"AutoNEB {best['neb']:.3g}"
        )
    print(
        f"invariants of the two minimisers: {res['invariant'][0]} vs {res['invariant'][1]} "
        f"-> {out / 'counterexample.json'}"
    )


def register(sub) -> None:
    p = sub.add_parser(
        "counterexample",
        help="data whose global minimisers are disconnected (Kuditipudi et al. 2019, Theorem 4)",
        description="Build the counterexample for an h-unit two-layer student (proof: "
        "docs/counterexample.md), check its invariant on the two minimisers, and run the straight "
        "line, a Bezier curve and AutoNEB between them and, as a control, between two exact fits "
        "on ordinary data. Writes OUT/counterexample.json and OUT/counterexample.png.",
    )
    p.add_argument(
        "--width",
        type=c.bounded(2, 1000),
        default=3,
        help="hidden units h of the student (>= 2) [3]",
    )
    p.add_argument(
        "--epochs", type=c.positive, default=2000, help="full-batch Bezier fitting steps [2000]"
    )
    p.add_argument("--steps", type=c.positive, default=300, help="AutoNEB steps per cycle [300]")
    c.add_seed(p)
    c.add_pdf(p)
    c.add_output(p)
    p.set_defaults(fn=cmd_counterexample)
