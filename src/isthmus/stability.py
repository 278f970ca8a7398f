"""Dropout stability and noise stability of ReLU nets (Kuditipudi et al. 2019, section 3).

Dropout version theta_i (start layer i, 1 <= i <= d-1): in every hidden layer j = i..d-1 keep a set
S_j of at most floor(h_j / 2) units, multiply the outgoing weights of kept units by r_j (default
h_j / |S_j|) and zero the outgoing weights of every other unit of those layers. The net is
eps-dropout stable if for every i some choice gives L(theta_i) <= L(theta) + eps. The kept sets
are stored by hidden-layer name (`Units.layers[j].name`), unit indices sorted.

Layout of stability.json: SCIENCE.md section 5.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .errors import IsthmusError
from .io import read_json, write_json
from .models import Units, put, take
from .params import Params

STABILITY_FILE = "stability.json"


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
