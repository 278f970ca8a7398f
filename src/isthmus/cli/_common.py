"""Argument helpers shared by the subcommands (data, device, seed, sizes, output folders)."""

from __future__ import annotations

import argparse
import math
import re

import torch

from ..errors import IsthmusError
from ._outputs import add_output, new_file, new_output  # noqa: F401 - output folders and files
from ._types import bounded, channels, positive, real, seed  # noqa: F401 - the flags' types


def device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", name):
        raise IsthmusError(f"--device {name}: unknown device; use cpu, cuda, cuda:N, mps or auto")
    if name.startswith("cuda"):
        n = torch.cuda.device_count()
        if n == 0:
            raise IsthmusError(f"--device {name}: CUDA is not available here; use --device cpu")
        if ":" in name and int(name.split(":")[1]) >= n:
            raise IsthmusError(f"--device {name}: this machine has {n} CUDA device(s)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise IsthmusError("--device mps: MPS is not available here; use --device cpu")
    return torch.device(name)


def add_data(p: argparse.ArgumentParser, default: str | None = "mnist1d") -> None:
    """--data/--root/--data-seed/--device; default None means "the run's own data set"."""
    p.add_argument(
        "--data",
        default=default,
        help="data set: mnist1d, digits, gaussians, teacher (built in); mnist, fashion-mnist, "
        f"cifar10 (from --root) [{default or 'the run' + chr(39) + 's own'}]",
    )
    p.add_argument("--root", default=None, help="folder with mnist/fashion-mnist/cifar10 files")
    p.add_argument("--data-seed", type=seed, default=0, help="seed of synthetic data sets [0]")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto [auto]")


def add_seed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=seed, default=0, help="random seed; same seed, same numbers [0]")


def add_pdf(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pdf", action="store_true", help="also write every figure as PDF")


def add_optimizer(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--optimizer", default=None, choices=["sgd", "adam"], help="with momentum 0.9 [sgd]"
    )


def add_neb(p: argparse.ArgumentParser) -> None:
    """--pivots/--cycles of AutoNEB (`paths.neb.NEBConfig`)."""
    p.add_argument(
        "--pivots", type=bounded(0, 1000), default=3, help="initial interior NEB pivots [3]"
    )
    p.add_argument("--cycles", type=positive, default=4, help="AutoNEB relax/insert cycles [4]")


def add_eval_sizes(
    p: argparse.ArgumentParser,
    batch_flag: str = "--batch-size",
    batch_help: str = "examples per forward pass",
    points: str = "points",
) -> None:
    """Examples per forward pass and points per batched call (`paths.connect.eval_sizes`)."""
    p.add_argument(
        batch_flag, type=positive, default=None, help=f"{batch_help} [auto: params.eval_plan]"
    )
    p.add_argument(
        "--chunk",
        type=positive,
        default=None,
        help=f"{points} per batched call [auto: params.eval_plan]",
    )


def data_spec(args) -> dict:
    return {"name": args.data, "root": args.root, "seed": args.data_seed}


def data_record(args, run_config: dict | None = None) -> dict:
    """The data set `load_data` uses, as {name, root, seed} (the "data" of an inputs record)."""
    spec = dict((run_config or {}).get("data", {}))
    if args.data is None:
        return {
            "name": spec.get("name", "mnist1d"),
            "root": args.root or spec.get("root"),
            "seed": spec.get("seed", 0),
        }
    return {"name": args.data, "root": args.root, "seed": args.data_seed}


def load_data(args, run_config: dict | None = None):
    """The data set named by --data, or (when --data is None) the one recorded in a run's config;
    with a run's config, refused (before any computation) unless its inputs and classes fit."""
    from ..data import load

    spec = dict((run_config or {}).get("data", {}))
    used = data_record(args, run_config)
    name = used["name"]
    data = load(name, root=used["root"], seed=used["seed"], device=device(args.device))
    model = (run_config or {}).get("model")
    if isinstance(model, dict):
        shape, classes = tuple(model.get("input_shape", ())), model.get("num_classes")
        if math.prod(shape) != math.prod(data.input_shape) or classes != data.num_classes:
            raise IsthmusError(
                f"--data {name}: inputs {tuple(data.input_shape)} with {data.num_classes} "
                f"outputs do not fit the run's model (input_shape {list(shape)}, num_classes "
                f"{classes}); use the data set the run was trained on ({spec.get('name')})"
            )
    return data


def number(v: float | None) -> str:
    """A quantity for a summary line: 3 significant digits, or "undefined" (e.g. a cushion of a
    layer that no example activates)."""
    return "undefined" if v is None else f"{v:.3g}"
