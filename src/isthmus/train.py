"""Training one net, or a population of K nets at once.

A population shares the architecture and batch size; members differ in seed (initialisation, batch
order, dropout masks) and may differ in lr, momentum and L2. Members are stacked
(`torch.func.stack_module_state` layout: every tensor gets a leading K axis) and trained with one
vmapped forward/backward per step, so K small nets cost little more than one. Member k of a
population follows exactly the computation of `train(seed=seeds[k])` (same init, same batches, same
optimiser arithmetic), up to float round-off.

Optimisers are written as pure tensor updates (SGD with momentum, Adam, L2 added to the gradient)
so that per-member hyperparameters broadcast. Every epoch is checkpointed atomically; `resume=True`
continues an interrupted run to the same numbers, because batch order and dropout masks are drawn
from generators seeded by (seed, epoch).

Two seams watch training without changing a number of it: `on_epoch(epoch, stacked)` is called
after each epoch's evaluation with a copy of every member's parameters and buffers (the study
measures curvature along training with it), and `snapshot_every=E` keeps every member's weights
after every E-th and the last epoch as RUN/snapshots/epoch_NNNN.safetensors (`io.load_snapshots`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from .data import Dataset
from .errors import IsthmusError
from .io import (
    SNAPSHOT_DIR,
    check_resume,
    load_checkpoint,
    run_config,
    save_checkpoint,
    save_run,
    save_tensors,
)
from .models import ModelConfig, build_model
from .params import Params, batch_loss, bn_subset, evaluate, has_bn, params_of, unstack
from .progress import bar
from .seeding import derive_seed, generator

STATE_FILE = "state.safetensors"  # the resumable state: weights, optimiser, counters (one file)


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters, as stored under "train" in config.json."""

    optimizer: str = "sgd"  # "sgd" (with momentum) | "adam"
    lr: float = 0.05
    momentum: float = 0.9  # SGD momentum; Adam beta1
    schedule: str = "cosine"  # "constant" | "cosine" | "step" (x0.1 at 50% and 75%)
    l2: float = 0.0  # coefficient of (l2/2)||theta||^2, i.e. added to the gradient as l2 * theta
    dropout: float = 0.0  # probability of dropping a unit (MLP) or channel (CNN)
    epochs: int = 30
    batch_size: int = 128

    def validate(self, source: str = "train config") -> None:
        checks = [
            (self.optimizer in ("sgd", "adam"), "optimizer", "must be 'sgd' or 'adam'"),
            (self.lr > 0 and math.isfinite(self.lr), "lr", "must be a positive number"),
            (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (
                self.schedule in ("constant", "cosine", "step"),
                "schedule",
                "must be constant, cosine or step",
            ),
            (self.l2 >= 0, "l2", "must be >= 0"),
            (0 <= self.dropout < 1, "dropout", "must be in [0, 1) (probability of dropping)"),
            (
                isinstance(self.epochs, int) and self.epochs >= 1,
                "epochs",
                "must be an integer >= 1",
            ),
            (
                isinstance(self.batch_size, int) and self.batch_size >= 1,
                "batch_size",
                "must be an integer >= 1",
            ),
        ]
        for ok, name, why in checks:
            if not ok:
                raise IsthmusError(f"{source}: {name} {why}, got {getattr(self, name)!r}")

    @staticmethod
    def from_dict(d: dict, source: str = "train config") -> TrainConfig:
        known = set(TrainConfig.__dataclass_fields__)
        if set(d) - known:
            raise IsthmusError(f"{source}: unknown train field(s) {sorted(set(d) - known)}")
        cfg = TrainConfig(**d)
        cfg.validate(source)
        return cfg


@dataclass(frozen=True)
class TrainResult:
    params: Params
    metrics: dict
    config: dict


@dataclass(frozen=True)
class Start:
    """A training state to continue from instead of the seeds' initial weights: every member's
    parameters and buffers and the optimiser state (stacked, leading axis K; the scalar "step"
    counter shared), and the optimiser steps already taken, which may end inside an epoch.
    `continue_training` returns one at the step where it stops."""

    params: Params
    opt_state: dict[str, Tensor]
    step: int


def lr_factor(schedule: str, step: int, total: int) -> float:
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    return 0.1 ** ((step >= 0.5 * total) + (step >= 0.75 * total))


def batch_order(seed: int, epoch: int, n: int) -> Tensor:
    """The order in which a member seeded by `seed` sees the n training examples in `epoch`."""
    return torch.randperm(n, generator=generator(seed, epoch, 1))


def initial_params(model_cfg: ModelConfig, dropout: float, seed: int) -> Params:
    """The initial weights of a run seeded by `seed` (PyTorch's module initialisation from the
    global generator, seeded and then restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return params_of(build_model(model_cfg, dropout))


class _Optimizer:
    """SGD-momentum / Adam on stacked tensors; lr, momentum, l2 are (K,) tensors broadcast per member."""

    def __init__(
        self,
        cfgs: Sequence[TrainConfig],
        params: dict[str, Tensor],
        state: dict[str, Tensor] | None,
    ):
        dev, dt = next(iter(params.values())).device, next(iter(params.values())).dtype
        self.kind = cfgs[0].optimizer
        self.lr = torch.tensor([c.lr for c in cfgs], device=dev, dtype=dt)
        self.mom = torch.tensor([c.momentum for c in cfgs], device=dev, dtype=dt)
        self.l2 = torch.tensor([c.l2 for c in cfgs], device=dev, dtype=dt)
        names = ["m", "v"] if self.kind == "adam" else ["m"]
        self.state = state or {
            f"{n}.{k}": torch.zeros_like(p) for n in names for k, p in params.items()
        }
        self.state.setdefault("step", torch.zeros((), dtype=torch.long))

    @staticmethod
    def _b(v: Tensor, like: Tensor) -> Tensor:
        return v.reshape(-1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def step(self, params: dict[str, Tensor], factor: float) -> None:
        self.state["step"] += 1
        t = int(self.state["step"])
        for k, p in params.items():
            g = p.grad + self._b(self.l2, p) * p
            lr, mom = self._b(self.lr, p) * factor, self._b(self.mom, p)
            m = self.state[f"m.{k}"]
            if self.kind == "sgd":
                m.mul_(mom).add_(g)
                p.sub_(lr * m)
            else:
                v = self.state[f"v.{k}"]
                m.mul_(mom).add_((1 - mom) * g)
                v.mul_(0.999).add_(0.001 * g * g)
                mhat = m / (1 - mom**t)
                vhat = v / (1 - 0.999**t)
                p.sub_(lr * mhat / (vhat.sqrt() + 1e-8))
            p.grad = None


def _check_population(cfgs: Sequence[TrainConfig]) -> None:
    """Members share everything but lr, momentum, l2 (per-member tensors) and the seed."""
    base = cfgs[0]
    shared = ("optimizer", "schedule", "dropout", "epochs", "batch_size")
    for c in cfgs:
        c.validate()
        if any(getattr(c, k) != getattr(base, k) for k in shared):
            raise IsthmusError(
                "population members may differ only in lr, momentum and l2 (and seed)"
            )


def _resume(out: Path | None, configs: list[dict], stacked: Params, dev: torch.device):
    """The checkpointed parameters, optimiser state, epochs done and histories of `out` (one
    file: `io.save_checkpoint`)."""
    ckpt = out / ".checkpoint" / STATE_FILE if out is not None else None
    tensors, st = load_checkpoint(ckpt) if ckpt is not None and ckpt.exists() else (None, None)
    saved = {"configs": st.get("configs")} if st is not None else None
    check_resume(ckpt, saved, {"configs": configs}, what="run")
    missing = [k for k in stacked if f"param.{k}" not in tensors]
    if missing or not isinstance(st.get("epoch"), int) or st["epoch"] < 0:
        raise IsthmusError(f"{ckpt}: incomplete checkpoint (fields or tensors missing); delete it")
    stacked = {k: tensors[f"param.{k}"].to(dev) for k in stacked}
    opt_state = {k[4:]: v.to(dev) for k, v in tensors.items() if k.startswith("opt.")}
    return stacked, opt_state, int(st["epoch"]), st["histories"]


def _record(histories: list[list[dict]], epoch: int, tr, te) -> None:
    """Append one epoch's train/test loss and accuracy to every member's history."""
    for i, h in enumerate(histories):
        h.append(
            {
                "epoch": epoch,
                "train_loss": float(tr.loss[i]),
                "train_acc": float(tr.acc[i]),
                "test_loss": float(te.loss[i]),
                "test_acc": float(te.acc[i]),
            }
        )


def _results(current: Params, histories: list[list[dict]], configs: list[dict]):
    results = []
    for i, p in enumerate(unstack(current)):
        h = histories[i]
        last = h[-1] if h else {}
        metrics = {k: last.get(k) for k in ("train_loss", "train_acc", "test_loss", "test_acc")}
        metrics["history"] = h
        results.append(TrainResult({k: v.clone() for k, v in p.items()}, metrics, configs[i]))
    return results


def _fit(
    model_cfg: ModelConfig,
    data: Dataset,
    cfgs: Sequence[TrainConfig],
    seeds: Sequence[int],
    *,
    vmapped: bool,
    out: Path | None,
    resume: bool,
    progress: bool | None,
    max_steps: int | None,
    data_spec: dict | None,
    on_epoch: Callable[[int, Params], None] | None = None,
    snapshot_every: int | None = None,
    start: Start | None = None,
    orders: Callable[[int], Tensor] | None = None,
) -> tuple[list[TrainResult], Start]:
    """The one training loop. `start`: continue from that state (its step may fall inside an
    epoch; not with `resume`); `orders(epoch)`: every member's batch order of that epoch, (K, N)
    (default: a permutation drawn from each member's seed and the epoch). Returns the members and
    the state where training stopped."""
    K = len(seeds)
    _check_population(cfgs)
    base = cfgs[0]
    if snapshot_every is not None and (out is None or snapshot_every < 1):
        raise IsthmusError(
            f"snapshots every {snapshot_every} epochs: need an integer >= 1 and an output run "
            "directory (out) to write them to"
        )
    dev = data.x_train.device
    model = build_model(model_cfg, base.dropout).to(dev)
    if vmapped and has_bn(model):
        raise IsthmusError(
            "population training does not support BatchNorm; train BN nets one at a time"
        )
    pnames = [n for n, _ in model.named_parameters()]
    if start is not None:
        if resume:
            raise IsthmusError("resume continues a checkpoint; it cannot start from a given state")
        stacked = {k: v.to(dev).clone() for k, v in start.params.items()}
    else:
        init = [initial_params(model_cfg, base.dropout, s) for s in seeds]
        stacked = {k: torch.stack([p[k] for p in init]).to(dev) for k in init[0]}
    spec = data_spec or {"name": data.name, "root": None, "seed": 0}
    configs = [run_config(model_cfg, spec, asdict(c), s) for c, s in zip(cfgs, seeds, strict=True)]
    histories: list[list[dict]] = [[] for _ in range(K)]
    opt_state, first = None, 0
    if start is not None:
        opt_state = {k: v.to(dev).clone() for k, v in start.opt_state.items()}
    if resume:
        stacked, opt_state, first, histories = _resume(out, configs, stacked, dev)
    params = {k: stacked[k].clone().requires_grad_(True) for k in pnames}
    buffers = {k: v for k, v in stacked.items() if k not in params}
    opt = _Optimizer(cfgs, params, opt_state)

    N = len(data.x_train)
    B = min(base.batch_size, N)
    per_epoch = math.ceil(N / B)
    total = per_epoch * base.epochs
    steps_done = first * per_epoch if start is None else start.step
    if not 0 <= steps_done <= total:
        raise IsthmusError(
            f"a start at step {steps_done} lies outside the {total} steps of training"
        )
    first, skip = divmod(steps_done, per_epoch)  # the epoch to continue, its batches already done
    loss_kind = data.loss

    def member_loss(p: Params, xb: Tensor, yb: Tensor) -> Tensor:
        return batch_loss(functional_call(model, p, (xb,)), yb, loss_kind)

    batched_loss = vmap(member_loss, in_dims=(0, 0, 0), randomness="different")

    def step(idx: Tensor, epoch: int, b: int, lr: float) -> None:
        """One optimiser step (learning rates times `lr`) of every member on its minibatch
        idx[k] (K, B)."""
        if vmapped:
            losses = batched_loss({**params, **buffers}, data.x_train[idx], data.y_train[idx])
        else:
            p1 = {k: v[0] for k, v in {**params, **buffers}.items()}
            losses = member_loss(p1, data.x_train[idx[0]], data.y_train[idx[0]])[None]
        if not torch.isfinite(losses).all():
            bad = [seeds[i] for i in range(K) if not torch.isfinite(losses[i])]
            raise IsthmusError(
                f"training diverged (loss {losses.detach().tolist()[:4]}) at epoch {epoch + 1}, step "
                f"{b + 1}, seed(s) {bad}; lower --lr (now {[c.lr for c in cfgs][:4]}) or add a schedule"
            )
        losses.sum().backward()
        opt.step(params, lr)

    bn_x = bn_subset(data.x_train)  # BN policy (docs/definitions.md); unused without BN
    epochs = bar(
        range(first, base.epochs), progress=progress, desc="train", unit="epoch", initial=first,
        total=base.epochs,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        for epoch in epochs:
            model.train()
            if orders is None:
                order = torch.stack([batch_order(s, epoch, N) for s in seeds]).to(dev)  # (K, N)
            else:
                order = orders(epoch).to(dev)
            torch.manual_seed(derive_seed(seeds[0], epoch, 2))  # dropout masks
            for b in range(skip if epoch == first else 0, per_epoch):
                if max_steps is not None and steps_done >= max_steps:
                    break
                idx = order[:, b * B : (b + 1) * B]
                step(idx, epoch, b, lr_factor(base.schedule, steps_done, total))
                steps_done += 1
            current = {**{k: v.detach() for k, v in params.items()}, **buffers}
            model.eval()
            kw = dict(loss=loss_kind, bn_x=bn_x)  # eval_plan's sizes, as every evaluation
            tr = evaluate(model, current, data.x_train, data.y_train, **kw)
            te = evaluate(model, current, data.x_test, data.y_test, **kw)
            _check_finite(current, tr.loss, epoch, seeds, cfgs)
            _record(histories, epoch + 1, tr, te)
            epochs.set_postfix(
                train_loss=f"{float(tr.loss.mean()):.3f}", test_acc=f"{float(te.acc.mean()):.3f}"
            )
            last = epoch + 1 == base.epochs or (max_steps is not None and steps_done >= max_steps)
            if on_epoch is not None:  # a copy: the hook cannot reach the training tensors
                on_epoch(epoch + 1, {k: v.clone() for k, v in current.items()})
            if snapshot_every is not None and ((epoch + 1) % snapshot_every == 0 or last):
                _snapshot(out, current, epoch + 1, vmapped)
            if out is not None:
                _checkpoint(out, current, opt.state, configs, histories, epoch + 1, vmapped)
            if last:
                break
    current = {k: v.detach() for k, v in {**params, **buffers}.items()}
    state = {k: v.clone() for k, v in opt.state.items()}
    return _results(current, histories, configs), Start(current, state, steps_done)


def _check_finite(current: Params, loss: Tensor, epoch: int, seeds, cfgs) -> None:
    """Divergence is caught in the epoch that produced it, before anything is written: the last
    checkpoint on disk is the last finite one."""
    bad = ~torch.isfinite(loss)
    for v in current.values():
        if torch.is_floating_point(v):
            bad = bad | ~torch.isfinite(v.reshape(len(seeds), -1)).all(1).to(bad.device)
    if bool(bad.any()):
        which = [seeds[i] for i in range(len(seeds)) if bad[i]]
        raise IsthmusError(
            f"training diverged in epoch {epoch + 1} (seed(s) {which}: non-finite weights or "
            f"train loss); the checkpoint of epoch {epoch} is kept; lower --lr (now "
            f"{[c.lr for c in cfgs][:4]}) or add a schedule"
        )


def _snapshot(out: Path, current: Params, epoch: int, population: bool) -> None:
    """Every member's parameters and buffers after `epoch`, into its run's snapshots folder
    (before the checkpoint: a resumed run has every snapshot up to its last epoch)."""
    for i, p in enumerate(unstack(current)):
        run = out / str(i) if population else out
        save_tensors(run / SNAPSHOT_DIR / f"epoch_{epoch:04d}.safetensors", p)


def _checkpoint(
    out: Path,
    current: Params,
    opt_state: dict,
    configs: list[dict],
    histories,
    epoch: int,
    population: bool,
) -> None:
    """Write every member's run directory, then the resumable state (atomically, each file)."""
    for i, p in enumerate(unstack(current)):
        h = histories[i]
        metrics = {k: h[-1][k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")} | {
            "history": h
        }
        save_run(out / str(i) if population else out, p, configs[i], metrics)
    tensors = {f"param.{k}": v for k, v in current.items()} | {
        f"opt.{k}": v for k, v in opt_state.items()
    }
    state = {"epoch": epoch, "configs": configs, "histories": histories}
    save_checkpoint(out / ".checkpoint" / STATE_FILE, tensors, state)


def train(
    model_cfg: ModelConfig,
    data: Dataset,
    cfg: TrainConfig = TrainConfig(),
    seed: int = 0,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    max_steps: int | None = None,
    data_spec: dict | None = None,
    on_epoch: Callable[[int, Params], None] | None = None,
    snapshot_every: int | None = None,
) -> TrainResult:
    """Train one net; with `out`, write (and every epoch checkpoint) a run directory there.

    on_epoch(epoch, params): called after each epoch's evaluation (epoch from 1) with a copy of
      the parameters and buffers, stacked with a leading axis of 1; training is unaffected.
    snapshot_every: keep the weights after every that many epochs and after the last one in
      out/snapshots/epoch_NNNN.safetensors (needs `out`).
    """
    return _fit(
        model_cfg,
        data,
        [cfg],
        [seed],
        vmapped=False,
        out=Path(out) if out else None,
        resume=resume,
        progress=progress,
        max_steps=max_steps,
        data_spec=data_spec,
        on_epoch=on_epoch,
        snapshot_every=snapshot_every,
    )[0][0]


def train_population(
    model_cfg: ModelConfig,
    data: Dataset,
    cfgs: TrainConfig | Sequence[TrainConfig],
    seeds: Sequence[int],
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    max_steps: int | None = None,
    data_spec: dict | None = None,
    on_epoch: Callable[[int, Params], None] | None = None,
    snapshot_every: int | None = None,
) -> list[TrainResult]:
    """Train K = len(seeds) nets at once (vmap); with `out`, member k goes to out/k (its
    snapshots to out/k/snapshots); `on_epoch` gets the (K, ...) stacked copy (see `train`)."""
    if isinstance(cfgs, TrainConfig):
        cfgs = [cfgs] * len(seeds)
    if len(cfgs) != len(seeds) or not seeds:
        raise IsthmusError(f"population: {len(cfgs)} configs for {len(seeds)} seeds")
    return _fit(
        model_cfg,
        data,
        list(cfgs),
        list(seeds),
        vmapped=True,
        out=Path(out) if out else None,
        resume=resume,
        progress=progress,
        max_steps=max_steps,
        data_spec=data_spec,
        on_epoch=on_epoch,
        snapshot_every=snapshot_every,
    )[0]


def continue_training(
    model_cfg: ModelConfig,
    data: Dataset,
    cfg: TrainConfig,
    seeds: Sequence[int],
    start: Start | None = None,
    *,
    orders: Callable[[int], Tensor] | None = None,
    max_steps: int | None = None,
    vmapped: bool = True,
    progress: bool | None = None,
    data_spec: dict | None = None,
) -> tuple[list[TrainResult], Start]:
    """Train K = len(seeds) members from `start` (None: the seeds' initial weights) to step
    `max_steps` or the end of cfg's schedule, and return them with the state there, so that
    training can be split at any optimiser step and continued, by the same or other members.

    The schedule is cfg's whole run: a member continued from step k follows the learning rates
    of steps k+1, ... of it. `orders(epoch)` gives the (K, N) batch order of an epoch (default:
    drawn from each seed, as `train` does); in the epoch a start falls inside, the batches the
    start already took are skipped, so an order whose prefix repeats the previous one's keeps
    that epoch a single pass over the data. Nothing is written; `vmapped=False` (K = 1) trains
    BatchNorm nets."""
    return _fit(
        model_cfg,
        data,
        [cfg] * len(seeds),
        list(seeds),
        vmapped=vmapped,
        out=None,
        resume=False,
        progress=progress,
        max_steps=max_steps,
        data_spec=data_spec,
        start=start,
        orders=orders,
    )


def with_dropout(cfg: TrainConfig, p: float) -> TrainConfig:
    return replace(cfg, dropout=p)
