"""Curvature of a loss at a point: Hessian-vector products, top eigenvalues, trace and density.

* Hessian-vector products by forward-over-reverse differentiation (Pearlmutter 1994):
  H v = d/de grad L(theta + e v) at e = 0, with `torch.func.jvp` of `torch.func.grad`; the
  Hessian is never formed. A net's loss is the mean over the whole training split (in batches,
  weighted by batch size), the module in eval mode; a BatchNorm net first gets its statistics
  recomputed at the point by the BatchNorm policy of docs/definitions.md (the Hessian is then
  taken with those statistics fixed). A `Landscape` is differentiated directly.
* Top eigenvalues by the Lanczos iteration with full reorthogonalisation (Lanczos 1950; Golub &
  Van Loan, "Matrix Computations", section 10.1), run until the Ritz residuals of the top k fall
  below a tolerance.
* Trace by Hutchinson's estimator (Hutchinson 1989): tr H = E[v^T H v] for Rademacher v, with the
  standard error of the mean over probes.
* Spectral density by stochastic Lanczos quadrature (Golub & Meurant 1994; Ubaru, Chen, Saad 2017;
  used on nets by Ghorbani, Krishnan, Xiao 2019 and PyHessian, Yao et al. 2020): m Lanczos steps
  from a random unit vector give a tridiagonal T with eigenpairs (theta_j, y_j); the nodes are the
  theta_j and the weights the *squared first components* (e_1^T y_j)^2, which makes the quadrature
  exact for polynomials of degree < 2m: sum_j w_j theta_j^p = v^T H^p v. Averaged over probes, the
  nodes and weights estimate the spectral measure (1/D) sum_i delta(lambda_i).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from .data import Dataset
from .errors import IsthmusError
from .landscape import KEY, Landscape, is_landscape
from .params import Params, batches, bn_subset, flatten, has_bn, loss_sum, recompute_bn, unflatten
from .progress import bar, stage
from .seeding import generator

MatVec = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class HessianOperator:
    """v -> H v at a fixed point, for flat vectors of length `dim` (`dtype`, `device`)."""

    dim: int
    matvec: MatVec
    dtype: torch.dtype
    device: torch.device


def hessian_operator(
    target: nn.Module | Landscape,
    point: Params | Tensor,
    data: Dataset | None = None,
    *,
    keys: Sequence[str] | None = None,
    examples: int | None = None,
    batch_size: int | None = 1000,
    bn_ready: bool = False,
) -> HessianOperator:
    """The Hessian of the training loss at `point`, as a matrix-free operator.

    Args:
      target: a module (with `data`) or a Landscape (then `point` is a vector or {"x": vector}).
      keys: the parameter tensors the Hessian is taken over (default: every trainable tensor
        present; a subset gives that diagonal block, e.g. one layer's).
      examples: use only the first `examples` training examples (default: the whole split).
      batch_size: examples per forward pass (None = all at once).
      bn_ready: the point's BatchNorm statistics are already recomputed by the policy (by
        `bn_point`), so they are not recomputed here (`summarize` does it once for all blocks).
    """
    if is_landscape(target):
        x0 = point[KEY] if isinstance(point, dict) else torch.as_tensor(point)
        x0 = x0.detach().reshape(-1)

        def f(x: Tensor) -> Tensor:
            return target.loss(x[None])[0]

        g = grad(f)
        return HessianOperator(
            x0.numel(), lambda v: jvp(g, (x0,), (v.to(x0),))[1], x0.dtype, x0.device
        )
    if data is None:
        raise IsthmusError("the Hessian of a module's loss needs data (a Dataset)")
    if not isinstance(point, dict):
        raise IsthmusError("a module's point is a parameter dict (params_of(model) or a run's)")
    trainable = [n for n, _ in target.named_parameters() if n in point]
    keys = trainable if keys is None else list(keys)
    missing = [k for k in keys if k not in trainable]
    if missing or not keys:
        raise IsthmusError(f"keys must name trainable tensors of the model; not found: {missing}")
    like = {k: v.detach() for k, v in point.items()} if bn_ready else bn_point(target, point, data)
    x0 = flatten(like, keys)
    n = len(data.x_train) if examples is None else min(examples, len(data.x_train))
    xs, ys = data.x_train[:n], data.y_train[:n]
    parts = list(batches(n, batch_size))

    def batch_loss(x: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
        out = functional_call(target, unflatten(x, like, keys), (xb.to(x.dtype),))
        return loss_sum(out, yb, data.loss)[0] / n  # the full mean, batch by batch

    g = grad(batch_loss)

    def matvec(v: Tensor) -> Tensor:
        was_training = target.training
        target.eval()
        try:
            out = torch.zeros_like(x0)
            for s in parts:
                out = out + jvp(lambda x, s=s: g(x, xs[s], ys[s]), (x0,), (v.to(x0),))[1]
            return out
        finally:
            target.train(was_training)

    return HessianOperator(x0.numel(), matvec, x0.dtype, x0.device)


def bn_point(model: nn.Module, point: Params, data: Dataset) -> Params:
    """`point` detached, with a BatchNorm net's statistics recomputed at it by the BatchNorm
    policy (the Hessian is then taken in eval mode with them fixed); other nets as they are."""
    like = {k: v.detach() for k, v in point.items()}
    return recompute_bn(model, like, bn_subset(data.x_train)) if has_bn(model) else like


# ----------------------------------------------------------------------------- Lanczos


BLOCK_ROWS = 16  # basis vectors per preallocated block


@dataclass
class LanczosState:
    """The Krylov basis q_1..q_m (rows of `basis`) and the tridiagonal T (alpha, beta).

    The basis vectors are rows of fixed-size blocks, so that reorthogonalising against the whole
    basis multiplies by views of the blocks and never copies the basis (a stacked copy of m
    vectors each step doubled the memory of a large net's basis and cost m x dim copying).
    """

    basis: list[Tensor] = field(default_factory=list)
    alpha: list[float] = field(default_factory=list)
    beta: list[float] = field(default_factory=list)  # beta[j] couples q_j and q_{j+1}
    exhausted: bool = False  # an invariant subspace was found: T's spectrum is exact
    blocks: list[Tensor] = field(default_factory=list, repr=False)

    def append(self, q: Tensor) -> None:
        """Add q to the basis (a copy into the next free row of a block)."""
        j = len(self.basis)
        if j == len(self.blocks) * BLOCK_ROWS:
            self.blocks.append(q.new_empty(BLOCK_ROWS, q.numel()))
        row = self.blocks[j // BLOCK_ROWS][j % BLOCK_ROWS]
        row.copy_(q)
        self.basis.append(row)

    def project_out(self, w: Tensor) -> Tensor:
        """w minus its projection on the basis, block by block."""
        m = len(self.basis)
        for i, block in enumerate(self.blocks):
            Q = block[: min(BLOCK_ROWS, m - i * BLOCK_ROWS)]
            w = w - Q.T @ (Q @ w)
        return w

    def tridiagonal(self) -> Tensor:
        m = len(self.alpha)
        T = torch.diag(torch.tensor(self.alpha, dtype=torch.float64))
        if m > 1:
            off = torch.tensor(self.beta[: m - 1], dtype=torch.float64)
            T = T + torch.diag(off, 1) + torch.diag(off, -1)
        return T


def _unit_start(op: HessianOperator, generator: torch.Generator) -> Tensor:
    v = torch.randn(op.dim, generator=generator, dtype=torch.float64)
    return (v / v.norm()).to(op.device, op.dtype)


def lanczos(op: HessianOperator, steps: int, v0: Tensor, state: LanczosState | None = None):
    """Run (or continue) the Lanczos iteration from unit vector `v0` up to `steps` basis vectors,
    reorthogonalising every new vector against the whole basis twice (so the Ritz values do not
    repeat, as they do in plain Lanczos in floating point)."""
    st = state or LanczosState()
    if len(st.basis) > len(st.blocks) * BLOCK_ROWS:  # a basis given as a plain list: into blocks
        given, st.basis, st.blocks = st.basis, [], []
        for q in given:
            st.append(q)
    if not st.basis:
        st.append(v0 / v0.norm())
    while len(st.alpha) < steps and not st.exhausted:
        j = len(st.alpha)
        q = st.basis[j]
        w = op.matvec(q)
        a = float(torch.dot(w.double(), q.double()))
        st.alpha.append(a)
        w = w - a * q - (st.beta[j - 1] * st.basis[j - 1] if j > 0 else 0)
        for _ in range(2):
            w = st.project_out(w)
        b = float(w.double().norm())
        if b <= 1e-10 * max(1.0, abs(a)) or len(st.basis) >= op.dim:
            st.exhausted = True
            break
        st.beta.append(b)
        st.append(w / b)
    return st


@dataclass(frozen=True)
class Eigen:
    """Top eigenvalues (descending), their Ritz residuals ||H y - theta y||, Lanczos steps used."""

    values: list[float]
    residuals: list[float]
    steps: int
    converged: bool


def top_eigenvalues(
    op: HessianOperator,
    k: int = 1,
    *,
    tol: float = 1e-3,
    max_steps: int = 200,
    seed: int = 0,
) -> Eigen:
    """The k algebraically largest eigenvalues, to relative Ritz residual `tol` (or max_steps).

    The residual of Ritz pair (theta, y) after m steps is beta_m |e_m^T s| (s the eigenvector of T),
    the exact ||H y - theta y|| of the Ritz vector: checked, not assumed. It is checked after every
    step past the first 2k + 8 (at least 16; at most max_steps, at least k), so the iteration
    stops at the first step that meets `tol` and spends no Hessian-vector product beyond it.
    Lanczos steps = Hessian-vector products.
    """
    if k < 1 or k > op.dim:
        raise IsthmusError(f"k must be in 1..{op.dim} (the dimension), got {k}")
    gen = generator(seed, 0, 67)  # the Lanczos start
    st = LanczosState()
    v0 = _unit_start(op, gen)
    steps = min(op.dim, max(k, min(max_steps, max(2 * k + 8, 16))))  # max_steps is honoured
    while True:
        st = lanczos(op, steps, v0, st)
        theta, S = torch.linalg.eigh(st.tridiagonal())
        m = len(st.alpha)
        last = st.beta[m - 1] if (len(st.beta) >= m and not st.exhausted) else 0.0
        res = (last * S[-1, :]).abs()
        top = torch.argsort(theta, descending=True)[:k]
        vals, r = theta[top], res[top]
        scale = max(float(theta.abs().max()), 1e-30)
        ok = bool((r <= tol * scale).all()) and len(top) == k
        if ok or st.exhausted or m >= min(max_steps, op.dim):
            return Eigen(vals.tolist(), r.tolist(), m, ok or st.exhausted)
        steps = min(op.dim, max_steps, m + 1)  # the check is an m x m eigh: free next to a HVP


@dataclass(frozen=True)
class Trace:
    """Hutchinson estimate of tr H, its standard error over probes, and the probes used."""

    estimate: float
    stderr: float
    probes: int


def hutchinson_trace(
    op: HessianOperator, probes: int = 100, *, seed: int = 0, progress: bool | None = False
) -> Trace:
    """tr H ~ mean of v^T H v over Rademacher v (unbiased; the standard error is std / sqrt(n))."""
    if probes < 2:
        raise IsthmusError(f"probes must be >= 2 for a standard error, got {probes}")
    gen = generator(seed, 0, 71)  # the Rademacher probes
    vals = []
    for _ in bar(range(probes), progress=progress, desc="trace probes", leave=False):
        v = (torch.randint(0, 2, (op.dim,), generator=gen) * 2 - 1).to(op.device, op.dtype)
        vals.append(float(torch.dot(op.matvec(v).double(), v.double())))
    t = torch.tensor(vals, dtype=torch.float64)
    return Trace(float(t.mean()), float(t.std() / math.sqrt(probes)), probes)


@dataclass(frozen=True)
class Density:
    """Stochastic Lanczos quadrature: nodes and weights per probe ((probes, m) each); the weights
    of one probe sum to 1, and all of them together estimate the spectral measure."""

    nodes: list[list[float]]
    weights: list[list[float]]

    def smoothed(self, grid: Tensor, sigma: float) -> Tensor:
        """The density on `grid`: a Gaussian of width sigma at every node, averaged over probes."""
        out = torch.zeros_like(grid, dtype=torch.float64)
        for th, w in zip(self.nodes, self.weights, strict=True):
            th_t, w_t = torch.tensor(th, dtype=torch.float64), torch.tensor(w, dtype=torch.float64)
            z = (grid.double()[:, None] - th_t[None]) / sigma
            out += (w_t[None] * torch.exp(-0.5 * z * z)).sum(1) / (sigma * math.sqrt(2 * math.pi))
        return out / len(self.nodes)


def quadrature(st: LanczosState) -> tuple[Tensor, Tensor]:
    """Nodes theta_j and weights (e_1^T y_j)^2 of one Lanczos run (Gauss quadrature of its probe)."""
    theta, Y = torch.linalg.eigh(st.tridiagonal())
    return theta, Y[0, :] ** 2


def spectral_density(
    op: HessianOperator,
    probes: int = 10,
    steps: int = 80,
    *,
    seed: int = 0,
    progress: bool | None = False,
) -> Density:
    """Stochastic Lanczos quadrature with `probes` random unit starts of `steps` steps each."""
    gen = generator(seed, 0, 73)  # the quadrature probes
    nodes, weights = [], []
    for _ in bar(range(probes), progress=progress, desc="density probes", leave=False):
        st = lanczos(op, min(steps, op.dim), _unit_start(op, gen))
        theta, w = quadrature(st)
        nodes.append(theta.tolist())
        weights.append(w.tolist())
    return Density(nodes, weights)


def layer_groups(model: nn.Module, point: Params) -> dict[str, list[str]]:
    """Trainable tensors grouped by the module that owns them ("layers.0": weight and bias)."""
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        if name in point:
            groups.setdefault(name.rpartition(".")[0] or name, []).append(name)
    return groups


# ----------------------------------------------------------------------------- one summary


@dataclass(frozen=True)
class HessianSummary:
    """What `isthmus hessian` reports at one point (hessian.json): the top eigenvalues, and on
    request the trace, the spectral density and the same per layer."""

    examples: int
    eigenvalues: list[float]
    residuals: list[float]
    lanczos_steps: int
    converged: bool
    trace: Trace | None = None
    density: Density | None = None
    per_layer: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def summarize(
    model: nn.Module,
    params: Params,
    data: Dataset,
    *,
    top: int = 5,
    trace: bool = False,
    density: bool = False,
    per_layer: bool = False,
    examples: int | None = None,
    batch_size: int | None = 1000,
    probes: int = 100,
    density_probes: int = 10,
    density_steps: int = 80,
    tol: float = 1e-3,
    seed: int = 0,
    progress: bool | None = None,
) -> HessianSummary:
    """Top `top` eigenvalues of the training-loss Hessian at `params` (Lanczos to relative Ritz
    residual `tol`), plus Hutchinson's trace (`probes` Rademacher vectors), the SLQ density and
    per-layer blocks (top eigenvalue and trace of each layer's diagonal block) on request.
    `progress`: a line per stage and a bar per probe loop (`progress` module)."""
    params = bn_point(model, params, data)  # once, for the whole Hessian and every block
    kw = dict(examples=examples, batch_size=batch_size, bn_ready=True)
    op = hessian_operator(model, params, data, **kw)
    stage(f"top {min(top, op.dim)} eigenvalues (Lanczos, {op.dim:,} parameters)", progress=progress)
    eig = top_eigenvalues(op, min(top, op.dim), tol=tol, seed=seed)
    layers = {}
    if per_layer:
        groups = layer_groups(model, params)
        stage(f"per-layer blocks ({len(groups)})", progress=progress)
        for name, keys in bar(groups.items(), progress=progress, desc="layers", total=len(groups)):
            block = hessian_operator(model, params, data, keys=keys, **kw)
            e = top_eigenvalues(block, 1, tol=tol, seed=seed)
            t = hutchinson_trace(block, probes, seed=seed) if trace else None
            layers[name] = {
                "parameters": block.dim,
                "top_eigenvalue": e.values[0],
                "trace": None if t is None else {"estimate": t.estimate, "stderr": t.stderr},
            }
    n = len(data.x_train) if examples is None else min(examples, len(data.x_train))
    tr = dens = None
    if trace:
        stage(f"Hutchinson trace ({probes} probes)", progress=progress)
        tr = hutchinson_trace(op, probes, seed=seed, progress=progress)
    if density:
        stage(f"spectral density ({density_probes} probes)", progress=progress)
        dens = spectral_density(op, density_probes, density_steps, seed=seed, progress=progress)
    return HessianSummary(n, eig.values, eig.residuals, eig.steps, eig.converged, tr, dens, layers)
