"""Dropout stability and noise stability of ReLU nets (Kuditipudi et al. 2019, section 3).

Dropout version theta_i (start layer i, 1 <= i <= d-1): in every hidden layer j = i..d-1 keep a set
S_j of at most floor(h_j / 2) units, multiply the outgoing weights of kept units by r_j (default
h_j / |S_j|) and zero the outgoing weights of every other unit of those layers. The net is
eps-dropout stable if for every i some choice gives L(theta_i) <= L(theta) + eps (SCIENCE.md
section 1; the dropout is nested: start layer i drops a suffix of layers). Stability is existential,
so `dropout_stability` *searches* kept sets on the training split: batched random draws, a greedy
choice by importance (outgoing-weight norm x mean activation, layer by layer from the bottom of the
suffix), local swaps that improve the loss, and optionally one global multiplier of r fitted by a
1-D numeric line search. CNNs are dropped channel-wise through the same `Units` description. The
kept sets are stored by hidden-layer name (`Units.layers[j].name`), unit indices sorted.

Noise stability (a variant of Arora, Ge, Neyshabur & Zhang 2018, definitions 1-5, in the notation of
SCIENCE.md: x^j = relu(z^j), z^j = W_j x^{j-1} + b_j, z^d = f(x)), per layer on training data:
  * layer cushion        mu_j     = min_x ||W_j x^{j-1}|| / (||W_j||_F ||x^{j-1}||),  j = 1..d;
  * interlayer cushion   mu_{i,j} = min_x ||J_{i,j} x^i|| / (||J_{i,j}||_F ||x^i||), 1 <= i < j <= d,
    J_{i,j} the Jacobian of the map x^i -> z^j (layers i+1..j) at x^i, so mu_{i,i+1} = mu_{i+1}
    for nets without bias; mu_{i->} = min_j mu_{i,j};
  * activation contraction c = max_{x, j<d} ||z^j|| / ||x^j||;
  * interlayer smoothness rho = min over x and j >= i+2 of ||eta|| ||z^j|| / (||x^i|| ||M_{i,j}(x^i +
    eta) - M_{i,j}(x^i) - J_{i,j} eta||), eta Gaussian with ||eta|| = s ||x^i|| (s = `noise_scale`,
    1 by default; Arora et al. write M(x + eta) - J(x + eta), equal without biases);
  * attenuation: the same eta injected at x^i, relative change ||x~^j - x^j|| / ||x^j|| at every
    later layer j (the output f at j = d), averaged over examples; and the relative output change
    when half of layer i's units are dropped (kept ones x h/|S|), which is noise with ||eta|| =
    ||x^i|| exactly and the event that noise stability is meant to explain.
||J||_F is estimated from jvps with Gaussian probes (E||J g||^2 = ||J||_F^2), or exactly with the
basis vectors (`n_proj=None`); no Jacobian is materialised. The summary epsilon (design: the form of
the paper's noise-stability parameter; the sources we hold do not give its constant) is
    eps_noise = c * d^{3/2} * max_x ||f(x)|| / (sqrt(min_i n_i) * min_{i<d} mu_i mu_{i->}),
n_i the number of entries of x^i: the output change that dropping half of a layer causes, in units
of f, when noise attenuates as the cushions say. It is reported beside the measured changes.

For CNNs a "layer" is conv(+bias) followed by the max-pools that come after it, then ReLU: x^j =
relu(pool(conv_j x^{j-1} + b_j)) (pooling commutes with ReLU), W_j is the linear conv operator (its
Frobenius norm computed exactly from the kernel and the padding), pools before the first conv belong
to x^0, and the dense layers follow as in an MLP. BatchNorm nets are refused (SCIENCE.md section 1).

Layout of stability.json: SCIENCE.md section 5.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jvp
from tqdm.auto import tqdm

from .data import Dataset
from .errors import IsthmusError
from .io import read_json, same_settings, write_json
from .models import MLP, ConvNet, Layer, Units, put, take, units_of
from .params import Params, evaluate, has_bn
from .seeding import generator

STABILITY_FILE = "stability.json"
STRATEGIES = ("auto", "random", "greedy", "swap")
_CHUNK = 32  # parameter points per batched evaluation call
_SWAP_BATCH = 32  # candidate swaps evaluated together per round
_GREEDY_RULES = ("paired", "top")


@dataclass(frozen=True)
class DropoutChoice:
    """One theta_i: start layer i (1-based), its loss, kept units and factor per hidden layer."""

    i: int
    loss: float
    kept: dict[str, list[int]]
    r: dict[str, float]


@dataclass(frozen=True)
class StabilityResult:
    kind: str  # "dropout" | "noise"
    epsilon: float
    loss: float  # L(theta)
    by_start_layer: list[DropoutChoice] = field(default_factory=list)
    search: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # noise quantities, per-strategy results, ...

    def choice(self, i: int) -> DropoutChoice:
        for c in self.by_start_layer:
            if c.i == i:
                return c
        raise IsthmusError(f"stability result has no kept sets for start layer {i}")

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


# ----------------------------------------------------------------------------- dropout versions


def default_r(units: Units, kept: dict[str, list[int]]) -> dict[str, float]:
    """r_j = h_j / |S_j| for every layer in `kept` (2 for exactly half of an even width)."""
    sizes = {layer.name: layer.size for layer in units.layers}
    return {name: sizes[name] / len(idx) for name, idx in kept.items()}


def validate_kept(units: Units, i: int, kept: dict[str, list[int]]) -> None:
    """Kept sets exist for layers i..d-1 exactly, with at most floor(h/2) distinct, valid units each."""
    want = [layer.name for layer in units.layers[i - 1 :]]
    if sorted(kept) != sorted(want):
        raise IsthmusError(
            f"start layer {i}: kept sets must cover layers {want}, got {sorted(kept)}"
        )
    for layer in units.layers[i - 1 :]:
        idx = kept[layer.name]
        if len(set(idx)) != len(idx) or not idx:
            raise IsthmusError(f"layer {layer.name}: kept units must be distinct and non-empty")
        if len(idx) > layer.size // 2:
            raise IsthmusError(
                f"layer {layer.name}: {len(idx)} kept units exceed floor({layer.size}/2)"
            )
        if min(idx) < 0 or max(idx) >= layer.size:
            raise IsthmusError(f"layer {layer.name}: unit index out of range 0..{layer.size - 1}")


def dropout_params(
    params: Params, units: Units, kept: dict[str, list[int]], r: dict[str, float] | None = None
) -> Params:
    """theta_i: outgoing weights of kept units times r, of all other units of those layers zero."""
    r = default_r(units, kept) if r is None else r
    out = dict(params)
    for layer in units.layers:
        if layer.name not in kept:
            continue
        idx = torch.as_tensor(sorted(kept[layer.name]), dtype=torch.long)
        for s in layer.outgoing:
            t = out[s.name]
            keep_vals = take(t, s, idx) * r[layer.name]
            out[s.name] = put(torch.zeros_like(t), s, idx, keep_vals)
    return out


def scaled_r(units: Units, kept: dict[str, list[int]], multiplier: float) -> dict[str, float]:
    """The default factors h_j / |S_j| times one global multiplier (the fitted-r option)."""
    return {k: v * multiplier for k, v in default_r(units, kept).items()}


# ----------------------------------------------------------------------------- dropout search


def _check_droppable(model: nn.Module, units: Units) -> None:
    if has_bn(model):
        raise IsthmusError(
            "dropout and noise stability are defined for nets without BatchNorm (SCIENCE.md "
            "section 1); train the net without --batchnorm"
        )
    if not units.layers:
        raise IsthmusError("the net has no hidden layer: stability needs depth >= 2")
    for layer in units.layers:
        if layer.size < 2:
            raise IsthmusError(
                f"hidden layer {layer.name} has {layer.size} unit(s); dropping a half needs >= 2"
            )


def _random_kept(layers: Sequence[Layer], g: torch.Generator) -> dict[str, list[int]]:
    return {
        la.name: sorted(torch.randperm(la.size, generator=g)[: la.size // 2].tolist())
        for la in layers
    }


def outgoing_norms(params: Params, layer: Layer) -> Tensor:
    """||outgoing weights|| of every unit of `layer` (all its outgoing slices together), (h,)."""
    sq = 0.0
    for s in layer.outgoing:
        t = params[s.name].movedim(s.axis, 0)  # (h * block, ...): a unit's block is contiguous
        sq = sq + t.reshape(layer.size, -1).double().pow(2).sum(1)
    return torch.as_tensor(sq).sqrt()


def _eval_strategy(params: Params) -> str:
    """Fixed per device so that repeated searches give identical numbers (no timing-based choice)."""
    dev = next(iter(params.values())).device
    return "vmap" if dev.type != "cpu" else "loop"


class _Evaluator:
    """L(theta_i) on the training split for many (kept, r) choices, in batched calls."""

    def __init__(self, model, params, units, data: Dataset, batch_size):
        dev = next(iter(params.values())).device
        self.model, self.params, self.units = model, params, units
        self.x, self.y = data.x_train.to(dev), data.y_train.to(dev)
        self.loss_kind, self.batch_size = data.loss, batch_size
        self.strategy = _eval_strategy(params)
        self.count = 0

    def metrics(self, points: Sequence[Params]):
        self.count += len(points)
        return evaluate(
            self.model,
            list(points),
            self.x,
            self.y,
            loss=self.loss_kind,
            batch_size=self.batch_size,
            chunk=_CHUNK,
            strategy=self.strategy,
        )

    def __call__(
        self, kepts: Sequence[dict[str, list[int]]], multiplier: float | Sequence[float] = 1.0
    ) -> Tensor:
        mults = [multiplier] * len(kepts) if isinstance(multiplier, float | int) else multiplier
        out = []
        for s in range(0, len(kepts), _CHUNK):
            pts = [
                dropout_params(self.params, self.units, k, _r(self.units, k, m))
                for k, m in zip(kepts[s : s + _CHUNK], mults[s : s + _CHUNK], strict=True)
            ]
            out.append(self.metrics(pts).loss)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _r(units: Units, kept: dict[str, list[int]], multiplier: float) -> dict[str, float]:
    return default_r(units, kept) if multiplier == 1.0 else scaled_r(units, kept, multiplier)


def _greedy_kept(
    maps: LayerMaps,
    params: Params,
    units: Units,
    i: int,
    x: Tensor,
    batch_size: int | None,
    rule: str = "paired",
) -> dict[str, list[int]]:
    """Bottom-up over the suffix, ranking units by importance = ||outgoing|| x mean activation (in
    the net whose layers below are already dropped). rule "top" keeps the floor(h/2) most important
    units; "paired" keeps the first of every consecutive pair in that ranking, so the kept half
    carries about half of the layer's output and r = 2 restores it (keeping only the top half and
    doubling it overshoots; on a net with duplicated units it keeps one unit of each pair)."""
    kept: dict[str, list[int]] = {}
    for j in range(i, units.depth):
        layer = units.layers[j - 1]
        p = dropout_params(params, units, kept) if kept else params
        act = maps.mean_activation(p, x, j, batch_size)
        importance = act * outgoing_norms(params, layer).to(act)
        order = torch.argsort(importance, descending=True, stable=True)
        pick = order[: layer.size // 2] if rule == "top" else order[0::2][: layer.size // 2]
        kept[layer.name] = sorted(pick.tolist())
    return kept


def _swap_search(
    evaluator: _Evaluator,
    layers: Sequence[Layer],
    kept: dict[str, list[int]],
    loss: float,
    swaps: int,
    g: torch.Generator,
) -> tuple[dict[str, list[int]], float]:
    """Rounds of random single swaps (drop a kept unit, keep a dropped one) evaluated together; the
    best of a round is accepted only if it lowers the loss, so the result is never worse."""
    tried = 0
    while tried < swaps:
        cands = []
        for _ in range(min(_SWAP_BATCH, swaps - tried)):
            la = layers[int(torch.randint(len(layers), (1,), generator=g))]
            cur = kept[la.name]
            dropped = sorted(set(range(la.size)) - set(cur))
            u = cur[int(torch.randint(len(cur), (1,), generator=g))]
            v = dropped[int(torch.randint(len(dropped), (1,), generator=g))]
            new = dict(kept)
            new[la.name] = sorted((set(cur) - {u}) | {v})
            cands.append(new)
        tried += len(cands)
        losses = evaluator(cands)
        b = int(torch.argmin(losses))
        if float(losses[b]) < loss:
            kept, loss = cands[b], float(losses[b])
    return kept, loss


def _fit_multiplier(
    evaluator: _Evaluator, kept: dict[str, list[int]], loss: float
) -> tuple[float, float]:
    """1-D line search for one global multiplier of r: a log grid on [1/2, 2] (25 points), then a
    6x finer grid around its best point. The loss is convex in r only at the top layer, hence a numeric search;
    the default (multiplier 1) is kept unless something is strictly better."""
    coarse = [2.0 ** (k / 12) for k in range(-12, 13)]  # contains 1 exactly
    losses = evaluator([kept] * len(coarse), coarse)
    c0 = coarse[int(torch.argmin(losses))]
    fine = [c0 * 2.0 ** (k / 72) for k in range(-6, 7) if k != 0]
    lf = evaluator([kept] * len(fine), fine)
    cands = [(float(lv), c) for lv, c in zip(losses, coarse, strict=True)]
    cands += [(float(lv), c) for lv, c in zip(lf, fine, strict=True)]
    best_loss, best_c = min(cands)
    return (best_c, best_loss) if best_loss < loss else (1.0, loss)


def _progress(progress: bool | None) -> bool | None:
    """tqdm's `disable`: None = only when stderr is a terminal."""
    return None if progress is None else not progress


def _resume_stability(checkpoint: str | Path | None, meta: dict) -> dict:
    if checkpoint is None or not Path(checkpoint).exists():
        raise IsthmusError(
            f"--resume: no stability checkpoint at {checkpoint}; start without --resume"
        )
    st = read_json(checkpoint)
    # L(theta) agrees only to round-off between processes; everything else exactly
    if not same_settings(st.get("meta", {}), meta, approx=("loss",), rel=1e-6):
        raise IsthmusError(
            f"--resume: {checkpoint} was written for another net or other settings; use the same "
            "run and flags, or a new --out"
        )
    state = st.get("state")
    need = {"choices", "best_by", "multipliers", "greedy_rules", "upper", "evaluations"}
    if not isinstance(state, dict) or not need <= set(state):
        raise IsthmusError(f"--resume: {checkpoint} is malformed (field 'state'); delete it")
    return state


def dropout_stability(
    model: nn.Module,
    params: Params,
    data: Dataset,
    *,
    strategy: str = "auto",
    draws: int = 256,
    seed: int = 0,
    fit_r: bool = False,
    swaps: int = 256,
    progress: bool | None = None,
    batch_size: int | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
) -> StabilityResult:
    """Search, for every start layer i, kept sets minimising L(theta_i) on the training split.

    Args:
      model: the architecture (MLP or ConvNet; any module with `units()` for "random"/"swap").
      params: the net theta (its dtype is used for the evaluation; float64 for certificates).
      data: the data set; the training split is used (SCIENCE.md section 5: train loss).
      strategy: "random" (`draws` random kept sets, evaluated in batched calls), "greedy"
        (importance = outgoing-weight norm x mean activation; the better of keeping the top half
        and keeping one of every consecutive pair in importance order), "swap" (`swaps` candidate single
        swaps from the greedy choice), or "auto" = random, greedy, then swaps from the better one.
        Start layers are searched top down; in "auto", draws/4 extra random draws and extra greedy
        candidates redraw only layer i under the best sets found for start layer i+1.
      draws: random kept sets per start layer. swaps: candidate swaps per start layer.
      seed: all randomness comes from generators seeded by (seed, start layer, step).
      fit_r: also fit one global multiplier of r_j = h_j/|S_j| by a 1-D line search.
      progress: tqdm bar (None: only on a terminal). batch_size: examples per forward pass.
      checkpoint: JSON file rewritten (atomically) after every start layer; resume: skip the start
        layers it holds (every draw is seeded by (seed, layer, step), so the result is the same).

    Returns: kind "dropout"; epsilon = max_i L(theta_i) - L(theta); `search` holds the settings and
    the best loss of every strategy per start layer (and the fitted multipliers).
    """
    if strategy not in STRATEGIES:
        raise IsthmusError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy in ("auto", "random") and draws < 1:
        raise IsthmusError(f"strategy {strategy!r} needs draws >= 1, got {draws}")
    if strategy == "swap" and swaps < 1:
        raise IsthmusError(f"strategy 'swap' needs swaps >= 1, got {swaps}")
    units = units_of(model)
    _check_droppable(model, units)
    ev = _Evaluator(model, params, units, data, batch_size)
    base = ev.metrics([params])
    base_loss, base_acc = float(base.loss[0]), float(base.acc[0])
    maps = None
    if strategy in ("auto", "greedy", "swap"):
        maps = layer_maps(model)
    d = units.depth
    best_by: dict[str, list] = {}
    multipliers: list[float] = [1.0] * (d - 1)
    greedy_rules: list[str] = [""] * (d - 1)
    by_i: dict[int, DropoutChoice] = {}
    upper: dict[str, list[int]] = {}  # best kept sets of start layer i+1 (layers i+1..d-1)
    meta = {
        "strategy": strategy,
        "draws": draws,
        "swaps": swaps,
        "seed": seed,
        "fit_r": fit_r,
        "batch_size": batch_size,
        "loss": base_loss,
        "data": [data.name, len(data.x_train)],
    }
    todo = list(range(d - 1, 0, -1))
    if resume:
        st = _resume_stability(checkpoint, meta)
        by_i = {c["i"]: DropoutChoice(**c) for c in st["choices"]}
        best_by, multipliers, greedy_rules = st["best_by"], st["multipliers"], st["greedy_rules"]
        upper, ev.count = st["upper"], st["evaluations"]
        todo = [i for i in todo if i not in by_i]
    bar = tqdm(
        todo,
        desc="dropout stability",
        unit="start layer",
        disable=_progress(progress),
    )
    for i in bar:  # top down, so that start layer i can reuse the sets found for i+1
        suffix = units.layers[i - 1 :]
        found: dict[str, tuple[dict, float]] = {}
        if strategy in ("auto", "random"):
            g = generator(seed, i, 1)
            kepts = [_random_kept(suffix, g) for _ in range(draws)]
            if strategy == "auto" and upper:
                # nesting: draws/4 more that redraw only layer i under the best sets for i+1
                gn = generator(seed, i, 2)
                kepts += [
                    {**_random_kept(suffix[:1], gn), **upper} for _ in range(max(1, draws // 4))
                ]
            losses = ev(kepts)
            b = int(torch.argmin(losses))
            found["random"] = (kepts[b], float(losses[b]))
        if strategy in ("auto", "greedy", "swap"):
            x = data.x_train.to(next(iter(params.values())).device)
            ks = [_greedy_kept(maps, params, units, i, x, batch_size, r) for r in _GREEDY_RULES]
            rules = list(_GREEDY_RULES)
            if strategy == "auto" and upper:
                ks += [{suffix[0].name: k[suffix[0].name], **upper} for k in ks]
                rules += [f"{r}+upper" for r in _GREEDY_RULES]
            lg = ev(ks)
            b = int(torch.argmin(lg))
            found["greedy"] = (ks[b], float(lg[b]))
            greedy_rules[i - 1] = rules[b]
        if strategy in ("auto", "swap") and swaps > 0:
            start = min(found.values(), key=lambda kl: kl[1])
            found["swap"] = _swap_search(
                ev, suffix, start[0], start[1], swaps, generator(seed, i, 3)
            )
        for name, (_, lv) in found.items():
            best_by.setdefault(name, [None] * (d - 1))[i - 1] = lv
        kept, loss = min(found.values(), key=lambda kl: kl[1])
        upper = kept
        mult = 1.0
        if fit_r:
            mult, loss = _fit_multiplier(ev, kept, loss)
            multipliers[i - 1] = mult
        validate_kept(units, i, kept)
        by_i[i] = DropoutChoice(i, loss, kept, _r(units, kept, mult))
        bar.set_postfix(loss=f"{loss:.4f}")
        if checkpoint is not None:
            state = {
                "choices": [asdict(c) for c in by_i.values()],
                "best_by": best_by,
                "multipliers": multipliers,
                "greedy_rules": greedy_rules,
                "upper": upper,
                "evaluations": ev.count,
            }
            write_json(checkpoint, {"meta": meta, "state": state})
    choices = [by_i[i] for i in range(1, d)]
    accs = ev.metrics([dropout_params(params, units, c.kept, c.r) for c in choices]).acc.tolist()
    search = {
        "strategy": strategy,
        "draws": draws if strategy in ("auto", "random") else 0,
        "seed": seed,
        "nested_draws": max(1, draws // 4) if strategy == "auto" and d > 2 else 0,
        "swaps": swaps if strategy in ("auto", "swap") else 0,
        "fit_r": fit_r,
        "best_loss": best_by,
        "evaluations": ev.count,
    }
    if fit_r:
        search["r_multiplier"] = multipliers
    if strategy in ("auto", "greedy", "swap"):
        search["greedy_rule"] = greedy_rules
    eps = max(c.loss for c in choices) - base_loss
    extra = {"acc": base_acc, "acc_by_start_layer": accs}
    return StabilityResult("dropout", eps, base_loss, choices, search, extra)


def dropout_loss_curve(
    model: nn.Module,
    params: Params,
    data: Dataset,
    keep_rates: Sequence[float] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95),
    draws: int = 20,
    seed: int = 0,
    batch_size: int | None = None,
) -> dict:
    """Train loss of random unit/channel dropout keeping a fraction q in every hidden layer.

    |S_j| = max(1, round(q h_j)) and r_j = h_j / |S_j| (about 1/q): the paper's "dropout loss vs
    keep probability" plot. Returns per rate the mean, std, min and max over `draws` random draws,
    the raw losses and accuracies, and L(theta).
    """
    if draws < 1 or not keep_rates or any(not 0 < q <= 1 for q in keep_rates):
        raise IsthmusError("dropout_loss_curve needs draws >= 1 and keep rates in (0, 1]")
    units = units_of(model)
    _check_droppable(model, units)
    ev = _Evaluator(model, params, units, data, batch_size)
    base = ev.metrics([params])
    losses, accs = [], []
    for n, q in enumerate(keep_rates):
        g = generator(seed, n, 7)
        kepts = [
            {
                la.name: sorted(
                    torch.randperm(la.size, generator=g)[: max(1, round(q * la.size))].tolist()
                )
                for la in units.layers
            }
            for _ in range(draws)
        ]
        m = ev.metrics([dropout_params(params, units, k) for k in kepts])
        losses.append(m.loss.tolist())
        accs.append(m.acc.tolist())
    lt = torch.tensor(losses, dtype=torch.float64)
    return {
        "keep_rates": [float(q) for q in keep_rates],
        "draws": draws,
        "seed": seed,
        "loss": float(base.loss[0]),
        "acc": float(base.acc[0]),
        "mean": lt.mean(1).tolist(),
        "std": (lt.std(1) if draws > 1 else torch.zeros(len(keep_rates))).tolist(),
        "min": lt.min(1).values.tolist(),
        "max": lt.max(1).values.tolist(),
        "losses": losses,
        "accs": accs,
    }


# ----------------------------------------------------------------------------- per-layer maps


@dataclass(frozen=True)
class _Stage:
    kind: str  # "linear" | "conv"
    prefix: str  # state-dict prefix: "layers.0", "convs.1", "fcs.0"
    pools: int  # max-pools that follow (convs only)


@dataclass(frozen=True)
class LayerMaps:
    """The layers of an MLP or ConvNet as maps between activations, over a parameter dict.

    Layer j (1..d): z^j = pool^k(W_j x^{j-1} + b_j), x^j = relu(z^j) for j < d, f = z^d.
    `forward` gives all x^j and z^j; `pre(j, p, x)` one layer; `linear(j, p, x)` is W_j x (no bias,
    no pooling); `frobenius(j, p, x)` is ||W_j||_F of that linear operator on inputs shaped like x.
    """

    stages: tuple[_Stage, ...]
    input_shape: tuple[int, ...] | None  # ConvNet: (C, L) or (C, H, W); MLP: None (flatten)
    dim: int = 0  # conv dimension (0 for an MLP)
    padding: int = 0
    pool: tuple[int, int] = (2, 2)
    lead_pools: int = 0

    @property
    def depth(self) -> int:
        return len(self.stages)

    def inputs(self, x: Tensor) -> Tensor:
        """x^0 (flattened for an MLP; shaped, and pooled by any leading pools, for a CNN)."""
        if self.input_shape is None:
            return x.flatten(1)
        x = x.reshape(x.shape[0], *self.input_shape)
        for _ in range(self.lead_pools):
            x = self._pool(x)
        return x

    def _pool(self, z: Tensor) -> Tensor:
        fn = F.max_pool1d if self.dim == 1 else F.max_pool2d
        return fn(z, self.pool[0], self.pool[1])

    def linear(self, j: int, p: Params, x: Tensor) -> Tensor:
        st = self.stages[j - 1]
        w = p[f"{st.prefix}.weight"]
        if st.kind == "conv":
            conv = F.conv1d if self.dim == 1 else F.conv2d
            return conv(x, w, None, padding=self.padding)
        return F.linear(x.flatten(1), w)

    def pre(self, j: int, p: Params, x: Tensor) -> Tensor:
        st = self.stages[j - 1]
        z = self.linear(j, p, x)
        b = p.get(f"{st.prefix}.bias")
        if b is not None:
            z = z + b.reshape(-1, *([1] * (z.dim() - 2)))
        for _ in range(st.pools):
            z = self._pool(z)
        return z

    def act(self, j: int, z: Tensor) -> Tensor:
        return F.relu(z) if j < self.depth else z

    def forward(self, p: Params, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """([x^0, ..., x^{d-1}], [z^1, ..., z^d]) for a batch of raw inputs x."""
        xs, zs = [self.inputs(x)], []
        for j in range(1, self.depth + 1):
            zs.append(self.pre(j, p, xs[-1]))
            if j < self.depth:
                xs.append(F.relu(zs[-1]))
        return xs, zs

    def suffix(self, p: Params, i: int, xi: Tensor, upto: int | None = None) -> list[Tensor]:
        """[z^{i+1}, ..., z^{upto}] computed from x^i (upto defaults to d)."""
        out, h = [], xi
        for j in range(i + 1, (upto or self.depth) + 1):
            out.append(self.pre(j, p, h))
            h = F.relu(out[-1])
        return out

    def frobenius(self, j: int, p: Params, x: Tensor) -> float:
        """||W_j||_F of the linear operator x -> W_j x, for inputs shaped like x (exact)."""
        st = self.stages[j - 1]
        w = p[f"{st.prefix}.weight"].double()
        if st.kind != "conv":
            return float(w.norm())
        # each output entry is a row of the operator: sum over the kernel taps that hit the input
        w2 = w.pow(2).sum(1, keepdim=True)  # (O, 1, k...)
        ones = torch.ones(1, 1, *x.shape[2:], dtype=w.dtype, device=w.device)
        conv = F.conv1d if self.dim == 1 else F.conv2d
        return float(conv(ones, w2, None, padding=self.padding).sum().sqrt())

    def mean_activation(
        self, p: Params, x: Tensor, j: int, batch_size: int | None = None
    ) -> Tensor:
        """Mean of x^j per unit/channel over examples (and positions), (h_j,)."""
        tot, n = 0.0, 0
        step = batch_size or len(x)
        with torch.no_grad():
            for s in range(0, len(x), step):
                h = self.inputs(x[s : s + step].to(next(iter(p.values())).dtype))
                for k in range(1, j + 1):
                    h = F.relu(self.pre(k, p, h))
                tot = tot + h.double().transpose(0, 1).reshape(h.shape[1], -1).sum(1)
                n += h[:, 0].numel()
        return torch.as_tensor(tot) / n


def layer_maps(model: nn.Module) -> LayerMaps:
    """Per-layer forward maps of `isthmus.models.MLP` or `ConvNet` (no BatchNorm)."""
    if has_bn(model):
        raise IsthmusError("per-layer maps need a net without BatchNorm (SCIENCE.md section 1)")
    if isinstance(model, MLP):
        return LayerMaps(
            tuple(_Stage("linear", f"layers.{k}", 0) for k in range(len(model.layers))), None
        )
    if isinstance(model, ConvNet):
        stages: list[_Stage] = []
        lead, k = 0, 0
        for step in model.steps:
            if step == "M":
                if stages:
                    stages[-1] = replace(stages[-1], pools=stages[-1].pools + 1)
                else:
                    lead += 1
            else:
                stages.append(_Stage("conv", f"convs.{k}", 0))
                k += 1
        stages += [_Stage("linear", f"fcs.{k}", 0) for k in range(len(model.fcs))]
        return LayerMaps(
            tuple(stages),
            model.input_shape,
            model.dim,
            model.plan.padding,
            tuple(model.plan.pool),
            lead,
        )
    raise IsthmusError(
        f"per-layer maps (greedy search, noise stability) know MLP and ConvNet, not "
        f"{type(model).__name__}; use strategy='random' for other modules"
    )


# ----------------------------------------------------------------------------- noise stability


def _norms(t: Tensor) -> Tensor:
    """Per-example Euclidean norms (float64), (N,)."""
    return t.flatten(1).double().norm(dim=1)


def _div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, nan where den == 0 (an undefined ratio is left out of min/mean, never 0 or inf)."""
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, math.nan))


def _finite(t: Tensor) -> Tensor:
    return t[torch.isfinite(t)]


def _stat(t: Tensor, how: str) -> float | None:
    t = _finite(t)
    if t.numel() == 0:
        return None
    return float({"min": t.min, "max": t.max, "mean": t.mean, "median": t.median}[how]())


def jacobian_frobenius_sq(
    fn: Callable[[Tensor], tuple[Tensor, ...]],
    x: Tensor,
    n_proj: int | None,
    g: torch.Generator | None = None,
) -> list[Tensor]:
    """Per-example ||J||_F^2 of each output of a row-wise map `fn` at the batch x, from jvps only.

    n_proj probes g ~ N(0, I): the mean of ||J g||^2 is unbiased, and for singular values s_k its
    variance is 2 sum s_k^4 / n_proj <= 2 ||J||_F^4 / n_proj. n_proj=None: exact, with the basis
    vectors (one jvp per input entry).
    """
    n_in = x[0].numel()
    acc: list[Tensor] | None = None
    steps = range(n_in) if n_proj is None else range(n_proj)
    for k in steps:
        if n_proj is None:
            v = torch.zeros(len(x), n_in, dtype=x.dtype, device=x.device)
            v[:, k] = 1
            v = v.reshape(x.shape)
        else:
            v = torch.randn(x.shape, generator=g, dtype=torch.float64).to(x)
        _, tangents = jvp(fn, (x,), (v,))
        sq = [t.flatten(1).double().pow(2).sum(1) for t in tangents]
        acc = sq if acc is None else [a + b for a, b in zip(acc, sq, strict=True)]
    assert acc is not None
    return acc if n_proj is None else [a / n_proj for a in acc]


def noise_response(model: nn.Module, params: Params, x: Tensor, i: int, eta: Tensor) -> dict:
    """Inject eta at x^i (1 <= i <= d-1) for the raw inputs x and follow it to the output.

    Returns per later layer j = i+1..d (rows) and example (columns): `relative_change` =
    ||x~^j - x^j|| / ||x^j|| (j = d: ||f~ - f|| / ||f||), `residual` = ||M_{i,j}(x^i + eta) -
    M_{i,j}(x^i) - J_{i,j} eta|| (M_{i,j}: x^i -> z^j), `z_norm` = ||z^j||, and `eta_rel` =
    ||eta|| / ||x^i||.
    """
    maps = layer_maps(model)
    if not 1 <= i < maps.depth:
        raise IsthmusError(f"noise can be injected at hidden layers 1..{maps.depth - 1}, not {i}")
    with torch.no_grad():
        xi = maps.forward(params, x)[0][i]
    return _response(maps, params, i, xi, eta.to(xi))


def _response(maps: LayerMaps, p: Params, i: int, xi: Tensor, eta: Tensor) -> dict:
    d = maps.depth

    def fn(h: Tensor) -> tuple[Tensor, ...]:
        return tuple(maps.suffix(p, i, h))

    zs, jeta = jvp(fn, (xi,), (eta,))
    zt = fn(xi + eta)
    rel, res, zn = [], [], []
    for k, j in enumerate(range(i + 1, d + 1)):
        a, b = (zs[k], zt[k]) if j == d else (F.relu(zs[k]), F.relu(zt[k]))
        rel.append(_div(_norms(b - a), _norms(a)))
        res.append(_norms(zt[k] - zs[k] - jeta[k]))
        zn.append(_norms(zs[k]))
    return {
        "relative_change": torch.stack(rel),
        "residual": torch.stack(res),
        "z_norm": torch.stack(zn),
        "eta_rel": _div(_norms(eta), _norms(xi)),
    }


def _unit_mask(x: Tensor, kept: Tensor, r: float) -> Tensor:
    """Multiplier for x^i (N, h) or (N, C, ...) that keeps units/channels `kept`, scaled by r."""
    m = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    m[kept.to(x.device)] = r
    return m.reshape(1, -1, *([1] * (x.dim() - 2)))


def noise_stability(
    model: nn.Module,
    params: Params,
    data: Dataset,
    *,
    n_examples: int | None = 256,
    n_proj: int | None = 128,
    seed: int = 0,
    noise_scale: float = 1.0,
    dropout_draws: int = 8,
    progress: bool | None = None,
    batch_size: int | None = None,
) -> StabilityResult:
    """The noise-stability quantities of the module docstring on a seeded training subset.

    Args:
      n_examples: training examples used (None: all). n_proj: Gaussian probes per Jacobian norm
        (None: exact). noise_scale: ||eta|| / ||x^i|| of the injected noise (1 as in SCIENCE.md).
      dropout_draws: random halves per layer for the measured dropout output change.
      batch_size: examples per forward pass for L(theta) on the whole training split.

    Returns: kind "noise"; epsilon = eps_noise (nan where undefined); `extra` holds per-layer
    quantities (lists indexed by layer, None where undefined, e.g. an example whose x^i is 0).
    """
    if noise_scale <= 0:
        raise IsthmusError(f"noise_scale must be > 0, got {noise_scale}")
    if n_proj is not None and n_proj < 1:
        raise IsthmusError(f"n_proj must be >= 1 or None (exact), got {n_proj}")
    units = units_of(model)
    _check_droppable(model, units)
    maps = layer_maps(model)
    d = maps.depth
    ev = _Evaluator(model, params, units, data, batch_size)
    base = ev.metrics([params])
    ref = next(iter(params.values()))
    g = generator(seed, 0, 11)
    n_all = len(data.x_train)
    n = n_all if n_examples is None else min(int(n_examples), n_all)
    if n < 1:
        raise IsthmusError(f"n_examples must be >= 1, got {n_examples}")
    idx = torch.randperm(n_all, generator=g)[:n].sort().values
    x = data.x_train[idx.to(data.x_train.device)].to(ref.device, ref.dtype)
    with torch.no_grad():
        xs, zs = maps.forward(params, x)
    fx = _norms(zs[-1])

    cushion, cushion_mean = [], []
    for j in range(1, d + 1):
        fro = maps.frobenius(j, params, xs[j - 1])
        with torch.no_grad():
            ratio = _div(_norms(maps.linear(j, params, xs[j - 1])), fro * _norms(xs[j - 1]))
        cushion.append(_stat(ratio, "min"))
        cushion_mean.append(_stat(ratio, "mean"))
    contraction, dead = [], []
    for j in range(1, d):
        xn = _norms(xs[j])
        dead.append(int((xn == 0).sum()))
        contraction.append(_stat(_div(_norms(zs[j - 1]), xn), "max"))

    inter, smooth, atten, drop_change = [], [], [], []
    bar = tqdm(range(1, d), desc="noise stability", unit="layer", disable=_progress(progress))
    for i in bar:
        xi = xs[i]

        def fn(h: Tensor, i: int = i) -> tuple[Tensor, ...]:
            return tuple(maps.suffix(params, i, h))

        _, jx = jvp(fn, (xi,), (xi,))
        fro2 = jacobian_frobenius_sq(fn, xi, n_proj, generator(seed, i, 13))
        for k, j in enumerate(range(i + 1, d + 1)):
            ratio = _div(_norms(jx[k]), fro2[k].sqrt() * _norms(xi))
            inter.append({"i": i, "j": j, "min": _stat(ratio, "min"), "mean": _stat(ratio, "mean")})
        eta = torch.randn(xi.shape, generator=generator(seed, i, 17), dtype=torch.float64).to(xi)
        scale = noise_scale * _div(_norms(xi), _norms(eta)).nan_to_num(0.0)  # ||eta|| = s ||x^i||
        eta = eta * scale.to(xi).reshape(-1, *([1] * (xi.dim() - 1)))
        with torch.no_grad():
            resp = _response(maps, params, i, xi, eta)
        for k, j in enumerate(range(i + 1, d + 1)):
            if j >= i + 2:
                ratio = _div(noise_scale * resp["z_norm"][k], resp["residual"][k])
                smooth.append(
                    {"i": i, "j": j, "min": _stat(ratio, "min"), "median": _stat(ratio, "median")}
                )
        atten.append(
            {
                "i": i,
                "layers": list(range(i, d + 1)),
                "relative_change": [noise_scale]
                + [_stat(resp["relative_change"][k], "mean") for k in range(d - i)],
            }
        )
        h = units.layers[i - 1].size
        changes = []
        gd = generator(seed, i, 19)
        for _ in range(dropout_draws):
            kept = torch.randperm(h, generator=gd)[: h // 2]
            with torch.no_grad():
                ft = maps.suffix(params, i, xi * _unit_mask(xi, kept, h / len(kept)))[-1]
            changes.append(_div(_norms(ft - zs[-1]), fx))
        drop_change.append(_stat(torch.cat(changes), "mean") if changes else None)

    mu_from = [
        min((r["min"] for r in inter if r["i"] == i and r["min"] is not None), default=None)
        for i in range(1, d)
    ]
    c = max((v for v in contraction if v is not None), default=None)
    rho = min((r["min"] for r in smooth if r["min"] is not None), default=None)
    dims = [int(xs[i][0].numel()) for i in range(1, d)]
    prods = [
        cushion[i - 1] * mu_from[i - 1]
        if cushion[i - 1] is not None and mu_from[i - 1] is not None
        else None
        for i in range(1, d)
    ]
    eps = math.nan
    if c is not None and all(v is not None and v > 0 for v in prods):
        eps = c * d**1.5 * float(fx.max()) / (math.sqrt(min(dims)) * min(prods))
        eps = eps if math.isfinite(eps) else math.nan
    extra = {
        "layers": [la.name for la in units.layers],
        "dims": dims,
        "n_examples": n,
        "layer_cushion": cushion,
        "layer_cushion_mean": cushion_mean,
        "interlayer_cushion": inter,
        "interlayer_cushion_from": mu_from,
        "activation_contraction": c,
        "activation_contraction_by_layer": contraction,
        "dead_examples_by_layer": dead,
        "interlayer_smoothness": rho,
        "interlayer_smoothness_pairs": smooth,
        "attenuation": atten,
        "output_relative_change": [a["relative_change"][-1] for a in atten],
        "dropout_output_change": drop_change,
        "max_output_norm": float(fx.max()),
        "epsilon_formula": "c * d^1.5 * max||f(x)|| / (sqrt(min_i n_i) * min_i mu_i mu_{i->})",
        "acc": float(base.acc[0]),
    }
    search = {
        "seed": seed,
        "n_examples": n,
        "n_proj": n_proj if n_proj is not None else "exact",
        "noise_scale": noise_scale,
        "dropout_draws": dropout_draws,
    }
    return StabilityResult("noise", eps, float(base.loss[0]), [], search, extra)


# ----------------------------------------------------------------------------- stability.json


def save_stability(out: str | Path, result: StabilityResult) -> Path:
    path = Path(out) / STABILITY_FILE if Path(out).suffix != ".json" else Path(out)
    write_json(path, result.to_json())
    return path


def load_stability(path: str | Path) -> StabilityResult:
    """Read stability.json (a file or the folder holding it), validating the fields consumers use."""
    path = Path(path)
    if path.is_dir():
        path = path / STABILITY_FILE
    d = read_json(path)
    for key in ("kind", "epsilon", "loss", "by_start_layer"):
        if key not in d:
            raise IsthmusError(
                f"{path}: missing field {key!r}; re-create it with `isthmus stability`"
            )
    if d["kind"] != "dropout":
        return StabilityResult(
            d["kind"],
            float(d["epsilon"]),
            float(d["loss"]),
            [],
            d.get("search", {}),
            {k: v for k, v in d.items() if k not in StabilityResult.__dataclass_fields__},
        )
    choices = []
    for n, c in enumerate(d["by_start_layer"]):
        try:
            kept = {str(k): [int(u) for u in v] for k, v in c["kept"].items()}
            r = {str(k): float(v) for k, v in c.get("r", {}).items()}
            choices.append(DropoutChoice(int(c["i"]), float(c["loss"]), kept, r))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise IsthmusError(
                f"{path}: by_start_layer[{n}] is malformed ({e}); expected "
                '{"i": int, "loss": float, "kept": {layer: [units]}, "r": {layer: factor}}'
            ) from None
    extra = {k: v for k, v in d.items() if k not in StabilityResult.__dataclass_fields__}
    return StabilityResult(
        d["kind"], float(d["epsilon"]), float(d["loss"]), choices, d.get("search", {}), extra
    )
