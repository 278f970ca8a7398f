"""Fitting families of parameter points: curves between two nets (Garipov et al. 2018, eq. 4) and,
with the same code, k-dimensional families such as simplices joining many nets.

A *family* is built from control points: some are fixed anchors (a curve's endpoints, given
solutions), the others trainable (a curve's bends, connector points), and a sampler draws the
weights of random members (uniform t on a curve, Dirichlet(1, ..., 1) on a simplex). A member is
sum_k w_k control_k (`params.combine`). The fit minimises the expected loss over the family,

    l(trainable controls) = E_{w ~ sampler} L(sum_k w_k control_k)  (+ l2/2 * sum ||trainable||^2),

estimated every step by `samples` members on one minibatch, evaluated together
(`params.mean_loss`: one vmapped call where that pays, else a loop). For a curve this is
Garipov et al.'s objective E_{t ~ U[0, 1]} L(phi(t)) (they draw one t per minibatch; m > 1 lowers
the variance at the same number of steps). Bends start on the straight line (the curve then
equals the line), so the fit starts from the line's loss profile.

The loss is a module on data, or a `Landscape` (no data; one full step per "epoch").
BatchNorm nets are fitted with batch statistics at every point (train-mode BN; the running
statistics of the points are scratch), as Garipov et al. do; evaluating the fitted curve then
uses the BatchNorm policy of docs/definitions.md (`params.evaluate(bn_x=...)`).

Each epoch can be checkpointed atomically (trainable controls + optimiser state); `resume=True`
continues to the same numbers, because batch order and the draws come from generators seeded by
(seed, epoch).
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path as FsPath
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..data import Dataset, cpu_layout
from ..errors import IsthmusError
from ..io import check_resume, load_checkpoint, save_checkpoint
from ..landscape import Landscape, flat, is_landscape
from ..params import Params, batch_loss, batch_statistics, combine, fingerprint, mean_loss
from ..progress import bar
from ..seeding import generator
from ..train import lr_factor
from .bezier import BezierPath
from .chain import ChainPath

Curve = BezierPath | ChainPath
CHECKPOINT = "curve.safetensors"  # controls, optimiser state and counters: one file


@runtime_checkable
class Family(Protocol):
    """A family of parameter points spanned by control points, some fixed, some trainable.

    controls(): the K control points, in the order of the weights; trainable(): indices of the
    controls the fit moves (the others are fixed anchors and never change); sample_weights(n, g):
    (n, K) float64 weights of n random members, drawn from the generator g; with_controls(c): the
    same family over new control points. Curves (BezierPath, ChainPath) are families with K - 2
    trainable bends and t ~ U[0, 1].

    Optionally `penalty_of_gram(gram) -> Tensor | None`: a regulariser added to the objective,
    a function of the controls' flattened (K, K) Gram matrix, `gram(relative)` (relative: of
    control_i - control_0), differentiable in the trainable controls (a simplex's log-volume or
    its vertices' cosines, `isthmus.subspace`); the fit computes the Gram matrix's constant
    block once. With it, optionally `penalty_grad_of_gram(gram) -> {relative: dpenalty/dG}`,
    the same gradient in closed form (else autograd takes it).
    """

    method: str

    def controls(self) -> list[Params]: ...

    def trainable(self) -> list[int]: ...

    def sample_weights(self, n: int, generator: torch.Generator) -> Tensor: ...

    def with_controls(self, controls: list[Params]) -> Family: ...


@dataclass(frozen=True)
class FitConfig:
    """Curve-fitting hyperparameters (stored in path.json under "fit").

    The defaults fit a one-bend Bezier curve between two mnist1d MLPs (width 256, depth 3) to a
    barrier below a quarter of the straight line's in about a minute on 2 CPU cores.
    """

    epochs: int = 20
    optimizer: str = "sgd"  # "sgd" (momentum) | "adam"
    lr: float = 0.1
    momentum: float = 0.9  # SGD momentum; Adam beta1
    schedule: str = "cosine"  # "constant" | "cosine"
    batch_size: int = 128
    samples: int = 4  # values of t per minibatch, evaluated in one vmapped call
    l2: float = 0.0  # coefficient of (l2/2) * sum ||bend||^2
    # the family's penalty every k-th step with k times its weight: lazy regularisation (Karras
    # et al. 2020), the same objective summed over steps at 1/k of the penalty's cost
    penalty_every: int = 1

    def validate(self, source: str = "fit config") -> None:
        checks = [
            (
                isinstance(self.epochs, int) and self.epochs >= 1,
                "epochs",
                "must be an integer >= 1",
            ),
            (self.optimizer in ("sgd", "adam"), "optimizer", "must be 'sgd' or 'adam'"),
            (self.lr > 0 and math.isfinite(self.lr), "lr", "must be a positive number"),
            (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (self.schedule in ("constant", "cosine"), "schedule", "must be constant or cosine"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.samples >= 1, "samples", "must be >= 1 (values of t per minibatch)"),
            (self.l2 >= 0, "l2", "must be >= 0"),
            (
                isinstance(self.penalty_every, int) and self.penalty_every >= 1,
                "penalty_every",
                "must be an integer >= 1",
            ),
        ]
        for ok, name, why in checks:
            if not ok:
                raise IsthmusError(f"{source}: {name} {why}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class FitResult:
    """The fitted family (same class as the initial one; for a curve, the fitted path) and the mean
    objective per epoch."""

    path: Family
    history: list[dict]
    config: FitConfig


class _Controls:
    """The controls, flattened: the trainable ones as one (n_trainable, D) leaf per dtype (one
    tensor for the optimiser), the fixed ones as one constant (n_fixed, D) block.

    A training step builds its members without autograd, backpropagates the loss to the members
    only, and hands each trainable control its share, sum_p w_pk dL/d(member_p) (`members`,
    `distribute`): the gradient autograd would take through sum_k w_k control_k (the same
    products; for several members the same sum, in an order the reduction picks for the shape),
    without recording the combination tensor by tensor (on a small net that was most of a
    step). A family's penalty reads the controls' Gram matrix (`gram`, whose fixed block is
    computed once), and its gradient with respect to that matrix reaches the controls through
    `pull_gram`, again without autograd over the flattened controls."""

    def __init__(self, family: Family, keys: list[str], dev: torch.device):
        cs = family.controls()
        self.order, self.train_idx = len(cs), family.trainable()
        self.fixed_idx = [i for i in range(self.order) if i not in self.train_idx]
        self.like = {k: v.to(dev) for k, v in cs[0].items()}
        self.groups: dict[torch.dtype, list[str]] = {}  # trained tensors, by dtype
        self.trained = set(keys)
        # the entries members take from the controls without training them (buffers, counters)
        self.rest = {k: v for k, v in self.like.items() if k not in self.trained}
        for k in keys:
            self.groups.setdefault(cs[0][k].dtype, []).append(k)

        def block(idx: list[int], ks: list[str]) -> Tensor:
            return torch.stack([torch.cat([cs[i][k].reshape(-1) for k in ks]) for i in idx]).to(dev)

        self.leaves = {
            dt: block(self.train_idx, ks).clone().requires_grad_(True)
            for dt, ks in self.groups.items()
        }
        self.fixed = {
            dt: block(self.fixed_idx, ks) if self.fixed_idx else None
            for dt, ks in self.groups.items()
        }
        # control i is row where[i] of cat([fixed, leaves])
        rank = {i: r for r, i in enumerate(self.fixed_idx + list(self.train_idx))}
        self.where = [rank[i] for i in range(self.order)]
        # floating tensors that are not trained (BN buffers): stacked controls, never moved
        self.frozen = {
            k: torch.stack([c[k] for c in cs]).to(dev)
            for k in self.like
            if torch.is_floating_point(self.like[k]) and k not in keys
        }
        self.family = family
        self._cache: dict[tuple, tuple] = {}
        self._rows: dict[tuple, tuple] = {}  # the Gram matrix's factors, for `pull_gram`

    def split(self, flat: Tensor, dt: torch.dtype) -> Params:
        """(..., D) rows of group `dt` -> its tensors, (..., *shape) each (views where possible)."""
        ks = self.groups[dt]
        parts = flat.split([self.like[k].numel() for k in ks], -1)
        return {
            k: v.reshape(*flat.shape[:-1], *self.like[k].shape)
            for k, v in zip(ks, parts, strict=True)
        }

    def row(self, i: int, dt: torch.dtype) -> Tensor:
        """Control i's flat vector of group `dt` (a view of the leaf for a trainable control)."""
        r, nf = self.where[i], len(self.fixed_idx)
        f = self.fixed[dt]
        return f[r] if r < nf and f is not None else self.leaves[dt][r - nf]

    def members(self, weights: Tensor) -> Params:
        """The members for (P, K) weights, built without autograd with `params.combine`'s
        arithmetic on the flat controls (the same numbers); their trained tensors are leaves
        whose gradients `distribute` hands on. Only the controls with a nonzero weight in some
        row enter (a simplex member has m + 1 of the K controls): the skipped terms are exact
        zeros. One member that is no control (a training step's usual case) is summed here
        directly: `combine`'s bookkeeping cost as much as the sum on a small net."""
        w = weights.detach().cpu()
        if len(w) == 1:
            wl = w[0].tolist()
            used = [i for i, v in enumerate(wl) if v != 0]
        else:
            used = (w != 0).any(0).nonzero().flatten().tolist()
        frozen = {k: v[used] for k, v in self.frozen.items()}
        out = combine(w[:, used], frozen, self.rest) if self.rest else {}
        with torch.no_grad():
            for dt in self.groups:
                rows = [self.row(i, dt) for i in used]
                if len(w) == 1 and len(used) > 1:
                    # combine's terms for one row, left to right (a Python float times a tensor
                    # is the product in the tensor's precision, as with a weight tensor)
                    flat = rows[0] * wl[used[0]]
                    for i, r in zip(used[1:], rows[1:], strict=True):
                        flat = flat + r * wl[i]
                    flat = flat[None]
                else:
                    flat = combine(w[:, used], {"v": rows}, {"v": rows[0]})["v"]
                out.update({k: v.requires_grad_(True) for k, v in self.split(flat, dt).items()})
        return out

    def distribute(self, pts: Params, weights: Tensor) -> None:
        """Add sum_p w_pk dL/d(member_p) to the gradient of every trainable control k, as the
        backward pass of `params.combine` computes it (elementwise products summed over p)."""
        P = weights.shape[0]
        w_all = weights[:, self.train_idx]
        for dt, ks in self.groups.items():
            leaf = self.leaves[dt]
            gs = [torch.zeros_like(pts[k]) if pts[k].grad is None else pts[k].grad for k in ks]
            g = torch.cat([v.reshape(P, -1) for v in gs], 1)
            w = w_all.to(leaf.device, leaf.dtype)  # (P, n_trainable)
            share = w[0][:, None] * g[0] if P == 1 else (w[:, :, None] * g[:, None]).sum(0)
            if leaf.grad is None:
                leaf.grad = share
            else:
                leaf.grad.add_(share)

    def gram(self, relative: bool = True) -> Tensor:
        """(K, K) float64 Gram matrix of the flattened controls (relative: of control_i -
        control_0, differences formed in the tensors' own precision first, so that close
        controls far from the origin keep their edges exact), without autograd: `pull_gram`
        hands a gradient with respect to it on to the leaves. With control 0 fixed, the fixed
        controls' block is computed once and kept."""
        nf = len(self.fixed_idx)
        origin_fixed = 0 in self.fixed_idx
        G = None
        with torch.no_grad():
            for dt, t in self.leaves.items():
                f = self.fixed[dt]
                if f is not None and (relative, dt) not in self._cache:
                    o = f[self.where[0]] if relative and origin_fixed else None
                    yf = f - o if o is not None else f
                    keep = not relative or origin_fixed
                    self._cache[(relative, dt)] = (yf, o, (yf @ yf.T).double() if keep else None)
                yf, o, gff = self._cache.get((relative, dt), (None, None, None))
                if relative and not origin_fixed:  # control 0 is trained: nothing is constant
                    o = t[self.where[0] - nf]
                    if f is not None:
                        yf = f - o
                        gff = (yf @ yf.T).double()
                yt = t - o if relative else t
                self._rows[(relative, dt)] = (yf, yt)
                gtt = (yt @ yt.T).double()
                if yf is None:
                    g = gtt
                else:
                    gtf = (yt @ yf.T).double()
                    g = torch.cat([torch.cat([gff, gtf.T], 1), torch.cat([gtf, gtt], 1)])
                G = g if G is None else G + g
        assert G is not None
        return G[self.where][:, self.where]

    def pull_gram(self, dG: Tensor, relative: bool) -> None:
        """Add the gradient of <dG, G> to the trainable controls' gradients, G = `gram(relative)`
        as last computed: G = Y Y^T, so the rows get (dG + dG^T) Y (relative with control 0
        trained: Y_i = x_i - x_0, and x_0 gets minus the sum over the other rows). Two matrix
        products per dtype, where autograd through `gram` took a dozen small kernels more."""
        nf, V = len(self.fixed_idx), self.order
        inv = [0] * V
        for i, r in enumerate(self.where):
            inv[r] = i
        S = dG + dG.T
        S = S[inv][:, inv]  # in the rows' order: fixed controls, then trainable ones
        M = S[nf:]
        if relative and 0 not in self.fixed_idx:
            r0 = self.where[0]
            others = torch.ones(V, dtype=torch.bool, device=S.device)
            others[r0] = False
            M = M.clone()
            M[r0 - nf] = -S[others].sum(0)
        for dt, leaf in self.leaves.items():
            yf, yt = self._rows[(relative, dt)]
            m = M.to(dt)
            g = m[:, nf:] @ yt if yf is None else torch.addmm(m[:, nf:] @ yt, m[:, :nf], yf)
            if leaf.grad is None:
                leaf.grad = g
            else:
                leaf.grad.add_(g)

    def tensors(self) -> dict[str, Tensor]:
        """The trainable controls per tensor, (n_trainable, ...) each (checkpoints)."""
        return {
            k: v for dt, t in self.leaves.items() for k, v in self.split(t.detach(), dt).items()
        }

    def load(self, tensors: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for dt, t in self.leaves.items():
                for k, v in self.split(t, dt).items():
                    v.copy_(tensors[k])

    def opt_tensors(self, opt: torch.optim.Optimizer) -> dict[str, Tensor]:
        """The optimiser's state per trained tensor, `opt.{i}.{name}` for the i-th trained tensor
        (a checkpoint does not depend on how the controls are laid out in memory)."""
        keys = [k for ks in self.groups.values() for k in ks]
        out = {}
        for dt, leaf in self.leaves.items():
            for name, v in opt.state.get(leaf, {}).items():
                if not isinstance(v, Tensor):
                    continue
                parts = self.split(v, dt) if v.shape == leaf.shape else None
                for k in self.groups[dt]:
                    out[f"opt.{keys.index(k)}.{name}"] = v.clone() if parts is None else parts[k]
        return out

    def load_opt(self, opt: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
        keys = [k for ks in self.groups.values() for k in ks]
        for dt, leaf in self.leaves.items():
            ks = self.groups[dt]
            names = {
                n.split(".", 2)[2] for n in tensors if n.startswith(f"opt.{keys.index(ks[0])}.")
            }
            st = {}
            for name in names:
                first = tensors[f"opt.{keys.index(ks[0])}.{name}"]
                if name == "step":
                    st[name] = first
                else:
                    parts = [tensors[f"opt.{keys.index(k)}.{name}"].reshape(-1) for k in ks]
                    st[name] = torch.cat([p.reshape(len(leaf), -1) for p in parts], 1).to(leaf)
            if st:
                opt.state[leaf] = st

    def result(self) -> Family:
        cs = [dict(c) for c in self.family.controls()]
        per_key = self.tensors()
        for j, i in enumerate(self.train_idx):
            for k, v in per_key.items():
                cs[i][k] = v[j].clone().to(cs[i][k].device)
        return self.family.with_controls(cs)


DIRECT = True  # evaluate one member per step by `_Direct` where it applies (tests switch it off)


class _Direct:
    """One member per step, evaluated by a private copy of the module whose parameters are views
    of one flat buffer: the member is summed into that buffer in place, the module runs as itself
    (no functional call, no new leaves each step), and backward accumulates every gradient into
    one flat buffer that `distribute` reads whole. The same arithmetic as `_Controls.members`,
    `params.mean_loss` and `_Controls.distribute`, so the same numbers (tested); on a small net
    their bookkeeping cost about half as much as the forward and backward pass."""

    @staticmethod
    def of(target: nn.Module | Landscape, ctl: _Controls, cfg: FitConfig) -> _Direct | None:
        """A `_Direct` where it applies: a module whose parameters are exactly the trained
        entries (one dtype, none shared), no buffer but BatchNorm's running statistics (scratch
        under batch statistics), one member per step."""
        if not DIRECT or is_landscape(target) or cfg.samples != 1 or len(ctl.groups) != 1:
            return None
        ((dt, ks),) = ctl.groups.items()
        names = [n for n, _ in target.named_parameters(remove_duplicate=False)]
        if sorted(names) != sorted(ks):
            return None
        bn = {
            f"{m}.{b}"
            for m, mod in target.named_modules()
            if isinstance(mod, nn.modules.batchnorm._BatchNorm)
            for b in ("running_mean", "running_var")
        }
        if any(k not in bn for k in ctl.frozen):
            return None
        return _Direct(target, ctl, dt, ks)

    def __init__(self, target: nn.Module, ctl: _Controls, dt: torch.dtype, ks: list[str]):
        self.ctl, self.dt = ctl, dt
        leaf = ctl.leaves[dt]
        self.module = copy.deepcopy(target).to(leaf.device)
        self.flat = torch.empty(leaf.shape[1], dtype=dt, device=leaf.device)
        self.grad = torch.zeros_like(self.flat)  # the member's gradient, filled by backward
        self.share = torch.empty_like(leaf)  # the controls' gradient, handed to the optimiser
        self.one = torch.ones((), dtype=dt, device=leaf.device)
        owners = dict(self.module.named_modules())
        views, grads = ctl.split(self.flat, dt), ctl.split(self.grad, dt)
        self.params: list[tuple[nn.Parameter, Tensor]] = []
        for k in ks:
            owner, _, name = k.rpartition(".")
            p = nn.Parameter(views[k])
            p.grad = grads[k]  # backward adds into it in place (no grad mode: no new tensor)
            setattr(owners[owner], name, p)
            self.params.append((p, grads[k]))

    def epoch(self, weights: Tensor) -> None:
        """Read an epoch's (steps, 1, K) weights once: each step's nonzero terms as Python
        numbers, and the trainable controls' weights on the device (per step, each a few small
        kernels fewer)."""
        self.terms = [[(i, v) for i, v in enumerate(w[0]) if v != 0] for w in weights.tolist()]
        leaf = self.ctl.leaves[self.dt]
        self.shares = weights[:, 0, self.ctl.train_idx].to(leaf.device, leaf.dtype)[:, :, None]

    def loss(self, b: int, x: Tensor, y: Tensor, kind: str) -> Tensor:
        """Mean loss (0-d) on (x, y) of step b's member, as `members` builds it (one-hot rows
        copied; else w_0 v_0 + w_1 v_1 + ..., left to right)."""
        (i0, w0), *rest = self.terms[b]
        with torch.no_grad():
            if not rest and w0 == 1:
                self.flat.copy_(self.ctl.row(i0, self.dt))
            else:
                torch.mul(self.ctl.row(i0, self.dt), w0, out=self.flat)
                for i, w in rest:
                    # flat + 1 * r * w_i: flat + r * w_i to the bit, in one pass
                    self.flat.addcmul_(self.ctl.row(i, self.dt), self.one, value=w)
            self.grad.zero_()
        return batch_loss(self.module(cpu_layout(x)), y, kind)

    def distribute(self, b: int) -> None:
        """`_Controls.distribute` for step b's member (the last `loss`)."""
        for p, g in self.params:
            if p.grad is not g:  # an autograd that replaced the buffer: copy it back
                g.copy_(p.grad if p.grad is not None else torch.zeros_like(g))
                p.grad = g
        leaf = self.ctl.leaves[self.dt]
        share = torch.mul(self.shares[b], self.grad, out=self.share)
        if leaf.grad is None:
            leaf.grad = share
        else:
            leaf.grad.add_(share)


def _penalty_grads(family: Family, ctl: _Controls) -> list[tuple[bool, Tensor]]:
    """(relative, d penalty / d G) for each Gram matrix the family's penalty reads (none
    without one): its `penalty_grad_of_gram` where it has one (closed form), else autograd
    through `penalty_of_gram`'s small (K, K) graph only; `pull_gram` takes the gradient on to
    the controls."""
    penalty = getattr(family, "penalty_of_gram", None)
    if penalty is None:
        return []
    grams: dict[bool, Tensor] = {}

    def G_of(relative: bool) -> Tensor:
        if relative not in grams:
            grams[relative] = ctl.gram(relative).requires_grad_(True)
        return grams[relative]

    closed = getattr(family, "penalty_grad_of_gram", None)
    if closed is not None:
        with torch.no_grad():
            return list(closed(G_of).items())
    pen = penalty(G_of)
    if pen is None:
        return []
    dGs = torch.autograd.grad(pen, list(grams.values()))
    return list(zip(grams, dGs, strict=True))


def _fingerprints(family: Family) -> list[str]:
    """The exact identity of every fixed control (`params.fingerprint`), to tell nets apart."""
    cs, trainable = family.controls(), set(family.trainable())
    return [fingerprint(c) for i, c in enumerate(cs) if i not in trainable]


def _loss_of(target: nn.Module | Landscape, data: Dataset | None, batch_size: int):
    """(steps per epoch, minibatch size, loss(members, step, order) -> (P,)) for a module on
    data (minibatch b is order[b * B : (b + 1) * B]) or a Landscape (one step, no data)."""
    if is_landscape(target):
        return 1, 0, lambda pts, b, order: target.loss(flat(pts))
    if data is None:
        raise IsthmusError(
            "fitting on a module needs data (a Dataset); only a Landscape needs none"
        )
    N = len(data.x_train)
    B = min(batch_size, N)

    def loss(pts: Params, b: int, order: Tensor) -> Tensor:
        idx = order[b * B : (b + 1) * B]
        return mean_loss(target, pts, data.x_train[idx], data.y_train[idx], data.loss)

    return math.ceil(N / B), B, loss


def fit_family(
    target: nn.Module | Landscape,
    family: Family,
    data: Dataset | None = None,
    cfg: FitConfig = FitConfig(),
    *,
    seed: int = 0,
    progress: bool | None = None,
    checkpoint: str | FsPath | None = None,
    resume: bool = False,
    max_epochs: int | None = None,
) -> FitResult:
    """Train the trainable controls of `family` (their values on entry are the initial values).

    Args:
      target: a module (its own parameters are not used or changed) with `data`, or a Landscape.
      family: see `Family`; its fixed controls never change.
      data: training split used (kept on its device); the test split is not touched.
      cfg: hyperparameters, see `FitConfig` (`samples` members per step).
      seed: batch order and the members' weights; same seed, same fit.
      checkpoint: folder for `curve.safetensors` (trainable controls, optimiser state, and the
        settings, epoch and history in its header: one file, written atomically every epoch).
      resume: continue from `checkpoint` (stops with a clear message if it holds other settings).
      max_epochs: stop after this many epochs in total (for tests of resuming).
    Returns: FitResult with a new family of the same class.
    """
    cfg.validate()
    lands = is_landscape(target)
    like = family.controls()[0]
    on_data = not lands and data is not None  # (a module without data is refused by _loss_of)
    dev = data.x_train.device if on_data else next(iter(like.values())).device
    trainable = set(like) if lands else {n for n, _ in target.named_parameters()}
    ctl = _Controls(family, [k for k in like if k in trainable], dev)
    opt_cls = torch.optim.SGD if cfg.optimizer == "sgd" else torch.optim.Adam
    opt_kw = (
        {"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {"betas": (cfg.momentum, 0.999)}
    )
    opt = opt_cls(list(ctl.leaves.values()), lr=cfg.lr, **opt_kw)

    ckpt = FsPath(checkpoint) if checkpoint is not None else None
    meta = {
        "method": family.method,
        "bends": len(ctl.train_idx),
        "config": asdict(cfg),
        "seed": seed,
        # refuses a checkpoint of other nets (hashing them is only needed with a checkpoint)
        "anchors": _fingerprints(family) if ckpt is not None else [],
    }
    history: list[dict] = []
    start = 0
    if resume:
        path = ckpt / CHECKPOINT if ckpt else None
        tensors, saved = load_checkpoint(path) if path and path.exists() else (None, None)
        check_resume(path, None if saved is None else saved.get("meta"), meta, what="curve")
        with torch.no_grad():
            ctl.load({k[5:]: v.to(dev) for k, v in tensors.items() if k.startswith("bend.")})
        ctl.load_opt(opt, tensors)
        start, history = int(saved["epoch"]), list(saved["history"])

    per_epoch, B, loss_fn = _loss_of(target, data, cfg.batch_size)
    N = 0 if lands else len(data.x_train)
    total = per_epoch * cfg.epochs
    stop = cfg.epochs if max_epochs is None else min(cfg.epochs, max_epochs)
    epochs = bar(
        range(start, stop),
        progress=progress,
        desc=f"fit {family.method}",
        unit="epoch",
        initial=start,
        total=cfg.epochs,
    )
    step = start * per_epoch
    direct = _Direct.of(target, ctl, cfg) if on_data else None
    module = direct.module if direct is not None else target
    with nullcontext() if lands else batch_statistics(module):
        for epoch in epochs:
            g = generator(seed, epoch, 5)  # batch order and draws (training uses 1 and 2)
            order = torch.randperm(N, generator=g).to(dev) if N else None
            weights = family.sample_weights(per_epoch * cfg.samples, g)
            weights = weights.reshape(per_epoch, cfg.samples, -1)
            if direct is not None:
                direct.epoch(weights)
            tot = torch.zeros((), device=dev)
            for b in range(per_epoch):
                if direct is not None:
                    idx = order[b * B : (b + 1) * B]
                    loss = direct.loss(b, data.x_train[idx], data.y_train[idx], data.loss)
                else:
                    members = ctl.members(weights[b])
                    loss = loss_fn(members, b, order).mean()
                obj = loss
                pulls = _penalty_grads(family, ctl) if step % cfg.penalty_every == 0 else []
                if cfg.l2 > 0:
                    obj = obj + 0.5 * cfg.l2 * sum((v**2).sum() for v in ctl.leaves.values())
                opt.zero_grad(set_to_none=True)
                obj.backward()
                for relative, dG in pulls:
                    ctl.pull_gram(cfg.penalty_every * dG, relative)
                if direct is not None:
                    direct.distribute(b)
                else:
                    ctl.distribute(members, weights[b])
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * lr_factor(cfg.schedule, step, total)
                opt.step()
                step += 1
                tot = tot + loss.detach()  # stays on the device: no sync per step
            mean = float(tot) / per_epoch
            if not math.isfinite(mean):
                raise IsthmusError(
                    f"{family.method} fitting diverged (mean loss {mean}) in epoch {epoch + 1}; "
                    f"lower --lr (now {cfg.lr})"
                )
            history.append({"epoch": epoch + 1, "loss": mean})
            epochs.set_postfix(loss=f"{mean:.4f}")
            if ckpt is not None:
                leaves = {f"bend.{k}": v for k, v in ctl.tensors().items()}
                state = {"meta": meta, "epoch": epoch + 1, "history": history}
                save_checkpoint(ckpt / CHECKPOINT, leaves | ctl.opt_tensors(opt), state)
    return FitResult(ctl.result(), history, cfg)


def fit_curve(
    model: nn.Module | Landscape,
    path: Curve,
    data: Dataset | None = None,
    cfg: FitConfig = FitConfig(),
    **kw,
) -> FitResult:
    """Train the bends of `path` (a BezierPath or ChainPath; its bends are the initial values):
    `fit_family` for the one-dimensional families with trainable bends, t ~ U[0, 1]."""
    if not isinstance(path, (BezierPath, ChainPath)):
        raise IsthmusError(
            f"only Bezier curves and chains have trainable bends, got {type(path).__name__}"
        )
    return fit_family(model, path, data, cfg, **kw)
