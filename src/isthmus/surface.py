"""Loss planes through three nets and filter-normalised random slices, evaluated as batched grids.

* Plane through three points (Garipov et al. 2018, "Loss Surfaces, Mode Connectivity, and Fast
  Ensembling of DNNs", section 5 and figure 1: the plane through w1, w2, w3 with orthonormal basis
  u = (w2 - w1) / ||w2 - w1||, v = (w3 - w1 - <w3 - w1, u> u) / ||...||). Grid coordinates are
  orthonormal (true distances); a grid point (x, y) is built from the three anchors with affine
  (barycentric) weights, so the three points themselves come out bit-exact. The grid covers the
  three points with a 20% margin on every side (docs/definitions.md).
* Random slices (Li, Xu, Taylor, Studer, Goldstein 2018, "Visualizing the Loss Landscape of Neural
  Nets", section 4, "filter normalization"): theta(x, y) = theta* + x d1 + y d2 with Gaussian
  directions rescaled filter by filter, d_{i,j} <- d_{i,j} ||theta_{i,j}|| / ||d_{i,j}|| (filter j of
  layer i: one output channel of a conv kernel, one row of a linear weight); biases and BatchNorm
  parameters get zero direction. 1-D or 2-D, range [-1, 1] by default.

Grids are evaluated in chunks of stacked points with `params.evaluate_splits` (one batched call
per chunk and split; BatchNorm nets by the policy of docs/definitions.md), or on a `Landscape`.
Paths are drawn by their projection. `slice_through` picks the slice from what is given (one, two
plus a path, or three nets).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path as FsPath

import torch
from torch import Tensor, nn

from .data import Dataset
from .errors import IsthmusError
from .io import check_resume, read_json, restore_nonfinite, write_json
from .landscape import Landscape, evaluate_points, is_landscape
from .params import (
    Params,
    check_compatible,
    combine,
    eval_plan,
    fingerprint,
    float_keys,
    is_float,
    num_points,
    stack_controls,
)
from .paths.base import ParameterPath
from .progress import bar
from .seeding import generator


def _flat64(p: Params, keys: list[str]) -> Tensor:
    return torch.cat([p[k].detach().reshape(-1).double() for k in keys])


class Slice:
    """An affine slice of parameter space: theta(xy) = sum_k W(xy)[k] * anchor_k.

    `dims` coordinates per point; `points(xy)` gives stacked Params for xy of shape (P, dims);
    `coords(p)` projects parameters onto the slice.
    """

    kind: str = "slice"
    dims: int = 2
    names: list[str]

    def __init__(self, anchors: list[Params]):
        for q in anchors[1:]:
            check_compatible(anchors[0], q, ("the first point", "another point"))
        self.anchors = anchors
        self.keys = float_keys(anchors[0])
        self._stacked = stack_controls(anchors)

    def weights(self, xy: Tensor) -> Tensor:  # (P, dims) -> (P, K)
        raise NotImplementedError

    def points(self, xy: Tensor) -> Params:
        xy = torch.as_tensor(xy, dtype=torch.float64).reshape(-1, self.dims)
        return combine(self.weights(xy), self._stacked, self.anchors[0])

    def coords(self, p: Params) -> list[float]:
        raise NotImplementedError

    def default_range(self) -> list[tuple[float, float]]:
        raise NotImplementedError

    def anchor_coords(self) -> dict[str, list[float]]:
        raise NotImplementedError


class Plane(Slice):
    """The plane through three nets a, b, c (their affine span, orthonormalised)."""

    kind = "plane"
    dims = 2

    def __init__(self, a: Params, b: Params, c: Params, names=("A", "B", "C"), margin: float = 0.2):
        super().__init__([a, b, c])
        self.names, self.margin = list(names), margin
        fa, fb, fc = (_flat64(p, self.keys) for p in (a, b, c))
        db, dc = fb - fa, fc - fa
        m11 = float(db.norm())
        if m11 == 0:
            raise IsthmusError(
                f"{names[0]} and {names[1]} are the same point: no plane through them"
            )
        self.u = db / m11
        m12 = float(dc @ self.u)
        w = dc - m12 * self.u
        m22 = float(w.norm())
        if m22 <= 1e-12 * max(m11, float(dc.norm())):
            raise IsthmusError(f"{', '.join(names)} lie on one line: no plane through them")
        self.v = w / m22
        self.origin = fa
        self.m = (m11, m12, m22)  # coordinates: a (0, 0), b (m11, 0), c (m12, m22)

    def weights(self, xy: Tensor) -> Tensor:
        m11, m12, m22 = self.m
        beta = xy[:, 1] / m22
        alpha = (xy[:, 0] - m12 * beta) / m11
        return torch.stack([1 - alpha - beta, alpha, beta], 1)

    def coords(self, p: Params) -> list[float]:
        d = _flat64(p, self.keys).to(self.origin.device) - self.origin
        return [float(d @ self.u), float(d @ self.v)]

    def anchor_coords(self) -> dict[str, list[float]]:
        m11, m12, m22 = self.m
        return dict(zip(self.names, [[0.0, 0.0], [m11, 0.0], [m12, m22]], strict=True))

    def default_range(self) -> list[tuple[float, float]]:
        pts = torch.tensor(list(self.anchor_coords().values()), dtype=torch.float64)
        lo, hi = pts.min(0).values, pts.max(0).values
        pad = self.margin * (hi - lo)
        return [(float(lo[i] - pad[i]), float(hi[i] + pad[i])) for i in range(2)]


def filter_normalized_direction(p: Params, *, seed: int = 0, index: int = 0) -> Params:
    """A Gaussian direction rescaled per filter to the norm of that filter of `p` (Li et al. 2018).

    Tensors with <= 1 dimension (biases, BatchNorm parameters and statistics) get zero; integer
    buffers are copied. Same (seed, index), same direction; `index` numbers a slice's directions.
    """
    if not any(is_float(w) and w.dim() > 1 for w in p.values()):
        raise IsthmusError(
            "filter normalisation needs weight matrices or kernels, and these parameters have "
            "none (a Landscape point?): use a Plane through three points instead"
        )
    g = generator(seed, index, 59)  # the direction's Gaussian draws
    out = {}
    for k, w in p.items():
        if not is_float(w):
            out[k] = w
            continue
        if w.dim() <= 1:
            out[k] = torch.zeros_like(w)
            continue
        d = torch.randn(w.shape, generator=g, dtype=torch.float64)
        wf = w.detach().double().cpu().reshape(w.shape[0], -1)
        df = d.reshape(w.shape[0], -1)
        df = df * (wf.norm(dim=1, keepdim=True) / (df.norm(dim=1, keepdim=True) + 1e-10))
        out[k] = df.reshape(w.shape).to(w.device, w.dtype)
    return out


class RandomSlice(Slice):
    """theta* + x d1 (+ y d2) with filter-normalised random directions d1, d2."""

    kind = "random"

    def __init__(self, center: Params, *, dims: int = 2, seed: int = 0, span: float = 1.0):
        if dims not in (1, 2):
            raise IsthmusError(f"a random slice has 1 or 2 dimensions, got {dims}")
        dirs = [filter_normalized_direction(center, seed=seed, index=i) for i in range(dims)]
        zero = {k: torch.zeros_like(v) if is_float(v) else v for k, v in center.items()}
        dirs = [{**zero, **d} for d in dirs]
        super().__init__([center, *dirs])
        self.dims, self.span, self.seed = dims, span, seed
        self.names = ["center"]
        self.origin = _flat64(center, self.keys)
        D = torch.stack([_flat64(d, self.keys) for d in dirs], 1)  # (n, dims)
        self._dirs, self._gram = D, D.T @ D

    def weights(self, xy: Tensor) -> Tensor:
        return torch.cat([torch.ones(len(xy), 1, dtype=torch.float64), xy], 1)

    def coords(self, p: Params) -> list[float]:
        """Least-squares coordinates of p - center in the (non-orthogonal) directions."""
        d = _flat64(p, self.keys).to(self.origin.device) - self.origin
        return torch.linalg.solve(self._gram, self._dirs.T @ d).tolist()

    def anchor_coords(self) -> dict[str, list[float]]:
        return {"center": [0.0] * self.dims}

    def default_range(self) -> list[tuple[float, float]]:
        return [(-self.span, self.span)] * self.dims


def slice_through(
    nets: list[Params],
    names: list[str] | None = None,
    *,
    path: ParameterPath | None = None,
    dims: int = 2,
    seed: int = 0,
    span: float = 1.0,
) -> Slice:
    """The slice a surface is drawn on, chosen by what is given.

    One net: a filter-normalised random slice around it (`dims`, `seed`, `span`). Three nets: the
    plane through them. Two nets and a `path` (e.g. a fitted curve): the plane through A, B and
    the path's first bend, which holds a one-bend Bezier curve whole.
    """
    names = list(names) if names is not None else ["A", "B", "C"][: len(nets)]
    if len(nets) == 1:
        return RandomSlice(nets[0], dims=dims, seed=seed, span=span)
    if len(nets) == 2 and path is not None:
        bends = getattr(path, "bends", None) or getattr(path, "nodes", [None] * 3)[1:-1]
        if not bends:
            raise IsthmusError(f"the {path.method} path has no bend to span a plane with")
        check_compatible(nets[0], bends[0], (names[0], f"the {path.method} path's bend"))
        ends = path.points(torch.tensor([0.0, 1.0], dtype=torch.float64))
        for i, net in enumerate(nets):
            if not all(torch.equal(ends[k][i].cpu(), v.cpu()) for k, v in net.items()):
                raise IsthmusError(
                    f"the {path.method} path does not join {names[0]} and {names[1]}: its "
                    f"{'start' if i == 0 else 'end'} differs from {names[i]}; give the path "
                    "made between these two runs"
                )
        return Plane(nets[0], nets[1], bends[0], names=[*names, "bend"])
    if len(nets) != 3:
        raise IsthmusError(
            "a surface needs one net (a random slice around it), three (their plane) or two and "
            f"a path with a bend (the plane through A, the bend and B); got {len(nets)} net(s)"
        )
    return Plane(*nets, names=names)


@dataclass(frozen=True)
class SurfaceResult:
    """Loss/accuracy on a grid of a slice; serialises to surface.json.

    Grids are indexed [iy][ix] (rows follow y), as matplotlib's imshow/contour expect; 1-D slices
    have y = None and flat lists.
    """

    kind: str
    x: list[float]
    y: list[float] | None
    train_loss: list
    train_acc: list
    test_loss: list
    test_acc: list
    points: dict[str, list[float]] = field(default_factory=dict)
    paths: dict[str, list[list[float]]] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def project_path(
    sl: Slice, path: ParameterPath, points: int = 61, chunk: int = 16
) -> list[list[float]]:
    """Coordinates in the slice of `points` equally spaced points of a path."""
    ts = torch.linspace(0, 1, points, dtype=torch.float64)
    out = []
    for i in range(0, points, chunk):
        pts = path.points(ts[i : i + chunk])
        n = len(ts[i : i + chunk])
        out += [sl.coords({k: v[j] for k, v in pts.items()}) for j in range(n)]
    return out


def _fingerprint(sl: Slice) -> list[str]:
    """The exact identity of the slice's anchors (runs, or centre and directions), to refuse
    resuming a checkpoint of another slice."""
    return [fingerprint(a) for a in sl.anchors]


def _resume_surface(checkpoint: str | FsPath | None, meta: dict) -> dict[str, list[float]]:
    saved = None
    if checkpoint is not None and FsPath(checkpoint).exists():
        saved = read_json(checkpoint)
    # plane coordinates agree only to round-off between processes
    check_resume(
        checkpoint,
        saved.get("meta", {}) if saved is not None else None,
        meta,
        what="surface",
        approx=("ranges",),
    )
    values = restore_nonfinite(saved.get("values"))
    if (
        not isinstance(values, dict)
        or set(values) != {"tl", "ta", "el", "ea"}
        or not all(isinstance(v, list) for v in values.values())
        or len({len(v) for v in values.values()}) != 1
        or not all(isinstance(x, int | float) for v in values.values() for x in v)
    ):
        raise IsthmusError(f"--resume: {checkpoint} is malformed (field 'values'); delete it")
    return {k: [float(x) for x in v] for k, v in values.items()}


def evaluate_surface(
    model: nn.Module | Landscape,
    sl: Slice,
    data: Dataset | None = None,
    *,
    grid: int = 31,
    ranges: list[tuple[float, float]] | None = None,
    batch_size: int | None = None,
    chunk: int | None = None,
    bn_x: Tensor | None = None,
    paths: dict[str, ParameterPath] | None = None,
    progress: bool | None = None,
    checkpoint: str | FsPath | None = None,
    resume: bool = False,
) -> SurfaceResult:
    """Train/test loss and accuracy on a grid x grid (or grid, for 1-D) of points of `sl`.

    Args:
      ranges: per coordinate (lo, hi); default the slice's own (20% margin / [-span, span]).
      batch_size, chunk: examples per forward pass and grid points per batched evaluation call
        (None: `params.eval_plan`'s).
      bn_x: data for BatchNorm statistics (BN nets; see params.evaluate).
      paths: paths to project onto the slice (drawn by `plot.surface`).
      checkpoint: JSON file rewritten (atomically) after every chunk with the values so far;
        resume: continue from it (a grid of big nets on images takes a while).
    """
    if grid < 2:
        raise IsthmusError(f"--grid must be >= 2, got {grid}")
    ranges = ranges or sl.default_range()
    axes = [torch.linspace(lo, hi, grid, dtype=torch.float64) for lo, hi in ranges]
    if sl.dims == 2:
        yy, xx = torch.meshgrid(axes[1], axes[0], indexing="ij")
        xy = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    else:
        xy = axes[0][:, None]
    if chunk is None:
        chunk = 64 if is_landscape(model) else eval_plan(model, data.x_train).chunk  # type: ignore[union-attr]
    res: dict[str, list[float]] = {"tl": [], "ta": [], "el": [], "ea": []}
    meta = {
        "kind": sl.kind,
        "grid": grid,
        "ranges": [list(r) for r in ranges],
        "names": list(sl.names),
        "fingerprint": _fingerprint(sl),
        "data": None if data is None else [data.name, len(data.x_train), len(data.x_test)],
        "chunk": chunk,
    }
    if resume:
        res = _resume_surface(checkpoint, meta)
    done = len(res["tl"])
    pbar = bar(total=len(xy), initial=done, desc=f"surface {sl.kind}", progress=progress)
    for i in range(done, len(xy), chunk):
        pts = sl.points(xy[i : i + chunk])
        m = evaluate_points(model, pts, data, batch_size=batch_size, chunk=chunk, bn_x=bn_x)
        for key, vals in zip(("tl", "ta", "el", "ea"), m, strict=True):
            res[key] += vals
        if checkpoint is not None:
            write_json(checkpoint, {"meta": meta, "values": res})
        pbar.update(num_points(pts))
    pbar.close()

    def shape(v: list[float]) -> list:
        return [v[r * grid : (r + 1) * grid] for r in range(grid)] if sl.dims == 2 else v

    proj = {name: project_path(sl, p) for name, p in (paths or {}).items()}
    return SurfaceResult(
        sl.kind,
        axes[0].tolist(),
        axes[1].tolist() if sl.dims == 2 else None,
        shape(res["tl"]),
        shape(res["ta"]),
        shape(res["el"]),
        shape(res["ea"]),
        sl.anchor_coords(),
        proj,
        {"grid": grid, "names": sl.names},
    )
