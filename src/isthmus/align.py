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
    """A uniformly random permutation of every hidden layer (drawn from `generator`); a nested
    group moves its parent's blocks as the parent does and shuffles the entries in each block."""
    out: Permutation = {}
    for layer in units.layers:
        if layer.parent is None:
            out[layer.name] = torch.randperm(layer.size, generator=generator)
            continue
        top = out[layer.parent]
        m = layer.size // len(top)
        inner = torch.stack([torch.randperm(m, generator=generator) for _ in range(len(top))])
        out[layer.name] = (top[:, None] * m + inner).reshape(-1)
    return out


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
        if layers[name].parent is not None:
            _check_nested(
                layers, name, p, out.get(layers[name].parent, perm.get(layers[name].parent))
            )
        out[name] = p
    return out


def _check_nested(layers: dict[str, Layer], name: str, p: Tensor, top: Tensor | None) -> None:
    """A nested group's permutation must move whole parent blocks as the parent's does."""
    h = layers[layers[name].parent].size
    top = torch.arange(h) if top is None else torch.as_tensor(top, dtype=torch.long).cpu()
    m = layers[name].size // h
    if not torch.equal(p.reshape(h, m) // m, top[:, None].expand(h, m)):
        raise IsthmusError(
            f"permutation of nested group {name!r} must keep each block of {m} entries together "
            f"and move the blocks as the permutation of {layers[name].parent!r} does"
        )


def _touching(units: Units, present=None) -> dict[str, list[tuple[str, TensorSlice]]]:
    """For every tensor, the (layer, slice) pairs that index it: all the axes a permutation moves.

    A parent's slice of a tensor axis that one of its nested groups in `present` (all groups
    if None) also indexes is left out: the nested group's permutation already moves the blocks.
    """
    covered = {
        (layer.parent, s.name, s.axis)
        for layer in units.layers
        if layer.parent is not None and (present is None or layer.name in present)
        for s in (*layer.incoming, *layer.outgoing)
    }
    touch: dict[str, list[tuple[str, TensorSlice]]] = {}
    for layer in units.layers:
        for s in (*layer.incoming, *layer.outgoing):
            if (layer.name, s.name, s.axis) not in covered:
                touch.setdefault(s.name, []).append((layer.name, s))
    return touch


def permute(params: Params, units: Units, perm: Permutation) -> Params:
    """The same function with the units reordered: new unit k of a layer is old unit perm[k].

    Every incoming slice (weight rows, bias, BN entries) and every outgoing slice (next layer's
    input columns, a whole block of them after a flatten) moves together, so outputs are unchanged.
    """
    perm = check_permutation(units, perm)
    out = dict(params)
    for name, slices in _touching(units, perm).items():
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
    from scipy.optimize import linear_sum_assignment  # here: scipy costs every import 40 MB

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


def _solve_nested(costs: dict[str, Tensor], h: int) -> tuple[float, Tensor, Permutation]:
    """Jointly best parent and nested permutations, from the nested groups' (n, n) score matrices
    (n = h * m): the score of putting B's block j in A's slot k is the sum over nested groups of the
    best assignment inside the pair of blocks; one assignment over blocks then picks the slots.
    Returns the total score, the parent's permutation and each nested group's flat permutation."""
    total = torch.zeros(h, h, dtype=torch.float64)
    inner: dict[str, list[list[Tensor]]] = {}
    for name, c in costs.items():
        m = len(c) // h
        blocks = c.detach().cpu().double().reshape(h, m, h, m)
        inner[name] = [[torch.empty(0)] * h for _ in range(h)]
        for k in range(h):
            for j in range(h):
                sigma = _lap(blocks[k, :, j, :])
                inner[name][k][j] = sigma
                total[k, j] += blocks[k, torch.arange(m), j, sigma].sum()
    top = _lap(total)
    found: Permutation = {}
    for name, c in costs.items():
        m = len(c) // h
        found[name] = torch.cat([top[k] * m + inner[name][k][int(top[k])] for k in range(h)])
    return float(total[torch.arange(h), top].sum()), top, found


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
            if layer.parent is not None:
                continue  # solved together with its parent
            if units.children(layer.name):
                costs = {
                    c.name: _wm_cost(params_a, params_b, c, perm, touch)
                    for c in units.children(layer.name)
                }
                old_val = sum(
                    float(c[torch.arange(len(c), device=c.device), perm[k]].sum())
                    for k, c in costs.items()
                )
                new_val, top, found = _solve_nested(costs, layer.size)
                if new_val > old_val + 1e-12 * max(1.0, abs(old_val)):
                    improved = True
                    found[layer.name] = top
                    perm.update({k: v.to(perm[k].device) for k, v in found.items()})
                continue
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


_Source = tuple[nn.Module, TensorSlice, str]  # module, slice, "input" or "output"


def _is_map(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Linear | nn.modules.conv._ConvNd)


def _sources(model: nn.Module, units: Units) -> dict[str, list[_Source]]:
    """Where each unit group's activations are read, for every group but nested groups' parents.

    The modules owning an outgoing weight (e.g. `layers.1` for `layers.1.weight`) receive the
    group's activations as their input, with units along input axis 1 (Linear and Conv alike),
    `block` consecutive entries per unit after a flatten; every such reader counts (a residual
    stream is read by every block). A group no module reads as input (queries and keys) is read at
    the outputs of the Linear/Conv modules that write it.
    """

    def modules(slices, axis: int) -> list[tuple[nn.Module, TensorSlice]]:
        found = []
        for s in slices:
            mod_name, _, pname = s.name.rpartition(".")
            try:
                mod = model.get_submodule(mod_name)
            except AttributeError:
                continue
            if pname == "weight" and s.axis == axis and _is_map(mod):
                found.append((mod, s))
        return found

    out: dict[str, list[_Source]] = {}
    for layer in units.layers:
        if units.children(layer.name):
            continue
        src = [(m, s, "input") for m, s in modules(layer.outgoing, 1)]
        if not src:
            src = [(m, s, "output") for m, s in modules(layer.incoming, 0)]
        if not src:
            raise IsthmusError(
                f"activation matching: no Linear/Conv module reads layer {layer.name!r} through "
                "axis 1 of its weight; use --method weights for this architecture"
            )
        out[layer.name] = src
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


def _unit_features(z: Tensor, mod: nn.Module, s: TensorSlice, n: int) -> Tensor:
    """A module's input or output -> (rows, n): one column per unit, rows over examples, tokens
    and spatial positions. Linear maps carry units on the last axis, convolutions on axis 1."""
    if isinstance(mod, nn.Linear):
        z = z.reshape(-1, n, s.block)  # (N * tokens, n, block)
    else:
        z = z.reshape(z.shape[0], n, -1)  # (N, n, spatial)
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
    """Per unit group (nested ones included, their parents not), the (n, n) correlation between
    A's and B's unit activations on x, pooled over every place the group is read."""
    sources = _sources(model, units)
    names = list(sources)
    captured: dict[tuple[str, int], Tensor] = {}
    handles = []
    for name, src in sources.items():
        for i, (mod, _, where) in enumerate(src):

            def hook(_mod, args, out=None, key=(name, i)):
                captured[key] = (args[0] if out is None else out).detach()

            if where == "input":
                handles.append(mod.register_forward_pre_hook(hook))
            else:
                handles.append(mod.register_forward_hook(hook))
    dtype = next(v.dtype for v in params_a.values() if is_float(v))
    dev = next(iter(params_a.values())).device
    size = {la.name: la.size for la in units.layers}
    moments = {name: _Moments(size[name], dev) for name in names}
    was_training = model.training
    model.eval()

    def features(name: str) -> Tensor:
        seen: list[Tensor] = []
        feats = []
        for i, (mod, s, _) in enumerate(sources[name]):
            z = captured[(name, i)]
            if not any(z is t for t in seen):  # modules reading one tensor count once
                seen.append(z)
                feats.append(_unit_features(z, mod, s, size[name]))
        return feats[0] if len(feats) == 1 else torch.cat(feats)

    try:
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device=dev, dtype=dtype)
            feats = []
            for p in (params_a, params_b):
                captured.clear()
                functional_call(model, p, (xb,))
                feats.append({name: features(name) for name in names})
            for name in names:
                moments[name].add(feats[0][name], feats[1][name])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: moments[name].correlation() for name in names}


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
    perm = {name: _lap(c) for name, c in corr.items() if units.children(name) == ()}
    for layer in units.layers:
        kids = units.children(layer.name)
        if kids:  # heads: blocks and the order inside each block in one step
            _, perm[layer.name], found = _solve_nested(
                {k.name: corr[k.name] for k in kids}, layer.size
            )
            perm.update(found)
    return {layer.name: perm[layer.name] for layer in units.layers}


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
