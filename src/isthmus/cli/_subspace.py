"""`isthmus subspace RUN RUN ...`: a simplicial complex joining the runs' nets with shared connector
points (`subspace.join_runs`: Benton et al. 2021), evaluated at its vertices, at uniform samples,
along its edges and along the straight lines between the runs.

Writes DIR/subspace.safetensors, DIR/subspace.json (docs/subspaces.md) and DIR/subspace.png; the
fit is checkpointed every epoch in DIR/.checkpoint (--resume continues).
"""

from __future__ import annotations

from ..errors import IsthmusError
from . import _common as c


def cmd_subspace(args) -> None:
    from .. import plot
    from ..io import load_runs
    from ..paths.fit import FitConfig
    from ..subspace import join_runs
    from ..subspace.join import JOIN_FIT

    out = c.new_output(args.out, args.runs)
    if (out / "subspace.json").exists() and not (args.overwrite or args.resume):
        raise IsthmusError(f"{out / 'subspace.json'} exists; pass --overwrite or a new --out")
    if len(args.runs) < 2:
        raise IsthmusError(f"joining needs >= 2 runs, got {len(args.runs)}")
    d = JOIN_FIT
    cfg = FitConfig(
        epochs=args.epochs or d.epochs, optimizer=args.optimizer or d.optimizer,
        lr=args.lr or d.lr, batch_size=args.batch_size, samples=args.samples,
    )  # fmt: skip
    cfg.validate("command line")
    runs = load_runs(args.runs, c.device(args.device))
    data = c.load_data(args, runs[0].config)
    doc = join_runs(
        runs, data, out, connectors=args.connectors, cfg=cfg, volume=args.volume,
        samples=args.eval_samples, edge_points=args.edge_points, seed=args.seed,
        resume=args.resume, data_spec=None if args.data is None else c.data_spec(args),
    )  # fmt: skip
    fig = plot.subspace_losses(doc, out / "subspace.png", pdf=args.pdf)
    s, sol = doc["sample_loss"], doc["solution_loss"]
    print(
        f"solutions: train loss {min(sol):.4f}..{max(sol):.4f} | connectors: "
        + ", ".join(f"{v:.4f}" for v in doc["connector_loss"])
    )
    print(
        f"{doc['samples']['count']} uniform samples: max {s['max']:.4f}, mean {s['mean']:.4f}, "
        f"q0.99 {s['quantiles']['0.99']:.4f} | straight lines' max {doc['line_max_loss']:.4f}"
    )
    print(f"wrote {out / 'subspace.json'} | {out / 'subspace.safetensors'} | {fig}")


def register(sub) -> None:
    from ..subspace.join import JOIN_FIT, VOLUME

    d = JOIN_FIT
    p = sub.add_parser(
        "subspace",
        help="a simplicial complex of low loss joining many runs",
        description="Join N runs of one architecture by a complex of M shared connectors (one "
        "simplex per run: the run plus every connector), trained on uniform samples from the "
        "complex; evaluate it at the runs, the connectors, uniform samples and along every edge "
        "and straight line. Writes OUT/subspace.json, OUT/subspace.safetensors, OUT/subspace.png.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (the fixed solutions)")
    p.add_argument("--connectors", type=c.positive, default=2, help="shared connector points M [2]")
    p.add_argument("--epochs", type=c.positive, default=None, help=f"training epochs [{d.epochs}]")
    p.add_argument(
        "--lr", type=c.real(0, 100, open_lo=True), default=None, help=f"learning rate [{d.lr}]"
    )
    c.add_optimizer(p)
    p.add_argument(
        "--batch-size", type=c.positive, default=d.batch_size, help=f"minibatch [{d.batch_size}]"
    )
    p.add_argument(
        "--samples",
        type=c.positive,
        default=d.samples,
        help=f"members drawn per minibatch during training [{d.samples}]",
    )
    p.add_argument(
        "--volume", type=c.real(0, 1e6), default=VOLUME, help=f"weight of -log-volume [{VOLUME}]"
    )
    p.add_argument(
        "--eval-samples",
        type=c.bounded(1, 1_000_000),
        default=256,
        help="evaluated uniform samples [256]",
    )
    p.add_argument(
        "--edge-points",
        type=c.bounded(2, 10_000),
        default=21,
        help="evaluated points per edge and line [21]",
    )
    c.add_data(p, default=None)
    c.add_seed(p)
    c.add_pdf(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue an interrupted fit")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/subspace.json")
    p.set_defaults(fn=cmd_subspace)
