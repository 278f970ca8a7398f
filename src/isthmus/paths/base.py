"""The ParameterPath abstraction (a path through parameter space), piecewise-linear paths, and evaluating any path densely.

A path phi: [0, 1] -> parameters with phi(0) = theta_A and phi(1) = theta_B exactly. `points(ts)`
returns the stacked parameters at many t at once, so evaluation is one batched call
(`isthmus.params.evaluate`). Piecewise-linear paths (straight lines, polygonal chains, AutoNEB chains
and the constructive paths of Kuditipudi et al. 2019) share `PiecewiseLinearPath`.

Barrier (docs/definitions.md): max_t L(t) - max(L(0), L(1)) on train loss; also vs the mean of the
endpoints, on test loss, and the argmax t.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from ..data import Dataset
from ..errors import IsthmusError
from ..landscape import Landscape, evaluate_points
from ..params import Params, check_compatible, eval_plan, is_float
from ..progress import bar


class ParameterPath:
    """Base class: subclasses implement `points`; `start`/`end` are the exact endpoints."""

    method: str = "path"
    start: Params
    end: Params

    def points(self, ts: Tensor) -> Params:  # stacked (P, ...) parameters at the P values of ts
        raise NotImplementedError

    def point(self, t: float) -> Params:
        return {
            k: v[0] for k, v in self.points(torch.tensor([float(t)], dtype=torch.float64)).items()
        }

    def knots(self) -> list[float]:
        """t values where the path bends (segment boundaries); [0, 1] for smooth curves."""
        return [0.0, 1.0]

    def tensors(self) -> dict[str, Tensor]:
        """Everything needed to rebuild the path, for path.safetensors."""
        raise NotImplementedError


class CurveFamily:
    """What makes a curve with bends a trainable family for `paths.fit.fit_family`: its
    controls are [start, *bends, end], the bends are trainable, members are drawn at t ~ U[0, 1].
    Subclasses provide `controls()`, `weights(ts)` and a constructor (start, end, bends)."""

    @staticmethod
    def check_bends(start: Params, end: Params, bends: list[Params], what: str) -> None:
        """At least one bend, and every control of the same architecture as the start."""
        if len(bends) < 1:
            raise IsthmusError(f"a {what} needs at least one bend; use paths.line for none")
        check_compatible(start, end)
        for b in bends:
            check_compatible(start, b, ("the start", "a bend"))

    def trainable(self) -> list[int]:
        return list(range(1, len(self.controls()) - 1))

    def sample_weights(self, n: int, generator: torch.Generator) -> Tensor:
        return self.weights(torch.rand(n, generator=generator, dtype=torch.float64))

    def with_controls(self, controls: list[Params]):
        return type(self)(controls[0], controls[-1], controls[1:-1])


class PiecewiseLinearPath(ParameterPath):
    """Straight segments through nodes theta_0 = A, ..., theta_n = B at knots 0 = t_0 < ... < t_n = 1.

    Knots default to equal spacing. Points are computed per segment as (1-s) theta_i + s theta_{i+1},
    so every node (and both endpoints) is reproduced exactly.
    """

    method = "chain"

    def __init__(
        self, nodes: list[Params], knots: list[float] | None = None, method: str | None = None
    ):
        if len(nodes) < 2:
            raise IsthmusError("a piecewise-linear path needs at least two nodes")
        self.nodes = nodes
        n = len(nodes) - 1
        self._knots = [i / n for i in range(n + 1)] if knots is None else [float(k) for k in knots]
        if len(self._knots) != n + 1 or self._knots[0] != 0.0 or self._knots[-1] != 1.0:
            raise IsthmusError(f"knots must run from 0 to 1, one per node; got {self._knots}")
        if any(b <= a for a, b in zip(self._knots, self._knots[1:], strict=False)):
            raise IsthmusError(f"knots must increase strictly; got {self._knots}")
        self.start, self.end = nodes[0], nodes[-1]
        if method:
            self.method = method

    def knots(self) -> list[float]:
        return list(self._knots)

    def locate(self, ts: Tensor) -> tuple[Tensor, Tensor]:
        """Segment index and local coordinate s in [0, 1] of each t."""
        kn = torch.tensor(self._knots, dtype=torch.float64)
        t = ts.detach().to(torch.float64).clamp(0, 1).cpu()
        seg = (torch.searchsorted(kn, t, right=True) - 1).clamp(0, len(kn) - 2)
        s = (t - kn[seg]) / (kn[seg + 1] - kn[seg])
        return seg, s

    def points(self, ts: Tensor) -> Params:
        seg, s = self.locate(ts)
        out = {}
        for k, v0 in self.start.items():
            if not is_float(v0):
                out[k] = v0.expand(len(ts), *v0.shape).clone()
                continue
            a = torch.stack([self.nodes[i][k] for i in seg.tolist()])
            b = torch.stack([self.nodes[i + 1][k] for i in seg.tolist()])
            w = s.to(v0.dtype).to(v0.device).reshape(-1, *([1] * v0.dim()))
            pts = a + w * (b - a)
            # exact nodes: s == 0 -> a, s == 1 -> b
            pts = torch.where(w == 1, b, pts)
            out[k] = pts
        return out

    def tensors(self) -> dict[str, Tensor]:
        out = {f"node{i}.{k}": v for i, node in enumerate(self.nodes) for k, v in node.items()}
        out["knots"] = torch.tensor(self._knots, dtype=torch.float64)
        return out


def line(a: Params, b: Params) -> PiecewiseLinearPath:
    """The straight line from a to b."""
    return PiecewiseLinearPath([a, b], method="linear")


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class PathResult:
    """Metrics along a path; serialises to path.json (format: docs/definitions.md)."""

    method: str
    t: list[float]
    train_loss: list[float]
    train_acc: list[float]
    test_loss: list[float]
    test_acc: list[float]
    barrier: dict
    segments: list[dict] = field(default_factory=list)
    certificate: dict | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        if d["certificate"] is None:
            del d["certificate"]
        d.update(d.pop("extra"))
        return d


def barrier(t: list[float], train_loss: list[float], test_loss: list[float]) -> dict:
    """Barrier heights: max over the path minus the larger endpoint (and minus their mean)."""
    tr = torch.tensor(train_loss, dtype=torch.float64)
    te = torch.tensor(test_loss, dtype=torch.float64)
    i = int(tr.argmax())
    return {
        "train_loss": float(tr.max() - torch.maximum(tr[0], tr[-1])),
        "train_loss_vs_mean": float(tr.max() - (tr[0] + tr[-1]) / 2),
        "test_loss": float(te.max() - torch.maximum(te[0], te[-1])),
        "t_max": float(t[i]),
    }


def grid(path: ParameterPath, points: int = 61, include_knots: bool = True) -> Tensor:
    """`points` equally spaced t in [0, 1], plus every knot of a piecewise path."""
    ts = torch.linspace(0, 1, points, dtype=torch.float64)
    if include_knots:
        ts = torch.unique(torch.cat([ts, torch.tensor(path.knots(), dtype=torch.float64)]))
    return ts


def evaluate_path(
    model: nn.Module | Landscape,
    path: ParameterPath,
    data: Dataset | None = None,
    *,
    points: int = 61,
    ts: Tensor | None = None,
    batch_size: int | None = None,
    chunk: int | None = None,
    bn_x: Tensor | None = None,
    segments: list[dict] | None = None,
    certificate: dict | None = None,
    progress: bool | None = False,
) -> PathResult:
    """Train and test loss/accuracy at `points` values of t (plus knots), in batched calls
    (`params.evaluate_splits`, chunks of `chunk` points, None = `params.eval_plan`'s; BatchNorm nets by the BatchNorm policy
    of docs/definitions.md). `model` may be a Landscape (then `data` is not needed; its one loss
    is reported as train and test loss, accuracy nan). `progress`: a bar over the points."""
    if ts is None and points < 2:
        raise IsthmusError(f"--points must be >= 2 (values of t on the path), got {points}")
    ts = grid(path, points) if ts is None else ts
    if chunk is None:
        chunk = 64 if isinstance(model, Landscape) else eval_plan(model, data.x_train).chunk
    tr_l, tr_a, te_l, te_a = [], [], [], []
    pbar = bar(total=len(ts), desc=f"evaluate {path.method}", unit="pt", progress=progress)
    for i in range(0, len(ts), chunk):
        m = evaluate_points(
            model,
            path.points(ts[i : i + chunk]),
            data,
            batch_size=batch_size,
            chunk=chunk,
            bn_x=bn_x,
        )
        tr_l += m[0]
        tr_a += m[1]
        te_l += m[2]
        te_a += m[3]
        pbar.update(len(m[0]))
    pbar.close()
    t = ts.tolist()
    return PathResult(
        path.method, t, tr_l, tr_a, te_l, te_a, barrier(t, tr_l, te_l), segments or [], certificate
    )
