"""Simplicial complexes of parameter points: the family behind every low-loss subspace in isthmus.

A complex has V vertices (parameter dicts) and S simplices, each a tuple of m + 1 vertex indices
(every simplex of one complex has the same dimension m). A member is sum_i w_i v_i with the weights
w nonzero only on one simplex. Uniform sampling over the complex picks a simplex uniformly and
Dirichlet(1, ..., 1) weights inside it (uniform on the simplex: Benton et al. 2021).

How a draw is made (so that one random number per member decides the simplex, and the smallest
complexes coincide with the curves of `isthmus.paths`): t ~ U[0, 1); the simplex is j = floor(t S)
and u = t S - j is uniform on [0, 1) and independent of j; the weights are the spacings of the
sorted set {0, u, u_2, ..., u_m, 1} (m - 1 further uniforms), which are Dirichlet(1, ..., 1),
assigned to the simplex's vertices in their listed order. Two solutions and one connector,
simplices (c, A) and (B, c), is then exactly the one-bend chain A - c - B of Garipov et al., drawn
from the same generator with the same numbers (tested).

The family has fixed vertices (given solutions: never moved by `paths.fit.fit_family`) and
trainable ones (connectors), and an optional penalty added to the fitting objective:
  - volume (Benton et al.): -volume * mean over simplices of log vol(simplex), which keeps a grown
    simplex from collapsing onto its fixed vertices (their default weight 1e-6 on CIFAR);
  - cosine (Wortsman et al. 2021): cosine * mean over vertex pairs of cos^2(v_i, v_j) on the
    flattened parameters, which pushes vertices trained from scratch apart (their beta = 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..errors import IsthmusError
from ..params import Params, check_compatible, combine, is_float, unshared


class SimplicialComplex:
    """A pure simplicial complex over parameter points; a `paths.fit.Family`.

    Args:
      vertices: the V vertices (same architecture).
      simplices: S tuples of m + 1 distinct vertex indices each (m >= 1).
      fixed: indices of vertices that fitting must never move (given solutions).
      volume: weight of the -mean log-volume penalty (0: none).
      cosine: weight of the mean squared cosine penalty between vertices (0: none).
    """

    method = "complex"

    def __init__(
        self,
        vertices: Sequence[Params],
        simplices: Sequence[Sequence[int]],
        fixed: Sequence[int] = (),
        *,
        volume: float = 0.0,
        cosine: float = 0.0,
    ):
        self.vertices = list(vertices)
        self.simplices = [tuple(int(i) for i in s) for s in simplices]
        self.fixed = sorted({int(i) for i in fixed})
        self.volume, self.cosine = float(volume), float(cosine)
        self._edge_maps: dict[tuple, Tensor] = {}
        V = len(self.vertices)
        if V < 2 or not self.simplices:
            raise IsthmusError(f"a complex needs >= 2 vertices and a simplex, got {V} and none")
        sizes = {len(s) for s in self.simplices}
        if len(sizes) != 1 or min(sizes) < 2:
            raise IsthmusError(
                f"every simplex needs the same number (>= 2) of vertices, got sizes {sorted(sizes)}"
            )
        for s in self.simplices:
            if len(set(s)) != len(s) or not all(0 <= i < V for i in s):
                raise IsthmusError(f"simplex {s}: needs distinct vertex indices in [0, {V})")
        if not all(0 <= i < V for i in self.fixed):
            raise IsthmusError(f"fixed vertices {self.fixed} out of range [0, {V})")
        if self.volume < 0 or self.cosine < 0:
            raise IsthmusError("volume and cosine penalty weights must be >= 0")
        for i, v in enumerate(self.vertices[1:], 1):
            check_compatible(self.vertices[0], v, ("vertex 0", f"vertex {i}"))

    @property
    def dimension(self) -> int:
        """m: every simplex has m + 1 vertices."""
        return len(self.simplices[0]) - 1

    # ----------------------------------------------------------------- the Family protocol

    def controls(self) -> list[Params]:
        return list(self.vertices)

    def trainable(self) -> list[int]:
        return [i for i in range(len(self.vertices)) if i not in self.fixed]

    def with_controls(self, controls: list[Params]) -> SimplicialComplex:
        return SimplicialComplex(
            controls, self.simplices, self.fixed, volume=self.volume, cosine=self.cosine
        )

    def sample_weights(self, n: int, generator: torch.Generator) -> Tensor:
        """(n, V) float64 weights of n members drawn uniformly from the complex (module doc)."""
        S, m = len(self.simplices), self.dimension
        t = torch.rand(n, generator=generator, dtype=torch.float64)
        j = (t * S).floor().long().clamp(max=S - 1)
        u = (t * S - j).clamp(0, 1)[:, None]
        cuts = [torch.zeros(n, 1, dtype=torch.float64), u, torch.ones(n, 1, dtype=torch.float64)]
        if m > 1:
            cuts.insert(2, torch.rand(n, m - 1, generator=generator, dtype=torch.float64))
        inner = torch.cat(cuts[1:-1], 1).sort(1).values
        spacings = torch.diff(torch.cat([cuts[0], inner, cuts[-1]], 1), dim=1)  # (n, m + 1)
        w = torch.zeros(n, len(self.vertices), dtype=torch.float64)
        verts = torch.tensor(self.simplices)[j]  # (n, m + 1)
        w.scatter_(1, verts, spacings)
        return w

    def penalty(self, stacked: Params) -> Tensor | None:
        """The regulariser added to the fitting objective, on the stacked (V, ...) trained
        tensors (None when both weights are 0); `penalty_of_gram` with `gram(stacked)`."""
        return self.penalty_of_gram(lambda relative: gram(stacked, relative))

    def penalty_of_gram(self, G_of: Callable[[bool], Tensor]) -> Tensor | None:
        """The penalty from the vertices' (V, V) Gram matrix, `G_of(relative)` (relative: of
        v_i - v_0; both terms need nothing else, `paths.fit.fit_family` computes it cheaply)."""
        if self.volume == 0 and self.cosine == 0:
            return None
        out = None
        if self.volume:
            G = G_of(True)
            idx = torch.tensor(self.simplices, device=G.device)  # (S, m + 1)
            logs = log_volume_from_gram(G[idx[:, :, None], idx[:, None, :]])  # all at once
            out = -self.volume * logs.mean()
        if self.cosine:
            cos = self.cosine * mean_squared_cosine_from_gram(G_of(False))
            out = cos if out is None else out + cos
        return out

    def penalty_grad_of_gram(self, G_of: Callable[[bool], Tensor]) -> dict[bool, Tensor]:
        """d penalty / d G for each Gram matrix `penalty_of_gram` reads (key: `relative`), in
        closed form: d log det E = tr(E^-1 dE) for the volumes (E = L G L^T, L the edge
        differences of each simplex), the quotient rule for the cosines (on the entries
        `penalty_of_gram` reads: the upper triangle and the diagonal). `paths.fit.fit_family`
        takes it instead of autograd through the small graph, which cost it as much as the rest
        of a penalty step (the two agree: tested)."""
        out = {}
        if self.volume:
            G = G_of(True)
            L = self._edges(G)
            Einv = torch.linalg.inv_ex(L @ G @ L.mT).inverse  # inf/nan for a flat simplex
            out[True] = (-0.5 * self.volume / len(L)) * (L.mT @ Einv @ L).sum(0)
        if self.cosine:
            G = G_of(False)
            d = G.diagonal()
            i, j = torch.triu_indices(len(G), len(G), 1, device=G.device)
            c = self.cosine / len(i)
            q = c * G[i, j] ** 2 / (d[i] * d[j])  # each pair's term
            g = torch.zeros_like(G)
            g[i, j] = 2 * c * G[i, j] / (d[i] * d[j])
            g.diagonal().index_add_(0, i, -q / d[i]).index_add_(0, j, -q / d[j])
            out[False] = g
        return out

    def _edges(self, G: Tensor) -> Tensor:
        """(S, m, V) rows e_{s_a} - e_{s_0}: E_s = L_s G L_s^T is simplex s's edge Gram matrix."""
        key = (G.device, G.dtype)
        if key not in self._edge_maps:
            S, m = len(self.simplices), self.dimension
            L = torch.zeros(S, m, len(self.vertices), dtype=G.dtype)
            for k, simplex in enumerate(self.simplices):
                for a, v in enumerate(simplex[1:]):
                    L[k, a, v] += 1
                    L[k, a, simplex[0]] -= 1
            self._edge_maps[key] = L.to(G.device)
        return self._edge_maps[key]

    # ----------------------------------------------------------------- members

    def points(self, weights: Tensor) -> Params:
        """Stacked (P, ...) members for (P, V) weights (`params.combine`: one-hot rows are exact
        copies of their vertex)."""
        if weights.ndim != 2 or weights.shape[1] != len(self.vertices):
            raise IsthmusError(
                f"weights must be (P, {len(self.vertices)}), got {tuple(weights.shape)}"
            )
        like = self.vertices[0]
        stacked = {k: torch.stack([v[k] for v in self.vertices]) for k in like if is_float(like[k])}
        return combine(weights, stacked, like)

    def sample(self, n: int, generator: torch.Generator) -> Params:
        """n members drawn uniformly from the complex, stacked (n, ...)."""
        return self.points(self.sample_weights(n, generator))

    def edges(self) -> list[tuple[int, int]]:
        """Every edge (i < j) of every simplex, once."""
        return sorted(
            {(min(a, b), max(a, b)) for s in self.simplices for a in s for b in s if a != b}
        )

    def tensors(self) -> dict[str, Tensor]:
        """The vertices as `vertex{i}.{name}`, for subspace.safetensors."""
        return unshared(
            {f"vertex{i}.{k}": t for i, v in enumerate(self.vertices) for k, t in v.items()}
        )


def gram(stacked: Params, relative: bool = True) -> Tensor:
    """(V, V) float64 Gram matrix of V stacked points, flattened over all their tensors, taken
    relative to the first point (or to the origin). Relative differences are formed first, in the
    tensors' own precision: vertices far from the origin but close together keep their edges
    exact, and no (V, D) float64 copy is made."""
    out = None
    for v in stacked.values():
        y = (v - v[:1] if relative else v).reshape(v.shape[0], -1)
        g = (y @ y.T).double()
        out = g if out is None else out + g
    assert out is not None
    return out


def log_volume_from_gram(G: Tensor) -> Tensor:
    """log of the m-volume of the simplex whose m + 1 vertices have Gram matrix G:
    0.5 log det E - log m!, E the Gram matrix of the edges x_i - x_0,
    E_ab = G_ab - G_a0 - G_0b + G_00 (G may be taken relative to any origin: `gram` uses a
    vertex, so that the cancellation here is between numbers of the edges' own size). G may
    carry leading batch axes (one volume per simplex, in one call)."""
    m = G.shape[-1] - 1
    E = G[..., 1:, 1:] - G[..., 1:, :1] - G[..., :1, 1:] + G[..., :1, :1]
    return 0.5 * torch.logdet(E) - math.lgamma(m + 1)


def log_volume(X: Tensor) -> Tensor:
    """log of the m-volume of the simplex with vertices X[0..m] (rows, flattened points)."""
    E = (X[1:] - X[0]).double()
    m = E.shape[0]
    return 0.5 * torch.logdet(E @ E.T) - math.lgamma(m + 1)


def mean_squared_cosine_from_gram(G: Tensor) -> Tensor:
    """Mean over pairs i < j of cos^2 between the points with Gram matrix G."""
    d = G.diagonal()
    C = G**2 / (d[:, None] * d[None, :])
    i, j = torch.triu_indices(len(G), len(G), 1)
    return C[i, j].mean()


def mean_squared_cosine(X: Tensor) -> Tensor:
    """Mean over pairs i < j of cos^2 between the rows of X (flattened vertices)."""
    X = X.double()
    return mean_squared_cosine_from_gram(X @ X.T)


def vertices_from_tensors(tensors: dict[str, Tensor]) -> list[Params]:
    """Inverse of `SimplicialComplex.tensors`: vertex0..vertex{V-1} parameter dicts."""
    out: dict[int, Params] = {}
    for name, v in tensors.items():
        head, _, key = name.partition(".")
        if not head.startswith("vertex") or not head[6:].isdigit() or not key:
            raise IsthmusError(f"not a subspace file: unexpected tensor {name!r}")
        out.setdefault(int(head[6:]), {})[key] = v
    idx = sorted(out)
    if idx != list(range(len(idx))) or len(idx) < 2:
        raise IsthmusError(f"a subspace file needs vertex0..vertex{{V-1}} (V >= 2), got {idx}")
    return [out[i] for i in idx]


def star(solutions: Sequence[Params], connectors: Sequence[Params], **kw) -> SimplicialComplex:
    """The complex of Benton et al.: N solutions and M shared connectors, one M-simplex per
    solution (the solution plus all connectors); solutions fixed, connectors trainable.
    Vertices are [solutions..., connectors...]; simplex i lists the connectors before solution i
    for even i and after it for odd i (the order only fixes which spacing goes where; with N = 2
    and M = 1 it makes the complex the one-bend chain, see the module doc)."""
    N, M = len(solutions), len(connectors)
    if N < 2 or M < 1:
        raise IsthmusError(f"a complex joins >= 2 solutions with >= 1 connector, got {N} and {M}")
    cons = list(range(N, N + M))
    simplices = [(*cons, i) if i % 2 == 0 else (i, *cons) for i in range(N)]
    return SimplicialComplex([*solutions, *connectors], simplices, fixed=range(N), **kw)
