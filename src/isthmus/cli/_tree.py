"""`isthmus tree`: paths between every pair of N runs and their minimum spanning tree
(Draxler et al. 2018; `paths.connect_tree`).

Writes DIR/tree.json after every pair (--resume skips finished pairs) and DIR/tree.png.
"""

from __future__ import annotations

from pathlib import Path

from . import _common as c

LABEL = {"max_loss": "max train loss on the path (nats)", "barrier": "train-loss barrier (nats)"}


def cmd_tree(args) -> None:
    """Paths between every pair of N runs, then the minimum spanning tree: its worst edge bounds
    the path weight between any two of the runs, through the tree."""
    from .. import plot
    from ..errors import IsthmusError
    from ..io import load_runs
    from ..paths import connect_tree
    from ..paths.connect import NEB_EPOCHS, NEB_LR, NEB_OPTIMIZER, eval_sizes, neb_config

    runs = [str(r) for r in args.runs]
    if len(runs) < 3:
        raise IsthmusError(
            f"tree needs at least three runs (for two, use connect), got {len(runs)}"
        )
    if len(set(runs)) != len(runs):
        raise IsthmusError("tree: a run is given twice")
    loaded = load_runs(runs, c.device(args.device))
    data = c.load_data(args, loaded[0].config)
    model = loaded[0].model
    cfg = neb_config(
        len(data.x_train), epochs=NEB_EPOCHS if args.epochs is None else args.epochs, batch_size=args.batch_size,
        pivots=args.pivots, cycles=args.cycles, optimizer=args.optimizer or NEB_OPTIMIZER,
        lr=NEB_LR if args.lr is None else args.lr, source="command line",
    )  # fmt: skip
    batch, chunk = eval_sizes(model, data.x_train)
    out = c.new_output(args.out, runs, args)
    tree, _ = connect_tree(
        model, [r.params for r in loaded], data, cfg, names=runs, method=args.method,
        weight=args.weight, points=args.points, batch_size=args.batch_size, seed=args.seed,
        eval_kw=dict(batch_size=batch, chunk=chunk), checkpoint=out / "tree.json",
        resume=args.resume, data_spec=c.data_record(args, loaded[0].config),
    )  # fmt: skip
    names = [Path(r).name or r for r in runs]
    fig = plot.spanning_tree(
        tree.weights, tree.edges, names, out / "tree.png", LABEL[args.weight], args.pdf
    )
    for i, j, v in tree.edges:
        print(f"edge {runs[i]} - {runs[j]}: {args.weight} {v:.4f}")
    print(f"worst edge of the tree: {tree.worst:.4f} (bounds every pair through the tree)")
    print(f"wrote {out / 'tree.json'} | {fig}")


def register(sub) -> None:
    p = sub.add_parser(
        "tree",
        help="paths between every pair of N runs and their minimum spanning tree",
        description="Connect every pair of N runs of one architecture (straight lines or AutoNEB) "
        "and build the minimum spanning tree on the pairwise path weights (Draxler et al. 2018): "
        "the tree's worst edge bounds the weight of a path between any two runs through the tree. "
        "Writes OUT/tree.json after every pair (--resume skips finished pairs) and OUT/tree.png.",
    )
    p.add_argument("runs", nargs="+", help="three or more run directories")
    p.add_argument("--method", default="neb", choices=["linear", "neb"], help="pair paths [neb]")
    p.add_argument(
        "--weight",
        default="max_loss",
        choices=["max_loss", "barrier"],
        help="edge weight: highest train loss on the path, or its barrier [max_loss]",
    )
    p.add_argument(
        "--points", type=c.bounded(2, 10**5), default=61, help="evaluated values of t per path [61]"
    )
    p.add_argument(
        "--epochs", type=c.positive, default=None, help="NEB epochs over all cycles [20]"
    )
    p.add_argument(
        "--lr", type=c.real(0, 1e3, open_lo=True), default=None, help="NEB learning rate [0.05]"
    )
    c.add_optimizer(p)
    p.add_argument("--batch-size", type=c.positive, default=128, help="NEB minibatch [128]")
    c.add_neb(p)
    c.add_data(p, default=None)
    c.add_seed(p)
    c.add_pdf(p)
    c.add_output(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted tree")
    p.set_defaults(fn=cmd_tree)
