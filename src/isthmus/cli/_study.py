"""`isthmus study`: how learning rate, width or L2 change the curvature training explores
(Fort & Jastrzebski 2019; docs/large_scale.md); parse, call, write, print."""

from __future__ import annotations

from . import _common as c
from ._model import add_model, model_config


def cmd_study(args) -> None:
    from .. import plot
    from ..io import write_json
    from ..study import run_study
    from ..train import TrainConfig

    data = c.load_data(args)
    mcfg = model_config(args, data)  # the fixed architecture; the grid varies one setting
    tcfg = TrainConfig(lr=args.lr, l2=args.l2, epochs=args.epochs, batch_size=args.batch_size)
    out = c.new_output(args.out, [], args)
    seeds = [args.seed + k for k in range(args.seeds)]
    kw = dict(examples=args.examples, measure_every=args.measure_every)
    res = run_study(mcfg, data, tcfg, args.hyperparameter, args.values, seeds, **kw)
    write_json(out / "study.json", res.to_json())
    figs = [plot.study_trends(res, out / f"study_{args.hyperparameter}", pdf=args.pdf)]
    if args.measure_every:
        figs.append(
            plot.study_trajectories(res, out / f"study_{args.hyperparameter}_epochs", pdf=args.pdf)
        )
    for row in res.summary():
        print(
            f"{args.hyperparameter} {row['value']:g}: radius {row['radius']['mean']:.3g}, "
            f"top eigenvalue {row['top_eigenvalue']['mean']:.3g}, trace {row['trace']['mean']:.3g}"
        )
    print(f"wrote {out / 'study.json'} | {' | '.join(map(str, figs))}")


def register(sub) -> None:
    p = sub.add_parser(
        "study",
        help="how learning rate, width or L2 change the curvature training explores",
        description="Train values x seeds (learning rates and L2 as one population) and measure "
        "each net every E epochs and at the end: weight norm, top Hessian eigenvalue, trace, loss "
        "rise along random and radial directions. Writes OUT/study.json, "
        "OUT/study_<hyperparameter>.png and (with E > 0) OUT/study_<hyperparameter>_epochs.png.",
    )
    p.add_argument("hyperparameter", choices=("lr", "width", "l2"))
    p.add_argument("--values", type=c.real(0, 1e5), nargs="+", required=True, help="grid values")
    p.add_argument("--seeds", type=c.positive, default=3, help="seeds per value, from --seed [3]")
    c.add_data(p)
    add_model(p, mlp_width=128)  # every kind `isthmus train` takes; --width: when fixed
    p.add_argument(
        "--lr",
        type=c.real(0, 1e3, open_lo=True),
        default=0.05,
        help="learning rate when fixed [0.05]",
    )
    p.add_argument("--l2", type=c.real(0, 1e3), default=0.0, help="L2 when fixed [0]")
    p.add_argument("--epochs", type=c.positive, default=30, help="epochs [30]")
    p.add_argument("--batch-size", type=c.positive, default=128, help="batch size [128]")
    p.add_argument(
        "--examples", type=c.positive, default=1000, help="examples for curvature [1000]"
    )
    p.add_argument(
        "--measure-every",
        type=int,
        default=10,
        metavar="E",
        help="also measure during training, every E epochs (each costs as much as the end "
        "measurement; 0: at the end only) [10]",
    )
    c.add_seed(p)
    c.add_pdf(p)
    c.add_output(p)
    p.set_defaults(fn=cmd_study)
