"""Fitting families of parameter points: curves between two nets (Garipov et al. 2018, eq. 4) and,
with the same code, k-dimensional families such as simplices joining many nets.

A *family* is built from control points: some are fixed anchors (a curve's endpoints, given
solutions), the others trainable (a curve's bends, connector points), and a sampler draws the
weights of random members (uniform t on a curve, Dirichlet(1, ..., 1) on a simplex). A member is
sum_k w_k control_k (`params.combine`). The fit minimises the expected loss over the family,

    l(trainable controls) = E_{w ~ sampler} L(sum_k w_k control_k)  (+ l2/2 * sum ||trainable||^2),

estimated every step by `samples` members on one minibatch, evaluated together
(`params.mean_loss`: one vmapped call where that pays, else a loop). For a curve this is
Garipov et al.'s objective E_{t ~ U[0, 1]} L(phi(t)) (they draw one t per minibatch; m > 1 lowers
the variance at the same number of steps). Bends start on the straight line (the curve then
equals the line), so the fit starts from the line's loss profile.

The loss is a module on data, or a `Landscape` (no data; one full step per "epoch").
BatchNorm nets are fitted with batch statistics at every point (train-mode BN; the running
statistics of the points are scratch), as Garipov et al. do; evaluating the fitted curve then
uses the BatchNorm policy of docs/definitions.md (`params.evaluate(bn_x=...)`).

Each epoch can be checkpointed atomically (trainable controls + optimiser state); `resume=True`
continues to the same numbers, because batch order and the draws come from generators seeded by
(seed, epoch).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path as FsPath
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..data import Dataset
from ..errors import IsthmusError
from ..io import check_resume, load_checkpoint, save_checkpoint
from ..landscape import Landscape, flat, is_landscape
from ..params import Params, batch_statistics, combine, fingerprint, mean_loss
from ..progress import bar
from ..seeding import generator
from ..train import lr_factor
from .bezier import BezierPath
from .chain import ChainPath

Curve = BezierPath | ChainPath
CHECKPOINT = "curve.safetensors"  # controls, optimiser state and counters: one file


@runtime_checkable
class Family(Protocol):
    """A family of parameter points spanned by control points, some fixed, some trainable.

    controls(): the K control points, in the order of the weights; trainable(): indices of the
    controls the fit moves (the others are fixed anchors and never change); sample_weights(n, g):
    (n, K) float64 weights of n random members, drawn from the generator g; with_controls(c): the
    same family over new control points. Curves (BezierPath, ChainPath) are families with K - 2
    trainable bends and t ~ U[0, 1].

    Optionally `penalty(stacked) -> Tensor | None`: a regulariser added to the objective, given
    every control stacked (K, ...) per trained tensor, differentiable in the trainable ones
    (a simplex's log-volume or its vertices' cosines, `isthmus.subspace`).
    """

    method: str

    def controls(self) -> list[Params]: ...

    def trainable(self) -> list[int]: ...

    def sample_weights(self, n: int, generator: torch.Generator) -> Tensor: ...

    def with_controls(self, controls: list[Params]) -> Family: ...


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
    """The fitted family (same class as the initial one; for a curve, the fitted path) and the mean
    objective per epoch."""

    path: Family
    history: list[dict]
    config: FitConfig


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


class _Controls:
    """The trainable controls as one leaf per tensor, (n_trainable, ...), and the fixed rest, so
    that every member is `combine(weights, stacked(), like)` differentiably in the leaves."""

    def __init__(self, family: Family, keys: list[str], dev: torch.device):
        cs = family.controls()
        self.order, self.train_idx = len(cs), family.trainable()
        self.like = {k: v.to(dev) for k, v in cs[0].items()}
        self.keys = keys
        self.leaves = {
            k: torch.stack([cs[i][k] for i in self.train_idx]).to(dev).clone().requires_grad_(True)
            for k in keys
        }
        fixed_idx = [i for i in range(self.order) if i not in self.train_idx]
        self.fixed = {k: {i: cs[i][k].to(dev) for i in fixed_idx} for k in keys}
        # floating tensors that are not trained (BN buffers): stacked controls, never moved
        self.frozen = {
            k: torch.stack([c[k] for c in cs]).to(dev)
            for k in self.like
            if torch.is_floating_point(self.like[k]) and k not in keys
        }
        self.family = family

    def stacked(self, rows: list[int] | None = None) -> Params:
        """Every control (or the controls `rows`, in that order) stacked per tensor."""
        rows = list(range(self.order)) if rows is None else rows
        pos = {i: j for j, i in enumerate(self.train_idx)}
        out = {}
        for k in self.keys:
            parts = [
                self.fixed[k][i][None]
                if i in self.fixed[k]
                else self.leaves[k][pos[i] : pos[i] + 1]
                for i in rows
            ]
            out[k] = torch.cat(parts) if len(parts) > 1 else parts[0]
        frozen = {k: v[rows] if len(rows) < self.order else v for k, v in self.frozen.items()}
        return {**out, **frozen}

    def members(self, weights: Tensor) -> Params:
        """The members for (P, K) weights. Only the controls with a nonzero weight in some row
        enter (a simplex member has m + 1 of the K controls): the same numbers as with all K,
        since the skipped terms are exact zeros, for less work per step."""
        used = (weights != 0).any(0).nonzero().flatten().tolist()
        return combine(weights[:, used], self.stacked(used), self.like)

    def result(self) -> Family:
        cs = [dict(c) for c in self.family.controls()]
        for j, i in enumerate(self.train_idx):
            for k in self.keys:
                cs[i][k] = self.leaves[k][j].detach().to(cs[i][k].device)
        return self.family.with_controls(cs)


def _fingerprints(family: Family) -> list[str]:
    """The exact identity of every fixed control (`params.fingerprint`), to tell nets apart."""
    cs, trainable = family.controls(), set(family.trainable())
    return [fingerprint(c) for i, c in enumerate(cs) if i not in trainable]


def _loss_of(target: nn.Module | Landscape, data: Dataset | None, batch_size: int):
    """(steps per epoch, loss(members, step, order) -> (P,)) for a module on data or a Landscape."""
    if is_landscape(target):
        return 1, lambda pts, b, order: target.loss(flat(pts))
    if data is None:
        raise IsthmusError(
            "fitting on a module needs data (a Dataset); only a Landscape needs none"
        )
    N = len(data.x_train)
    B = min(batch_size, N)

    def loss(pts: Params, b: int, order: Tensor) -> Tensor:
        idx = order[b * B : (b + 1) * B]
        return mean_loss(target, pts, data.x_train[idx], data.y_train[idx], data.loss)

    return math.ceil(N / B), loss


def fit_family(
    target: nn.Module | Landscape,
    family: Family,
    data: Dataset | None = None,
    cfg: FitConfig = FitConfig(),
    *,
    seed: int = 0,
    progress: bool | None = None,
    checkpoint: str | FsPath | None = None,
    resume: bool = False,
    max_epochs: int | None = None,
) -> FitResult:
    """Train the trainable controls of `family` (their values on entry are the initial values).

    Args:
      target: a module (its own parameters are not used or changed) with `data`, or a Landscape.
      family: see `Family`; its fixed controls never change.
      data: training split used (kept on its device); the test split is not touched.
      cfg: hyperparameters, see `FitConfig` (`samples` members per step).
      seed: batch order and the members' weights; same seed, same fit.
      checkpoint: folder for `curve.safetensors` (trainable controls, optimiser state, and the
        settings, epoch and history in its header: one file, written atomically every epoch).
      resume: continue from `checkpoint` (stops with a clear message if it holds other settings).
      max_epochs: stop after this many epochs in total (for tests of resuming).
    Returns: FitResult with a new family of the same class.
    """
    cfg.validate()
    lands = is_landscape(target)
    like = family.controls()[0]
    on_data = not lands and data is not None  # (a module without data is refused by _loss_of)
    dev = data.x_train.device if on_data else next(iter(like.values())).device
    trainable = set(like) if lands else {n for n, _ in target.named_parameters()}
    ctl = _Controls(family, [k for k in like if k in trainable], dev)
    opt_cls = torch.optim.SGD if cfg.optimizer == "sgd" else torch.optim.Adam
    opt_kw = (
        {"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {"betas": (cfg.momentum, 0.999)}
    )
    opt = opt_cls(list(ctl.leaves.values()), lr=cfg.lr, **opt_kw)

    ckpt = FsPath(checkpoint) if checkpoint is not None else None
    meta = {
        "method": family.method,
        "bends": len(ctl.train_idx),
        "config": asdict(cfg),
        "seed": seed,
        "anchors": _fingerprints(family),  # refuses a checkpoint of other nets
    }
    history: list[dict] = []
    start = 0
    if resume:
        path = ckpt / CHECKPOINT if ckpt else None
        tensors, saved = load_checkpoint(path) if path and path.exists() else (None, None)
        check_resume(path, None if saved is None else saved.get("meta"), meta, what="curve")
        with torch.no_grad():
            for k, leaf in ctl.leaves.items():
                leaf.copy_(tensors[f"bend.{k}"].to(dev))
        _load_opt(opt, tensors, dev)
        start, history = int(saved["epoch"]), list(saved["history"])

    per_epoch, loss_fn = _loss_of(target, data, cfg.batch_size)
    penalty = getattr(family, "penalty", None)
    N = 0 if lands else len(data.x_train)
    total = per_epoch * cfg.epochs
    stop = cfg.epochs if max_epochs is None else min(cfg.epochs, max_epochs)
    epochs = bar(
        range(start, stop),
        progress=progress,
        desc=f"fit {family.method}",
        unit="epoch",
        initial=start,
        total=cfg.epochs,
    )
    step = start * per_epoch
    with nullcontext() if lands else batch_statistics(target):
        for epoch in epochs:
            g = generator(seed, epoch, 5)  # batch order and draws (training uses 1 and 2)
            order = torch.randperm(N, generator=g).to(dev) if N else None
            weights = family.sample_weights(per_epoch * cfg.samples, g)
            weights = weights.reshape(per_epoch, cfg.samples, -1)
            tot = torch.zeros((), device=dev)
            for b in range(per_epoch):
                losses = loss_fn(ctl.members(weights[b]), b, order)
                obj = losses.mean()
                if penalty is not None:
                    pen = penalty({k: v for k, v in ctl.stacked().items() if k in ctl.leaves})
                    obj = obj if pen is None else obj + pen
                if cfg.l2 > 0:
                    obj = obj + 0.5 * cfg.l2 * sum((v**2).sum() for v in ctl.leaves.values())
                opt.zero_grad(set_to_none=True)
                obj.backward()
                for v in ctl.leaves.values():  # no trainable control in this step's members
                    if v.grad is None:
                        v.grad = torch.zeros_like(v)
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * lr_factor(cfg.schedule, step, total)
                opt.step()
                step += 1
                tot = tot + losses.detach().mean()  # stays on the device: no sync per step
            mean = float(tot) / per_epoch
            if not math.isfinite(mean):
                raise IsthmusError(
                    f"{family.method} fitting diverged (mean loss {mean}) in epoch {epoch + 1}; "
                    f"lower --lr (now {cfg.lr})"
                )
            history.append({"epoch": epoch + 1, "loss": mean})
            epochs.set_postfix(loss=f"{mean:.4f}")
            if ckpt is not None:
                leaves = {f"bend.{k}": v.detach() for k, v in ctl.leaves.items()}
                state = {"meta": meta, "epoch": epoch + 1, "history": history}
                save_checkpoint(ckpt / CHECKPOINT, leaves | _opt_tensors(opt), state)
    return FitResult(ctl.result(), history, cfg)


def fit_curve(
    model: nn.Module | Landscape,
    path: Curve,
    data: Dataset | None = None,
    cfg: FitConfig = FitConfig(),
    **kw,
) -> FitResult:
    """Train the bends of `path` (a BezierPath or ChainPath; its bends are the initial values):
    `fit_family` for the one-dimensional families with trainable bends, t ~ U[0, 1]."""
    if not isinstance(path, (BezierPath, ChainPath)):
        raise IsthmusError(
            f"only Bezier curves and chains have trainable bends, got {type(path).__name__}"
        )
    return fit_family(model, path, data, cfg, **kw)
