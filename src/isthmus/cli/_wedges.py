"""`isthmus wedges`: the wedge model of Fort & Jastrzebski 2019 and its five experiments
(docs/large_scale.md); parse, call, write, print."""

from __future__ import annotations

from dataclasses import asdict

from . import _common as c

FIGURES = {"a": "wedge_landing", "b": "wedge_tunnels", "c": "wedge_subspaces", "d": "wedge_cut",
           "e": "wedge_learning_rates"}  # fmt: skip
QUICK = dict(dim=40, wedge_dim=24, wedges=4)  # small enough for seconds per experiment


def cmd_wedges(args) -> None:
    from .. import plot
    from ..experiments.wedges import EXPERIMENTS, run
    from ..io import write_json
    from ..wedges import WedgeConfig, WedgeModel

    chosen = EXPERIMENTS if "all" in args.experiment else tuple(dict.fromkeys(args.experiment))
    sizes = (
        QUICK if args.quick else dict(dim=args.dim, wedge_dim=args.wedge_dim, wedges=args.wedges)
    )
    cfg = WedgeConfig(**sizes, w0=args.w0, alpha=args.alpha, temperature=args.temperature)
    out = c.new_output(args.out, [], args)
    model = WedgeModel.random(cfg, seed=args.seed)
    results = run(model, chosen, seed=args.seed)
    doc = {"config": asdict(cfg), "seed": args.seed, "experiments": {}}
    for key, res in results.items():
        doc["experiments"][key] = res.to_json()
        fig = getattr(plot, FIGURES[key])(res, out / FIGURES[key], pdf=args.pdf)
        print(f"{key}: {_summary(key, doc['experiments'][key])} -> {fig}")
    write_json(out / "wedges.json", doc)
    print(f"wrote {out / 'wedges.json'}")


def _summary(key: str, r: dict) -> str:
    if key == "a":
        return f"{r['landed']:.0%} of {len(r['final_loss'])} runs landed on a wedge"
    if key == "b":
        m = r["max_loss"]
        return (
            f"max loss: line {m['line']:.3g}, through the intersection {m['intersection']:.2g}, "
            f"AutoNEB {m['autoneb']:.3g}"
        )
    if key == "c":
        return f"{len(r['rows'])} (D, n, d) cells, success rates in wedges.json"
    if key == "d":
        return "the plane through the origin and a solution"
    rows = sorted((x for x in r["rows"] if x["l2"] == 0), key=lambda x: x["lr"])
    return "radius by lr: " + ", ".join(f"{x['lr']:g}: {x['radius_mean']:.2f}" for x in rows)


def register(sub) -> None:
    p = sub.add_parser(
        "wedges",
        help="the wedge model of the landscape (Fort & Jastrzebski 2019) and its experiments",
        description="Build K random n-dimensional wedges in R^D and run the experiments: "
        "a landing (descent ends on wedges), b tunnels (line vs intersection vs AutoNEB), "
        "c subspaces (random-subspace training succeeds above d = D - n), d cut (a radial "
        "tunnel), e lr (larger steps end farther out and flatter; L2 pulls inward). Writes "
        "OUT/wedges.json and one figure per experiment.",
    )
    p.add_argument(
        "--experiment",
        nargs="+",
        choices=("a", "b", "c", "d", "e", "all"),
        default=["all"],
        help="experiments to run [all]",
    )
    p.add_argument("--dim", type=c.bounded(2, 20_000), default=200, help="D, the dimension [200]")
    p.add_argument(
        "--wedge-dim", type=c.bounded(1, 20_000), default=120, help="n, wedge dimension [120]"
    )
    p.add_argument("--wedges", type=c.bounded(1, 1000), default=6, help="K, number of wedges [6]")
    p.add_argument(
        "--w0",
        type=c.real(0, 1e6, open_lo=True),
        default=0.05,
        help="thickness at the origin [0.05]",
    )
    p.add_argument(
        "--alpha", type=c.real(0, 1e6), default=0.1, help="growth of thickness with radius [0.1]"
    )
    p.add_argument(
        "--temperature",
        type=c.real(0, 1e6),
        default=0.0,
        help="softmin temperature; 0 = hard min [0]",
    )
    p.add_argument("--quick", action="store_true", help="D = 40, n = 24, K = 4 (seconds)")
    c.add_seed(p)
    c.add_pdf(p)
    c.add_output(p)
    p.set_defaults(fn=cmd_wedges)
