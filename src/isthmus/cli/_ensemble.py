"""`isthmus ensemble`: ensembles of independent runs, of nets on one curve, in one subspace and
along one training run, scored on the test split (`ensemble.compare`; docs/ensembles.md).

Writes OUT/ensemble.json and the figures ensemble_growth.png, ensemble_diversity.png and
ensemble_pca.png.
"""

from __future__ import annotations

from pathlib import Path

from . import _common as c


def cmd_ensemble(args) -> None:
    from .. import ensemble, plot
    from ..errors import IsthmusError
    from ..io import file_sha256, inputs_record, write_json

    inputs = [*args.runs, *filter(None, (args.path, args.subspace, args.snapshots))]
    if not inputs:
        raise IsthmusError("give runs, --path, --subspace or --snapshots: nothing to ensemble")
    out = c.new_output(args.out, inputs, args)
    dev = c.device(args.device)
    n = args.members or (len(args.runs) if len(args.runs) >= 2 else 5)
    sources = []
    if args.runs:
        sources.append(ensemble.from_runs(args.runs, dev))
    if args.path:
        sources.append(
            ensemble.from_path(args.path, n, spacing=args.spacing, seed=args.seed, device=dev)
        )
    if args.subspace:
        sources.append(ensemble.from_subspace(args.subspace, n, seed=args.seed, device=dev))
    if args.snapshots:
        sources.append(ensemble.from_snapshots(args.snapshots, n, dev))
    config = next((s.config for s in sources if s.config is not None), None)
    data = c.load_data(args, config)
    res = ensemble.compare(
        sources, data, split=args.split, orders=args.orders, seed=args.seed,
        batch_size=args.batch_size,
    )  # fmt: skip
    kinds = {"path": args.path, "subspace": args.subspace, "model": args.snapshots}
    made = [(f, file_sha256(Path(f) / f"{k}.safetensors")) for k, f in kinds.items() if f]
    runs = list(zip(args.runs, sources[0].members, strict=True)) if args.runs else []
    inputs = inputs_record(runs, c.data_record(args, config), made)
    write_json(out / "ensemble.json", {"seed": args.seed, **res.to_json(), "inputs": inputs})
    for name, m in res.sources.items():
        acc = m.member_accuracy
        print(
            f"{name}: {m.members} members, accuracy {m.accuracy:.4f} (members "
            f"{sum(acc) / len(acc):.4f} mean, {max(acc):.4f} best), NLL {m.nll:.4f}, "
            f"ECE {m.ece:.4f}, disagreement {m.disagreement:.4f}, KL {m.kl:.4f}, JS {m.js:.4f}"
        )
    figs = [
        plot.ensemble_growth(res, out / "ensemble_growth", pdf=args.pdf),
        plot.ensemble_diversity(res, out / "ensemble_diversity", pdf=args.pdf),
        plot.ensemble_pca(res, out / "ensemble_pca", pdf=args.pdf),
    ]
    print(f"wrote {out / 'ensemble.json'} | " + " | ".join(str(f) for f in figs))


def register(sub) -> None:
    p = sub.add_parser(
        "ensemble",
        help="ensembles of runs, curve samples, subspace samples, snapshots; their diversity",
        description="Score ensembles (mean of the members' softmax probabilities) built from "
        "independent runs, from nets at interior points of one `isthmus connect` path, from "
        "samples of one `isthmus subspace` and from the last snapshots of one training run: "
        "accuracy, NLL, calibration error, pairwise disagreement, KL and Jensen-Shannon "
        "divergence, accuracy against the number of members. Writes OUT/ensemble.json and "
        "figures (docs/ensembles.md).",
    )
    p.add_argument("runs", nargs="*", help="run directories: one member each")
    p.add_argument("--path", default=None, help="an `isthmus connect` output folder")
    p.add_argument("--subspace", default=None, help="an `isthmus subspace` output folder")
    p.add_argument("--snapshots", default=None, help="a run trained with --snapshots")
    p.add_argument(
        "--members",
        type=c.positive,
        default=None,
        help="members drawn from --path, --subspace, --snapshots [number of runs, or 5]",
    )
    p.add_argument(
        "--spacing", default="even", choices=["even", "random"], help="t on the path [even]"
    )
    p.add_argument(
        "--orders", type=int, default=0, help="also average over this many member orders [0]"
    )
    p.add_argument("--split", default="test", choices=["test", "train"], help="[test]")
    p.add_argument(
        "--batch-size", type=c.positive, default=None, help="examples per forward pass [all]"
    )
    c.add_data(p, default=None)
    c.add_seed(p)
    c.add_pdf(p)
    c.add_output(p)
    p.set_defaults(fn=cmd_ensemble)
