"""Dropout versions theta_i of a ReLU net (Kuditipudi et al. 2019, section 3; docs/stability.md).

Dropout version theta_i (start layer i, 1 <= i <= d-1): in every hidden layer j = i..d-1 keep a set
S_j of at most floor(h_j / 2) units, multiply the outgoing weights of kept units by r_j (default
h_j / |S_j|) and zero the outgoing weights of every other unit of those layers. Kept sets are
stored by hidden-layer name (`Units.layers[j].name`), unit indices sorted; CNNs are dropped
channel-wise through the same `Units` description.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import IsthmusError
from ..models import Layer, LayerMaps, Units, put, require_chain, take, units_of
from ..params import Params

KeptSets = dict[str, list[int]]  # hidden-layer name -> kept unit indices (sorted)


def default_r(units: Units, kept: KeptSets) -> dict[str, float]:
    """r_j = h_j / |S_j| for every layer in `kept` (2 for exactly half of an even width)."""
    sizes = {layer.name: layer.size for layer in units.layers}
    return {name: sizes[name] / len(idx) for name, idx in kept.items()}


def scaled_r(units: Units, kept: KeptSets, multiplier: float) -> dict[str, float]:
    """The default factors h_j / |S_j| times one global multiplier (the fitted-r option)."""
    return {k: v * multiplier for k, v in default_r(units, kept).items()}


def factors(units: Units, kept: KeptSets, multiplier: float = 1.0) -> dict[str, float]:
    """r_j of a dropout version: the default, or the default times a fitted multiplier."""
    return default_r(units, kept) if multiplier == 1.0 else scaled_r(units, kept, multiplier)


def validate_kept(units: Units, i: int, kept: KeptSets) -> None:
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
    params: Params, units: Units, kept: KeptSets, r: dict[str, float] | None = None
) -> Params:
    """theta_i: outgoing weights of kept units times r, of all other units of those layers zero.
    A layer without a factor in `r` (or every layer, with r None) takes the default h / |S|."""
    r = {**default_r(units, kept), **(r or {})}
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


def random_kept(layers: Sequence[Layer], g: torch.Generator, fraction: float = 0.5) -> KeptSets:
    """floor(fraction * h) random units per layer (at least 1), sorted; one randperm per layer."""
    return {
        la.name: sorted(
            torch.randperm(la.size, generator=g)[: kept_count(la.size, fraction)].tolist()
        )
        for la in layers
    }


def kept_count(size: int, fraction: float) -> int:
    """|S| = floor(fraction * h), at least 1 (the tolerance keeps 0.7 * 10 at 7 under round-off)."""
    return max(1, math.floor(fraction * size + 1e-9))


def outgoing_norms(params: Params, layer: Layer) -> Tensor:
    """||outgoing weights|| of every unit of `layer` (all its outgoing slices together), (h,)."""
    sq = 0.0
    for s in layer.outgoing:
        t = params[s.name].movedim(s.axis, 0)  # (h * block, ...): a unit's block is contiguous
        sq = sq + t.reshape(layer.size, -1).double().pow(2).sum(1)
    return torch.as_tensor(sq).sqrt()


def droppable(model: nn.Module, feature: str) -> tuple[Units, LayerMaps]:
    """Units and layer maps of a plain chain without BatchNorm whose hidden layers can lose half
    their units; the one entry check of dropout and noise stability."""
    maps = require_chain(model, feature)
    units = units_of(model)
    if not units.layers:
        raise IsthmusError(f"the net has no hidden layer: {feature} needs depth >= 2")
    for layer in units.layers:
        if layer.size < 2:
            raise IsthmusError(
                f"hidden layer {layer.name} has {layer.size} unit(s); dropping a half needs >= 2"
            )
    return units, maps
