"""Evaluating a complex: its vertices, many uniform samples, every edge, and the straight lines
between its solutions for contrast (docs/subspaces.md).

Every set of points is built by `SimplicialComplex.points` / `paths.line` and evaluated in batched
calls (`landscape.evaluate_points`: train and test loss and accuracy; a Landscape has one loss and
no accuracy). BatchNorm nets get their statistics recomputed at every point on the fixed training
subset of the BatchNorm policy (`params.bn_subset`), so a solution evaluated as a vertex of the
complex reproduces its own run's metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..data import Dataset
from ..errors import IsthmusError
from ..landscape import Landscape, evaluate_points, is_landscape
from ..params import bn_subset, has_bn
from ..paths.base import PathResult, evaluate_path, line
from ..paths.connect import eval_sizes
from ..progress import bar, stage
from ..seeding import generator
from .complex import SimplicialComplex

SAMPLE_STREAM = 83  # seeding purpose: the evaluated uniform samples
QUANTILES = (0.5, 0.9, 0.99)


def summary(values: Sequence[float]) -> dict:
    """max, mean, min and the QUANTILES (linear interpolation) of a list of losses."""
    v = torch.tensor(list(values), dtype=torch.float64)
    return {
        "max": float(v.max()),
        "mean": float(v.mean()),
        "min": float(v.min()),
        "quantiles": {str(q): float(torch.quantile(v, q)) for q in QUANTILES},
    }


def _metrics(m: tuple[list[float], list[float], list[float], list[float]]) -> dict:
    return {"train_loss": m[0], "train_acc": m[1], "test_loss": m[2], "test_acc": m[3]}


def _profile(ends: tuple[int, int], r: PathResult) -> dict:
    """One edge or line: its ends (vertex indices), t, the four curves and the highest train loss."""
    return {
        "ends": list(ends),
        "t": r.t,
        "train_loss": r.train_loss,
        "train_acc": r.train_acc,
        "test_loss": r.test_loss,
        "test_acc": r.test_acc,
        "max_train_loss": max(r.train_loss),
        "barrier": r.barrier,
    }


@dataclass(frozen=True)
class ComplexEvaluation:
    """The evaluation of a complex (fields of subspace.json, docs/subspaces.md).

    vertices: train/test loss and accuracy at every vertex (lists in vertex order);
    solutions, connectors: the vertex indices of each kind; samples: the same four lists at the
    uniform samples, with their (n, V) weights; sample_loss: `summary` of the samples' train loss;
    edges: one profile per edge of the complex; lines: one profile per pair of solutions.
    """

    vertices: dict
    solutions: list[int]
    connectors: list[int]
    samples: dict
    weights: list[list[float]]
    sample_loss: dict
    edges: list[dict]
    lines: list[dict]
    seed: int

    @property
    def solution_loss(self) -> list[float]:
        return [self.vertices["train_loss"][i] for i in self.solutions]

    @property
    def connector_loss(self) -> list[float]:
        return [self.vertices["train_loss"][i] for i in self.connectors]

    def to_json(self) -> dict:
        worst_line = max((p["max_train_loss"] for p in self.lines), default=None)
        return {
            "solutions": self.solutions,
            "connectors": self.connectors,
            "solution_loss": self.solution_loss,
            "connector_loss": self.connector_loss,
            "sample_loss": self.sample_loss,
            "sample_test_loss": summary(self.samples["test_loss"]),
            "line_max_loss": worst_line,
            "vertex_metrics": self.vertices,
            "samples": {**self.samples, "count": len(self.weights), "seed": self.seed},
            "edges": self.edges,
            "lines": self.lines,
        }


def evaluate_complex(
    target: nn.Module | Landscape,
    complex: SimplicialComplex,
    data: Dataset | None = None,
    *,
    samples: int = 256,
    edge_points: int = 21,
    solutions: Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    chunk: int | None = None,
    progress: bool | None = False,
) -> ComplexEvaluation:
    """Loss and accuracy of a complex at its vertices, `samples` uniform draws (one batched call),
    `edge_points` evenly spaced points along every edge, and along the straight line between every
    pair of `solutions` (default: the complex's fixed vertices; the rest are connectors).

    target: a module with `data`, or a Landscape (no data). batch_size, chunk: examples per
    forward pass and points per batched call (`paths.connect.eval_sizes`). progress: a line per
    stage and a bar over the edges and lines (`progress` module).
    """
    if samples < 1 or edge_points < 2:
        raise IsthmusError(
            f"need >= 1 sample and >= 2 points per edge, got {samples} and {edge_points}"
        )
    sols = list(complex.fixed if solutions is None else solutions)
    V = len(complex.vertices)
    if not all(0 <= i < V for i in sols):
        raise IsthmusError(f"solutions {sols} must be vertex indices in [0, {V})")
    kw: dict = {}
    if not is_landscape(target):
        if data is None:
            raise IsthmusError(
                "evaluating a complex of nets needs data; only a Landscape needs none"
            )
        batch_size, chunk = eval_sizes(target, data.x_train, batch_size, chunk)
        bn_x = bn_subset(data.x_train) if has_bn(target) else None
        kw = dict(batch_size=batch_size, chunk=chunk, bn_x=bn_x)
    stage(f"evaluating the complex: {V} vertices, {samples} samples", progress=progress)
    eye = torch.eye(V, dtype=torch.float64)
    vertices = _metrics(evaluate_points(target, complex.points(eye), data, **kw))
    w = complex.sample_weights(samples, generator(seed, 0, SAMPLE_STREAM))
    drawn = _metrics(evaluate_points(target, complex.points(w), data, **kw))
    ts = torch.linspace(0, 1, edge_points, dtype=torch.float64)
    vs = complex.vertices

    def profile(i: int, j: int) -> dict:
        return _profile((i, j), evaluate_path(target, line(vs[i], vs[j]), data, ts=ts, **kw))

    pairs = [("edge", e) for e in complex.edges()]
    pairs += [("line", (i, j)) for n, i in enumerate(sols) for j in sols[n + 1 :]]
    done = {kind: [] for kind in ("edge", "line")}
    for kind, (i, j) in bar(pairs, progress=progress, desc="edges and lines", unit="profile"):
        done[kind].append(profile(i, j))
    edges, lines = done["edge"], done["line"]
    return ComplexEvaluation(
        vertices=vertices,
        solutions=sols,
        connectors=[i for i in range(V) if i not in sols],
        samples=drawn,
        weights=w.tolist(),
        sample_loss=summary(drawn["train_loss"]),
        edges=edges,
        lines=lines,
        seed=seed,
    )
