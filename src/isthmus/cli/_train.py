"""`isthmus train` (one net or a population: `train.train`, `train.train_population`) and
`isthmus eval` (a run's train/test loss and accuracy: `params.evaluate`)."""

from __future__ import annotations

from pathlib import Path

from . import _common as c

WIDTHS = {"resnet": 1, "transformer": 64}  # default --width where 256 (the MLP's) is not meant


def configs(args, data):
    """The model and training settings of the flags `add_model_train` adds, validated."""
    from ..models import ModelConfig
    from ..train import TrainConfig

    mcfg = ModelConfig(
        kind=args.model,
        depth=args.depth,
        width=WIDTHS.get(args.model, 256) if args.width is None else args.width,
        channels=args.channels,
        bias=not args.no_bias,
        batchnorm=args.batchnorm,
        input_shape=tuple(data.input_shape),
        num_classes=data.num_classes,
        layernorm=args.layernorm,
        heads=args.heads,
        patch=args.patch,
    )
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
    mcfg.validate("command line")
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
    kinds = ["mlp", "cnn", "convfc", "vgg16", "resnet", "transformer"]
    p.add_argument("--model", default="mlp", choices=kinds, help="architecture [mlp]")
    what = "weight layers of the MLP, blocks per stage (resnet) or blocks (transformer) [3]"
    p.add_argument("--depth", type=c.bounded(1, 256), default=3, help=what)
    what = "MLP hidden units [256], resnet channel multiplier [1], transformer dimension [64]"
    p.add_argument("--width", type=c.bounded(1, 65536), default=None, help=what)
    p.add_argument(
        "--channels",
        type=c.channels,
        default=(32, "M", 64, "M", 64, "M"),
        help="CNN plan: channels and M (max-pool), comma-separated [32,M,64,M,64,M]",
    )
    p.add_argument("--no-bias", action="store_true", help="no bias terms")
    p.add_argument("--batchnorm", action="store_true", help="BatchNorm after each conv (baselines)")
    p.add_argument("--layernorm", action="store_true", help="resnet: LayerNorm over channels")
    p.add_argument("--heads", type=c.bounded(1, 65536), default=4, help="transformer heads [4]")
    what = "transformer: input entries per token (mnist1d: 4 gives 10 tokens) [4]"
    p.add_argument("--patch", type=c.bounded(1, 65536), default=4, help=what)
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
