"""How learning rate, width and L2 change the curvature of the region training explores
(Fort & Jastrzebski 2019: the three act on the large-scale curvature in similar ways).

`run_study` trains a grid (values of one hyperparameter x seeds; learning rates and L2 values go
into one vmapped population with per-member hyperparameters, each width into its own population)
and measures every trained net at the end: weight norm (the radius), the top Hessian eigenvalue
and the Hessian trace (`curvature`, on `examples` training examples), and the rise of the training
loss along random filter-normalised directions and along the radial direction, at a relative
distance `distance`. `train_points` is the grid runner on its own (any list of settings x seeds;
a sweep reuses it), `train_grid` its form for one hyperparameter's values.

The same measurements are taken during training, every `measure_every` epochs and at the last,
through the training's per-epoch hook (which changes no training number; the measurements draw
only from their own seeded generators): each run's "trajectory". The end-of-training numbers are
then the trajectory's last point, the same as measuring the trained net afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from torch import nn

from .curvature import hessian_operator, hutchinson_trace, top_eigenvalues
from .data import Dataset
from .errors import IsthmusError
from .models import ModelConfig, build_model
from .params import Params, bn_subset, evaluate, flatten, is_float, stack, unstack
from .progress import bar
from .surface import filter_normalized_direction
from .train import TrainConfig, train, train_population

HYPERPARAMETERS = ("lr", "width", "l2")


def _configs(
    model_cfg: ModelConfig, train_cfg: TrainConfig, hyper: str, value: float
) -> tuple[ModelConfig, TrainConfig]:
    """The (model, training) configuration of one grid value. A width is each kind's own: an
    MLP's hidden units, a resnet's channel multiplier, a transformer's model dimension, and a
    CNN's channel plan scaled by width/32; convfc and vgg16 have fixed plans and no width."""
    if hyper == "lr":
        return model_cfg, replace(train_cfg, lr=float(value))
    if hyper == "l2":
        return model_cfg, replace(train_cfg, l2=float(value))
    if hyper != "width":
        raise IsthmusError(
            f"unknown hyperparameter {hyper!r}; choose from {', '.join(HYPERPARAMETERS)}"
        )
    kind, w = model_cfg.kind, int(value)
    if w != value or w < 1:
        raise IsthmusError(f"study width values must be whole numbers >= 1, got {value:g}")
    if kind in ("mlp", "resnet"):
        return replace(model_cfg, width=w), train_cfg
    if kind == "transformer":
        if w % model_cfg.heads:
            raise IsthmusError(
                f"study width {w} (the transformer's model dimension) is not divisible by "
                f"--heads {model_cfg.heads}; give widths that are multiples of "
                f"{model_cfg.heads}, or set --heads to a divisor of every width"
            )
        return replace(model_cfg, width=w), train_cfg
    if kind == "cnn":
        plan = tuple(c if c == "M" else max(1, round(int(c) * w / 32)) for c in model_cfg.channels)
        return replace(model_cfg, channels=plan), train_cfg
    raise IsthmusError(
        f"a width study needs a model with a width; {kind}'s layer sizes are fixed: study lr or "
        f"l2 on it, or vary the width of --model mlp, cnn, resnet or transformer"
    )


def population_key(model_cfg: ModelConfig, train_cfg: TrainConfig) -> tuple:
    """Nets with equal keys can train as one vmapped population: the same architecture and the
    training settings every member must share (they may differ in lr, momentum, L2 and seed)."""
    t = train_cfg
    return (model_cfg, t.optimizer, t.schedule, t.dropout, t.epochs, t.batch_size)


def train_points(
    points: Sequence[tuple[ModelConfig, TrainConfig]],
    data: Dataset,
    seeds: Sequence[int],
    *,
    out: str | Path | None = None,
    resume: bool = False,
    data_spec: dict | None = None,
    progress: bool | None = None,
    track: Callable[[ModelConfig, int, Params], dict] | None = None,
    every: int = 0,
) -> list[dict]:
    """Every (point, seed) trained: [{"point" (index into `points`), "seed", "model_config",
    "params", "metrics", "trajectory", "run"}].

    Points with the same `population_key` train as one vmapped population (per-member lr,
    momentum and L2), population g in order of first appearance; BatchNorm nets, which cannot
    share one, train one at a time in the same layout. With `out`, population g is written as
    out/g (member k's run directory out/g/k, "run"; checkpointed every epoch, `resume`
    continues). With `track` and `every` >= 1, track(model_config, seed, params) is called on
    every net after every `every`-th and after the last epoch; "trajectory" lists
    [{"epoch", **its result}]."""
    groups: dict[tuple, list[int]] = {}
    for i, (mc, tc) in enumerate(points):
        tc.validate("study")
        groups.setdefault(population_key(mc, tc), []).append(i)
    out_list = []
    for g, members in enumerate(groups.values()):
        mc = points[members[0]][0]
        grid = [(i, points[i][1], s) for i in members for s in seeds]
        trajectories: list[list[dict]] = [[] for _ in grid]
        epochs = grid[0][1].epochs

        def on_epoch(
            epoch: int, stacked: Params, first: int = 0, mc=mc, grid=grid, traj=trajectories,
            epochs=epochs,
        ) -> None:  # fmt: skip
            if epoch % every and epoch != epochs:
                return
            for j, p in enumerate(unstack(stacked)):  # fresh copies: laid out as after training
                at = {k: v.clone() for k, v in p.items()}
                traj[first + j].append({"epoch": epoch, **track(mc, grid[first + j][2], at)})

        hook = on_epoch if track is not None and every >= 1 else None
        where = None if out is None else Path(out) / str(g)
        kw = dict(resume=resume, progress=progress, data_spec=data_spec)
        if not mc.batchnorm:
            cfgs, ss = [m[1] for m in grid], [m[2] for m in grid]
            res = train_population(mc, data, cfgs, ss, out=where, on_epoch=hook, **kw)
        else:
            res = [
                train(
                    mc, data, tc, s, out=None if where is None else where / str(k),
                    on_epoch=None if hook is None else partial(hook, first=k), **kw,
                )
                for k, (_, tc, s) in enumerate(grid)
            ]  # fmt: skip
        for k, ((i, _, s), r, t) in enumerate(zip(grid, res, trajectories, strict=True)):
            out_list.append(
                {
                    "point": i,
                    "seed": s,
                    "model_config": mc,
                    "params": r.params,
                    "metrics": r.metrics,
                    "trajectory": t,
                    "run": None if where is None else where / str(k),
                }
            )
    return out_list


def train_grid(
    model_cfg: ModelConfig,
    data: Dataset,
    train_cfg: TrainConfig,
    hyper: str,
    values: list[float],
    seeds: list[int],
    *,
    progress: bool | None = None,
    track: Callable[[ModelConfig, int, Params], dict] | None = None,
    every: int = 0,
) -> list[dict]:
    """Every (value, seed) trained (`train_points` on one hyperparameter's values): [{"value",
    "seed", "model_config", "params", "metrics", "trajectory"}], values that share an
    architecture trained as one population (per-member lr and L2)."""
    points = [_configs(model_cfg, train_cfg, hyper, v) for v in values]
    runs = train_points(points, data, seeds, progress=progress, track=track, every=every)
    return [
        {"value": values[r["point"]], **{k: v for k, v in r.items() if k not in ("point", "run")}}
        for r in runs
    ]


def _directions(p: Params, n: int, seed: int) -> list[Params]:
    """n filter-normalised random directions and the radial one (theta itself on the tensors
    that filter normalisation scales, zero on biases and BatchNorm entries): the radial last."""
    dirs = [filter_normalized_direction(p, seed=seed, index=i) for i in range(n)]
    radial = {
        k: (v.clone() if is_float(v) and v.dim() > 1 else torch.zeros_like(v) if is_float(v) else v)
        for k, v in p.items()
    }
    return dirs + [radial]


def measure(
    model: nn.Module,
    params: Params,
    data: Dataset,
    *,
    examples: int = 1000,
    directions: int = 5,
    distance: float = 0.25,
    probes: int = 20,
    seed: int = 0,
) -> dict:
    """Radius, top eigenvalue, trace and directional loss rises of one trained net."""
    trainable = [k for k, _ in model.named_parameters() if k in params]
    radius = float(flatten(params, trainable).double().norm())
    op = hessian_operator(model, params, data, examples=examples)
    top = top_eigenvalues(op, 1, seed=seed).values[0]
    tr = hutchinson_trace(op, probes, seed=seed)
    dirs = _directions(params, directions, seed)
    pts = [params] + [
        {k: (v + distance * d[k] if is_float(v) else v) for k, v in params.items()} for d in dirs
    ]
    n = min(examples, len(data.x_train))
    x, y = data.x_train[:n], data.y_train[:n]
    bn_x = bn_subset(data.x_train)  # a BatchNorm net: every point by the policy, as the Hessian
    loss = evaluate(model, stack(pts), x, y, loss=data.loss, bn_x=bn_x).loss
    rises = (loss[1:] - loss[0]).tolist()
    return {
        "radius": radius,
        "top_eigenvalue": top,
        "trace": tr.estimate,
        "trace_stderr": tr.stderr,
        "random_rise": sum(rises[:-1]) / max(1, len(rises) - 1),
        "radial_rise": rises[-1],
    }


@dataclass(frozen=True)
class StudyResult:
    """Every run's measurements ("rows") and their mean and standard deviation per value."""

    hyperparameter: str
    values: list[float]
    seeds: list[int]
    rows: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    QUANTITIES = (
        "radius",
        "top_eigenvalue",
        "trace",
        "random_rise",
        "radial_rise",
        "train_loss",
        "test_acc",
    )

    def summary(self) -> list[dict]:
        out = []
        for v in self.values:
            rs = [r for r in self.rows if r["value"] == v]
            entry = {"value": v}
            for q in self.QUANTITIES:
                t = torch.tensor([r[q] for r in rs], dtype=torch.float64)
                entry[q] = {"mean": float(t.mean()), "std": float(t.std()) if len(t) > 1 else 0.0}
            out.append(entry)
        return out

    def trajectories(self) -> list[dict]:
        """Per value, the trajectory's epochs and every quantity's mean and standard deviation
        over seeds at each: [{"value", "epochs", quantity: {"mean": [...], "std": [...]}}]."""
        out = []
        for v in self.values:
            ts = [r.get("trajectory") or [] for r in self.rows if r["value"] == v]
            if not ts or not ts[0]:
                continue
            entry: dict = {"value": v, "epochs": [pt["epoch"] for pt in ts[0]]}
            for q in self.QUANTITIES:
                t = torch.tensor([[pt[q] for pt in tr] for tr in ts], dtype=torch.float64)
                std = t.std(0) if len(ts) > 1 else torch.zeros(t.shape[1], dtype=torch.float64)
                entry[q] = {"mean": t.mean(0).tolist(), "std": std.tolist()}
            out.append(entry)
        return out

    def to_json(self) -> dict:
        return {**asdict(self), "summary": self.summary(), "trajectories": self.trajectories()}


def run_study(
    model_cfg: ModelConfig,
    data: Dataset,
    train_cfg: TrainConfig,
    hyper: str,
    values: list[float],
    seeds: list[int],
    *,
    examples: int = 1000,
    directions: int = 5,
    distance: float = 0.25,
    probes: int = 20,
    measure_every: int = 10,
    progress: bool | None = None,
) -> StudyResult:
    """Train the grid (`train_grid`) and `measure` every net at the end and, with
    `measure_every` >= 1, every that many epochs during training (0: at the end only); see the
    module docstring. Each measurement costs one Lanczos run and `probes` Hessian-vector products
    on `examples` examples, so E = 10 on 30 epochs measures each net 3 times instead of once."""
    if len(values) < 2 or not seeds:  # an unknown hyperparameter is refused by the grid
        raise IsthmusError("a study needs at least two values and one seed")
    if not isinstance(measure_every, int) or measure_every < 0:
        raise IsthmusError(
            f"measure_every must be an integer >= 0 (0: at the end only), got {measure_every!r}"
        )
    models: dict[ModelConfig, nn.Module] = {}

    def at(mc: ModelConfig, seed: int, params: Params) -> dict:
        if mc not in models:
            models[mc] = build_model(mc)
        kw = dict(examples=examples, directions=directions, distance=distance, probes=probes)
        return measure(models[mc], params, data, **kw, seed=seed)

    runs = train_grid(
        model_cfg, data, train_cfg, hyper, values, seeds, progress=progress, track=at,
        every=measure_every,
    )  # fmt: skip
    rows = []
    for r in bar(runs, progress=progress, desc="measure", unit="net"):
        history = {h["epoch"]: h for h in r["metrics"]["history"]}
        trajectory = [
            {**t, "train_loss": history[t["epoch"]]["train_loss"],
             "test_acc": history[t["epoch"]]["test_acc"]}
            for t in r["trajectory"]
        ]  # fmt: skip
        if trajectory:  # the last point was measured after the last epoch: the end itself
            m = {k: v for k, v in r["trajectory"][-1].items() if k != "epoch"}
        else:
            m = at(r["model_config"], r["seed"], r["params"])
        rows.append(
            {
                "value": r["value"],
                "seed": r["seed"],
                "train_loss": r["metrics"]["train_loss"],
                "test_acc": r["metrics"]["test_acc"],
                **m,
                "trajectory": trajectory,
            }
        )
    settings = {
        "model": model_cfg.to_dict(),
        "train": asdict(train_cfg),
        "examples": examples,
        "directions": directions,
        "distance": distance,
        "probes": probes,
        "measure_every": measure_every,
    }
    return StudyResult(hyper, list(values), list(seeds), rows, settings)
