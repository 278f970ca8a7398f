"""Nudged elastic band and AutoNEB between two minima.

Draxler, Veschgini, Salmhofer, Hamprecht 2018, "Essentially No Barriers in Neural Network Energy
Landscapes" (AutoNEB, section 3; their minimum spanning tree is `paths.tree`), building on the
nudged elastic band of Jonsson, Mills, Jacobsen 1998 with the improved tangent of Henkelman &
Jonsson 2000 (J. Chem. Phys. 113, 9978, eqs. 8-11) and the climbing image of Henkelman, Uberuaga,
Jonsson 2000 (J. Chem. Phys. 113, 9901, eq. 5).

A chain of pivots x_0 = A, x_1, ..., x_{n-1} = B (endpoints fixed) is relaxed under the force

    F_i = -(grad E(x_i) - (grad E(x_i) . tau_i) tau_i)          (loss force, perpendicular part)
          + k (|x_{i+1} - x_i| - |x_i - x_{i-1}|) tau_i         (spring force, along the tangent)

with tau_i the improved (energy-weighted upwind) tangent; the highest pivot climbs instead:
F = -grad E + 2 (grad E . tau) tau (no spring), so it converges to the saddle point. AutoNEB
repeats: relax, evaluate the loss on a fine grid of every segment, insert a new pivot where the loss
exceeds the linear interpolation of the segment's pivot losses by more than `threshold` times the
loss range, relax again. The result is a `PiecewiseLinearPath` through the pivots (method "neb",
knots at normalised arc length).

Everything here is generic over a batched loss on flat vectors, `loss_fn: (P, D) -> (P,)` (any
`landscape.Landscape`), so it runs on toy landscapes such as the Muller-Brown potential and on nets
(`connect_neb`, through flat parameter vectors). The minimum spanning tree over many minima is in
`paths.tree`.
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
from ..io import check_resume, load_checkpoint, restore_nonfinite, save_checkpoint
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

LossFn = Callable[[Tensor], Tensor]  # (P, D) -> (P,)


@dataclass(frozen=True)
class NEBConfig:
    """Relaxation and insertion settings.

    pivots: interior pivots of the initial chain; cycles: AutoNEB relax/insert cycles (1 = plain
    NEB); steps: optimiser steps per cycle (cosine-decayed lr); spring: k, in loss per squared unit
    of distance (weak: it only spaces the pivots along the tangent); climb: climbing image on in
    the second half of every cycle; grid: points per segment for the insertion test; threshold:
    insert where loss - interpolation > threshold * (loss range on the chain); max_pivots: cap.

    The defaults suit nets (SGD as in training; between two mnist1d MLPs they reach a path with
    no barrier above the endpoints); 2-D test surfaces want e.g. Adam, lr 0.01, spring 1.
    """

    pivots: int = 3
    cycles: int = 4
    steps: int = 200
    optimizer: str = "sgd"  # "sgd" (momentum) | "adam"
    lr: float = 0.05
    momentum: float = 0.9
    spring: float = 0.1
    climb: bool = True
    grid: int = 9
    threshold: float = 0.05
    max_pivots: int = 30

    def validate(self, source: str = "NEB config") -> None:
        checks = [
            (self.pivots >= 0, "pivots", "must be >= 0"),
            (self.cycles >= 1, "cycles", "must be >= 1"),
            (self.steps >= 1, "steps", "must be >= 1"),
            (self.optimizer in ("adam", "sgd"), "optimizer", "must be 'adam' or 'sgd'"),
            (self.lr > 0 and math.isfinite(self.lr), "lr", "must be a positive number"),
            (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (self.spring >= 0, "spring", "must be >= 0"),
            (self.grid >= 1, "grid", "must be >= 1"),
            (self.threshold >= 0, "threshold", "must be >= 0"),
            (self.max_pivots >= self.pivots, "max_pivots", "must be >= pivots"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise IsthmusError(f"{source}: {name} {why}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class NEBResult:
    """Relaxed chain: pivots (n, D) with fixed ends, their losses, the dense profile along it."""

    pivots: Tensor  # (n, D)
    losses: Tensor  # (n,) loss at the pivots (eval_fn)
    t: Tensor  # (M,) normalised arc length of the dense profile (pivots included)
    profile: Tensor  # (M,) loss along the chain
    inserted: list[int] = field(default_factory=list)  # pivots inserted after each cycle
    history: list[dict] = field(default_factory=list)

    @property
    def max_loss(self) -> float:
        return float(self.profile.max())

    @property
    def barrier(self) -> float:
        return float(self.profile.max() - torch.maximum(self.profile[0], self.profile[-1]))

    def knots(self) -> list[float]:
        return arc_knots(self.pivots)


# ----------------------------------------------------------------------------- NEB on flat vectors


def tangents(x: Tensor, e: Tensor) -> Tensor:
    """Improved unit tangents at the interior pivots (Henkelman & Jonsson 2000, eqs. 8-11): (n-2, D)."""
    tp, tm = x[2:] - x[1:-1], x[1:-1] - x[:-2]
    ep, e0, em = e[2:, None], e[1:-1, None], e[:-2, None]
    up = (ep > e0) & (e0 > em)
    down = (ep < e0) & (e0 < em)
    dmax = torch.maximum((ep - e0).abs(), (em - e0).abs())
    dmin = torch.minimum((ep - e0).abs(), (em - e0).abs())
    mixed = torch.where(ep > em, tp * dmax + tm * dmin, tp * dmin + tm * dmax)
    tau = torch.where(up, tp, torch.where(down, tm, mixed))
    norm = tau.norm(dim=1, keepdim=True)
    fallback = tp + tm  # equal energies on both sides: the plain bisector
    tau = torch.where(norm > 0, tau, fallback)
    return tau / tau.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def neb_forces(x: Tensor, e: Tensor, g: Tensor, spring: float, climb: bool) -> Tensor:
    """NEB force on the interior pivots given losses e (n,) and gradients g (n, D): (n-2, D)."""
    tau = tangents(x, e)
    gi = g[1:-1]
    gpar = (gi * tau).sum(1, keepdim=True)
    dp = (x[2:] - x[1:-1]).norm(dim=1, keepdim=True)
    dm = (x[1:-1] - x[:-2]).norm(dim=1, keepdim=True)
    f = -(gi - gpar * tau) + spring * (dp - dm) * tau
    if climb and len(gi):
        j = int(e[1:-1].argmax())
        f[j] = -gi[j] + 2 * gpar[j] * tau[j]
    return f


def relax(
    loss_fn: LossFn,
    x: Tensor,
    cfg: NEBConfig,
    *,
    steps: int | None = None,
    progress: bool | None = None,
    desc: str = "neb",
) -> Tensor:
    """Relax the interior pivots of chain x (n, D) under NEB forces; endpoints stay fixed."""
    steps = cfg.steps if steps is None else steps
    x = x.detach().clone()
    if len(x) < 3:
        return x
    inner = x[1:-1].clone().requires_grad_(True)
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam([inner], lr=cfg.lr, betas=(cfg.momentum, 0.999))
    else:
        opt = torch.optim.SGD([inner], lr=cfg.lr, momentum=cfg.momentum)
    for s in bar(range(steps), progress=progress, desc=desc, unit="step", leave=False):
        chain = torch.cat([x[:1], inner, x[-1:]])
        e = loss_fn(chain)
        (g,) = torch.autograd.grad(e.sum(), chain)
        with torch.no_grad():
            f = neb_forces(chain.detach(), e.detach(), g, cfg.spring, cfg.climb and s >= steps // 2)
        if not torch.isfinite(f).all():
            raise IsthmusError(
                f"NEB diverged at step {s + 1}; lower the learning rate (now {cfg.lr})"
            )
        inner.grad = -f
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * s / steps))
        opt.step()
    return torch.cat([x[:1], inner.detach(), x[-1:]])


def segment_grid(x: Tensor, grid: int) -> tuple[Tensor, Tensor]:
    """Points strictly inside every segment: (n-1, grid, D), and their local coordinates (grid,)."""
    s = torch.linspace(0, 1, grid + 2, dtype=x.dtype, device=x.device)[1:-1]
    pts = x[:-1, None] + s[None, :, None] * (x[1:] - x[:-1])[:, None]
    return pts, s


def arc_knots(x: Tensor) -> list[float]:
    """Normalised cumulative arc length of the chain (0 ... 1)."""
    d = (x[1:] - x[:-1]).double().norm(dim=1)
    c = torch.cat([d.new_zeros(1), d.cumsum(0)])
    return (c / c[-1]).tolist() if c[-1] > 0 else torch.linspace(0, 1, len(x)).tolist()


def _dense(eval_fn: LossFn, x: Tensor, e: Tensor, grid: int) -> tuple[Tensor, Tensor, Tensor]:
    """Loss on the segment grids (n-1, grid), the dense t and profile (pivots included)."""
    pts, s = segment_grid(x, grid)
    eg = eval_fn(pts.reshape(-1, x.shape[1])).reshape(len(x) - 1, grid).to(e)
    kn = torch.tensor(arc_knots(x), dtype=torch.float64)
    tt = kn[:-1, None] + s.double().cpu()[None] * (kn[1:] - kn[:-1])[:, None]
    t = torch.cat([torch.stack([kn[:-1], *tt.T], 1).reshape(-1), kn[-1:]])
    prof = torch.cat([torch.cat([e[:-1, None].cpu(), eg.cpu()], 1).reshape(-1), e[-1:].cpu()])
    return eg, t, prof


HISTORY_FIELDS = ("cycle", "pivots", "max_pivot", "max")  # one AutoNEB cycle's record


def auto_neb(
    loss_fn: LossFn | Landscape,
    x0: Tensor,
    x1: Tensor,
    cfg: NEBConfig = NEBConfig(),
    *,
    eval_fn: LossFn | None = None,
    progress: bool | None = None,
    state: dict | None = None,
    on_cycle: Callable[[dict], None] | None = None,
) -> NEBResult:
    """AutoNEB between x0 and x1 (D,): relax, insert pivots where the loss peaks, repeat.

    `loss_fn` (a batched function or a Landscape) drives the relaxation (may be stochastic: a
    minibatch loss); `eval_fn` (default
    `loss_fn`, no gradient needed) decides insertions and gives the reported profile. After every
    cycle `on_cycle` receives the state {"cycle": cycles done, "x", "inserted", "history"}; passing
    such a state back as `state` continues from it (checkpoint and resume).
    """
    cfg.validate()
    if is_landscape(loss_fn):
        loss_fn = loss_fn.loss
    eval_fn = eval_fn or loss_fn

    def ev(x: Tensor) -> Tensor:
        with torch.no_grad():
            return eval_fn(x).detach()

    s = torch.linspace(0, 1, cfg.pivots + 2, dtype=x0.dtype, device=x0.device)[:, None]
    x = x0[None] + s * (x1 - x0)[None]
    x[0], x[-1] = x0, x1  # exact ends (x0 + 1 * (x1 - x0) need not round to x1)
    inserted, history, start = [], [], 0
    if state is not None:
        x, start = state["x"].to(x0), int(state["cycle"])
        inserted, history = list(state["inserted"]), list(state["history"])

    def done(cycles: int) -> None:
        if on_cycle is not None:
            on_cycle({"cycle": cycles, "x": x, "inserted": inserted, "history": history})

    cycles = bar(
        range(start, cfg.cycles),
        progress=progress,
        desc="autoneb",
        unit="cycle",
        initial=start,
        total=cfg.cycles,
    )
    for cycle in cycles:
        x = relax(loss_fn, x, cfg, progress=progress, desc=f"relax {cycle + 1}")
        e = ev(x)
        eg, _, prof = _dense(ev, x, e, cfg.grid)
        history.append(
            {
                "cycle": cycle + 1,
                "pivots": len(x),
                "max_pivot": float(e.max()),
                "max": float(prof.max()),
            }
        )
        if cycle == cfg.cycles - 1:
            done(cfg.cycles)
            break
        # excess of the loss over the linear interpolation of the pivots' losses, per segment
        _, sl = segment_grid(x, cfg.grid)
        base = e[:-1, None] + sl[None].to(e) * (e[1:] - e[:-1])[:, None]
        excess, where = (eg - base).max(1)
        scale = float(prof.max() - prof.min())
        room = cfg.max_pivots - (len(x) - 2)
        cand = [
            int(i) for i in excess.argsort(descending=True) if excess[i] > cfg.threshold * scale
        ]
        cand = sorted(cand[: max(room, 0)])
        inserted.append(len(cand))
        if not cand:
            done(cfg.cycles)  # converged: nothing left to insert
            break
        new = []
        for i in range(len(x) - 1):
            new.append(x[i])
            if i in cand:
                new.append(x[i] + sl[where[i]] * (x[i + 1] - x[i]))
        new.append(x[-1])
        x = torch.stack(new)
        done(cycle + 1)
    e = ev(x)
    _, t, prof = _dense(ev, x, e, cfg.grid)
    return NEBResult(x.detach(), e.cpu(), t, prof, inserted, history)


# ----------------------------------------------------------------------------- nets


def _flat_keys(model: nn.Module, p: Params) -> list[str]:
    """Trainable tensors only: BN running statistics are recomputed, never relaxed."""
    return [n for n, _ in model.named_parameters() if n in p]  # the module's order, not p's


def _points(x: Tensor, keys: list[str], like: Params, rest: Params) -> Params:
    """(P, D) flat vectors -> stacked Params; other entries from `rest` (already stacked (P, ...))."""
    return {**unflatten(x, like, keys), **{k: v for k, v in rest.items() if k not in keys}}


def _connect_landscape(
    land: Landscape, a: Params, b: Params, cfg: NEBConfig, progress: bool | None
) -> tuple[PiecewiseLinearPath, NEBResult]:
    """AutoNEB on a Landscape between two of its points ({"x": vector}, `landscape.as_point`)."""
    res = auto_neb(land, flat_points(a), flat_points(b), cfg, progress=progress)
    nodes = [as_point(v) for v in res.pivots]
    nodes[0], nodes[-1] = a, b
    return PiecewiseLinearPath(nodes, strict_knots(res.knots()), method="neb"), res


def connect_neb(
    model: nn.Module | Landscape,
    a: Params,
    b: Params,
    data: Dataset | None = None,
    cfg: NEBConfig = NEBConfig(),
    *,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool | None = None,
    checkpoint: str | FsPath | None = None,
    resume: bool = False,
) -> tuple[PiecewiseLinearPath, NEBResult]:
    """AutoNEB between two nets: minibatch loss gradients relax the pivots (BN: batch statistics),
    the full training loss (BN policy) decides insertions. Returns the path (method "neb").

    checkpoint: folder for `neb.safetensors` (pivots, minibatch RNG state and progress in one
    file, rewritten atomically after every cycle); resume: continue from it, to the same path.
    `model` may be a Landscape, with a and b its points ({"x": vector}; no data, no checkpoint).
    """
    check_compatible(a, b)
    if is_landscape(model):
        return _connect_landscape(model, a, b, cfg, progress)
    if data is None:
        raise IsthmusError("AutoNEB between nets needs data (a Dataset)")
    keys = _flat_keys(model, a)
    dev = data.x_train.device
    x0, x1 = flatten(a, keys).to(dev), flatten(b, keys).to(dev)
    N = len(data.x_train)
    B = min(batch_size, N)
    gen = generator(seed, 0, 57)  # the relaxation's minibatches
    bn = has_bn(model)
    bn_x = bn_subset(data.x_train) if bn else None

    def rest_for(x: Tensor) -> Params:
        # non-trainable entries: interpolated between the ends by the pivot's position (scratch for BN)
        kn = torch.tensor(arc_knots(x)) if len(x) > 1 else torch.zeros(1)
        pts = [lerp(a, b, float(t)) for t in kn]
        return {k: torch.stack([p[k] for p in pts]) for k in a if k not in keys}

    def loss_fn(x: Tensor) -> Tensor:
        idx = torch.randint(N, (B,), generator=gen).to(dev)
        with batch_statistics(model):
            pts = _points(x, keys, a, rest_for(x.detach()))
            return mean_loss(model, pts, data.x_train[idx], data.y_train[idx], data.loss)

    def eval_fn(x: Tensor) -> Tensor:
        pts = _points(x, keys, a, {k: v.expand(len(x), *v.shape) for k, v in a.items()})
        m = evaluate(model, pts, data.x_train, data.y_train, loss=data.loss, bn_x=bn_x)
        return m.loss.to(x)

    meta = {
        "config": asdict(cfg),
        "batch_size": B,
        "seed": seed,
        "ends": [fingerprint(a), fingerprint(b)],  # the exact nets
    }
    ckpt = FsPath(checkpoint) / "neb.safetensors" if checkpoint is not None else None
    state = _load_neb_state(ckpt, meta, gen, x0, x1, cfg) if resume else None

    def on_cycle(st: dict) -> None:
        if ckpt is not None:
            info = {"meta": meta, **{k: st[k] for k in ("cycle", "inserted", "history")}}
            save_checkpoint(ckpt, {"x": st["x"], "rng": gen.get_state()}, info)

    res = auto_neb(
        loss_fn, x0, x1, cfg, eval_fn=eval_fn, progress=progress, state=state, on_cycle=on_cycle
    )
    nodes = [
        {k: v[i].detach() for k, v in _points(res.pivots, keys, a, rest_for(res.pivots)).items()}
        for i in range(len(res.pivots))
    ]
    nodes[0], nodes[-1] = a, b  # exact endpoints, every entry
    return PiecewiseLinearPath(nodes, strict_knots(res.knots()), method="neb"), res


def _load_neb_state(
    ckpt: FsPath | None, meta: dict, gen: torch.Generator, x0: Tensor, x1: Tensor, cfg: NEBConfig
) -> dict:
    """The state saved by `connect_neb` (sets the minibatch RNG), or a clear error: a state with
    a field missing or of the wrong type, a cycle outside [0, cycles] or pivots that are not a
    finite chain from x0 to x1 is refused, naming the file and the field."""
    if ckpt is None or not ckpt.exists():
        check_resume(ckpt, None, meta, what="NEB")
    t, info = load_checkpoint(ckpt)
    check_resume(ckpt, info.get("meta", {}), meta, what="NEB")

    def bad(what: str) -> IsthmusError:
        return IsthmusError(
            f"{ckpt}: {what} (a damaged or hand-edited checkpoint); delete it and start again "
            "without --resume"
        )

    info = restore_nonfinite(info)  # a diverged cycle's record: null and its reason -> inf/nan
    cycle, inserted, history = (info.get(k) for k in ("cycle", "inserted", "history"))
    if type(cycle) is not int or not 0 <= cycle <= cfg.cycles:
        raise bad(f"field 'cycle' must be an integer in [0, {cfg.cycles}], got {cycle!r}")
    for name, v, ok in (
        ("inserted", inserted, lambda e: type(e) is int and 0 <= e <= cfg.max_pivots),
        ("history", history, lambda e: isinstance(e, dict) and set(e) == set(HISTORY_FIELDS)),
    ):
        if not isinstance(v, list) or len(v) > cycle or not all(ok(e) for e in v):
            raise bad(f"field {name!r} must be a list of at most {cycle} (cycle) valid entries")
    x, rng = t.get("x"), t.get("rng")
    for name, v, what in (("x", x, "the pivots"), ("rng", rng, "the minibatch generator")):
        if v is None:
            raise bad(f"tensor {name!r} ({what}) is missing")
    if not (
        x.dtype == x0.dtype
        and x.dim() == 2
        and 2 <= len(x) <= cfg.max_pivots + 2
        and x.shape[1] == x0.numel()
        and bool(torch.isfinite(x).all())
        and torch.equal(x[0], x0.cpu())
        and torch.equal(x[-1], x1.cpu())
    ):
        raise bad(
            f"tensor 'x' must be 2 to {cfg.max_pivots + 2} finite {x0.dtype} pivots of length "
            f"{x0.numel()} from A to B, got {tuple(x.shape)} {x.dtype}"
        )
    want = gen.get_state()
    if rng.dtype != want.dtype or rng.shape != want.shape:
        raise bad(f"tensor 'rng' must be {want.dtype} of shape {tuple(want.shape)}")
    try:
        gen.set_state(rng)
    except RuntimeError as e:
        raise bad(f"tensor 'rng' is not a generator state ({e})") from None
    return {"x": x, "cycle": cycle, "inserted": inserted, "history": history}


def strict_knots(knots: list[float]) -> list[float]:
    """Knots must increase strictly; coincident pivots (zero-length segments) fall back to equal spacing."""
    if all(b > a for a, b in zip(knots, knots[1:], strict=False)):
        knots[0], knots[-1] = 0.0, 1.0
        return knots
    return [i / (len(knots) - 1) for i in range(len(knots))]
