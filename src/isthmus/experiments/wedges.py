"""The five wedge-model experiments (Fort & Jastrzebski 2019, as designed in docs/large_scale.md).

Each function runs one experiment on a `wedges.WedgeModel` and returns a small result that
serialises to JSON (`to_json`); `plot.wedge_*` draws it. `run` runs any subset of them and is what
`isthmus wedges` calls.

a. landing: gradient descent from random starts ends on the wedges (loss, wedge, radius).
b. tunnels: the straight line between solutions on two wedges crosses high loss; a path through
   the wedges' intersection (2n > D) stays at zero; AutoNEB finds a low path by itself.
c. subspaces: training restricted to a random d-dimensional affine subspace succeeds only when
   d > D - n (a random d-plane meets an n-dimensional wedge when d + n > D).
d. cut: a random 2-D plane through the origin and a solution shows the wedge as a radial tunnel.
e. lr: larger steps end farther out, where wedges are wider and the curvature (top Hessian
   eigenvalue, 2 / w(r)^2 across the wedge) is lower; L2 pulls the ends inward.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch

from ..curvature import hessian_operator, top_eigenvalues
from ..errors import IsthmusError
from ..landscape import as_point
from ..paths.base import PiecewiseLinearPath, evaluate_path, line
from ..paths.neb import NEBConfig, connect_neb
from ..seeding import generator
from ..surface import Plane, SurfaceResult, evaluate_surface
from ..wedges import WedgeConfig, WedgeModel, descend, random_starts, random_subspaces

EXPERIMENTS = ("a", "b", "c", "d", "e")
START_RADIUS = 3.0  # random starts lie on this sphere
SUCCESS = 0.01  # a run succeeds when its final loss is below this fraction of its start loss


@dataclass(frozen=True)
class Landing:
    """a. Final loss, nearest wedge and radius of every run; start loss for reference."""

    lr: float
    steps: int
    start_loss: list[float]
    final_loss: list[float]
    wedge: list[int]
    radius: list[float]

    def landed(self) -> float:
        """Fraction of runs whose loss fell below SUCCESS times their start loss."""
        ok = [f < SUCCESS * s for f, s in zip(self.final_loss, self.start_loss, strict=True)]
        return sum(ok) / len(ok)

    def to_json(self) -> dict:
        return {**asdict(self), "landed": self.landed()}


def landing(
    model: WedgeModel, *, starts: int = 500, lr: float = 0.01, steps: int = 2000, seed: int = 0
) -> Landing:
    x0 = random_starts(model.dim, starts, START_RADIUS, seed=seed)
    res = descend(model, x0, lr, steps)
    return Landing(
        lr,
        steps,
        model.loss(x0).tolist(),
        res.loss.tolist(),
        model.nearest(res.x).tolist(),
        model.radius(res.x).tolist(),
    )


@dataclass(frozen=True)
class Tunnels:
    """b. Loss along the straight line, the path through the intersection, and AutoNEB."""

    wedges: list[int]
    intersection_dim: int
    t: dict[str, list[float]]
    loss: dict[str, list[float]]

    def max_loss(self) -> dict[str, float]:
        return {k: max(v) for k, v in self.loss.items()}

    def to_json(self) -> dict:
        return {**asdict(self), "max_loss": self.max_loss()}


def tunnels(model: WedgeModel, *, radius: float = START_RADIUS, seed: int = 0) -> Tunnels:
    """Two points on wedges 0 and 1 at `radius`, joined three ways (needs 2n > D)."""
    inter = model.intersection(0, 1)
    if inter.shape[1] == 0:
        raise IsthmusError(
            f"wedges 0 and 1 do not intersect (2n = {2 * model.wedge_dim} <= D = {model.dim}); "
            "choose --wedge-dim above half of --dim"
        )
    g = generator(seed, 0, 43)

    def on(basis: torch.Tensor) -> torch.Tensor:
        v = basis @ torch.randn(basis.shape[1], generator=g, dtype=torch.float64)
        return v * radius / v.norm()

    a, b, c = on(model.bases[0]), on(model.bases[1]), on(inter)
    paths = {
        "line": line(as_point(a), as_point(b)),
        "intersection": PiecewiseLinearPath([as_point(a), as_point(c), as_point(b)]),
    }
    cfg = NEBConfig(pivots=7, cycles=3, steps=500, lr=0.01, optimizer="adam", spring=0.1)
    paths["autoneb"], _ = connect_neb(model, as_point(a), as_point(b), cfg=cfg, progress=False)
    t, loss = {}, {}
    for name, p in paths.items():
        r = evaluate_path(model, p, points=81)
        t[name], loss[name] = r.t, r.train_loss
    return Tunnels([0, 1], int(inter.shape[1]), t, loss)


@dataclass(frozen=True)
class Subspaces:
    """c. Success rate of random-subspace training against d, per (D, n)."""

    rows: list[dict] = field(default_factory=list)  # {"dim", "wedge_dim", "d", "success"}

    def to_json(self) -> dict:
        return asdict(self)


FRACTIONS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0)  # d / (D - n)


def subspaces(
    model: WedgeModel,
    *,
    sizes: list[tuple[int, int]] | None = None,
    starts: int = 64,
    lr: float = 0.01,
    steps: int = 2000,
    seed: int = 0,
) -> Subspaces:
    """For each (D, n) (default: the model's, half and a quarter of it), a wedge landscape of
    that size with the model's shape, and d at FRACTIONS of D - n."""
    sizes = sizes or [
        (model.dim // f, max(1, model.wedge_dim // f))
        for f in (4, 2, 1)
        if model.dim // f > max(1, model.wedge_dim // f)
    ]
    rows = []
    for D, n in sizes:
        cfg = WedgeConfig(
            dim=D,
            wedge_dim=n,
            wedges=model.wedges,
            w0=model.w0,
            alpha=model.alpha,
            temperature=model.temperature,
        )
        m = WedgeModel.random(cfg, seed=seed) if (D, n) != (model.dim, model.wedge_dim) else model
        x0 = random_starts(D, starts, START_RADIUS, seed=seed)
        target = SUCCESS * m.loss(x0)
        for d in sorted({min(D, max(1, round(f * (D - n)))) for f in FRACTIONS}):
            res = descend(m, x0, lr, steps, subspace=random_subspaces(D, d, starts, seed=seed))
            ok = float((res.loss < target).double().mean())
            rows.append({"dim": D, "wedge_dim": n, "d": d, "success": ok})
    return Subspaces(rows)


def cut(
    model: WedgeModel, *, grid: int = 61, lr: float = 0.01, steps: int = 2000, seed: int = 0
) -> SurfaceResult:
    """d. The loss on the plane through the origin, a solution, and a random point."""
    x0 = random_starts(model.dim, 1, START_RADIUS, seed=seed)
    sol = descend(model, x0, lr, steps).x[0]
    other = random_starts(model.dim, 2, float(sol.norm()), seed=seed)[1]  # not the start itself
    origin = torch.zeros_like(sol)
    plane = Plane(
        as_point(origin),
        as_point(sol),
        as_point(other),
        names=("origin", "solution", "random"),
        margin=0.5,
    )
    res = evaluate_surface(model, plane, grid=grid, progress=False)
    return replace(res, train_acc=None, test_acc=None)  # a landscape has no accuracy


@dataclass(frozen=True)
class LearningRates:
    """e. Per (lr, l2): mean and spread of the final radius, the top Hessian eigenvalue at the
    ends, and the predicted edge 2 / lr; plus the curvature across a wedge against radius."""

    rows: list[dict]
    radius_grid: list[float]
    curvature_across: list[float]

    def to_json(self) -> dict:
        return asdict(self)


def learning_rates(
    model: WedgeModel,
    *,
    lrs: tuple[float, ...] = (0.002, 0.01, 0.05, 0.2),
    l2s: tuple[float, ...] = (0.0, 0.01),
    starts: int = 200,
    steps: int = 3000,
    eig_points: int = 16,
    seed: int = 0,
) -> LearningRates:
    """All (lr, l2) pairs as one batched population; top eigenvalues at `eig_points` ends each."""
    x0 = random_starts(model.dim, starts, START_RADIUS, seed=seed)
    pairs = [(lr, l2) for l2 in l2s for lr in lrs]
    xs = x0.repeat(len(pairs), 1)
    lr_t = torch.tensor([lr for lr, _ in pairs], dtype=torch.float64).repeat_interleave(starts)
    l2_t = torch.tensor([l2 for _, l2 in pairs], dtype=torch.float64).repeat_interleave(starts)
    res = descend(model, xs, lr_t, steps, l2=l2_t)
    rows = []
    for j, (lr, l2) in enumerate(pairs):
        ends = res.x[j * starts : (j + 1) * starts]
        ok = ~res.diverged[j * starts : (j + 1) * starts]
        r = model.radius(ends[ok]) if ok.any() else torch.tensor([float("nan")])
        eigs = [
            top_eigenvalues(hessian_operator(model, e), 1, max_steps=60).values[0]
            for e in ends[ok][:eig_points]
        ]
        rows.append(
            {
                "lr": lr,
                "l2": l2,
                "radius_mean": float(r.mean()),
                "radius_std": float(r.std()) if len(r) > 1 else 0.0,
                "top_eigenvalue_mean": sum(eigs) / len(eigs) if eigs else None,
                "top_eigenvalues": eigs,
                "edge": 2.0 / lr,
                "diverged": int((~ok).sum()),
            }
        )
    rmax = max(
        [row["radius_mean"] for row in rows if row["radius_mean"] == row["radius_mean"]]
        + [START_RADIUS]
    )
    grid = torch.linspace(0.0, 1.5 * rmax, 100, dtype=torch.float64)
    return LearningRates(rows, grid.tolist(), model.curvature_across(grid).tolist())


def run(model: WedgeModel, experiments: tuple[str, ...] = EXPERIMENTS, *, seed: int = 0) -> dict:
    """The chosen experiments' results, by letter."""
    bad = [e for e in experiments if e not in EXPERIMENTS]
    if bad:
        raise IsthmusError(
            f"unknown wedge experiment(s) {bad}; choose from {', '.join(EXPERIMENTS)}"
        )
    fns = {"a": landing, "b": tunnels, "c": subspaces, "d": cut, "e": learning_rates}
    return {e: fns[e](model, seed=seed) for e in experiments}
