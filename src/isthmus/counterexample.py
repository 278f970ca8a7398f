"""Disconnected global minima of a wide two-layer ReLU net (Kuditipudi et al. 2019, Theorem 4).

Kuditipudi, Wang, Lee, Zhang, Li, Hu, Ge, Arora, "Explaining landscape connectivity of low-cost
solutions for multilayer nets" (NeurIPS 2019), Theorem 4: overparametrisation alone does not make
the set of global minimisers connected. The paper's construction is not in our sources; this module
implements our own construction and its proof, written out in docs/counterexample.md.

Student (`isthmus.models.MLP(d_in, h, depth=2, num_classes=1, bias=False)`), inputs carry a
constant-1 last coordinate, no output bias: f(x) = sum_k v_k relu(w_k . (x, 1)).
Teacher (two units, one negative output weight): g(x) = relu(t) - relu(2t - 1), t the last input
coordinate before the constant (a tent in t: 0 for t <= 0 and t = 1, positive for 0 < t < 1).

Data (the "pyramid", any h >= 3): zero-labelled samples at the apex (0, 0) and the base vertices
(b, 1) of a pyramid C over a polytope B in R^k; one positive sample just outside the centre of each
of h lateral facets. h = 2: zeros (0, 0), (0, 1) and positives (+-1, 1/2), i.e. h + 2 = 4 samples.
Every unit of an exact fit with output weights v >= 0 vanishes on C, and (Lemma 3 of the doc) such
a unit is active on at most one positive sample. Hence exact fits with all v_k > 0 need all h units,
one per positive sample, and form a set that is open and closed in the zero-loss set; the teacher
(v_2 = -1) is not in it. Samples: 4 for h = 2; 2h + 1 for base="polygon"; h + s + 1 with
s(s - 3)/2 >= h for base="cyclic4". The paper's h + 2 is reached only for h = 2 (doc, section 6).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linprog
from scipy.spatial import ConvexHull
from torch import Tensor
from torch.func import functional_call

from .errors import IsthmusError
from .models import MLP
from .seeding import derive_seed, generator

Params = dict[str, Tensor]
BASES = ("polygon", "cyclic4")


@dataclass(frozen=True)
class Construction:
    """Geometry of the data set; affine coordinates (u, t), without the constant-1 column.

    positives (h, k+1): positive samples p_i = centres_i + eps * normals_i.
    zeros (V, k+1): zero-labelled samples (apex, then base vertices).
    normals (h, k+1): outward unit normals of the facets hosting the positives; the facet planes
    pass through the apex (the origin), so normals_i . x <= 0 on C.
    rho: min distance from a facet centre to that facet's relative boundary; delta: min angle
    between two of the used normals. Lemma 3 needs eps < rho * tan(delta / 2).
    """

    h: int
    base: str
    positives: np.ndarray
    zeros: np.ndarray
    normals: np.ndarray
    centres: np.ndarray
    eps: float
    rho: float
    delta: float

    @property
    def d_in(self) -> int:
        return self.positives.shape[1] + 1


def _base_points(h: int, base: str) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Vertices of B and h of its facets (vertex index tuples)."""
    if base == "polygon":  # regular h-gon: h edges
        th = 2 * np.pi * np.arange(h) / h
        return np.stack([np.cos(th), np.sin(th)], 1), [(j, (j + 1) % h) for j in range(h)]
    s = 5  # cyclic 4-polytope on the trigonometric moment curve: s(s-3)/2 facets
    while s * (s - 3) // 2 < h:
        s += 1
    th = 2 * np.pi * np.arange(s) / s
    B = np.stack([np.cos(th), np.sin(th), np.cos(2 * th), np.sin(2 * th)], 1)
    facets = sorted(tuple(sorted(int(i) for i in f)) for f in ConvexHull(B).simplices)
    return B, facets[:h]


def _dist_to_affine_hull(p: np.ndarray, Q: np.ndarray) -> float:
    """Euclidean distance from p to the affine hull of the rows of Q."""
    if len(Q) == 1:
        return float(np.linalg.norm(p - Q[0]))
    D = (Q[1:] - Q[0]).T
    coef = np.linalg.lstsq(D, p - Q[0], rcond=None)[0]
    return float(np.linalg.norm(p - Q[0] - D @ coef))


def construction(h: int, base: str = "polygon") -> Construction:
    """The data geometry for student width h (h = 2 uses the 4-sample segment, any base)."""
    if h < 2:
        raise IsthmusError(f"counterexample needs student width h >= 2, got {h}")
    if base not in BASES:
        raise IsthmusError(f"base must be one of {BASES}, got {base!r}")
    if h == 2:  # C = segment from (0,0) to (0,1); its two sides host the positives
        n = np.array([[1.0, 0.0], [-1.0, 0.0]])
        c = np.array([[0.0, 0.5], [0.0, 0.5]])
        return Construction(
            2, base, c + n, np.array([[0.0, 0.0], [0.0, 1.0]]), n, c, 1.0, 0.5, np.pi
        )
    B, facets = _base_points(h, base)
    k = B.shape[1]
    lifted = np.hstack([B, np.ones((len(B), 1))])  # base vertices at t = 1
    inner = np.append(B.mean(0) / 2, 0.5)  # interior point of C
    normals, centres, rho = [], [], np.inf
    for f in facets:
        V = np.vstack([np.zeros(k + 1), lifted[list(f)]])  # apex + base facet, (k+1, k+1)
        nv = np.linalg.svd(lifted[list(f)])[2][-1]  # plane through the apex and the base facet
        nv = -nv if nv @ inner > 0 else nv
        c = V.mean(0)
        # distance from the centroid of a simplex to its relative boundary = min altitude / (k+1)
        alt = min(_dist_to_affine_hull(V[i], np.delete(V, i, 0)) for i in range(len(V)))
        normals.append(nv / np.linalg.norm(nv))
        centres.append(c)
        rho = min(rho, alt / (k + 1))
    N, Cc = np.array(normals), np.array(centres)
    delta = min(
        np.arccos(np.clip(N[i] @ N[j], -1, 1)) for i, j in itertools.combinations(range(h), 2)
    )
    # stay inside Lemma 3's bound and keep t(p_i) in (1/2, 1), where the teacher is 1 - t > 0
    t_room = (k / (k + 1) - 0.5) / max(1e-12, float(np.abs(N[:, -1]).max()))
    eps = 0.5 * min(rho * np.tan(delta / 2), t_room)
    return Construction(
        h, base, Cc + eps * N, np.vstack([np.zeros(k + 1), lifted]), N, Cc, eps, rho, delta
    )


def _aug(P: np.ndarray) -> Tensor:
    return torch.tensor(np.hstack([P, np.ones((len(P), 1))]), dtype=torch.float64)


def student(h: int, base: str = "polygon") -> MLP:
    """The h-unit student as an isthmus MLP (float64, no biases: the constant input is the bias)."""
    return MLP(construction(h, base).d_in, h, 2, 1, bias=False).double().eval()


def forward(params: Params, X: Tensor) -> Tensor:
    """Student output (n,) at parameters `params` (state dict of `student`)."""
    W, v = params["layers.0.weight"], params["layers.1.weight"][0]
    return torch.relu(X @ W.T) @ v


def teacher_params(h: int, base: str = "polygon") -> Params:
    """Teacher relu(t) - relu(2t - 1) in slots 0, 1 of the h-unit student; other slots zero."""
    d = construction(h, base).d_in
    W = torch.zeros(h, d, dtype=torch.float64)
    W[0, d - 2], W[1, d - 2], W[1, d - 1] = 1.0, 2.0, -1.0
    v = torch.zeros(1, h, dtype=torch.float64)
    v[0, 0], v[0, 1] = 1.0, -1.0
    return {"layers.0.weight": W, "layers.1.weight": v}


def make_dataset(h: int, base: str = "polygon") -> tuple[Tensor, Tensor]:
    """(X, y): positives first (rows 0..h-1), then zeros; X has a constant-1 last column.

    Labels are the teacher's outputs, so the teacher fits them exactly.
    """
    c = construction(h, base)
    X = _aug(np.vstack([c.positives, c.zeros]))
    return X, forward(teacher_params(h, base), X)


def positive_params(h: int, base: str = "polygon") -> Params:
    """The all-positive exact fit: unit i is relu(n_i . x - eps/2), active only at p_i."""
    c = construction(h, base)
    X, y = make_dataset(h, base)
    W = torch.tensor(np.hstack([c.normals, np.full((h, 1), -c.eps / 2)]), dtype=torch.float64)
    return {"layers.0.weight": W, "layers.1.weight": (y[:h] / (c.eps / 2))[None, :].clone()}


def minimisers(h: int, base: str = "polygon") -> tuple[Params, Params]:
    """(teacher fit, all-positive fit): exact fits in different components of the zero set."""
    return teacher_params(h, base), positive_params(h, base)


def loss(params: Params, X: Tensor, y: Tensor) -> Tensor:
    """Mean squared error (zero exactly on the global minimisers)."""
    return ((forward(params, X) - y) ** 2).mean()


def invariant(params: Params, X: Tensor, rel_tol: float = 1e-9) -> tuple[int, ...] | None:
    """Which sample each unit serves, if all output weights are positive; None otherwise.

    On the zero-loss set this is locally constant (doc, Theorem 1): None on the teacher's side;
    on the all-positive side a bijection units -> positive samples (so that side has >= h!
    components). A unit counts as active at a row if its pre-activation exceeds rel_tol times its
    largest one, so slightly inexact fits from training are classified too.
    """
    W, v = params["layers.0.weight"], params["layers.1.weight"][0]
    if bool((v <= 0).any()):
        return None
    pre = X @ W.T  # (n, h)
    top = pre.max(0).values
    if bool((top <= 0).any()):
        return None
    act = pre > rel_tol * top
    if bool((act.sum(0) != 1).any()):
        return None
    return tuple(int(i) for i in act.float().argmax(0))


# ----------------------------------------------------------------------------- proof checks


def check_labels(h: int, base: str = "polygon") -> dict[str, float]:
    """Teacher labels: exactly 0 on the zero samples, positive on the others."""
    X, y = make_dataset(h, base)
    return {
        "min_positive_label": float(y[:h].min()),
        "max_abs_zero_label": float(y[h:].abs().max()),
    }


def check_blocking(h: int, base: str = "polygon") -> float:
    """Lemma 3 by LP: max over pairs i<j of max_l min(l(p_i), l(p_j)) s.t. l <= 0 on zeros.

    l ranges over affine maps with coefficients in [-1, 1]; a value <= 0 (up to LP tolerance)
    means no admissible unit is active at two positive samples.
    """
    c = construction(h, base)
    d = c.d_in
    A_zero = np.hstack([c.zeros, np.ones((len(c.zeros), 1)), np.zeros((len(c.zeros), 1))])
    worst = -np.inf
    for i, j in itertools.combinations(range(h), 2):
        rows = [np.append(-np.append(c.positives[m], 1.0), 1.0) for m in (i, j)]  # s - l(p) <= 0
        res = linprog(
            np.append(np.zeros(d), -1.0),
            A_ub=np.vstack([A_zero, rows]),
            b_ub=np.zeros(len(A_zero) + 2),
            bounds=[(-1, 1)] * d + [(None, 1)],
            method="highs",
        )
        worst = max(worst, -res.fun)
    return float(worst)


def check_epsilon(h: int, base: str = "polygon") -> dict[str, float]:
    """eps against Lemma 3's bound rho * tan(delta/2), and the t-range of the positives."""
    c = construction(h, base)
    t = c.positives[:, -1]
    bound = float(c.rho * np.tan(c.delta / 2))
    return {"eps": float(c.eps), "bound": bound, "t_min": float(t.min()), "t_max": float(t.max())}


def check_private_units(h: int, base: str = "polygon") -> bool:
    """Each unit of the positive fit is active at exactly its own positive sample."""
    X, _ = make_dataset(h, base)
    pre = X @ positive_params(h, base)["layers.0.weight"].T
    return bool(torch.equal(pre > 0, torch.eye(len(X), h, dtype=torch.bool)))


def random_admissible_units(h: int, n: int, *, seed: int, base: str = "polygon") -> Tensor:
    """n random units (rows (w, b), (n, d_in)) aimed at the positives, made admissible.

    w = normal_i + s * noise with i uniform and s log-uniform in [1e-3, 10]; then
    b = -max_z w.z - slack * max(w.p_i - max_z w.z, 0), slack ~ U(0, 2), so l <= 0 at every zero
    sample and about half of the units are active at p_i. Lemma 3: none is active at two positives.
    """
    c = construction(h, base)
    g = generator(seed, 0, 61)
    i = torch.randint(h, (n,), generator=g)
    s = 10 ** (4 * torch.rand(n, generator=g, dtype=torch.float64) - 3)
    noise = torch.randn(n, c.d_in - 1, generator=g, dtype=torch.float64)
    w = torch.tensor(c.normals)[i] + s[:, None] * noise
    top = (w @ torch.tensor(c.zeros).T).max(1).values
    gap = ((w * torch.tensor(c.positives)[i]).sum(1) - top).clamp_min(0)
    slack = 2 * torch.rand(n, generator=g, dtype=torch.float64)
    return torch.cat([w, -(top + slack * gap)[:, None]], 1)


def active_positives(units: Tensor, h: int, base: str = "polygon") -> Tensor:
    """Number of positive samples each unit (rows of `units`, (n, d_in)) is active on."""
    X, _ = make_dataset(h, base)
    return ((X[:h] @ units.T) > 0).sum(0)


def path_within_positive_class(h: int, base: str = "polygon", steps: int = 11) -> list[Params]:
    """Exact fits: move every unit's offset from -eps/4 to -3eps/4 and rescale (w_k, v_k) by a_k.

    Both moves keep each unit active only at its own sample and the fitted values unchanged.
    """
    c = construction(h, base)
    P = positive_params(h, base)
    y_pos = P["layers.1.weight"][0] * c.eps / 2
    a = torch.linspace(0.5, 2.0, h, dtype=torch.float64)
    out = []
    for s in torch.linspace(0, 1, steps, dtype=torch.float64):
        off = c.eps * (0.25 + 0.5 * s)
        scale = 1 + s * (a - 1)
        W = P["layers.0.weight"].clone()
        W[:, -1] = -off
        v = y_pos / (c.eps - off)
        out.append({"layers.0.weight": W * scale[:, None], "layers.1.weight": (v / scale)[None, :]})
    return out


def path_within_teacher_class(
    h: int, base: str = "polygon", steps: int = 11, *, seed: int = 0
) -> list[Params]:
    """Exact fits: spare units (v = 0) move freely; the two teacher units are rescaled."""
    T = teacher_params(h, base)
    g = generator(seed, 0, 63)
    target = torch.randn(T["layers.0.weight"].shape, generator=g, dtype=torch.float64)
    out = []
    for s in torch.linspace(0, 1, steps, dtype=torch.float64):
        W, v = T["layers.0.weight"].clone(), T["layers.1.weight"].clone()
        W[2:] = s * target[2:]
        W[:2], v[0, :2] = W[:2] * (1 + s), v[0, :2] / (1 + s)
        out.append({"layers.0.weight": W, "layers.1.weight": v})
    return out


def _lbfgs_fit(model: MLP, X: Tensor, y: Tensor, max_iter: int) -> Params:
    """One full-batch float64 L-BFGS run from the model's current parameters."""
    p = {k: t.detach().clone().requires_grad_() for k, t in model.state_dict().items()}
    opt = torch.optim.LBFGS(
        list(p.values()),
        max_iter=max_iter,
        tolerance_grad=1e-14,
        tolerance_change=1e-18,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        val = ((functional_call(model, p, (X,))[:, 0] - y) ** 2).mean()
        val.backward()
        return val

    opt.step(closure)
    return {k: t.detach() for k, t in p.items()}


def find_minimisers(
    h: int, n_starts: int, seed: int, base: str = "polygon", max_iter: int = 500
) -> list[dict]:
    """Train from n_starts random (PyTorch default) inits; returns [{params, loss, invariant}].

    Evidence only: which side of the zero set (teacher-like or all-positive) training reaches.
    """
    X, y = make_dataset(h, base)
    model = student(h, base)
    torch.manual_seed(seed)
    runs = []
    for _ in range(n_starts):
        for layer in model.layers:
            layer.reset_parameters()
        q = _lbfgs_fit(model, X, y, max_iter)
        runs.append({"params": q, "loss": float(loss(q, X, y)), "invariant": invariant(q, X)})
    return runs


# ----------------------------------------------------------------------------- the experiment


def ordinary_dataset(h: int, n: int | None = None, seed: int = 0, base: str = "polygon"):
    """Control: n generic points (default h + 2) in the student's input space, same teacher labels."""
    d = construction(h, base).d_in
    g = generator(seed, 0, 65)
    n = h + 2 if n is None else n
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    X[:, -1] = 1.0  # the constant coordinate that plays the role of the hidden biases
    y = forward(teacher_params(h, base), X)
    return X, y


def _as_dataset(name: str, X: Tensor, y: Tensor):
    from .data import Dataset

    y2 = y.reshape(len(y), 1)
    return Dataset(name, X, y2, X, y2, 1, "regression", (X.shape[1],))


def _searches(model: MLP, a: Params, b: Params, data, seed: int, epochs: int, steps: int) -> dict:
    """Straight line, fitted one-bend Bezier curve and AutoNEB between a and b (loss = MSE)."""
    from .paths import evaluate_path, line
    from .paths.bezier import BezierPath
    from .paths.fit import FitConfig, fit_curve
    from .paths.neb import NEBConfig, connect_neb

    n = len(data.x_train)
    fit_cfg = FitConfig(epochs=epochs, batch_size=n, optimizer="adam", lr=1e-2, samples=8)
    fit = fit_curve(model, BezierPath.on_line(a, b, 1), data, fit_cfg, seed=seed, progress=False)
    neb_cfg = NEBConfig(optimizer="adam", lr=1e-2, steps=steps, spring=1.0)
    neb, _ = connect_neb(model, a, b, data, neb_cfg, batch_size=n, seed=seed, progress=False)
    out = {}
    for name, path in (("line", line(a, b)), ("bezier", fit.path), ("neb", neb)):
        r = evaluate_path(model, path, data, points=101)
        out[name] = {"max_loss": max(r.train_loss), "t": r.t, "loss": r.train_loss}
    return out


FIT_ATTEMPTS = 20  # random inits tried per exact fit of the control data
FIT_TOL = 1e-12  # mean squared error that counts as an exact fit


def _exact_fit(
    h: int, base: str, X: Tensor, y: Tensor, *, seed: int, which: int
) -> tuple[Params, int]:
    """An exact fit (loss <= FIT_TOL) of the control data by L-BFGS, from the first of up to
    FIT_ATTEMPTS random inits that reaches one (L-BFGS can stop in a local minimum), and how many
    inits it took. Fit `which` (0 or 1) draws its own inits, so the two fits differ."""
    for k in range(FIT_ATTEMPTS):
        torch.manual_seed(derive_seed(seed, which * FIT_ATTEMPTS + k, 69))  # a module's init
        q = _lbfgs_fit(student(h, base).double(), X, y, max_iter=2000)
        if float(loss(q, X, y)) <= FIT_TOL:
            return q, k + 1
    raise IsthmusError(
        f"no exact fit of the control data in {FIT_ATTEMPTS} L-BFGS runs (h = {h}, seed {seed}); "
        "try another --seed"
    )


def experiment(
    h: int, *, seed: int = 0, epochs: int = 2000, steps: int = 300, base: str = "polygon"
) -> dict:
    """Bezier and AutoNEB between minimisers in different components (they must keep a barrier:
    the theorem says no zero-loss path exists) vs the same searches on ordinary data, between two
    exact fits found by L-BFGS from different inits (`_exact_fit`: loss <= FIT_TOL, or an error).

    A search's failure is evidence only; the disconnection itself is the proof in
    docs/counterexample.md.
    """
    model = student(h, base).double()
    X, y = make_dataset(h, base)
    a, b = minimisers(h, base)
    special = _searches(model, a, b, _as_dataset("counterexample", X, y), seed, epochs, steps)
    Xo, yo = ordinary_dataset(h, seed=seed, base=base)
    (fa, na), (fb, nb) = (_exact_fit(h, base, Xo, yo, seed=seed, which=w) for w in (0, 1))
    fits = [fa, fb]
    ordinary = _searches(
        model, fits[0], fits[1], _as_dataset("ordinary", Xo, yo), seed, epochs, steps
    )
    return {
        "h": h,
        "samples": len(X),
        "seed": seed,
        "endpoint_loss": {
            "counterexample": [float(loss(p, X, y)) for p in (a, b)],
            "ordinary": [float(loss(p, Xo, yo)) for p in fits],
        },
        "ordinary_fit_attempts": [na, nb],
        "invariant": [invariant(a, X), invariant(b, X)],
        "counterexample": special,
        "ordinary": ordinary,
    }
