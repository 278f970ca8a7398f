"""How learning rate, width and L2 change the curvature of the region training explores
(Fort & Jastrzebski 2019: the three act on the large-scale curvature in similar ways).

`run_study` trains a grid (values of one hyperparameter x seeds; learning rates and L2 values go
into one vmapped population with per-member hyperparameters, each width into its own population)
and measures every trained net at the end: weight norm (the radius), the top Hessian eigenvalue
and the Hessian trace (`curvature`, on `examples` training examples), and the rise of the training
loss along random filter-normalised directions and along the radial direction, at a relative
distance `distance`. `train_grid` is the grid runner on its own (the part a sweep reuses).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from .curvature import hessian_operator, hutchinson_trace, top_eigenvalues
from .data import Dataset
from .errors import IsthmusError
from .models import ModelConfig, build_model
from .params import Params, evaluate, flatten, is_float, stack
from .progress import bar
from .surface import filter_normalized_direction
from .train import TrainConfig, train_population

HYPERPARAMETERS = ("lr", "width", "l2")


def _configs(
    model_cfg: ModelConfig, train_cfg: TrainConfig, hyper: str, value: float
) -> tuple[ModelConfig, TrainConfig]:
    """The (model, training) configuration of one grid value; a CNN's width scales its plan."""
    if hyper == "lr":
        return model_cfg, replace(train_cfg, lr=float(value))
    if hyper == "l2":
        return model_cfg, replace(train_cfg, l2=float(value))
    if hyper == "width":
        w = int(value)
        if model_cfg.kind == "mlp":
            return replace(model_cfg, width=w), train_cfg
        plan = tuple(c if c == "M" else max(1, round(int(c) * w / 32)) for c in model_cfg.channels)
        return replace(model_cfg, channels=plan), train_cfg
    raise IsthmusError(
        f"unknown hyperparameter {hyper!r}; choose from {', '.join(HYPERPARAMETERS)}"
    )


def train_grid(
    model_cfg: ModelConfig,
    data: Dataset,
    train_cfg: TrainConfig,
    hyper: str,
    values: list[float],
    seeds: list[int],
    *,
    progress: bool | None = None,
) -> list[dict]:
    """Every (value, seed) trained: [{"value", "seed", "model_config", "params", "metrics"}].

    Values that share an architecture train as one population (per-member lr and L2)."""
    groups: dict[ModelConfig, list[tuple[float, TrainConfig]]] = {}
    for v in values:
        mc, tc = _configs(model_cfg, train_cfg, hyper, v)
        tc.validate("study")
        groups.setdefault(mc, []).append((v, tc))
    out = []
    for mc, members in groups.items():
        grid = [(v, tc, s) for v, tc in members for s in seeds]
        res = train_population(
            mc, data, [g[1] for g in grid], [g[2] for g in grid], progress=progress
        )
        for (v, _, s), r in zip(grid, res, strict=True):
            out.append(
                {
                    "value": v,
                    "seed": s,
                    "model_config": mc,
                    "params": r.params,
                    "metrics": r.metrics,
                }
            )
    return out


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
    loss = evaluate(model, stack(pts), data.x_train[:n], data.y_train[:n], loss=data.loss).loss
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

    def to_json(self) -> dict:
        return {**asdict(self), "summary": self.summary()}


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
    progress: bool | None = None,
) -> StudyResult:
    """Train the grid (`train_grid`) and `measure` every net; see the module docstring."""
    if len(values) < 2 or not seeds:  # an unknown hyperparameter is refused by the grid
        raise IsthmusError("a study needs at least two values and one seed")
    runs = train_grid(model_cfg, data, train_cfg, hyper, values, seeds, progress=progress)
    rows = []
    for r in bar(runs, progress=progress, desc="measure", unit="net"):
        model = build_model(r["model_config"])
        m = measure(
            model,
            r["params"],
            data,
            examples=examples,
            directions=directions,
            distance=distance,
            probes=probes,
            seed=r["seed"],
        )
        rows.append(
            {
                "value": r["value"],
                "seed": r["seed"],
                "train_loss": r["metrics"]["train_loss"],
                "test_acc": r["metrics"]["test_acc"],
                **m,
            }
        )
    settings = {
        "model": model_cfg.to_dict(),
        "train": asdict(train_cfg),
        "examples": examples,
        "directions": directions,
        "distance": distance,
        "probes": probes,
    }
    return StudyResult(hyper, list(values), list(seeds), rows, settings)
