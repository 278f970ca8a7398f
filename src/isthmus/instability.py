"""Instability analysis (Frankle, Dziugaite, Roy & Carbin 2020; docs/instability.md).

One net (the parent) is trained with seed `seed` and, at each spawn step k (an optimiser step), a
few copies of its state (weights, buffers, optimiser state) continue training to the end of the
same schedule, each with a batch order of its own. Copy c draws its orders from the order seed
`derive_seed(seed, c, _COPY_SEED)`, so copies differ in nothing but the order in which they see
the data: copies given the same order seed stay bit-identical (tested). At the end the straight
line between every pair of copies is evaluated; its error barrier (the highest error on the line
above the mean of its ends) is the instability at k. Training is stable from the first spawn step
from which on every measured instability stays below a threshold (2% error, as in the paper).

The parent is trained once, in segments from one spawn step to the next (`train.continue_training`);
the copies of one spawn step train as one vmapped population (one at a time for BatchNorm nets,
which population training refuses). With an output folder every finished spawn step is written
(the copies' run directories, `instability.json`) together with a checkpoint of the parent's
state there, so `resume=True` skips the finished spawn steps and gives the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

import torch
from torch import Tensor

from .data import Dataset
from .errors import IsthmusError
from .io import check_resume, inputs_record, load_checkpoint, save_checkpoint, save_run, write_json
from .models import ModelConfig, build_model
from .params import Params, bn_subset, has_bn
from .paths import evaluate_path, line
from .progress import bar
from .seeding import derive_seed, generator
from .train import Start, TrainConfig, TrainResult, batch_order, continue_training

_COPY_SEED, _COPY_ORDER = 233, 239  # seeding purposes: a copy's order seed; an epoch's order
RESULT_FILE = "instability.json"
CHECKPOINT = Path(".checkpoint") / "instability.safetensors"  # the parent at the last spawn step
BARRIERS = ("train_error", "test_error", "train_loss", "test_loss")  # the numbers of one pair


@dataclass(frozen=True)
class InstabilityConfig:
    """What to measure: spawn steps (optimiser steps of the parent), copies per spawn step,
    the stability threshold on the test-error barrier (a fraction), and points per line."""

    spawn_at: tuple[int, ...]
    copies: int = 2
    threshold: float = 0.02
    points: int = 21

    def validate(self, total: int) -> None:
        """Refuse what cannot be measured, naming the flag; `total`: optimiser steps of training."""
        if not self.spawn_at:
            raise IsthmusError("--spawn-at: give at least one spawn step (0 = the initial weights)")
        bad = [k for k in self.spawn_at if not isinstance(k, int) or not 0 <= k <= total]
        if bad:
            raise IsthmusError(
                f"--spawn-at {bad}: spawn steps are optimiser steps from 0 to {total} (epochs x "
                "ceil(training examples / batch size)); give steps in that range"
            )
        if len(set(self.spawn_at)) != len(self.spawn_at):
            raise IsthmusError(f"--spawn-at {list(self.spawn_at)}: a spawn step is repeated")
        if not isinstance(self.copies, int) or self.copies < 2:
            raise IsthmusError(f"--copies {self.copies}: need at least 2 copies to form a pair")
        if not 0 < self.threshold < 1:
            raise IsthmusError(f"--threshold {self.threshold}: an error fraction in (0, 1)")
        if self.points < 2:
            raise IsthmusError(f"--points {self.points}: need >= 2 values of t on each line")


@dataclass(frozen=True)
class InstabilityResult:
    """Every spawn step's record (ascending steps), the stable step and the settings; serialises
    to instability.json (format: docs/instability.md)."""

    settings: dict
    inputs: dict
    spawns: list[dict]
    stable_step: int | None
    done: bool
    copies: dict[int, list[Params]]  # spawn step -> the copies' final parameters (this process)

    def to_json(self) -> dict:
        return {
            "settings": self.settings,
            "inputs": self.inputs,
            "spawns": self.spawns,
            "stable_step": self.stable_step,
            "done": self.done,
        }


def steps_per_epoch(n_train: int, cfg: TrainConfig) -> int:
    return math.ceil(n_train / min(cfg.batch_size, n_train))


def copy_seeds(seed: int, copies: int) -> list[int]:
    """The order seed of each copy (copy c of every spawn step draws from the same one)."""
    return [derive_seed(seed, c, _COPY_SEED) for c in range(copies)]


def copy_orders(
    parent: Tensor, order_seeds: Sequence[int], spawn: int, per_epoch: int, batch: int
) -> Callable[[int], Tensor]:
    """`orders(epoch)` of the copies spawned at step `spawn`: epoch e is a permutation drawn from
    (order seed, e). The epoch the spawn falls inside keeps the parent's order (`parent`, (N,))
    for the batches already taken and permutes the examples the parent had not reached, so that
    epoch is still one pass over the data."""
    first, done = divmod(spawn, per_epoch)
    seen, rest = parent[: done * batch], parent[done * batch :]

    def orders(epoch: int) -> Tensor:
        rows = []
        for s in order_seeds:
            g = generator(s, epoch, _COPY_ORDER)
            if epoch == first and done:
                rows.append(torch.cat([seen, rest[torch.randperm(len(rest), generator=g)]]))
            else:
                rows.append(torch.randperm(len(parent), generator=g))
        return torch.stack(rows)

    return orders


def error_barrier(errors: Sequence[float]) -> float:
    """max_t err(t) - (err(0) + err(1)) / 2: how far the line's error rises above its ends' mean."""
    return max(errors) - (errors[0] + errors[-1]) / 2


def pair_barriers(
    model, a: Params, b: Params, data: Dataset, points: int, bn_x: Tensor | None
) -> tuple[dict, list[dict]]:
    """The straight line a -> b: its error barriers (train, test), its loss barriers
    (`paths.barrier`) and the metrics at its two ends."""
    r = evaluate_path(model, line(a, b), data, points=points, bn_x=bn_x)
    rec = {
        "train_error": error_barrier([1 - v for v in r.train_acc]),
        "test_error": error_barrier([1 - v for v in r.test_acc]),
        "train_loss": r.barrier["train_loss"],
        "test_loss": r.barrier["test_loss"],
        "train_loss_vs_mean": r.barrier["train_loss_vs_mean"],
        "t_max": r.barrier["t_max"],
    }
    ends = [
        {k: getattr(r, k)[i] for k in ("train_loss", "train_acc", "test_loss", "test_acc")}
        for i in (0, -1)
    ]
    return rec, ends


def stable_step(spawns: Sequence[dict], threshold: float) -> int | None:
    """The first spawn step from which on every measured mean test-error barrier is below
    `threshold` (None: the last one is not)."""
    found = None
    for s in reversed(spawns):
        if not s["mean"]["test_error"] < threshold:
            break
        found = s["step"]
    return found


def _spawn(
    model_cfg: ModelConfig,
    data: Dataset,
    train_cfg: TrainConfig,
    parent: Start,
    parent_order: Tensor,
    order_seeds: Sequence[int],
    *,
    seed: int,
    progress: bool | None,
    data_spec: dict | None,
) -> list[TrainResult]:
    """The copies of `parent` trained to the end of the schedule."""
    per, batch = steps_per_epoch(len(data.x_train), train_cfg), train_cfg.batch_size
    batch = min(batch, len(data.x_train))
    orders = copy_orders(parent_order, order_seeds, parent.step, per, batch)
    kw = dict(progress=progress, data_spec=data_spec)
    copies = len(order_seeds)
    if not has_bn(build_model(model_cfg)):
        state = {k: v if v.dim() == 0 else v.expand(copies, *v.shape[1:]).clone()
                 for k, v in parent.opt_state.items()}  # fmt: skip
        params = {k: v.expand(copies, *v.shape[1:]).clone() for k, v in parent.params.items()}
        start = Start(params, state, parent.step)
        return continue_training(
            model_cfg, data, train_cfg, [seed] * copies, start, orders=orders, **kw
        )[0]
    out = []  # BatchNorm: population training is refused, so one copy at a time
    for c in range(copies):
        one = copy_orders(parent_order, order_seeds[c : c + 1], parent.step, per, batch)
        res, _ = continue_training(
            model_cfg, data, train_cfg, [seed], parent, orders=one, vmapped=False, **kw
        )
        out += res
    return out


def _summary(pairs: list[dict]) -> dict:
    return {k: sum(p[k] for p in pairs) / len(pairs) for k in BARRIERS}


def instability(
    model_cfg: ModelConfig,
    data: Dataset,
    train_cfg: TrainConfig,
    cfg: InstabilityConfig,
    seed: int = 0,
    *,
    order_seeds: Sequence[int] | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    data_spec: dict | None = None,
) -> InstabilityResult:
    """The instability curve: for each spawn step (ascending), `cfg.copies` copies of the parent
    (seed `seed`) trained on from that step with their own batch orders, and the error and loss
    barriers of the straight line between every pair of them at the end.

    order_seeds: each copy's order seed (default `copy_seeds(seed, copies)`); equal seeds give
      identical copies. out: write OUT/instability.json, the copies as run directories
      OUT/spawn_KKKKKK/c and the checkpoint after every spawn step; resume: skip the finished ones.
    """
    model_cfg.validate()
    train_cfg.validate()
    if data.loss != "ce":
        raise IsthmusError(
            f"--data {data.name}: a regression set has no error rate; instability needs a "
            "classification data set (mnist1d, digits, gaussians, mnist, ...)"
        )
    if train_cfg.dropout > 0:
        raise IsthmusError(
            f"--dropout {train_cfg.dropout}: copies would also differ in their dropout masks; "
            "instability measures the data order alone, so train without dropout"
        )
    n = len(data.x_train)
    per = steps_per_epoch(n, train_cfg)
    total = per * train_cfg.epochs
    cfg.validate(total)
    seeds = list(order_seeds) if order_seeds is not None else copy_seeds(seed, cfg.copies)
    if len(seeds) != cfg.copies:
        raise IsthmusError(f"order_seeds: {len(seeds)} seeds for {cfg.copies} copies")
    spec = data_spec or {"name": data.name, "root": None, "seed": 0}
    ks = sorted(cfg.spawn_at)
    settings = {
        "model": model_cfg.to_dict(),
        "train": asdict(train_cfg),
        "data": spec,
        "seed": seed,
        "spawn_at": ks,
        "copies": cfg.copies,
        "order_seeds": seeds,
        "threshold": cfg.threshold,
        "points": cfg.points,
        "steps_per_epoch": per,
        "total_steps": total,
    }
    out = Path(out) if out is not None else None
    spawns: list[dict] = []
    parent: Start | None = None
    if resume:
        parent, spawns = _resume(out, settings)
        spawns = [r for r in spawns if r["step"] in ks]  # spawn steps may be added or dropped
    model = build_model(model_cfg).to(data.x_train.device)
    bn_x = bn_subset(data.x_train) if has_bn(model) else None
    kw = dict(seed=seed, progress=progress, data_spec=spec)
    finals: dict[int, list[Params]] = {}
    todo = [k for k in ks if k not in {s["step"] for s in spawns}]
    pbar = bar(total=len(ks), initial=len(ks) - len(todo), desc="instability", unit="spawn",
               progress=progress)  # fmt: skip
    for k in todo:
        if parent is not None and parent.step > k:  # a spawn step added before the checkpoint:
            parent = None  # the parent trains again from step 0 (the same numbers: tested)
        res, parent = continue_training(
            model_cfg, data, train_cfg, [seed], parent, max_steps=k, vmapped=False,
            progress=progress, data_spec=spec,
        )  # fmt: skip
        order = batch_order(seed, k // per, n)  # the parent's order of the epoch k falls in
        copies = _spawn(model_cfg, data, train_cfg, parent, order, seeds, **kw)
        nets = [c.params for c in copies]
        pairs, ends = [], {}
        for i, j in combinations(range(len(nets)), 2):
            rec, (ei, ej) = pair_barriers(model, nets[i], nets[j], data, cfg.points, bn_x)
            pairs.append({"copies": [i, j], **rec})
            ends.setdefault(i, ei)
            ends.setdefault(j, ej)
        m = res[0].metrics
        mean = _summary(pairs)
        spawns.append({
            "step": k,
            "epoch": k / per,
            "parent": {q: m[q] for q in ("train_loss", "train_acc", "test_loss", "test_acc")},
            "copies": [ends[c] for c in range(len(nets))],
            "pairs": pairs,
            "mean": mean,
            "stable": mean["test_error"] < cfg.threshold,
        })  # fmt: skip
        spawns.sort(key=lambda r: r["step"])
        finals[k] = nets
        if out is not None:
            _write(out, copies, seeds, k, parent, settings, spawns, ks)
        pbar.update(1)
    pbar.close()
    return _result(settings, spec, spawns, ks, cfg.threshold, finals)


def _result(settings, spec, spawns, ks, threshold, finals) -> InstabilityResult:
    done = [s["step"] for s in spawns] == ks
    stable = stable_step(spawns, threshold) if done else None
    return InstabilityResult(settings, inputs_record([], spec), list(spawns), stable, done, finals)


def _write(out: Path, copies, seeds, k, parent: Start, settings, spawns, ks) -> None:
    """The copies' run directories, instability.json, then the checkpoint (each atomic): a
    checkpoint never names a spawn step whose files are missing."""
    for c, r in enumerate(copies):
        config = {**r.config, "spawn": {"step": k, "copy": c, "order_seed": seeds[c]}}
        save_run(out / f"spawn_{k:06d}" / str(c), r.params, config, r.metrics)
    write_json(out / RESULT_FILE, _result(settings, settings["data"], spawns, ks,
                                          settings["threshold"], {}).to_json())  # fmt: skip
    tensors = {f"param.{n}": v for n, v in parent.params.items()}
    tensors |= {f"opt.{n}": v for n, v in parent.opt_state.items()}
    state = {"settings": settings, "step": parent.step, "spawns": spawns}
    save_checkpoint(out / CHECKPOINT, tensors, state)


def _resume(out: Path | None, settings: dict) -> tuple[Start | None, list[dict]]:
    """The parent at the last finished spawn step and the finished records."""
    if out is None:
        raise IsthmusError("resume needs the output folder (out) of the interrupted analysis")
    path = out / CHECKPOINT
    tensors, state = load_checkpoint(path) if path.is_file() else ({}, None)
    # everything but the spawn steps must match (finished steps are kept, new ones are added)
    saved = state and {k: v for k, v in state.get("settings", {}).items() if k != "spawn_at"}
    here = {k: v for k, v in settings.items() if k != "spawn_at"}
    check_resume(path, saved, here, what="instability analysis")
    spawns = state.get("spawns")
    if not isinstance(spawns, list) or not isinstance(state.get("step"), int):
        raise IsthmusError(f"{path}: incomplete checkpoint (fields 'spawns', 'step'); delete it")
    params = {n[6:]: v for n, v in tensors.items() if n.startswith("param.")}
    opt = {n[4:]: v for n, v in tensors.items() if n.startswith("opt.")}
    return Start(params, opt, state["step"]), spawns
