"""The wedge model of the loss landscape (Fort & Jastrzebski 2019), as a simulator.

Fort & Jastrzebski describe the low-loss set of a deep net as a union of n-dimensional wedges in
R^D: near any point a wedge is an n-dimensional slab, thin in the other D - n directions and
wider farther from the origin; wedges lie in many orientations and together form one connected
structure. Their full text is not among our sources, so the concrete model here is our design
from that description (docs/large_scale.md):

    wedge k: a random n-dimensional subspace U_k through the origin (orthonormal basis, D x n);
    radius along it r_k(x) = ||U_k^T x||, distance from it p_k(x) = ||x - U_k U_k^T x||;
    thickness w(r) = w0 + alpha r; scaled distance u_k = p_k / w(r_k);
    loss L(x) = min_k u_k^2   (or the softmin  -T log sum_k exp(-u_k^2 / T)).

Across wedge k at radius r the loss is p^2 / w(r)^2, so its curvature there is 2 / w(r)^2: it
falls as the wedge widens outward. Gradient descent with step eta cannot settle where the
curvature exceeds 2 / eta, and off the wedge the loss also falls with r (the thickness grows), so
larger steps end farther out, in wider and flatter parts: the mechanism this module lets one
measure (`descend` over a whole population of starts in one batched call).

`WedgeModel` implements the `landscape.Landscape` protocol, so lines, fitted curves, AutoNEB,
planes and `curvature` run on it unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import IsthmusError
from .progress import bar
from .seeding import generator


@dataclass(frozen=True)
class WedgeConfig:
    """Sizes and shape of a wedge landscape (defaults: the benchmark's D = 200, n = 120, K = 6)."""

    dim: int = 200  # D, the dimension of the space
    wedge_dim: int = 120  # n, the dimension of every wedge
    wedges: int = 6  # K
    w0: float = 0.05  # thickness at the origin
    alpha: float = 0.1  # growth of the thickness with radius
    temperature: float = 0.0  # 0: hard min over wedges; > 0: softmin at this temperature

    def validate(self) -> None:
        checks = [
            (1 <= self.dim <= 100_000, "dim", "must be in 1..100000"),
            (1 <= self.wedge_dim < self.dim, "wedge_dim", "must be in 1..dim-1"),
            (1 <= self.wedges <= 1000, "wedges", "must be in 1..1000"),
            (
                self.wedges * self.dim * self.dim <= 5 * 10**8,
                "wedges",
                "times dim^2 must be <= 5e8 (the bases and their complements, float64: 4 GB)",
            ),
            (self.w0 > 0 and math.isfinite(self.w0), "w0", "must be a positive number"),
            (self.alpha >= 0 and math.isfinite(self.alpha), "alpha", "must be >= 0"),
            (
                self.temperature >= 0 and math.isfinite(self.temperature),
                "temperature",
                "must be >= 0",
            ),
        ]
        for ok, name, why in checks:
            if not ok:
                raise IsthmusError(f"wedge config: {name} {why}, got {getattr(self, name)!r}")


class WedgeModel:
    """K wedges in R^D (a `Landscape`): `loss(x)` maps (P, D) to (P,), differentiably.

    Distances are computed from an orthonormal basis of each wedge's orthogonal complement,
    p_k^2 = ||V_k^T x||^2 (V_k: D x (D - n)): exact near a wedge, where it matters (no
    cancellation of ||x||^2 - r^2), and cheaper than projecting onto U_k when n > D/2.
    `loss_and_grad` gives the analytic gradient that `descend` uses (checked against finite
    differences and autograd in the tests).
    """

    def __init__(self, bases: Tensor, w0: float, alpha: float, temperature: float = 0.0):
        if bases.dim() != 3:
            raise IsthmusError(f"bases must be (K, D, n), got shape {tuple(bases.shape)}")
        self.bases = bases.to(torch.float64)  # (K, D, n), orthonormal columns
        self.wedges, self.dim, self.wedge_dim = bases.shape
        # complements: the last D - n left singular vectors of each basis
        full = torch.linalg.svd(self.bases, full_matrices=True)[0]  # (K, D, D)
        self.complements = full[:, :, self.wedge_dim :].contiguous()  # (K, D, D - n)
        self.w0, self.alpha, self.temperature = float(w0), float(alpha), float(temperature)

    @staticmethod
    def random(cfg: WedgeConfig = WedgeConfig(), *, seed: int = 0) -> WedgeModel:
        """K uniformly random n-dimensional subspaces (QR of Gaussian matrices)."""
        cfg.validate()
        g = generator(seed, 0, 31)
        gauss = torch.randn(cfg.wedges, cfg.dim, cfg.wedge_dim, generator=g, dtype=torch.float64)
        q, r = torch.linalg.qr(gauss)
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]  # a unique basis
        return WedgeModel(q, cfg.w0, cfg.alpha, cfg.temperature)

    def thickness(self, r: Tensor) -> Tensor:
        return self.w0 + self.alpha * r

    def coordinates(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Radius along every wedge r (P, K), squared distance from it p^2 (P, K), and the
        complement coordinates V_k^T x (P, K, D - n)."""
        x = x.reshape(-1, self.dim)
        c = torch.einsum("pd,kdm->pkm", x, self.complements.to(x))
        p2 = (c * c).sum(-1)
        r2 = ((x * x).sum(-1, keepdim=True) - p2).clamp_min(1e-300)
        return r2.sqrt(), p2, c

    def scaled_sq(self, x: Tensor) -> Tensor:
        """u_k^2 = p_k^2 / w(r_k)^2 for every wedge: (P, K)."""
        r, p2, _ = self.coordinates(x)
        return p2 / self.thickness(r) ** 2

    def _combine(self, u2: Tensor) -> tuple[Tensor, Tensor]:
        """The loss over wedges and its weights d loss / d u_k^2: (P,), (P, K)."""
        if self.temperature > 0:
            loss = -self.temperature * torch.logsumexp(-u2 / self.temperature, dim=-1)
            return loss, torch.softmax(-u2 / self.temperature, dim=-1)
        best = u2.argmin(-1)
        weights = torch.zeros_like(u2).scatter_(1, best[:, None], 1.0)
        return u2.gather(1, best[:, None])[:, 0], weights

    def loss(self, x: Tensor) -> Tensor:
        return self._combine(self.scaled_sq(x))[0]

    @torch.no_grad()
    def loss_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Loss (P,) and its gradient (P, D) in closed form.

        With q = V V^T x (the part of x off the wedge), p^2 = ||q||^2, r^2 = ||x||^2 - p^2:
        d u^2 / dx = 2 q / w^2 - 2 alpha p^2 / w^3 * (x - q) / r.
        """
        x = x.reshape(-1, self.dim)
        r, p2, c = self.coordinates(x)
        w = self.thickness(r)
        loss, weights = self._combine(p2 / w**2)
        active = weights > 0  # (P, K): the hard min uses one wedge per point
        grad = torch.zeros_like(x)
        for k in range(self.wedges):  # only the wedges that carry weight are back-projected
            rows = active[:, k].nonzero().flatten()
            if not len(rows):
                continue
            q = c[rows, k] @ self.complements[k].T.to(x)  # (P_k, D)
            wk, rk, pk = w[rows, k, None], r[rows, k, None], p2[rows, k, None]
            gk = 2 * q / wk**2 - 2 * self.alpha * pk / wk**3 * (x[rows] - q) / rk
            grad[rows] += weights[rows, k, None] * gk
        return loss, grad

    def nearest(self, x: Tensor) -> Tensor:
        """Index of the wedge with the smallest scaled distance: (P,)."""
        return self.scaled_sq(x).argmin(-1)

    def radius(self, x: Tensor) -> Tensor:
        """Radius along the nearest wedge: (P,)."""
        r, p2, _ = self.coordinates(x)  # once: the nearest wedge comes from the same numbers
        nearest = (p2 / self.thickness(r) ** 2).argmin(-1)
        return r.gather(1, nearest[:, None])[:, 0]

    def curvature_across(self, r: Tensor) -> Tensor:
        """The loss's curvature across a wedge at radius r (hard min, on the wedge): 2 / w(r)^2."""
        return 2.0 / self.thickness(r) ** 2

    def intersection(self, i: int, j: int, tol: float = 1e-8) -> Tensor:
        """An orthonormal basis (D, m) of U_i intersected with U_j; m = 2n - D generically."""
        Ui, Uj = self.bases[i], self.bases[j]
        # x = Ui a lies in U_j iff (I - Uj Uj^T) Ui a = 0: the null space of that D x n matrix
        m = Ui - Uj @ (Uj.T @ Ui)
        _, s, vh = torch.linalg.svd(m, full_matrices=False)  # s: (n,), descending
        null = vh[s <= tol]  # right singular vectors with singular value ~0
        return Ui @ null.T


@dataclass(frozen=True)
class Descent:
    """Where a population of gradient-descent runs ended: final points and the trajectory summary.

    x: (P, D) final points; loss: (P,) final loss; history: loss and radius every `record` steps,
    (T, P) each; diverged: (P,) runs whose loss became non-finite (their rows are nan).
    """

    x: Tensor
    loss: Tensor
    history_loss: Tensor
    history_radius: Tensor
    diverged: Tensor


def descend(
    model: WedgeModel,
    starts: Tensor,
    lr: float | Tensor,
    steps: int,
    *,
    l2: float | Tensor = 0.0,
    subspace: Tensor | None = None,
    record: int = 10,
    progress: bool | None = None,
) -> Descent:
    """Full-batch gradient descent from every start at once (one batched call per step).

    Args:
      starts: (P, D) initial points.
      lr, l2: a number, or one value per start (P,): many learning rates in one population.
      subspace: (P, D, d) or (D, d): train only z in x = start + A z (random-subspace training).
      record: keep loss and radius every `record` steps.
    The objective is L(x) + l2/2 ||x||^2; the reported loss is L alone.
    """
    x0 = starts.to(torch.float64)
    P = x0.shape[0]
    lr_t = torch.as_tensor(lr, dtype=torch.float64).expand(P)[:, None]
    l2_t = torch.as_tensor(l2, dtype=torch.float64).expand(P)[:, None]
    A = None
    if subspace is not None:
        A = subspace.to(torch.float64).expand(P, *subspace.shape[-2:])
        z = torch.zeros(P, A.shape[-1], dtype=torch.float64)
    hist_l, hist_r = [], []
    x = x0.clone()
    for step in bar(range(steps + 1), progress=progress, desc="descent", unit="step", leave=False):
        loss, g = model.loss_and_grad(x)
        if step % record == 0 or step == steps:
            hist_l.append(loss)
            hist_r.append(model.radius(x))
        if step == steps:
            break
        g = g + l2_t * x
        if A is None:
            x = x - lr_t * g
        else:
            z = z - lr_t * torch.einsum("pdk,pd->pk", A, g)
            x = x0 + torch.einsum("pdk,pk->pd", A, z)
    with torch.no_grad():
        final = model.loss(x)
        bad = ~torch.isfinite(final) | ~torch.isfinite(x).all(1)
        x = torch.where(bad[:, None], torch.full_like(x, float("nan")), x)
    return Descent(x, final, torch.stack(hist_l), torch.stack(hist_r), bad)


def random_starts(dim: int, count: int, radius: float, *, seed: int = 0) -> Tensor:
    """`count` points uniformly on the sphere of the given radius in R^dim: (count, dim)."""
    g = generator(seed, 0, 37)
    v = torch.randn(count, dim, generator=g, dtype=torch.float64)
    return radius * v / v.norm(dim=1, keepdim=True)


def random_subspaces(dim: int, d: int, count: int, *, seed: int = 0) -> Tensor:
    """`count` random d-dimensional directions sets A (D x d, orthonormal columns): (count, D, d)."""
    g = generator(seed, d, 41)
    q, _ = torch.linalg.qr(torch.randn(count, dim, d, generator=g, dtype=torch.float64))
    return q
