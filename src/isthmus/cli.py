"""The `isthmus` command: one thin subcommand per library function.

Each subcommand parses its arguments, calls the library, writes files and prints a short summary.
User errors (`IsthmusError`) print one message and exit 2; Ctrl-C exits 130 and says how to resume.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import __version__
from .errors import IsthmusError


def _channels(text: str) -> tuple[int | str, ...]:
    try:
        return tuple("M" if c.strip().upper() == "M" else int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"channels must be ints and M separated by commas, got {text!r}"
        ) from None


def _device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise IsthmusError(
            f"--device {name}: CUDA is not available on this machine; use --device cpu"
        )
    return torch.device(name)


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default="mnist1d",
        help="data set: mnist1d, digits, gaussians, teacher (built in); mnist, fashion-mnist, "
        "cifar10 (from --root) [mnist1d]",
    )
    p.add_argument(
        "--root", default=None, help="folder with the files of mnist/fashion-mnist/cifar10"
    )
    p.add_argument("--data-seed", type=int, default=0, help="seed of synthetic data sets [0]")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto [auto]")


def _add_seed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same numbers [0]")


def _load_data(args):
    from .data import load

    return load(args.data, root=args.root, seed=args.data_seed, device=_device(args.device))


def _data_spec(args) -> dict:
    return {"name": args.data, "root": args.root, "seed": args.data_seed}


# ----------------------------------------------------------------------------- train / eval


def _model_config(args, data):
    from .models import ModelConfig

    shape = tuple(data.input_shape)
    return ModelConfig(
        kind=args.model,
        depth=args.depth,
        width=args.width,
        channels=args.channels,
        bias=not args.no_bias,
        batchnorm=args.batchnorm,
        input_shape=shape,
        num_classes=data.num_classes,
    )


def _train_config(args):
    from .train import TrainConfig

    return TrainConfig(
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        schedule=args.schedule,
        l2=args.l2,
        dropout=args.dropout,
        epochs=args.epochs,
        batch_size=args.batch_size,
    )


def cmd_train(args) -> None:
    from .train import train, train_population

    data = _load_data(args)
    mcfg, tcfg = _model_config(args, data), _train_config(args)
    mcfg.validate("command line")
    tcfg.validate("command line")
    with torch.random.fork_rng(devices=[]):
        if args.population > 1:
            seeds = [args.seed + k for k in range(args.population)]
            results = train_population(
                mcfg,
                data,
                tcfg,
                seeds,
                out=args.out,
                resume=args.resume,
                data_spec=_data_spec(args),
            )
        else:
            results = [
                train(
                    mcfg,
                    data,
                    tcfg,
                    args.seed,
                    out=args.out,
                    resume=args.resume,
                    data_spec=_data_spec(args),
                )
            ]
    for k, r in enumerate(results):
        m = r.metrics
        where = Path(args.out) / str(k) if len(results) > 1 else Path(args.out)
        print(
            f"{where}: train loss {m['train_loss']:.4f} acc {m['train_acc']:.4f} | "
            f"test loss {m['test_loss']:.4f} acc {m['test_acc']:.4f}"
        )


def cmd_eval(args) -> None:
    from .data import load
    from .io import load_run, write_json
    from .params import evaluate

    dev = _device(args.device)
    run = load_run(args.run, dev)
    spec = dict(run.config.get("data", {}))
    name = args.data or spec.get("name", "mnist1d")
    data = load(
        name,
        root=args.root or spec.get("root"),
        seed=spec.get("seed", 0) if args.data is None else args.data_seed,
        device=dev,
    )
    tr = evaluate(
        run.model, [run.params], data.x_train, data.y_train, loss=data.loss, batch_size=2048
    )
    te = evaluate(
        run.model, [run.params], data.x_test, data.y_test, loss=data.loss, batch_size=2048
    )
    res = {
        "data": name,
        "train_loss": float(tr.loss[0]),
        "train_acc": float(tr.acc[0]),
        "test_loss": float(te.loss[0]),
        "test_acc": float(te.acc[0]),
    }
    out = Path(args.out) if args.out else Path(args.run) / "eval.json"
    write_json(out, res)
    print(
        f"{args.run} on {name}: train loss {res['train_loss']:.4f} acc {res['train_acc']:.4f} | "
        f"test loss {res['test_loss']:.4f} acc {res['test_acc']:.4f}  -> {out}"
    )


def cmd_demo(args) -> None:
    from .demo import run_demo

    path = run_demo(args.out, seed=args.seed, quick=args.quick, pdf=args.pdf)
    print(f"report: {path}")


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="isthmus",
        description="Connectivity of neural-network loss landscapes: train nets, connect them, measure "
        "stability and curvature. Every command takes --seed; see README.md.",
    )
    ap.add_argument("--version", action="version", version=f"isthmus {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train one net, or a population of K at once",
        description="Train a ReLU net and write a run directory (model.safetensors, "
        "config.json, metrics.json); checkpointed every epoch.",
    )
    _add_data(p)
    _add_seed(p)
    p.add_argument(
        "--model",
        default="mlp",
        choices=["mlp", "cnn", "convfc", "vgg16"],
        help="architecture [mlp]",
    )
    p.add_argument("--depth", type=int, default=3, help="number of weight layers of the MLP [3]")
    p.add_argument("--width", type=int, default=256, help="hidden units per layer of the MLP [256]")
    p.add_argument(
        "--channels",
        type=_channels,
        default=(32, "M", 64, "M", 64, "M"),
        help="CNN plan: channels and M (max-pool), comma-separated [32,M,64,M,64,M]",
    )
    p.add_argument("--no-bias", action="store_true", help="no bias terms")
    p.add_argument(
        "--batchnorm", action="store_true", help="BatchNorm after each conv (baselines only)"
    )
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"], help="[sgd]")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate [0.05]")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum / Adam beta1 [0.9]")
    p.add_argument(
        "--schedule", default="cosine", choices=["constant", "cosine", "step"], help="[cosine]"
    )
    p.add_argument(
        "--l2", type=float, default=0.0, help="L2 coefficient (added to the gradient) [0]"
    )
    p.add_argument(
        "--dropout", type=float, default=0.0, help="probability of dropping a unit/channel [0]"
    )
    p.add_argument("--epochs", type=int, default=30, help="[30]")
    p.add_argument("--batch-size", type=int, default=128, help="[128]")
    p.add_argument(
        "--population",
        type=int,
        default=1,
        help="train K nets at once with seeds seed..seed+K-1 into OUT/0..K-1 [1]",
    )
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser(
        "eval",
        help="evaluate a run on its data (or another data set)",
        description="Print and write (RUN/eval.json or --out) train/test loss and accuracy.",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--data", default=None, help="data set (default: the run's own)")
    p.add_argument(
        "--root", default=None, help="folder with the data files, for file-based data sets"
    )
    p.add_argument("--data-seed", type=int, default=0, help="seed of synthetic data sets [0]")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto [auto]")
    p.add_argument("--out", default=None, help="JSON file to write [RUN/eval.json]")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser(
        "demo",
        help="short end-to-end demo on built-in data; writes an HTML report",
        description="Train nets on mnist1d, connect them, and write DIR/report.html.",
    )
    p.add_argument("--out", default="demo", help="output folder [demo]")
    _add_seed(p)
    p.add_argument("--quick", action="store_true", help="smaller settings (used by the tests)")
    p.add_argument("--pdf", action="store_true", help="also write every figure as PDF")
    p.set_defaults(fn=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except IsthmusError as e:
        print(f"isthmus: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "isthmus: interrupted; what was checkpointed is kept (rerun with --resume where offered)",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
