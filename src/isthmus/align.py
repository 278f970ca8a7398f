"""Permutation alignment: weight matching and activation matching (git re-basin).

Hidden units can be permuted without changing the function a ReLU net computes; two independently
trained nets are often linearly connected once one is permuted to match the other (Entezari et al.
2022, "The role of permutation invariance in linear mode connectivity"; Ainsworth, Hayase &
Srinivasa 2023, "Git re-basin", ICLR). Everything here reads the unit description of
`isthmus.models` (`Units`): a permutation of hidden layer j moves every tensor tied to its units
(incoming weights and bias, BatchNorm scale/shift/running statistics, outgoing weights; for
conv -> flatten -> linear, whole column blocks), docs/baselines.md and docs/definitions.md.

Conventions. `Permutation = dict[str, Tensor]` maps a hidden-layer name (`Units.layers[j].name`) to
a LongTensor `p` of its units; `permute(params, units, p)` puts old unit `p[k]` in slot `k`
(layers absent from the dict stay put). `compose(p, q)` is "apply p, then q".

Weight matching (Ainsworth et al. 2023, section 3.2, Algorithm 1): maximise
sum_l <W_l^A, P_l W_l^B P_{l-1}^T> over permutations P_l by coordinate descent: for each layer in a
random order, with the other layers' permutations fixed, the objective is linear in P_l, so it is a
linear assignment problem (scipy.optimize.linear_sum_assignment) on
C[k, m] = sum over tensors touching layer l of <A's entries of unit k, B's entries of unit m>;
sweeps repeat until no layer improves.

Activation matching (Ainsworth et al. 2023, section 3.1): run both nets on data, record each hidden
unit's activation as the next layer reads it (after ReLU and pooling), and for each layer solve one
linear assignment maximising the summed Pearson correlation between A's unit k and B's matched
unit. For conv channels the expectations run over examples and spatial positions. Layers are
independent here (a unit's activation does not depend on how other layers are ordered), so no
iteration is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.func import functional_call

from .data import Dataset
from .errors import IsthmusError
from .models import Layer, TensorSlice, Units, take
from .params import Params, bn_subset, check_compatible, has_bn, is_float
from .paths.base import PathResult, evaluate_path, line
from .progress import bar
from .seeding import generator

Permutation = dict[str, Tensor]
METHODS = ("weights", "activations")


# ----------------------------------------------------------------------------- permutations


def identity(units: Units) -> Permutation:
    """The permutation that leaves every hidden layer in place."""
    return {layer.name: torch.arange(layer.size) for layer in units.layers}


def random_permutation(units: Units, generator: torch.Generator) -> Permutation:
    """A uniformly random permutation of every hidden layer (drawn from `generator`)."""
    return {layer.name: torch.randperm(layer.size, generator=generator) for layer in units.layers}


def _layers_by_name(units: Units) -> dict[str, Layer]:
    return {layer.name: layer for layer in units.layers}


def check_permutation(units: Units, perm: Permutation) -> Permutation:
    """Validate names and that each entry is a permutation of range(size); return LongTensors."""
    layers = _layers_by_name(units)
    out = {}
    for name, p in perm.items():
        if name not in layers:
            raise IsthmusError(
                f"permutation names layer {name!r}, which the model does not have; "
                f"hidden layers are {list(layers)}"
            )
        p = torch.as_tensor(p, dtype=torch.long).cpu()
        n = layers[name].size
        if p.shape != (n,) or not torch.equal(p.sort().values, torch.arange(n)):
            raise IsthmusError(
                f"permutation of layer {name!r} must list each of its {n} units 0..{n - 1} exactly "
                f"once, got {p.tolist()[:8]}{'...' if p.numel() > 8 else ''} ({p.numel()} entries)"
            )
        out[name] = p
    return out


def _touching(units: Units) -> dict[str, list[tuple[str, TensorSlice]]]:
    """For every tensor, the (layer, slice) pairs that index it: all the axes a permutation moves."""
    touch: dict[str, list[tuple[str, TensorSlice]]] = {}
    for layer in units.layers:
        for s in (*layer.incoming, *layer.outgoing):
            touch.setdefault(s.name, []).append((layer.name, s))
    return touch


def permute(params: Params, units: Units, perm: Permutation) -> Params:
    """The same function with the units reordered: new unit k of a layer is old unit perm[k].

    Every incoming slice (weight rows, bias, BN entries) and every outgoing slice (next layer's
    input columns, a whole block of them after a flatten) moves together, so outputs are unchanged.
    """
    perm = check_permutation(units, perm)
    out = dict(params)
    for name, slices in _touching(units).items():
        if name not in params:
            raise IsthmusError(f"parameters have no tensor {name!r} named by the unit description")
        t = params[name]
        for lname, s in slices:
            if lname in perm:
                t = take(t, s, perm[lname])
        out[name] = t
    return out


def compose(p: Permutation, q: Permutation) -> Permutation:
    """Apply p, then q: permute(permute(x, u, p), u, q) == permute(x, u, compose(p, q)).

    Layers missing from one side count as the identity there.
    """
    out = {}
    for name in dict.fromkeys([*p, *q]):
        a, b = p.get(name), q.get(name)
        if a is None:
            out[name] = torch.as_tensor(b, dtype=torch.long).clone()
        elif b is None:
            out[name] = torch.as_tensor(a, dtype=torch.long).clone()
        else:
            a, b = torch.as_tensor(a, dtype=torch.long), torch.as_tensor(b, dtype=torch.long)
            if a.shape != b.shape:
                raise IsthmusError(f"layer {name!r}: permutations of sizes {len(a)} and {len(b)}")
            out[name] = a[b]
    return out


def invert(p: Permutation) -> Permutation:
    """The permutation that undoes p: compose(p, invert(p)) is the identity."""
    return {name: torch.argsort(torch.as_tensor(v, dtype=torch.long)) for name, v in p.items()}


def is_identity(p: Permutation) -> bool:
    return all(torch.equal(torch.as_tensor(v), torch.arange(len(v))) for v in p.values())


def perm_to_json(p: Permutation) -> dict[str, list[int]]:
    return {name: [int(i) for i in v] for name, v in p.items()}


def perm_from_json(d: dict, units: Units) -> Permutation:
    return check_permutation(units, {k: torch.tensor(v, dtype=torch.long) for k, v in d.items()})


# ----------------------------------------------------------------------------- weight matching


def _unit_rows(t: Tensor, s: TensorSlice, n: int) -> Tensor:
    """(n, -1) view of tensor t: row k holds every entry of unit k (its block included)."""
    return t.movedim(s.axis, 0).reshape(n, -1)


def _lap(score: Tensor) -> Tensor:
    """Assignment maximising sum_k score[k, p[k]] (rows: A's units, columns: B's units)."""
    _, cols = linear_sum_assignment(score.detach().cpu().double().numpy(), maximize=True)
    return torch.as_tensor(np.asarray(cols), dtype=torch.long)


def _wm_cost(
    pa: Params,
    pb: Params,
    layer: Layer,
    perm: Permutation,
    touch: dict[str, list[tuple[str, TensorSlice]]],
) -> Tensor:
    """C[k, m]: inner product of A's unit k with B's unit m, other layers of B permuted."""
    n = layer.size
    cost = torch.zeros(n, n, dtype=torch.float64, device=next(iter(pa.values())).device)
    for s in (*layer.incoming, *layer.outgoing):
        tb = pb[s.name]
        for lname, other in touch[s.name]:
            if lname != layer.name:
                tb = take(tb, other, perm[lname])
        ra = _unit_rows(pa[s.name].double(), s, n)
        rb = _unit_rows(tb.double(), s, n)
        cost += ra @ rb.T
    return cost


def weight_matching(
    params_a: Params,
    params_b: Params,
    units: Units,
    max_iter: int = 100,
    seed: int = 0,
    *,
    init: Permutation | None = None,
    progress: bool | None = None,
) -> Permutation:
    """Permutation of B's units maximising sum over tensors of <A, permuted B> (Ainsworth Alg. 1).

    Coordinate descent: each sweep visits the hidden layers in a random order (seeded) and solves
    that layer's linear assignment with the others fixed; it stops after a sweep in which no layer
    improved the objective (or after `max_iter` sweeps). Apply with `permute(params_b, units, p)`.
    """
    check_compatible(params_a, params_b)
    if max_iter < 1:
        raise IsthmusError(f"max_iter must be >= 1, got {max_iter}")
    perm = (
        identity(units) if init is None else {**identity(units), **check_permutation(units, init)}
    )
    perm = {k: v.to(next(iter(params_b.values())).device) for k, v in perm.items()}
    touch = _touching(units)
    gen = generator(seed, 0, 51)  # the order of layers in each sweep
    sweeps = bar(range(max_iter), desc="weight matching", unit="sweep", progress=progress)
    for _ in sweeps:
        improved = False
        for j in torch.randperm(len(units.layers), generator=gen).tolist():
            layer = units.layers[j]
            cost = _wm_cost(params_a, params_b, layer, perm, touch)
            new = _lap(cost).to(perm[layer.name].device)
            ar = torch.arange(layer.size, device=cost.device)
            old_val = float(cost[ar, perm[layer.name]].sum())
            new_val = float(cost[ar, new].sum())
            # relative tolerance: float round-off must not count as progress (and loop forever)
            if new_val > old_val + 1e-12 * max(1.0, abs(old_val)):
                improved = True
                perm[layer.name] = new
        if not improved:
            break
    sweeps.close()
    return {k: v.cpu() for k, v in perm.items()}


def matching_objective(
    params_a: Params, params_b: Params, units: Units, perm: Permutation
) -> float:
    """sum over tensors touched by hidden units of <A, permuted B> (what weight matching maximises)."""
    pb = permute(params_b, units, perm)
    names = _touching(units)
    return float(sum((params_a[k].double() * pb[k].double()).sum() for k in names))


# ----------------------------------------------------------------------------- activation matching


def _readers(model: nn.Module, units: Units) -> list[tuple[nn.Module, TensorSlice]]:
    """For each hidden layer, the module that reads its units and the slice it reads them with.

    The module owning an outgoing weight (e.g. `layers.1` for `layers.1.weight`) receives the
    layer's activations as its input, with units along input axis 1 (Linear and Conv alike), `block`
    consecutive entries per unit after a flatten.
    """
    out = []
    for layer in units.layers:
        found = None
        for s in layer.outgoing:
            mod_name, _, pname = s.name.rpartition(".")
            try:
                mod = model.get_submodule(mod_name)
            except AttributeError:
                continue
            if (
                pname == "weight"
                and s.axis == 1
                and isinstance(mod, nn.Linear | nn.modules.conv._ConvNd)
            ):
                found = (mod, s)
                break
        if found is None:
            raise IsthmusError(
                f"activation matching: no Linear/Conv module reads layer {layer.name!r} through "
                "axis 1 of its weight; use --method weights for this architecture"
            )
        out.append(found)
    return out


class _Moments:
    """Running first and second moments of two (M, n) activation streams, in float64."""

    def __init__(self, n: int, device: torch.device):
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=device)  # noqa: E731
        self.count, self.sa, self.sb, self.saa, self.sbb, self.sab = (
            0,
            z(n),
            z(n),
            z(n),
            z(n),
            z(n, n),
        )

    def add(self, a: Tensor, b: Tensor) -> None:
        a, b = a.double(), b.double()
        self.count += a.shape[0]
        self.sa += a.sum(0)
        self.sb += b.sum(0)
        self.saa += (a * a).sum(0)
        self.sbb += (b * b).sum(0)
        self.sab += a.T @ b

    def correlation(self, eps: float = 1e-8) -> Tensor:
        """Pearson correlation C[k, m] of A's unit k and B's unit m (0 for constant units)."""
        n = self.count
        ma, mb = self.sa / n, self.sb / n
        cov = self.sab / n - ma[:, None] * mb[None, :]
        sd_a = (self.saa / n - ma**2).clamp_min(0).sqrt().clamp_min(eps)
        sd_b = (self.sbb / n - mb**2).clamp_min(0).sqrt().clamp_min(eps)
        return cov / (sd_a[:, None] * sd_b[None, :])


def _unit_features(inp: Tensor, s: TensorSlice, n: int) -> Tensor:
    """(N, n*block, *spatial) module input -> (N * block * spatial, n): one column per unit."""
    z = inp.reshape(inp.shape[0], n, -1)  # (N, n, block * spatial)
    return z.transpose(1, 2).reshape(-1, n)


@torch.no_grad()
def activation_correlations(
    model: nn.Module,
    params_a: Params,
    params_b: Params,
    units: Units,
    x: Tensor,
    batch_size: int = 512,
) -> dict[str, Tensor]:
    """Per hidden layer, the (n, n) correlation between A's and B's unit activations on x."""
    readers = _readers(model, units)
    captured: dict[int, Tensor] = {}
    handles = []
    for i, (mod, _) in enumerate(readers):

        def hook(_mod, args, i=i):
            captured[i] = args[0].detach()

        handles.append(mod.register_forward_pre_hook(hook))
    dtype = next(v.dtype for v in params_a.values() if is_float(v))
    dev = next(iter(params_a.values())).device
    moments = [_Moments(layer.size, dev) for layer in units.layers]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device=dev, dtype=dtype)
            feats = []
            for p in (params_a, params_b):
                captured.clear()
                functional_call(model, p, (xb,))
                feats.append(
                    [
                        _unit_features(captured[i], s, layer.size)
                        for i, ((_, s), layer) in enumerate(zip(readers, units.layers, strict=True))
                    ]
                )
            for m, fa, fb in zip(moments, *feats, strict=True):
                m.add(fa, fb)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {layer.name: m.correlation() for layer, m in zip(units.layers, moments, strict=True)}


def activation_matching(
    model: nn.Module,
    params_a: Params,
    params_b: Params,
    units: Units,
    x: Tensor,
    batch_size: int = 512,
) -> Permutation:
    """Per layer, the assignment of B's units to A's maximising summed activation correlation."""
    check_compatible(params_a, params_b)
    if len(x) == 0:
        raise IsthmusError("activation matching needs at least one input example")
    corr = activation_correlations(model, params_a, params_b, units, x, batch_size)
    return {name: _lap(c) for name, c in corr.items()}


# ----------------------------------------------------------------------------- one call


@dataclass(frozen=True)
class AlignResult:
    """B permuted into A's order (same function as B), the permutation used, and how it was found."""

    params: Params
    perm: Permutation
    method: str
    extra: dict = field(default_factory=dict)


def _examples(data: Dataset | Tensor | None, n_examples: int, seed: int) -> Tensor:
    if data is None:
        raise IsthmusError("activation matching needs data: pass a Dataset or an input tensor")
    x = data.x_train if isinstance(data, Dataset) else data
    if n_examples < 1:
        raise IsthmusError(f"n_examples must be >= 1, got {n_examples}")
    if len(x) <= n_examples:
        return x
    g = generator(seed, 0, 53)  # which examples activation matching reads
    idx = torch.randperm(len(x), generator=g)[:n_examples].sort().values
    return x[idx.to(x.device)]


def align(
    model: nn.Module,
    params_a: Params,
    params_b: Params,
    method: str = "weights",
    data: Dataset | Tensor | None = None,
    seed: int = 0,
    n_examples: int = 10_000,
    *,
    max_iter: int = 100,
    progress: bool | None = None,
) -> AlignResult:
    """Permute B's hidden units into A's order by weight or activation matching.

    Args:
      model: the architecture (provides `units()` and, for activations, the forward pass).
      method: "weights" (no data needed) or "activations" (needs `data`).
      data: a Dataset (its training inputs are used) or an input tensor.
      seed: orders weight matching's sweeps; picks the `n_examples` inputs for activations.
      n_examples: at most this many inputs for activation statistics [10,000].
    """
    from .models import units_of

    units = units_of(model)
    check_compatible(params_a, params_b)
    if method == "weights":
        perm = weight_matching(
            params_a, params_b, units, max_iter=max_iter, seed=seed, progress=progress
        )
        extra = {"objective_before": matching_objective(params_a, params_b, units, identity(units))}
        extra["objective_after"] = matching_objective(params_a, params_b, units, perm)
    elif method == "activations":
        x = _examples(data, n_examples, seed)
        perm = activation_matching(model, params_a, params_b, units, x)
        extra = {"n_examples": len(x)}
    else:
        raise IsthmusError(f"unknown alignment method {method!r}; choose one of {list(METHODS)}")
    extra["moved"] = {
        k: float((v != torch.arange(len(v))).double().mean()) for k, v in perm.items()
    }
    return AlignResult(permute(params_b, units, perm), perm, method, extra)


@dataclass(frozen=True)
class AlignedLines:
    """An alignment and the straight line A -> B evaluated before and after it."""

    result: AlignResult
    before: PathResult
    after: PathResult


def align_and_compare(
    model: nn.Module,
    params_a: Params,
    params_b: Params,
    data: Dataset,
    method: str = "weights",
    *,
    seed: int = 0,
    n_examples: int = 10_000,
    max_iter: int = 100,
    points: int = 61,
    batch_size: int | None = 2048,
    progress: bool | None = None,
) -> AlignedLines:
    """Align B to A (`align`) and evaluate the straight line from A to B before and after, at
    `points` values of t in forward passes of `batch_size` examples: the barrier that the
    permutation removes (Entezari et al. 2022; Ainsworth et al. 2023, figure 2). BatchNorm nets get
    statistics on `params.bn_subset(data.x_train)`."""
    res = align(
        model, params_a, params_b, method=method, data=data, seed=seed, n_examples=n_examples,
        max_iter=max_iter, progress=progress,
    )  # fmt: skip
    bn_x = bn_subset(data.x_train) if has_bn(model) else None
    kw = dict(points=points, batch_size=batch_size, bn_x=bn_x)
    before = evaluate_path(model, line(params_a, params_b), data, **kw)
    after = evaluate_path(model, line(params_a, res.params), data, **kw)
    return AlignedLines(res, before, after)
