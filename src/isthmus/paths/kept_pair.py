"""Complementary kept sets for the Theorem 2 path (Kuditipudi et al. 2019; docs/provable_paths.md).

The Theorem 2 path writes B's dropout version B_1 into the units A's version A_1 leaves free, so
the kept sets of A and B (start layer 1) must be disjoint in every hidden layer. `complementary_kept`
searches such a pair jointly: random complementary halves, evaluated in batched calls, the best by
max(L(A_1), L(B_1)), then rounds of single-unit exchanges that keep the sets disjoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import IsthmusError
from ..models import Units, units_of
from ..params import Params, evaluate
from ..progress import bar
from ..seeding import generator
from ..stability import KeptSets, dropout_params, validate_kept


@dataclass(frozen=True)
class KeptPair:
    """Disjoint kept sets for A and B (start layer 1) and the dropout losses they give."""

    kept_a: KeptSets
    kept_b: KeptSets
    loss_a1: float
    loss_b1: float
    search: dict


def check_disjoint(units: Units, kept_a: KeptSets, kept_b: KeptSets) -> None:
    """Both are kept sets of start layer 1, and they share no unit in any layer."""
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
                "isthmus.paths.complementary_kept, or omit --stability)"
            )


def random_pair(units: Units, g: torch.Generator) -> tuple[KeptSets, KeptSets]:
    """Per layer a random permutation: the first floor(h/2) units to A, the next floor(h/2) to B."""
    ka, kb = {}, {}
    for layer in units.layers:
        perm = torch.randperm(layer.size, generator=g).tolist()
        half = layer.size // 2
        ka[layer.name], kb[layer.name] = sorted(perm[:half]), sorted(perm[half : 2 * half])
    return ka, kb


def exchange(
    units: Units, ka: KeptSets, kb: KeptSets, g: torch.Generator
) -> tuple[KeptSets, KeptSets]:
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
) -> KeptPair:
    """Search disjoint kept sets for A and B minimising max(L(A_1), L(B_1)) on (x, y).

    Args:
      draws: random complementary pairs (`random_pair`), evaluated in batched calls.
      swaps, rounds: `rounds` times, `swaps` single-unit exchanges of the best pair, evaluated
        together; the best is kept if it lowers the score.
      seed: seeds the only generator used.
    """
    if draws < 1:
        raise IsthmusError(f"complementary_kept needs draws >= 1, got {draws}")
    units = units_of(model)
    g = generator(seed, 0, 47)  # the kept-pair search stream

    def losses(p: Params, kept_sets: list[KeptSets]) -> Tensor:
        pts = [dropout_params(p, units, k) for k in kept_sets]
        return evaluate(model, pts, x, y, loss=loss, batch_size=batch_size).loss

    def score(pairs: list[tuple[KeptSets, KeptSets]]) -> tuple[Tensor, Tensor]:
        return losses(params_a, [c[0] for c in pairs]), losses(params_b, [c[1] for c in pairs])

    steps = bar(total=1 + rounds, desc="complementary kept sets", progress=progress)
    pairs = [random_pair(units, g) for _ in range(draws)]
    la, lb = score(pairs)
    best = int(torch.argmin(torch.maximum(la, lb)))
    cur, cur_a, cur_b = pairs[best], float(la[best]), float(lb[best])
    history = [max(cur_a, cur_b)]
    steps.update()
    for _ in range(rounds if swaps > 0 else 0):
        props = [exchange(units, *cur, g) for _ in range(swaps)]
        pa, pb = score(props)
        k = int(torch.argmin(torch.maximum(pa, pb)))
        if max(float(pa[k]), float(pb[k])) < max(cur_a, cur_b):
            cur, cur_a, cur_b = props[k], float(pa[k]), float(pb[k])
        history.append(max(cur_a, cur_b))
        steps.update()
    steps.close()
    search = {
        "strategy": "random complementary splits + exchanges",
        "draws": draws,
        "swaps": swaps,
        "rounds": rounds,
        "seed": seed,
        "best_score_by_round": history,
    }
    return KeptPair(cur[0], cur[1], cur_a, cur_b, search)
