"""Fort & Jastrzebski's path finder: lower the worst point of a segment on the hyperplane
orthogonal to it, then split the segment there and repeat on both halves.

Fort & Jastrzebski 2019 ("Large Scale Structure of Neural Network Loss Landscapes") join two
solutions without a curve parametrisation: take the highest-loss point of the straight segment
between them, optimise that point with the component of the gradient along the segment removed, so
it moves only on the hyperplane through it orthogonal to the segment, and make it a new node of
the path; then do the same on the two segments it creates. Every pivot keeps its position along
its segment (its projection onto the segment's line), so the path cannot fold back on itself, and
the pivot descends to the lowest point it can reach across the segment: where the segment crosses
a valley, that is the valley floor.

isthmus (our choices, the paper's description is second-hand): a segment's highest point is the
worst of `grid` equally spaced interior points under the evaluation loss (the full training loss
for nets, with the BatchNorm policy); a segment is split only while its barrier (that maximum minus
the larger of its two ends) exceeds `tolerance` and its level (0 for the straight line, +1 per
split) is below `depth`, so at most 2^depth - 1 pivots; segments are taken breadth-first (lowest
level, then leftmost). A pivot is optimised for `steps` steps (SGD with momentum or Adam,
cosine-decayed learning rate) on the projected gradient, and after every step its displacement is
projected back onto the hyperplane (Adam's per-coordinate scaling would otherwise tilt it), so the
displacement is orthogonal to the segment to rounding. Nets are optimised on minibatches drawn
from a generator seeded by (seed, pivot), with batch statistics for BatchNorm; a Landscape with
its full loss. The result is a `PiecewiseLinearPath` (method "orthogonal") through the nodes, knots
at normalised arc length, endpoints exactly the given nets.

Checkpoint: after every pivot (nodes, their losses, the open segments and the history in one
file); a pivot's minibatches depend only on (seed, pivot), so `resume` continues to the same path.
A pivot is a short optimisation (a few epochs); it is the unit of checkpointing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path as FsPath

import torch
from torch import Tensor, nn

from ..data import Dataset
from ..errors import IsthmusError
from ..io import check_resume, load_checkpoint, save_checkpoint
from ..landscape import Landscape, as_point, is_landscape
from ..landscape import flat as flat_points
from ..params import (
    Params,
    batch_statistics,
    bn_subset,
    check_compatible,
    evaluate,
    fingerprint,
    flatten,
    has_bn,
    lerp,
    mean_loss,
    unflatten,
)
from ..progress import bar
from ..seeding import generator
from .base import PiecewiseLinearPath
from .neb import arc_knots, strict_knots

LossFn = Callable[[Tensor], Tensor]  # (P, D) -> (P,)
_MINIBATCHES = 211  # seeding purpose: a pivot's minibatches (index: the pivot)
MAX_DEPTH = 20  # at most 2^20 - 1 pivots


@dataclass(frozen=True)
class OrthogonalConfig:
    """Settings of the orthogonal path finder (stored in path.json under "orthogonal").

    depth: most split levels (at most 2^depth - 1 pivots); steps: optimiser steps per pivot;
    grid: interior points per segment searched for its highest point; tolerance: a segment whose
    barrier is <= tolerance is not split. Defaults suit nets (SGD as in training); 2-D test
    surfaces want e.g. Adam with lr 0.01.
    """

    depth: int = 3
    steps: int = 100
    optimizer: str = "sgd"  # "sgd" (momentum) | "adam"
    lr: float = 0.05
    momentum: float = 0.9  # SGD momentum; Adam beta1
    grid: int = 15
    tolerance: float = 0.0

    def validate(self, source: str = "orthogonal config") -> None:
        checks = [
            (
                isinstance(self.depth, int) and 1 <= self.depth <= MAX_DEPTH,
                "depth",
                f"must be an integer in [1, {MAX_DEPTH}]",
            ),
            (isinstance(self.steps, int) and self.steps >= 1, "steps", "must be an integer >= 1"),
            (self.optimizer in ("adam", "sgd"), "optimizer", "must be 'adam' or 'sgd'"),
            (self.lr > 0 and math.isfinite(self.lr), "lr", "must be a positive number"),
            (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (isinstance(self.grid, int) and self.grid >= 1, "grid", "must be an integer >= 1"),
            (self.tolerance >= 0 and math.isfinite(self.tolerance), "tolerance", "must be >= 0"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise IsthmusError(f"{source}: {name} {why}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class OrthogonalResult:
    """Nodes (n, D) from A to B, their ids (0 = A, 1 = B, k + 2 = the k-th pivot), their
    evaluation losses, and one history entry per pivot: its id, level, the ids of the segment's
    ends when it was split, the position s of its start on that segment, the segment's barrier,
    the loss at its start and after optimisation, and how far it moved."""

    nodes: Tensor
    ids: list[int]
    losses: Tensor
    history: list[dict] = field(default_factory=list)

    def knots(self) -> list[float]:
        return arc_knots(self.nodes)


def highest_point(eval_fn: LossFn, a: Tensor, b: Tensor, grid: int) -> tuple[float, Tensor, float]:
    """The worst of `grid` equally spaced interior points of segment a-b: (s, point, loss)."""
    s = torch.linspace(0, 1, grid + 2, dtype=a.dtype, device=a.device)[1:-1]
    pts = a[None] + s[:, None] * (b - a)[None]
    with torch.no_grad():
        e = eval_fn(pts).detach()
    i = int(e.argmax())
    return float(s[i]), pts[i], float(e[i])


def optimise_on_hyperplane(
    loss_fn: LossFn,
    p0: Tensor,
    axis: Tensor,
    cfg: OrthogonalConfig,
    *,
    progress: bool | None = None,
    desc: str = "pivot",
) -> Tensor:
    """Minimise loss_fn from p0 on the hyperplane through p0 orthogonal to `axis`: the gradient's
    component along the axis is removed, and the displacement is projected back every step."""
    u = axis / axis.norm()
    p = p0.detach().clone().requires_grad_(True)
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam([p], lr=cfg.lr, betas=(cfg.momentum, 0.999))
    else:
        opt = torch.optim.SGD([p], lr=cfg.lr, momentum=cfg.momentum)
    for s in bar(range(cfg.steps), progress=progress, desc=desc, unit="step", leave=False):
        (g,) = torch.autograd.grad(loss_fn(p[None]).sum(), p)
        if not torch.isfinite(g).all():
            raise IsthmusError(
                f"orthogonal path: the gradient is not finite at step {s + 1}; lower the "
                f"learning rate (now {cfg.lr})"
            )
        p.grad = g - (g @ u) * u
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * s / cfg.steps))
        opt.step()
        with torch.no_grad():
            d = p - p0
            p.sub_((d @ u) * u)
    return p.detach()


def orthogonal_path(
    loss_for: Callable[[int], LossFn] | Landscape,
    x0: Tensor,
    x1: Tensor,
    cfg: OrthogonalConfig = OrthogonalConfig(),
    *,
    eval_fn: LossFn | None = None,
    progress: bool | None = None,
    state: dict | None = None,
    on_pivot: Callable[[dict], None] | None = None,
) -> OrthogonalResult:
    """The orthogonal path finder between x0 and x1 (D,) (module doc).

    `loss_for(k)` is the loss that optimises the k-th pivot (a minibatch loss for nets, seeded by
    k), or a Landscape (its loss for every pivot); `eval_fn` (default: the Landscape's loss)
    finds each segment's highest point and gives the node losses. After every pivot `on_pivot`
    receives the state {"x", "ids", "losses", "level", "open", "history"}; passing it back as
    `state` continues from it.
    """
    cfg.validate()
    if is_landscape(loss_for):
        land = loss_for
        loss_for, eval_fn = (lambda k: land.loss), eval_fn or land.loss
    if eval_fn is None:
        raise IsthmusError("orthogonal_path: pass eval_fn (the loss that finds the worst points)")

    def ev(x: Tensor) -> Tensor:
        with torch.no_grad():
            return eval_fn(x).detach()

    if state is None:
        x = torch.stack([x0, x1])
        st = {"x": x, "ids": [0, 1], "losses": ev(x).cpu().double(), "level": [0], "open": [True]}
        st["history"] = []
    else:
        st = {k: (list(v) if isinstance(v, list) else v) for k, v in state.items()}
        st["x"] = st["x"].to(x0)
    total = 2**cfg.depth - 1
    pivots = bar(
        progress=progress,
        desc="orthogonal",
        unit="pivot",
        initial=len(st["history"]),
        total=total,
    )
    while True:
        todo = [i for i, o in enumerate(st["open"]) if o]
        if not todo:
            break
        i = min(todo, key=lambda j: (st["level"][j], j))
        x, e, level = st["x"], st["losses"], st["level"][i]
        s, p0, top = highest_point(ev, x[i], x[i + 1], cfg.grid)
        seg_barrier = top - float(max(e[i], e[i + 1]))
        if seg_barrier <= cfg.tolerance:
            st["open"][i] = False
            continue
        k = len(st["history"])
        p = optimise_on_hyperplane(
            loss_for(k), p0, x[i + 1] - x[i], cfg, progress=progress, desc=f"pivot {k + 1}"
        )
        ep = ev(p[None]).cpu().double()
        st["x"] = torch.cat([x[: i + 1], p[None], x[i + 1 :]])
        st["losses"] = torch.cat([e[: i + 1], ep, e[i + 1 :]])
        deeper = level + 1 < cfg.depth
        st["level"][i : i + 1] = [level + 1, level + 1]
        st["open"][i : i + 1] = [deeper, deeper]
        st["history"].append(
            {
                "pivot": k + 2,
                "level": level,
                "left": st["ids"][i],
                "right": st["ids"][i + 1],
                "s": s,
                "segment_barrier": seg_barrier,
                "loss_start": top,
                "loss": float(ep[0]),
                "moved": float((p - p0).norm()),
            }
        )
        st["ids"].insert(i + 1, k + 2)
        pivots.update(1)
        if on_pivot is not None:
            on_pivot(st)
    pivots.close()
    return OrthogonalResult(st["x"].detach(), st["ids"], st["losses"], st["history"])


# ----------------------------------------------------------------------------- nets


def _nodes(x: Tensor, keys: list[str], a: Params, b: Params) -> list[Params]:
    """Parameter dicts of the flat nodes x (n, D); entries outside `keys` (BatchNorm buffers,
    recomputed by the BN policy anyway) are interpolated between the ends by arc length."""
    knots = arc_knots(x)
    out = []
    for j, t in enumerate(knots):
        rest = {k: v for k, v in lerp(a, b, float(t)).items() if k not in keys}
        out.append({**unflatten(x[j], a, keys), **rest})
    out[0], out[-1] = a, b  # exact endpoints, every entry
    return out


def connect_orthogonal(
    model: nn.Module | Landscape,
    a: Params,
    b: Params,
    data: Dataset | None = None,
    cfg: OrthogonalConfig = OrthogonalConfig(),
    *,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool | None = None,
    checkpoint: str | FsPath | None = None,
    resume: bool = False,
) -> tuple[PiecewiseLinearPath, OrthogonalResult]:
    """The orthogonal path between two nets (or two points {"x": vector} of a Landscape).

    Pivots are optimised on minibatches of `batch_size` training examples (BN: batch statistics);
    the full training loss (BN policy) finds the highest points. checkpoint: folder for
    `orthogonal.safetensors`, rewritten atomically after every pivot; resume: continue from it.
    Returns the path (method "orthogonal") and the finder's result.
    """
    check_compatible(a, b)
    ckpt = FsPath(checkpoint) / "orthogonal.safetensors" if checkpoint is not None else None
    meta: dict = {"config": asdict(cfg), "seed": seed, "ends": [fingerprint(a), fingerprint(b)]}
    if is_landscape(model):
        keys = list(a)
        x0, x1 = flat_points(a), flat_points(b)
        loss_for, eval_fn = (lambda k: model.loss), model.loss
    else:
        if data is None:
            raise IsthmusError("the orthogonal path between nets needs data (a Dataset)")
        keys = [n for n, _ in model.named_parameters() if n in a]  # the module's order
        dev = data.x_train.device
        x0, x1 = flatten(a, keys).to(dev), flatten(b, keys).to(dev)
        N = len(data.x_train)
        B = min(batch_size, N)
        meta["batch_size"] = B
        bn_x = bn_subset(data.x_train) if has_bn(model) else None

        def points(x: Tensor) -> Params:
            rest = {k: v.expand(len(x), *v.shape).clone() for k, v in a.items() if k not in keys}
            return {**unflatten(x, a, keys), **rest}  # own buffers: BN writes scratch into them

        def loss_for(k: int) -> LossFn:
            gen = generator(seed, k, _MINIBATCHES)

            def loss(x: Tensor) -> Tensor:
                idx = torch.randint(N, (B,), generator=gen).to(dev)
                with batch_statistics(model):
                    return mean_loss(
                        model, points(x), data.x_train[idx], data.y_train[idx], data.loss
                    )

            return loss

        def eval_fn(x: Tensor) -> Tensor:
            m = evaluate(model, points(x), data.x_train, data.y_train, loss=data.loss, bn_x=bn_x)
            return m.loss.to(x)

    state = _load_state(ckpt, meta) if resume else None

    def on_pivot(st: dict) -> None:
        if ckpt is not None:
            info = {"meta": meta, **{k: st[k] for k in ("ids", "level", "open", "history")}}
            save_checkpoint(ckpt, {"x": st["x"], "losses": st["losses"]}, info)

    res = orthogonal_path(
        loss_for, x0, x1, cfg, eval_fn=eval_fn, progress=progress, state=state, on_pivot=on_pivot
    )
    if is_landscape(model):
        nodes = [as_point(v) for v in res.nodes]
        nodes[0], nodes[-1] = a, b
    else:
        nodes = _nodes(res.nodes, keys, a, b)
    return PiecewiseLinearPath(nodes, strict_knots(res.knots()), method="orthogonal"), res


def _load_state(ckpt: FsPath | None, meta: dict) -> dict:
    """The state saved by `connect_orthogonal` after its last pivot, or a clear error."""
    if ckpt is None or not ckpt.exists():
        check_resume(ckpt, None, meta, what="orthogonal path")
    t, info = load_checkpoint(ckpt)
    check_resume(ckpt, info.get("meta", {}), meta, what="orthogonal path")
    lists = {k: info[k] for k in ("ids", "level", "open", "history")}
    return {"x": t["x"], "losses": t["losses"], **lists}
