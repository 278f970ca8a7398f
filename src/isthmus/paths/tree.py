"""The minimum spanning tree over many minima (Draxler et al. 2018, section 4).

Draxler, Veschgini, Salmhofer, Hamprecht 2018, "Essentially No Barriers in Neural Network Energy
Landscapes": connect every pair of N minima (AutoNEB, `paths.neb`), weigh each pair by the highest
loss on its path, and keep the minimum spanning tree of that complete graph. It is a minimax tree:
for every pair, the largest weight on the tree path between them is <= w(i, j), so the tree's worst
edge bounds the path weight between any two of the minima (docs/baselines.md).

`connect_minima` runs on any batched loss of flat vectors; `connect_nets` on nets (AutoNEB or
straight lines between every pair); `connect_tree` adds the checkpoint file `isthmus tree` writes
after every pair (tree.json), so an interrupted tree resumes without recomputing finished pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path as FsPath

import numpy as np
from torch import Tensor, nn

from ..data import Dataset
from ..errors import IsthmusError
from ..io import (
    check_inputs,
    check_resume,
    inputs_record,
    read_json,
    restore_nonfinite,
    write_json,
)
from ..params import Params, bn_subset, has_bn
from ..progress import bar
from .base import PiecewiseLinearPath, evaluate_path, line
from .neb import LossFn, NEBConfig, NEBResult, auto_neb, connect_neb

WEIGHTS = ("max_loss", "barrier")
PAIR_FIELDS = ("max_loss", "barrier", "test_barrier")  # a finished pair's record in tree.json


@dataclass(frozen=True)
class SpanningTree:
    """Minimum spanning tree over N minima; `weights` (N, N) are the pairwise path weights."""

    weights: np.ndarray
    edges: list[tuple[int, int, float]]

    def route(self, i: int, j: int) -> list[int]:
        """Minima visited on the tree from i to j."""
        adj: dict[int, list[int]] = {}
        for u, v, _ in self.edges:
            adj.setdefault(u, []).append(v)
            adj.setdefault(v, []).append(u)
        prev, todo = {i: i}, [i]
        while todo:
            u = todo.pop()
            for v in adj.get(u, []):
                if v not in prev:
                    prev[v] = u
                    todo.append(v)
        if j not in prev:
            raise IsthmusError(f"minima {i} and {j} are not connected in the tree")
        out = [j]
        while out[-1] != i:
            out.append(prev[out[-1]])
        return out[::-1]

    def bound(self, i: int, j: int) -> float:
        """Largest edge weight on the tree path i -> j (<= weights[i, j] for a minimax tree)."""
        r = self.route(i, j)
        return max(
            (float(self.weights[u, v]) for u, v in zip(r, r[1:], strict=False)), default=-math.inf
        )

    @property
    def worst(self) -> float:
        return max(w for _, _, w in self.edges)

    def to_json(self) -> dict:
        return {
            "edges": [{"i": i, "j": j, "weight": w} for i, j, w in self.edges],
            "weights": self.weights.tolist(),
            "worst": self.worst,
        }


def spanning_tree(weights) -> SpanningTree:
    """Minimum spanning tree of the complete graph with symmetric edge weights (N, N).

    Weights may be negative or zero (losses): scipy treats 0 as "no edge", so edges are replaced by
    their ranks, a strictly increasing map that leaves the minimum spanning tree unchanged.
    """
    from scipy.sparse.csgraph import minimum_spanning_tree

    w = np.asarray(weights, dtype=np.float64)
    n = len(w)
    if w.shape != (n, n) or not np.allclose(w, w.T, equal_nan=True):
        raise IsthmusError(
            f"spanning tree: weights must be a symmetric (N, N) matrix, got {w.shape}"
        )
    iu = np.triu_indices(n, 1)
    vals = w[iu]
    if not np.isfinite(vals).all():
        raise IsthmusError("spanning tree: every pair of minima needs a finite weight")
    ranks = np.searchsorted(np.unique(vals), vals) + 1.0
    r = np.zeros((n, n))
    r[iu] = ranks
    t = minimum_spanning_tree(r).tocoo()
    edges = sorted(
        (int(min(i, j)), int(max(i, j)), float(w[i, j])) for i, j in zip(t.row, t.col, strict=True)
    )
    return SpanningTree(w, edges)


def connect_minima(
    loss_fn: LossFn,
    minima: Tensor,
    cfg: NEBConfig | None = None,
    *,
    weight: str = "max_loss",
    eval_fn: LossFn | None = None,
    progress: bool | None = None,
) -> tuple[SpanningTree, dict[tuple[int, int], NEBResult]]:
    """AutoNEB between every pair of N minima (N, D), then the minimum spanning tree.

    weight: "max_loss" (Draxler et al.: the highest loss on the path; the tree then bounds every
    pair) or "barrier" (max loss minus the larger endpoint loss).
    """
    cfg = cfg or NEBConfig()
    if weight not in WEIGHTS:
        raise IsthmusError(f"weight must be 'max_loss' or 'barrier', got {weight!r}")
    n = len(minima)
    w = np.zeros((n, n))
    results = {}
    for i in range(n):
        for j in range(i + 1, n):
            r = auto_neb(loss_fn, minima[i], minima[j], cfg, eval_fn=eval_fn, progress=progress)
            results[(i, j)] = r
            w[i, j] = w[j, i] = r.max_loss if weight == "max_loss" else r.barrier
    return spanning_tree(w), results


def connect_nets(
    model: nn.Module,
    nets: list[Params],
    data: Dataset,
    cfg: NEBConfig | None = None,
    *,
    method: str = "neb",
    weight: str = "max_loss",
    points: int = 61,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool | None = None,
    eval_kw: dict | None = None,
    done: dict[str, dict] | None = None,
    on_pair: Callable[[str, dict], None] | None = None,
) -> tuple[SpanningTree, dict[tuple[int, int], PiecewiseLinearPath]]:
    """Paths between every pair of N nets (AutoNEB, or straight lines for comparison), then the
    minimum spanning tree (Draxler et al. 2018, section 4) on each path's highest full training
    loss ("max_loss", over `points` values of t) or its barrier.

    Every pair is recorded as "i-j" -> {"max_loss", "barrier", "test_barrier"}; pairs already in
    `done` are not recomputed (resume) and `on_pair(key, record)` follows every new one
    (checkpoint). `eval_kw` goes to `evaluate_path` (batch_size, chunk, bn_x). Returns the tree
    and the paths of the pairs computed in this call.
    """
    cfg = cfg or NEBConfig()
    if weight not in WEIGHTS:
        raise IsthmusError(f"weight must be 'max_loss' or 'barrier', got {weight!r}")
    if method not in ("neb", "linear"):
        raise IsthmusError(f"method must be 'neb' or 'linear', got {method!r}")
    if len(nets) < 2:
        raise IsthmusError(f"a spanning tree needs at least two nets, got {len(nets)}")
    n = len(nets)
    records = dict(done or {})
    paths = {}
    todo = [(i, j) for i in range(n) for j in range(i + 1, n) if f"{i}-{j}" not in records]
    for i, j in bar(todo, progress=progress, desc="pairs", unit="pair"):
        if method == "linear":
            path = line(nets[i], nets[j])
        else:
            path, _ = connect_neb(
                model, nets[i], nets[j], data, cfg, batch_size=batch_size, seed=seed,
                progress=False,
            )  # fmt: skip
        res = evaluate_path(model, path, data, points=points, **(eval_kw or {}))
        rec = {
            "max_loss": max(res.train_loss),
            "barrier": res.barrier["train_loss"],
            "test_barrier": res.barrier["test_loss"],
        }
        records[f"{i}-{j}"], paths[(i, j)] = rec, path
        if on_pair is not None:
            on_pair(f"{i}-{j}", rec)
    w = np.zeros((n, n))
    for key, rec in records.items():
        i, j = (int(v) for v in key.split("-"))
        w[i, j] = w[j, i] = rec[weight]
    return spanning_tree(w), paths


def connect_tree(
    model: nn.Module,
    nets: list[Params],
    data: Dataset,
    cfg: NEBConfig | None = None,
    *,
    names: list[str] | None = None,
    method: str = "neb",
    weight: str = "max_loss",
    points: int = 61,
    batch_size: int = 128,
    seed: int = 0,
    eval_kw: dict | None = None,
    checkpoint: str | FsPath | None = None,
    resume: bool = False,
    progress: bool | None = None,
    data_spec: dict | None = None,
) -> tuple[SpanningTree, dict[str, dict]]:
    """`connect_nets` with a checkpoint: the tree of `isthmus tree`, resumable pair by pair.

    Args:
      names: the nets' names (run directories), recorded in the checkpoint's settings.
      eval_kw: for `evaluate_path` (batch_size, chunk); BatchNorm nets get statistics on
        `params.bn_subset(data.x_train)`.
      checkpoint: a JSON file (tree.json), rewritten after every pair as {"settings", "pairs",
        "done": False} and at the end with "done": True and "tree". Without `resume` an existing
        file is refused; with it, finished pairs are read back and only the others computed
        (a missing file is an error, as for every resume). Every write carries "inputs"
        (`io.inputs_record` of the nets under `names`, and `data_spec`): a resume with other
        weights is refused, and so is a hand-edited state (a field missing, of the wrong type,
        a pair out of range).
    Returns the tree and every pair's record "i-j" -> {"max_loss", "barrier", "test_barrier"}.
    """
    cfg = cfg or NEBConfig()
    names = list(names) if names is not None else [str(i) for i in range(len(nets))]
    settings: dict = {
        "runs": names,
        "method": method,
        "weight": weight,
        "data": data.name,
        "seed": seed,
        "points": points,
    }
    if method == "neb":
        settings["neb"] = asdict(cfg)
    pairs: dict[str, dict] = {}
    inputs = inputs_record(list(zip(names, nets, strict=True)), data_spec)
    ckpt = FsPath(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists() and not resume:
        raise IsthmusError(f"{ckpt} exists; pass --resume to continue it or a new --out")
    if resume:  # like every resume: a missing checkpoint is an error, not a fresh start
        state = read_json(ckpt) if ckpt is not None and ckpt.exists() else None
        saved = None if state is None else state.get("settings", {})
        check_resume(ckpt, saved, settings, what="tree")
        check_inputs(ckpt, state, list(zip(names, nets, strict=True)))
        pairs = _saved_pairs(ckpt, state, len(nets))

    def on_pair(key: str, record: dict) -> None:
        pairs[key] = record
        if ckpt is not None:
            doc = {"settings": settings, "inputs": inputs, "pairs": pairs, "done": False}
            write_json(ckpt, doc)

    bn_x = bn_subset(data.x_train) if has_bn(model) else None
    tree, _ = connect_nets(
        model,
        nets,
        data,
        cfg,
        method=method,
        weight=weight,
        points=points,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        eval_kw={**(eval_kw or {}), "bn_x": bn_x},
        done=pairs,
        on_pair=on_pair,
    )
    if ckpt is not None:
        final = {"settings": settings, "inputs": inputs, "pairs": pairs, "done": True}
        final["tree"] = tree.to_json()
        write_json(ckpt, final)
    return tree, pairs


def _saved_pairs(path: FsPath, state: dict, n: int) -> dict[str, dict]:
    """The finished pairs of a tree checkpoint, refused (naming the field and the fix) unless
    every key is "i-j" with 0 <= i < j < n and every record holds the three numbers."""

    def bad(what: str) -> IsthmusError:
        return IsthmusError(
            f"{path}: {what} (a damaged or hand-edited checkpoint); delete it and start again "
            "without --resume"
        )

    pairs = restore_nonfinite(state.get("pairs"))  # a diverged path: null + reason -> inf
    if not isinstance(pairs, dict):
        raise bad("field 'pairs' must be an object {\"i-j\": record}")
    out = {}
    for key, rec in pairs.items():
        i, _, j = key.partition("-")
        if not (
            i.isdigit() and j.isdigit() and int(i) < int(j) < n and key == f"{int(i)}-{int(j)}"
        ):
            raise bad(f"field 'pairs' has the key {key!r}; keys are \"i-j\" with 0 <= i < j < {n}")
        if not isinstance(rec, dict) or set(rec) != set(PAIR_FIELDS):
            raise bad(f"pairs[{key!r}] must be an object with exactly {list(PAIR_FIELDS)}")
        for f in PAIR_FIELDS:
            v = rec[f]
            if type(v) not in (int, float):
                raise bad(f"pairs[{key!r}].{f} must be a number, got {v!r}")
        out[key] = {f: float(rec[f]) for f in PAIR_FIELDS}
    return out
