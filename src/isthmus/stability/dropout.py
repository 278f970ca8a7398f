"""Dropout stability: a search for the dropout versions theta_i (Kuditipudi et al. 2019, section 3).

A net is eps-dropout stable if for every start layer i some dropout version theta_i (see
`isthmus.stability.versions`; the dropout is nested: start layer i drops the suffix i..d-1) has
L(theta_i) <= L(theta) + eps (docs/stability.md). Stability is existential, so `dropout_stability`
*searches* kept sets on the training split: batched random draws, a greedy choice by importance
(outgoing-weight norm x mean activation, layer by layer from the bottom of the suffix), local swaps
that improve the loss, and optionally one global multiplier of r fitted by a 1-D line search.
`dropout_loss_curve` measures random dropout against the keep rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..data import Dataset
from ..errors import IsthmusError
from ..io import check_resume, read_json, write_json
from ..models import Layer, LayerMaps, Units
from ..params import Params, auto_strategy, evaluate
from ..progress import bar
from ..seeding import generator
from .results import DropoutChoice, DropoutStability
from .versions import (
    KeptSets,
    dropout_params,
    droppable,
    factors,
    outgoing_norms,
    random_kept,
    validate_kept,
)

STRATEGIES = ("auto", "random", "greedy", "swap")
GREEDY_RULES = ("paired", "top")
CHUNK = 32  # parameter points per batched evaluation call
SWAP_BATCH = 32  # candidate swaps evaluated together per round
# stream purposes for seeding.generator(seed, start layer, purpose)
_RANDOM, _NESTED, _SWAPS, _CURVE = 1, 2, 3, 7


class DropoutLosses:
    """L(theta_i) on the training split for many (kept sets, r multiplier), in batched calls.

    The evaluation strategy is fixed per device (`params.auto_strategy`), so repeated searches give
    identical numbers; `count` is the number of parameter points evaluated.
    """

    def __init__(
        self, model: nn.Module, params: Params, units: Units, data: Dataset, batch_size: int | None
    ):
        dev = next(iter(params.values())).device
        self.model, self.params, self.units = model, params, units
        self.x, self.y = data.x_train.to(dev), data.y_train.to(dev)
        self.loss_kind, self.batch_size = data.loss, batch_size
        self.strategy = auto_strategy(dev)
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
            chunk=CHUNK,
            strategy=self.strategy,
        )

    def __call__(
        self, kept_sets: Sequence[KeptSets], multiplier: float | Sequence[float] = 1.0
    ) -> Tensor:
        n = len(kept_sets)
        mults = [multiplier] * n if isinstance(multiplier, float | int) else multiplier
        out = []
        for s in range(0, n, CHUNK):
            pts = [
                dropout_params(self.params, self.units, k, factors(self.units, k, m))
                for k, m in zip(kept_sets[s : s + CHUNK], mults[s : s + CHUNK], strict=True)
            ]
            out.append(self.metrics(pts).loss)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def mean_activation(
    maps: LayerMaps, p: Params, x: Tensor, j: int, batch_size: int | None = None
) -> Tensor:
    """Mean of x^j per unit/channel over examples (and positions), (h_j,)."""
    tot, n = 0.0, 0
    step = batch_size or len(x)
    with torch.no_grad():
        for s in range(0, len(x), step):
            h = maps.inputs(x[s : s + step].to(next(iter(p.values())).dtype))
            for k in range(1, j + 1):
                h = torch.relu(maps.pre(k, p, h))
            tot = tot + h.double().transpose(0, 1).reshape(h.shape[1], -1).sum(1)
            n += h[:, 0].numel()
    return torch.as_tensor(tot) / n


def greedy_kept(
    maps: LayerMaps,
    params: Params,
    units: Units,
    i: int,
    x: Tensor,
    batch_size: int | None,
    rule: str = "paired",
) -> KeptSets:
    """Bottom-up over the suffix, ranking units by importance = ||outgoing|| x mean activation (in
    the net whose layers below are already dropped). rule "top" keeps the floor(h/2) most important
    units; "paired" keeps the first of every consecutive pair in that ranking, so the kept half
    carries about half of the layer's output and r = 2 restores it (keeping only the top half and
    doubling it overshoots; on a net with duplicated units it keeps one unit of each pair)."""
    kept: KeptSets = {}
    for j in range(i, units.depth):
        layer = units.layers[j - 1]
        p = dropout_params(params, units, kept) if kept else params
        act = mean_activation(maps, p, x, j, batch_size)
        importance = act * outgoing_norms(params, layer).to(act)
        order = torch.argsort(importance, descending=True, stable=True)
        pick = order[: layer.size // 2] if rule == "top" else order[0::2][: layer.size // 2]
        kept[layer.name] = sorted(pick.tolist())
    return kept


def swap_search(
    losses_of: DropoutLosses,
    layers: Sequence[Layer],
    kept: KeptSets,
    loss: float,
    swaps: int,
    g: torch.Generator,
) -> tuple[KeptSets, float]:
    """Rounds of random single swaps (drop a kept unit, keep a dropped one) evaluated together; the
    best of a round is accepted only if it lowers the loss, so the result is never worse."""
    tried = 0
    while tried < swaps:
        cands = []
        for _ in range(min(SWAP_BATCH, swaps - tried)):
            la = layers[int(torch.randint(len(layers), (1,), generator=g))]
            cur = kept[la.name]
            dropped = sorted(set(range(la.size)) - set(cur))
            u = cur[int(torch.randint(len(cur), (1,), generator=g))]
            v = dropped[int(torch.randint(len(dropped), (1,), generator=g))]
            new = dict(kept)
            new[la.name] = sorted((set(cur) - {u}) | {v})
            cands.append(new)
        tried += len(cands)
        losses = losses_of(cands)
        b = int(torch.argmin(losses))
        if float(losses[b]) < loss:
            kept, loss = cands[b], float(losses[b])
    return kept, loss


def fit_multiplier(losses_of: DropoutLosses, kept: KeptSets, loss: float) -> tuple[float, float]:
    """1-D line search for one global multiplier of r: a log grid on [1/2, 2] (25 points), then a
    6x finer grid around its best point. The loss is convex in r only at the top layer, hence a
    numeric search; the default (multiplier 1) is kept unless something is strictly better."""
    coarse = [2.0 ** (k / 12) for k in range(-12, 13)]  # contains 1 exactly
    lc = losses_of([kept] * len(coarse), coarse)
    c0 = coarse[int(torch.argmin(lc))]
    fine = [c0 * 2.0 ** (k / 72) for k in range(-6, 7) if k != 0]
    lf = losses_of([kept] * len(fine), fine)
    cands = [(float(lv), c) for lv, c in zip(lc, coarse, strict=True)]
    cands += [(float(lv), c) for lv, c in zip(lf, fine, strict=True)]
    best_loss, best_c = min(cands)
    return (best_c, best_loss) if best_loss < loss else (1.0, loss)


# ----------------------------------------------------------------------------- the search


@dataclass
class SearchState:
    """What a search has found so far; written after every start layer so that it can resume."""

    choices: dict[int, DropoutChoice] = field(default_factory=dict)
    best_by: dict[str, list] = field(default_factory=dict)  # strategy -> best loss per start layer
    multipliers: list[float] = field(default_factory=list)
    greedy_rules: list[str] = field(default_factory=list)
    upper: KeptSets = field(default_factory=dict)  # best kept sets of start layer i+1
    evaluations: int = 0

    def to_json(self) -> dict:
        d = asdict(self)
        d["choices"] = [asdict(c) for c in self.choices.values()]
        return d

    @staticmethod
    def from_json(state, path: str | Path) -> SearchState:
        need = {"choices", "best_by", "multipliers", "greedy_rules", "upper", "evaluations"}
        if not isinstance(state, dict) or not need <= set(state):
            raise IsthmusError(f"--resume: {path} is malformed (field 'state'); delete it")
        choices = {c["i"]: DropoutChoice(**c) for c in state["choices"]}
        return SearchState(
            choices,
            state["best_by"],
            state["multipliers"],
            state["greedy_rules"],
            state["upper"],
            state["evaluations"],
        )


@dataclass(frozen=True)
class _Settings:
    strategy: str
    draws: int
    swaps: int
    seed: int
    fit_r: bool
    batch_size: int | None

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise IsthmusError(
                f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}"
            )
        if self.strategy in ("auto", "random") and self.draws < 1:
            raise IsthmusError(f"strategy {self.strategy!r} needs draws >= 1, got {self.draws}")
        if self.strategy == "swap" and self.swaps < 1:
            raise IsthmusError(f"strategy 'swap' needs swaps >= 1, got {self.swaps}")


def _search_start_layer(
    i: int,
    cfg: _Settings,
    units: Units,
    maps: LayerMaps,
    params: Params,
    x: Tensor,
    losses_of: DropoutLosses,
    st: SearchState,
) -> None:
    """Every strategy of `cfg` for start layer i; the best choice goes into `st`."""
    suffix = units.layers[i - 1 :]
    found: dict[str, tuple[KeptSets, float]] = {}
    nested = cfg.strategy == "auto" and bool(st.upper)
    if cfg.strategy in ("auto", "random"):
        g = generator(cfg.seed, i, _RANDOM)
        kept_sets = [random_kept(suffix, g) for _ in range(cfg.draws)]
        if nested:  # draws/4 more that redraw only layer i under the best sets for i+1
            gn = generator(cfg.seed, i, _NESTED)
            extra = max(1, cfg.draws // 4)
            kept_sets += [{**random_kept(suffix[:1], gn), **st.upper} for _ in range(extra)]
        losses = losses_of(kept_sets)
        b = int(torch.argmin(losses))
        found["random"] = (kept_sets[b], float(losses[b]))
    if cfg.strategy in ("auto", "greedy", "swap"):
        kept_sets = [
            greedy_kept(maps, params, units, i, x, cfg.batch_size, r) for r in GREEDY_RULES
        ]
        rules = list(GREEDY_RULES)
        if nested:
            kept_sets += [{suffix[0].name: k[suffix[0].name], **st.upper} for k in kept_sets]
            rules += [f"{r}+upper" for r in GREEDY_RULES]
        losses = losses_of(kept_sets)
        b = int(torch.argmin(losses))
        found["greedy"] = (kept_sets[b], float(losses[b]))
        st.greedy_rules[i - 1] = rules[b]
    if cfg.strategy in ("auto", "swap") and cfg.swaps > 0:
        start, start_loss = min(found.values(), key=lambda kl: kl[1])
        g = generator(cfg.seed, i, _SWAPS)
        found["swap"] = swap_search(losses_of, suffix, start, start_loss, cfg.swaps, g)
    for name, (_, lv) in found.items():
        st.best_by.setdefault(name, [None] * (units.depth - 1))[i - 1] = lv
    kept, loss = min(found.values(), key=lambda kl: kl[1])
    st.upper = kept
    mult = 1.0
    if cfg.fit_r:
        mult, loss = fit_multiplier(losses_of, kept, loss)
        st.multipliers[i - 1] = mult
    validate_kept(units, i, kept)
    st.choices[i] = DropoutChoice(i, loss, kept, factors(units, kept, mult))


def _result(
    cfg: _Settings,
    st: SearchState,
    units: Units,
    params: Params,
    losses_of: DropoutLosses,
    base_loss: float,
    base_acc: float,
) -> DropoutStability:
    d = units.depth
    choices = [st.choices[i] for i in range(1, d)]
    accs = losses_of.metrics([dropout_params(params, units, c.kept, c.r) for c in choices])
    search = {
        "strategy": cfg.strategy,
        "draws": cfg.draws if cfg.strategy in ("auto", "random") else 0,
        "seed": cfg.seed,
        "nested_draws": max(1, cfg.draws // 4) if cfg.strategy == "auto" and d > 2 else 0,
        "swaps": cfg.swaps if cfg.strategy in ("auto", "swap") else 0,
        "fit_r": cfg.fit_r,
        "best_loss": st.best_by,
        "evaluations": losses_of.count,
    }
    if cfg.fit_r:
        search["r_multiplier"] = st.multipliers
    if cfg.strategy in ("auto", "greedy", "swap"):
        search["greedy_rule"] = st.greedy_rules
    eps = max(c.loss for c in choices) - base_loss
    return DropoutStability(eps, base_loss, choices, search, base_acc, accs.acc.tolist())


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
) -> DropoutStability:
    """Search, for every start layer i, kept sets minimising L(theta_i) on the training split.

    Args:
      model: the architecture: a plain chain (`layer_maps()`, e.g. MLP or ConvNet) without
        BatchNorm; other models are refused (`isthmus.models.require_chain`).
      params: the net theta (its dtype is used for the evaluation; float64 for certificates).
      data: the data set; the training split is used (docs/definitions.md: train loss).
      strategy: "random" (`draws` random kept sets, evaluated in batched calls), "greedy"
        (importance = outgoing-weight norm x mean activation; the better of keeping the top half
        and keeping one of every consecutive pair in importance order), "swap" (`swaps` candidate
        single swaps from the greedy choice), or "auto" = random, greedy, then swaps from the
        better one. Start layers are searched top down; in "auto", draws/4 extra random draws and
        extra greedy candidates redraw only layer i under the best sets found for start layer i+1.
      draws: random kept sets per start layer. swaps: candidate swaps per start layer.
      seed: all randomness comes from `seeding.generator(seed, start layer, stream)`.
      fit_r: also fit one global multiplier of r_j = h_j/|S_j| by a 1-D line search.
      progress: a bar (None: only on a terminal). batch_size: examples per forward pass.
      checkpoint: JSON file rewritten (atomically) after every start layer; resume: skip the start
        layers it holds (every draw is seeded by (seed, layer, stream), so the result is the same).

    Returns a `DropoutStability`: epsilon = max_i L(theta_i) - L(theta); `search` holds the
    settings and the best loss of every strategy per start layer (and the fitted multipliers).
    """
    cfg = _Settings(strategy, draws, swaps, seed, fit_r, batch_size)
    cfg.validate()
    units, maps = droppable(model, "dropout stability")
    losses_of = DropoutLosses(model, params, units, data, batch_size)
    base = losses_of.metrics([params])
    base_loss, base_acc = float(base.loss[0]), float(base.acc[0])
    d = units.depth
    meta = {**asdict(cfg), "loss": base_loss, "data": [data.name, len(data.x_train)]}
    st = SearchState(multipliers=[1.0] * (d - 1), greedy_rules=[""] * (d - 1))
    if resume:
        st = _resume(checkpoint, meta)
        losses_of.count = st.evaluations
    x = data.x_train.to(next(iter(params.values())).device)
    todo = [i for i in range(d - 1, 0, -1) if i not in st.choices]
    steps = bar(todo, progress=progress, desc="dropout stability", unit="start layer")
    for i in steps:  # top down, so that start layer i can reuse the sets found for i+1
        _search_start_layer(i, cfg, units, maps, params, x, losses_of, st)
        steps.set_postfix(loss=f"{st.choices[i].loss:.4f}")
        if checkpoint is not None:
            st.evaluations = losses_of.count
            write_json(checkpoint, {"meta": meta, "state": st.to_json()})
    return _result(cfg, st, units, params, losses_of, base_loss, base_acc)


def _resume(checkpoint: str | Path | None, meta: dict) -> SearchState:
    saved = None
    if checkpoint is not None and Path(checkpoint).exists():
        saved = read_json(checkpoint)
    # L(theta) agrees only to round-off between processes; everything else exactly
    check_resume(
        checkpoint,
        None if saved is None else saved.get("meta", {}),
        meta,
        what="dropout stability",
        approx=("loss",),
        rel=1e-6,
    )
    return SearchState.from_json(saved.get("state"), checkpoint)


# ----------------------------------------------------------------------------- keep-rate curve


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

    |S_j| = max(1, floor(q h_j)) (at most a fraction q, as in the definition of docs/stability.md)
    and r_j = h_j / |S_j| (about 1/q): the paper's "dropout loss vs keep probability" plot.
    Returns per rate the mean, std, min and max over `draws` random draws, the raw losses and
    accuracies, and L(theta).
    """
    if draws < 1 or not keep_rates or any(not 0 < q <= 1 for q in keep_rates):
        raise IsthmusError("dropout_loss_curve needs draws >= 1 and keep rates in (0, 1]")
    units, _ = droppable(model, "the dropout loss curve")
    losses_of = DropoutLosses(model, params, units, data, batch_size)
    base = losses_of.metrics([params])
    losses, accs = [], []
    for n, q in enumerate(keep_rates):
        g = generator(seed, n, _CURVE)
        kept_sets = [random_kept(units.layers, g, q) for _ in range(draws)]
        m = losses_of.metrics([dropout_params(params, units, k) for k in kept_sets])
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
