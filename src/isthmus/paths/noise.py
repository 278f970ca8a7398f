"""The Theorem 2 path of Kuditipudi et al. 2019: five segments between two noise-stable nets.

Theorem 2 (paper): for eps-noise-stable nets a path of at most 10 segments keeps the loss within
max(L_A, L_B) + O~(eps), because noise stability lets one interpolate *directly* between a net and
its dropout version. Design (SCIENCE.md section 1, 5 segments): choose kept sets S^A_j and S^B_j
that are disjoint halves of every hidden layer (|S| <= floor(h_j/2); with odd widths one unit is in
neither), and A_1, B_1 the dropout versions with start layer 1 (factor r_j = h_j/|S_j| by default):

  0. A -> A_1        straight line, all layers at once ("line": measured, not certified);
  1. A_1 -> A_1 + B_1's chain written into units S^B (free in A_1)  (b: function preserved);
  2. switch the output layer from A_1's to B_1's                    (a: loss <= max(L(A_1), L(B_1)));
  3. restore every unit outside S^B to B_1's values (free now)      (b: function preserved);
  4. B_1 -> B        straight line ("line").

Because the kept sets are disjoint, B_1's chain sits in exactly its own slots, so no permutation is
needed. The kept sets are searched jointly (`complementary_kept`): random complementary splits,
evaluated in batched calls, the best by max(L(A_1), L(B_1)), then rounds of single-unit exchanges
that keep the sets disjoint. Segments 1-3 are certified as in `isthmus.paths.dropout.certify`; the
straight segments depend on noise stability, so their measured maximum and barrier are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data import Dataset
from ..errors import IsthmusError
from ..models import Units, units_of
from ..params import Params, check_compatible, evaluate
from ..stability import StabilityResult, default_r, dropout_params, validate_kept
from .base import PathResult, evaluate_path
from .dropout import (
    ConstructivePath,
    _check_model,
    _float64,
    _rows,
    _structure,
    _write_rows,
    certify,
    dense_ts,
)

SEGMENTS = 5
KINDS = ("line", "b", "a", "b", "line")


def _validate_pair(
    units: Units, kept_a: dict[str, list[int]], kept_b: dict[str, list[int]]
) -> None:
    for who, kept in (("A", kept_a), ("B", kept_b)):
        try:
            validate_kept(units, 1, kept)
        except IsthmusError as e:
            raise IsthmusError(f"Theorem 2 path, net {who}: {e}") from None
    for layer in units.layers:
        both = sorted(set(kept_a[layer.name]) & set(kept_b[layer.name]))
        if both:
            raise IsthmusError(
                f"Theorem 2 path: the kept sets of A and B share units {both[:8]} in layer "
                f"{layer.name}; they must be disjoint in every layer (search them jointly with "
                "isthmus.paths.noise.complementary_kept, or omit --stability)"
            )


def theorem2_path(
    params_a: Params,
    params_b: Params,
    units: Units,
    kept_a: dict[str, list[int]],
    kept_b: dict[str, list[int]],
    r_a: dict[str, float] | None = None,
    r_b: dict[str, float] | None = None,
) -> ConstructivePath:
    """The 5-segment Theorem 2 path A -> A_1 -> (b) -> (a) -> (b) = B_1 -> B.

    Args:
      kept_a, kept_b: kept units of every hidden layer (start layer 1), by layer name; disjoint.
      r_a, r_b: factors by layer name (default h_j / |S_j|).
    Returns a `ConstructivePath` with method "noise" and kinds line, b, a, b, line.
    """
    check_compatible(params_a, params_b)
    net = _structure(units, params_a)
    if net.n == 0:
        raise IsthmusError("the Theorem 2 path needs at least one hidden layer (depth >= 2)")
    _validate_pair(units, kept_a, kept_b)
    r_a = {**default_r(units, kept_a), **(r_a or {})}
    r_b = {**default_r(units, kept_b), **(r_b or {})}
    a1 = dropout_params(params_a, units, kept_a, r_a)
    b1 = dropout_params(params_b, units, kept_b, r_b)
    slots_b = [sorted(kept_b[name]) for name in net.names]
    n2 = a1
    for l, slots in enumerate(slots_b):
        n2 = _write_rows(n2, net, l, slots, _rows(b1, net, l, slots))
    n3 = {**n2, **{h: b1[h] for h in net.head}}
    # n3 and b1 agree on B_1's live rows and the output layer; only free rows differ
    for l, slots in enumerate(slots_b):
        for name, t in _rows(n3, net, l, slots).items():
            if not torch.equal(t, _rows(b1, net, l, slots)[name]):
                raise RuntimeError(f"Theorem 2 construction: rows of {name} differ from B_1")
    notes = [
        "A -> A_1: straight line to the dropout version (measured)",
        "write B_1's chain into the units S^B, free in A_1",
        "switch the output layer from A_1 to B_1",
        "restore B_1's dropped units (free after the switch)",
        "B_1 -> B: straight line from the dropout version (measured)",
    ]
    layout = {
        "kept_a": {k: sorted(v) for k, v in kept_a.items()},
        "kept_b": {k: sorted(v) for k, v in kept_b.items()},
        "r_a": r_a,
        "r_b": r_b,
        "segment_count": SEGMENTS,
        "formula": "5: line, b, a, b, line",
    }
    return ConstructivePath(
        [params_a, a1, n2, n3, b1, params_b],
        KINDS,
        head=net.head,
        notes=notes,
        layout=layout,
        method="noise",
    )


# ----------------------------------------------------------------------------- joint search


@dataclass(frozen=True)
class Split:
    """Disjoint kept sets for A and B (start layer 1) and the dropout losses they give."""

    kept_a: dict[str, list[int]]
    kept_b: dict[str, list[int]]
    loss_a1: float
    loss_b1: float
    search: dict


def _random_split(units: Units, g: torch.Generator) -> tuple[dict, dict]:
    ka, kb = {}, {}
    for layer in units.layers:
        perm = torch.randperm(layer.size, generator=g).tolist()
        half = layer.size // 2
        ka[layer.name], kb[layer.name] = sorted(perm[:half]), sorted(perm[half : 2 * half])
    return ka, kb


def _exchange(units: Units, ka: dict, kb: dict, g: torch.Generator) -> tuple[dict, dict]:
    """Swap one unit of A's set with one outside it (taking it from B's set if it was there)."""
    layer = units.layers[int(torch.randint(len(units.layers), (1,), generator=g))]
    sa, sb = list(ka[layer.name]), list(kb[layer.name])
    out = [u for u in range(layer.size) if u not in set(sa)]
    a = sa[int(torch.randint(len(sa), (1,), generator=g))]
    b = out[int(torch.randint(len(out), (1,), generator=g))]
    sa = sorted([u for u in sa if u != a] + [b])
    if b in sb:
        sb = sorted([u for u in sb if u != b] + [a])
    return {**ka, layer.name: sa}, {**kb, layer.name: sb}


def complementary_kept(
    model: nn.Module,
    params_a: Params,
    params_b: Params,
    x: Tensor,
    y: Tensor,
    loss: str = "ce",
    *,
    draws: int = 64,
    swaps: int = 32,
    rounds: int = 2,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> Split:
    """Search disjoint kept sets for A and B minimising max(L(A_1), L(B_1)) on (x, y).

    Args:
      draws: random complementary splits (each layer: a random permutation, first floor(h/2)
        units to A, next floor(h/2) to B), evaluated in batched calls.
      swaps, rounds: `rounds` times, `swaps` single-unit exchanges of the best split, evaluated
        together; the best is kept if it lowers the score.
      seed: seeds the only generator used.
    """
    if draws < 1:
        raise IsthmusError(f"complementary_kept needs draws >= 1, got {draws}")
    units = units_of(model)
    g = torch.Generator().manual_seed(seed)

    def score(cands: list[tuple[dict, dict]]) -> tuple[Tensor, Tensor]:
        def ev(p, ks):
            pts = [dropout_params(p, units, k) for k in ks]
            return evaluate(model, pts, x, y, loss=loss, batch_size=batch_size).loss

        return ev(params_a, [c[0] for c in cands]), ev(params_b, [c[1] for c in cands])

    bar = tqdm(
        total=1 + rounds,
        desc="complementary kept sets",
        disable=None if progress is None else not progress,
    )
    cands = [_random_split(units, g) for _ in range(draws)]
    la, lb = score(cands)
    best = int(torch.argmin(torch.maximum(la, lb)))
    cur, cur_a, cur_b = cands[best], float(la[best]), float(lb[best])
    history = [max(cur_a, cur_b)]
    bar.update()
    for _ in range(rounds if swaps > 0 else 0):
        props = [_exchange(units, *cur, g) for _ in range(swaps)]
        pa, pb = score(props)
        k = int(torch.argmin(torch.maximum(pa, pb)))
        if max(float(pa[k]), float(pb[k])) < max(cur_a, cur_b):
            cur, cur_a, cur_b = props[k], float(pa[k]), float(pb[k])
        history.append(max(cur_a, cur_b))
        bar.update()
    bar.close()
    search = {
        "strategy": "random complementary splits + exchanges",
        "draws": draws,
        "swaps": swaps,
        "rounds": rounds,
        "seed": seed,
        "best_score_by_round": history,
    }
    return Split(cur[0], cur[1], cur_a, cur_b, search)


# ----------------------------------------------------------------------------- end to end


def connect_noise(
    model: nn.Module,
    params_a: Params,
    params_b: Params,
    data: Dataset,
    *,
    stability_a: StabilityResult | None = None,
    stability_b: StabilityResult | None = None,
    seed: int = 0,
    points: int = 61,
    progress: bool | None = None,
    draws: int = 64,
    batch_size: int | None = None,
) -> tuple[ConstructivePath, PathResult]:
    """Build and evaluate the Theorem 2 path in float64; certify its (b), (a), (b) segments.

    Args:
      stability_a, stability_b: dropout stability results whose start-layer-1 kept sets are used
        when both are given and disjoint in every layer; noise stability results are attached to
        the result (their per-layer quantities) and the kept sets are searched jointly.
      seed, draws: the joint search (`complementary_kept`). points: equally spaced t evaluated,
        on top of >= 20 per segment and the knots.

    Returns (path, PathResult) with method "noise"; `segments` report each segment's measured
    maximum and barrier; the certificate's bound max(L(A_1), L(B_1)) covers segments 1-3.
    """
    units = _check_model(model)
    check_compatible(params_a, params_b)
    given = [s for s in (stability_a, stability_b) if s is not None and s.kind == "dropout"]
    if len(given) == 2:
        ca, cb = stability_a.choice(1), stability_b.choice(1)
        _validate_pair(units, ca.kept, cb.kept)
        kept_a, kept_b, r_a, r_b = ca.kept, cb.kept, ca.r or None, cb.r or None
        search = {"strategy": "given", "source": "stability results (start layer 1)"}
    else:
        split = complementary_kept(
            model,
            params_a,
            params_b,
            data.x_train,
            data.y_train,
            data.loss,
            draws=draws,
            seed=seed,
            batch_size=batch_size,
            progress=progress,
        )
        kept_a, kept_b, r_a, r_b, search = split.kept_a, split.kept_b, None, None, split.search
    m64, (pa, pb) = _float64(model, params_a, params_b)
    d64 = data.to(dtype=torch.float64)
    path = theorem2_path(pa, pb, units, kept_a, kept_b, r_a, r_b)
    ts = dense_ts(path, points=points)
    res = evaluate_path(m64, path, d64, ts=ts, batch_size=batch_size)
    segments, cert = certify(
        m64,
        path,
        d64.x_train,
        d64.y_train,
        d64.loss,
        ts=ts,
        dense_loss=res.train_loss,
        batch_size=batch_size,
        progress=progress,
    )
    la1, lb1 = segments[1]["loss0"], segments[3]["loss1"]
    cert.update(
        {
            "scope": "segments 1-3 (b, a, b); the straight segments 0 and 4 are measured only",
            "loss_a": res.train_loss[0],
            "loss_b": res.train_loss[-1],
            "loss_a1": la1,
            "loss_b1": lb1,
            "line_max_loss": [segments[0]["max_loss"], segments[4]["max_loss"]],
            "line_barrier": [segments[0]["barrier"], segments[4]["barrier"]],
            "segment_count": path.segment_count,
            "formula": path.layout["formula"],
        }
    )
    extra = {"layout": path.layout, "search": search}
    for who, s in (("a", stability_a), ("b", stability_b)):
        if s is not None and s.kind == "noise":
            extra[f"noise_stability_{who}"] = {"epsilon": s.epsilon, **s.extra}
    return path, replace(res, method="noise", segments=segments, certificate=cert, extra=extra)
