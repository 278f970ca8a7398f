"""Fitting the bends of a curve between two fixed nets (Garipov et al. 2018, eq. 4).

Minimise the expected loss along the curve over its bends theta_1..theta_k, endpoints fixed:

    l(theta_1..theta_k) = E_{t ~ U[0, 1]} L(phi(t))  (+ l2/2 * sum_i ||theta_i||^2, optional).

Every step draws `samples` values of t, builds the m parameter points differentiably from the
bends (`combine` of the curve's weights with the stacked control points) and evaluates the loss
at all m points on one minibatch in ONE `vmap`ped `functional_call`; the mean over the m points is
an unbiased estimate of the objective (Garipov et al. draw one t per minibatch; m > 1 lowers the
variance at the same number of steps). Bends start on the straight line (the curve then equals
the line), so the fit starts from the line's loss profile.

BatchNorm nets are fitted with batch statistics at every point (train-mode BN inside the vmapped
call; the running statistics of the points are scratch), as Garipov et al. do; evaluating the
fitted curve then uses the BN policy of SCIENCE.md section 5 (`params.evaluate(bn_x=...)`).

Each epoch can be checkpointed atomically (bends + optimiser state); `resume=True` continues to the
same numbers, because batch order and the t draws come from generators seeded by (seed, epoch).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path as FsPath

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from ..data import Dataset
from ..errors import IsthmusError
from ..io import load_tensors, read_json, save_tensors, write_json
from ..params import Params, cpu_layout, loss_sum, num_points
from ..seeding import derive_seed
from ..train import lr_factor
from .bezier import BezierPath, combine
from .chain import ChainPath

Curve = BezierPath | ChainPath


@dataclass(frozen=True)
class FitConfig:
    """Curve-fitting hyperparameters (stored in path.json under "fit").

    The defaults fit a one-bend Bezier curve between two mnist1d MLPs (width 256, depth 3) to a
    barrier below a quarter of the straight line's in about a minute on 2 CPU cores.
    """

    epochs: int = 20
    optimizer: str = "sgd"  # "sgd" (momentum) | "adam"
    lr: float = 0.1
    momentum: float = 0.9  # SGD momentum; Adam beta1
    schedule: str = "cosine"  # "constant" | "cosine"
    batch_size: int = 128
    samples: int = 4  # values of t per minibatch, evaluated in one vmapped call
    l2: float = 0.0  # coefficient of (l2/2) * sum ||bend||^2

    def validate(self, source: str = "fit config") -> None:
        checks = [
            (
                isinstance(self.epochs, int) and self.epochs >= 1,
                "epochs",
                "must be an integer >= 1",
            ),
            (self.optimizer in ("sgd", "adam"), "optimizer", "must be 'sgd' or 'adam'"),
            (self.lr > 0 and math.isfinite(self.lr), "lr", "must be a positive number"),
            (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (self.schedule in ("constant", "cosine"), "schedule", "must be constant or cosine"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.samples >= 1, "samples", "must be >= 1 (values of t per minibatch)"),
            (self.l2 >= 0, "l2", "must be >= 0"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise IsthmusError(f"{source}: {name} {why}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class FitResult:
    """The fitted curve (same class as the initial one) and the mean objective per epoch."""

    path: Curve
    history: list[dict]
    config: FitConfig


def minibatch_loss(
    model: nn.Module,
    points: Params,
    xb: Tensor,
    yb: Tensor,
    loss: str,
    vmapped: bool | None = None,
) -> Tensor:
    """Mean loss on (xb, yb) at each of P stacked points: (P,).

    One vmapped call, or a loop over the points (`vmapped`; None = `vmap_pays`). Differentiable in
    `points`. The module's mode decides BatchNorm: train mode uses batch statistics per point (its
    running-statistics entries in `points` are overwritten scratch).
    """

    def f(p: Params) -> Tensor:
        ls, _ = loss_sum(functional_call(model, p, (xb,)), yb, loss)
        return ls / xb.shape[0]

    if not (vmap_pays(points, xb) if vmapped is None else vmapped):
        xb = cpu_layout(xb)
        return torch.stack(
            [f({k: v[i] for k, v in points.items()}) for i in range(num_points(points))]
        )
    return vmap(f)(points)


VMAP_MAX_PARAMS = 500_000  # per point, on CPU


def vmap_pays(points: Params, xb: Tensor) -> bool:
    """Whether one vmapped forward/backward beats a loop over the points; fixed by shapes, never by
    timing, so that a seed gives the same curve every time. Measured on 2 CPU cores (batch 128,
    forward + backward): vmap is 1.7-2.2x the loop for an MLP 3x256 at 4-13 points, but the loop
    wins for one point, for images (channels_last convolutions: 2x) and for nets of over
    VMAP_MAX_PARAMS parameters (MLP 3x1024: 1.2x). Accelerators always vmap."""
    if xb.device.type != "cpu":
        return True
    size = sum(v[0].numel() for v in points.values() if torch.is_floating_point(v))
    return num_points(points) > 1 and xb.dim() < 4 and size <= VMAP_MAX_PARAMS


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Train mode for BN nets (batch statistics per point; no dropout in either case), with BN
    momentum set to a number: momentum=None (cumulative average, used by the evaluation policy)
    reads a counter with .item(), which vmap cannot do. Restores mode and momenta."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    was_training = model.training
    try:
        for m in bns:
            m.momentum = 0.1 if m.momentum is None else m.momentum
        model.train(bool(bns))
        yield
    finally:
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom
        model.train(was_training)


def _rebuild(path: Curve, bends: list[Params]) -> Curve:
    return type(path)(path.start, path.end, bends)


def _opt_tensors(opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for name, v in st.items():
            if isinstance(v, Tensor):
                out[f"opt.{i}.{name}"] = v
    return out


def _load_opt(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], device) -> None:
    state: dict[int, dict] = {}
    for name, v in tensors.items():
        if name.startswith("opt."):
            _, i, key = name.split(".", 2)
            state.setdefault(int(i), {})[key] = v if key == "step" else v.to(device)
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def fit_curve(
    model: nn.Module,
    path: Curve,
    data: Dataset,
    cfg: FitConfig = FitConfig(),
    *,
    seed: int = 0,
    progress: bool | None = None,
    checkpoint: str | FsPath | None = None,
    resume: bool = False,
    max_epochs: int | None = None,
) -> FitResult:
    """Train the bends of `path` (a BezierPath or ChainPath; its bends are the initial values).

    Args:
      model: the architecture (its parameters are not used or changed).
      data: training split used (kept on its device); the test split is not touched.
      cfg: hyperparameters, see `FitConfig`.
      seed: batch order and t draws; same seed, same curve.
      checkpoint: folder for `curve.safetensors`/`curve.json`, written atomically every epoch.
      resume: continue from `checkpoint` (stops with a clear message if it holds other settings).
      max_epochs: stop after this many epochs in total (for tests of resuming).
    Returns: FitResult with a new path of the same class (plain Params, evaluable as any path).
    """
    if not isinstance(path, (BezierPath, ChainPath)):
        raise IsthmusError(
            f"only Bezier curves and chains have trainable bends, got {type(path).__name__}"
        )
    cfg.validate()
    dev = data.x_train.device
    trainable = {n for n, _ in model.named_parameters()}
    like = path.start
    keys = [k for k in like if k in trainable]
    # bends: one (k, ...) leaf per trainable tensor; endpoints and BN buffers stay fixed
    bends = {
        k: torch.stack([b[k] for b in path.bends]).to(dev).clone().requires_grad_(True)
        for k in keys
    }
    fixed = {
        k: torch.stack([c[k] for c in path.controls()]).to(dev)
        for k in like
        if torch.is_floating_point(like[k]) and k not in trainable
    }
    ends = {k: (path.start[k].to(dev)[None], path.end[k].to(dev)[None]) for k in keys}
    like = {k: v.to(dev) for k, v in like.items()}
    opt_cls = torch.optim.SGD if cfg.optimizer == "sgd" else torch.optim.Adam
    opt_kw = (
        {"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {"betas": (cfg.momentum, 0.999)}
    )
    opt = opt_cls(list(bends.values()), lr=cfg.lr, **opt_kw)

    ckpt = FsPath(checkpoint) if checkpoint is not None else None
    meta = {"method": path.method, "bends": len(path.bends), "config": asdict(cfg), "seed": seed}
    history: list[dict] = []
    start = 0
    if resume:
        if ckpt is None or not (ckpt / "curve.json").exists():
            raise IsthmusError(
                f"--resume: no curve checkpoint in {ckpt} (expected curve.json); start without --resume"
            )
        st = read_json(ckpt / "curve.json")
        if st.get("meta") != meta:
            raise IsthmusError(
                f"--resume: {ckpt}/curve.json was written for other settings ({st.get('meta')}); "
                "use the same flags or a new --out"
            )
        tensors = load_tensors(ckpt / "curve.safetensors")
        with torch.no_grad():
            for k in keys:
                bends[k].copy_(tensors[f"bend.{k}"].to(dev))
        _load_opt(opt, tensors, dev)
        start, history = int(st["epoch"]), list(st["history"])

    N = len(data.x_train)
    B = min(cfg.batch_size, N)
    per_epoch = math.ceil(N / B)
    total = per_epoch * cfg.epochs
    stop = cfg.epochs if max_epochs is None else min(cfg.epochs, max_epochs)
    weights_of = path.weights
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(
        range(start, stop),
        desc=f"fit {path.method}",
        disable=not show,
        unit="epoch",
        initial=start,
        total=cfg.epochs,
    )
    step = start * per_epoch
    with batch_statistics(model):
        for epoch in bar:
            g = torch.Generator().manual_seed(derive_seed(seed, epoch, 1))
            order = torch.randperm(N, generator=g).to(dev)
            ts_all = torch.rand(per_epoch, cfg.samples, generator=g, dtype=torch.float64)
            tot = torch.zeros((), device=dev)
            for b in range(per_epoch):
                idx = order[b * B : (b + 1) * B]
                stacked = {k: torch.cat([ends[k][0], bends[k], ends[k][1]]) for k in keys}
                pts = combine(weights_of(ts_all[b]), {**stacked, **fixed}, like)
                losses = minibatch_loss(model, pts, data.x_train[idx], data.y_train[idx], data.loss)
                obj = losses.mean()
                if cfg.l2 > 0:
                    obj = obj + 0.5 * cfg.l2 * sum((v**2).sum() for v in bends.values())
                opt.zero_grad(set_to_none=True)
                obj.backward()
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * lr_factor(cfg.schedule, step, total)
                opt.step()
                step += 1
                tot = tot + losses.detach().mean()  # stays on the device: no sync per step
            mean = float(tot) / per_epoch
            if not math.isfinite(mean):
                raise IsthmusError(
                    f"curve fitting diverged (mean loss {mean}) in epoch {epoch + 1}; "
                    f"lower --lr (now {cfg.lr})"
                )
            history.append({"epoch": epoch + 1, "loss": mean})
            bar.set_postfix(loss=f"{mean:.4f}")
            if ckpt is not None:
                tensors = {f"bend.{k}": v.detach() for k, v in bends.items()} | _opt_tensors(opt)
                save_tensors(ckpt / "curve.safetensors", tensors)
                write_json(
                    ckpt / "curve.json", {"meta": meta, "epoch": epoch + 1, "history": history}
                )
    out = []
    for i, b in enumerate(path.bends):
        p = {k: (bends[k][i].detach().to(v.device) if k in bends else v) for k, v in b.items()}
        out.append(p)
    return FitResult(_rebuild(path, out), history, cfg)
