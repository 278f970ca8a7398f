"""`isthmus train` (one net or a population: `train.train`, `train.train_population`) and
`isthmus eval` (a run's train/test loss and accuracy: `params.evaluate`)."""

from __future__ import annotations

from pathlib import Path

from . import _common as c
from ._model import add_model, model_config


def configs(args, data):
    """The model and training settings of the flags `add_model_train` adds, validated."""
    from ..train import TrainConfig

    mcfg = model_config(args, data)
    tcfg = TrainConfig(
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        schedule=args.schedule,
        l2=args.l2,
        dropout=args.dropout,
        epochs=args.epochs,
        batch_size=args.batch_size,
    )
    tcfg.validate("command line")
    return mcfg, tcfg


def cmd_train(args) -> None:
    from ..train import train, train_population

    c.new_output(args.out, [], args)
    data = c.load_data(args)
    mcfg, tcfg = configs(args, data)
    kw = dict(
        out=args.out, resume=args.resume, data_spec=c.data_spec(args), snapshot_every=args.snapshots
    )
    if args.population > 1:
        seeds = [args.seed + k for k in range(args.population)]
        results = train_population(mcfg, data, tcfg, seeds, **kw)
    else:
        results = [train(mcfg, data, tcfg, args.seed, **kw)]
    for k, r in enumerate(results):
        m = r.metrics
        where = Path(args.out) / str(k) if len(results) > 1 else Path(args.out)
        print(
            f"{where}: train loss {m['train_loss']:.4f} acc {m['train_acc']:.4f} | "
            f"test loss {m['test_loss']:.4f} acc {m['test_acc']:.4f}"
        )


def register(sub) -> None:
    _register_train(sub)


def _register_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train one net, or a population of K at once",
        description="Train a ReLU net and write a run directory (model.safetensors, "
        "config.json, metrics.json, optional snapshots/), checkpointed every epoch (--resume "
        "continues).",
    )
    c.add_data(p)
    c.add_seed(p)
    add_model_train(p)
    p.add_argument(
        "--population",
        type=c.bounded(1, 10_000),
        default=1,
        help="train K nets at once with seeds seed..seed+K-1 into OUT/0..K-1 [1]",
    )
    c.add_output(p, "run directory to write")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument(
        "--snapshots",
        type=c.positive,
        default=None,
        metavar="K",
        help="also keep the weights every K epochs and at the last: OUT/snapshots/epoch_NNNN",
    )
    p.set_defaults(fn=cmd_train)


def add_model_train(p) -> None:
    """The model and training flags of `isthmus train` (read back by `configs`)."""
    add_model(p)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"], help="[sgd]")
    p.add_argument(
        "--lr", type=c.real(0, 1e3, open_lo=True), default=0.05, help="learning rate [0.05]"
    )
    p.add_argument(
        "--momentum", type=c.real(0, 0.999), default=0.9, help="SGD momentum / Adam beta1 [0.9]"
    )
    p.add_argument(
        "--schedule",
        default="cosine",
        choices=["constant", "cosine", "step"],
        help="learning-rate schedule; step = x0.1 at 50%% and 75%% [cosine]",
    )
    p.add_argument("--l2", type=c.real(0, 1e3), default=0.0, help="L2 (added to the gradient) [0]")
    drop = "probability of dropping a unit (MLP) or channel (CNN) [0]"
    p.add_argument("--dropout", type=c.real(0, 0.99), default=0.0, help=drop)
    p.add_argument("--epochs", type=c.positive, default=30, help="[30]")
    p.add_argument("--batch-size", type=c.positive, default=128, help="[128]")
