"""Stability results as small frozen dataclasses, and their file stability.json.

One type per kind of stability (Kuditipudi et al. 2019, section 3): `DropoutStability` (the kept
sets and losses of the dropout versions theta_i found by the search) and `NoiseStability` (the
per-layer noise-stability quantities). Both serialise to the layout of docs/definitions.md:
{"kind", "epsilon", "loss", "by_start_layer": [{"i", "loss", "kept", "r"}], "search": {...}} plus
fields of their own at the top level; `load_stability` returns the type named by "kind".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from ..errors import IsthmusError
from ..io import check_inputs, read_json, write_json
from ..params import Params

STABILITY_FILE = "stability.json"


@dataclass(frozen=True)
class DropoutChoice:
    """One theta_i: start layer i (1-based), its loss, kept units and factor per hidden layer."""

    i: int
    loss: float
    kept: dict[str, list[int]]
    r: dict[str, float]

    def to_json(self) -> dict:
        return {"i": self.i, "loss": self.loss, "kept": self.kept, "r": self.r}


@dataclass(frozen=True)
class DropoutStability:
    """Result of `dropout_stability`: epsilon = max_i L(theta_i) - L(theta) on the training split.

    `search` holds the settings and the best loss of every strategy per start layer; `acc` and
    `acc_by_start_layer` the train accuracies of theta and theta_i; `keep_rate_curve` an optional
    `dropout_loss_curve` attached by the CLI.
    """

    kind: ClassVar[str] = "dropout"
    epsilon: float
    loss: float  # L(theta)
    by_start_layer: list[DropoutChoice] = field(default_factory=list)
    search: dict = field(default_factory=dict)
    acc: float | None = None
    acc_by_start_layer: list[float] | None = None
    keep_rate_curve: dict | None = None

    def choice(self, i: int) -> DropoutChoice:
        for c in self.by_start_layer:
            if c.i == i:
                return c
        raise IsthmusError(f"stability result has no kept sets for start layer {i}")

    def to_json(self) -> dict:
        d = {"kind": self.kind, **asdict(self)}
        if d["keep_rate_curve"] is None:
            del d["keep_rate_curve"]
        return d

    @staticmethod
    def from_json(d: dict, source: str = "stability.json") -> DropoutStability:
        def bad(what: str) -> IsthmusError:
            return IsthmusError(
                f"{source}: {what}; re-create it with `isthmus stability RUN --kind dropout`"
            )

        def number(v, name: str, lo: float = -math.inf, hi: float = math.inf) -> float:
            if type(v) not in (int, float) or not (math.isfinite(v) and lo <= v <= hi):
                raise bad(f"field {name!r} must be a finite number in [{lo}, {hi}], got {v!r}")
            return float(v)

        rows = d["by_start_layer"]
        if not isinstance(rows, list) or not rows:
            raise bad("field 'by_start_layer' must be a non-empty list of kept sets")
        choices = []
        for n, c in enumerate(rows):
            try:
                kept = {str(k): [_index(u) for u in v] for k, v in c["kept"].items()}
                r = {str(k): number(v, f"by_start_layer[{n}].r") for k, v in c["r"].items()}
                if set(r) != set(kept):
                    raise ValueError(f"'r' names layers {sorted(r)}, 'kept' {sorted(kept)}")
                i = _index(c["i"])
                choices.append(DropoutChoice(i, number(c["loss"], "loss"), kept, r))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise bad(
                    f"by_start_layer[{n}] is malformed ({e}); expected "
                    '{"i": int, "loss": float, "kept": {layer: [units]}, "r": {layer: factor}}'
                ) from None
        loss, eps = number(d["loss"], "loss"), number(d["epsilon"], "epsilon")
        if abs(eps - (max(c.loss for c in choices) - loss)) > 1e-9 * max(1.0, abs(eps)):
            raise bad(
                f"field 'epsilon' ({eps}) is not max_i L(theta_i) - L(theta) of its fields "
                "'by_start_layer' and 'loss'"
            )
        search, curve = d.get("search", {}), d.get("keep_rate_curve")
        acc, accs = d.get("acc"), d.get("acc_by_start_layer")
        if not isinstance(search, dict) or not isinstance(curve, dict | None):
            raise bad("fields 'search' and 'keep_rate_curve' must be objects")
        if acc is not None:
            number(acc, "acc", 0, 1)
        if accs is not None:
            if not isinstance(accs, list) or len(accs) != len(choices):
                raise bad("field 'acc_by_start_layer' must list one accuracy per start layer")
            for a in accs:
                number(a, "acc_by_start_layer", 0, 1)
        return DropoutStability(eps, loss, choices, search, acc, accs, curve)


def _index(v) -> int:
    """A unit index or start layer: a non-negative int (not a bool, a float or a string)."""
    if type(v) is not int or v < 0:
        raise ValueError(f"{v!r} is not a non-negative integer")
    return v


@dataclass(frozen=True)
class NoiseStability:
    """Result of `noise_stability`: the per-layer quantities of `isthmus.stability.noise`.

    Lists are indexed by layer (None where undefined, e.g. every example's x^i is 0); epsilon is
    eps_noise (nan where undefined). `by_start_layer` stays empty (no kept sets), for the file
    layout shared with dropout results.
    """

    kind: ClassVar[str] = "noise"
    epsilon: float
    loss: float
    search: dict
    acc: float
    layers: list[str]
    dims: list[int]
    n_examples: int
    layer_cushion: list[float | None]
    layer_cushion_mean: list[float | None]
    interlayer_cushion: list[dict]
    interlayer_cushion_from: list[float | None]
    activation_contraction: float | None
    activation_contraction_by_layer: list[float | None]
    dead_examples_by_layer: list[int]
    interlayer_smoothness: float | None
    interlayer_smoothness_pairs: list[dict]
    attenuation: list[dict]
    output_relative_change: list[float | None]
    dropout_output_change: list[float | None]
    max_output_norm: float
    epsilon_formula: str
    by_start_layer: list = field(default_factory=list)

    def quantities(self) -> dict:
        """epsilon and every per-layer quantity (what a path result attaches beside its bound)."""
        skip = {"loss", "search", "by_start_layer"}
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def to_json(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    @staticmethod
    def from_json(d: dict, source: str = "stability.json") -> NoiseStability:
        names = [f.name for f in fields(NoiseStability) if f.name != "by_start_layer"]
        missing = [k for k in names if k not in d]
        if missing:
            raise IsthmusError(
                f"{source}: noise stability lacks field(s) {missing}; re-create it with "
                "`isthmus stability RUN --kind noise`"
            )
        return NoiseStability(**{k: d[k] for k in names})


StabilityResult = DropoutStability | NoiseStability
_KINDS = {"dropout": DropoutStability, "noise": NoiseStability}


def save_stability(out: str | Path, result: StabilityResult, inputs: dict | None = None) -> Path:
    """Write `result` to OUT/stability.json (or to OUT itself when it names a .json file), with
    the `io.inputs_record` of the run it measured (consumers check it)."""
    path = Path(out) / STABILITY_FILE if Path(out).suffix != ".json" else Path(out)
    write_json(path, result.to_json() | ({"inputs": inputs} if inputs is not None else {}))
    return path


def load_stability(path: str | Path, expect: tuple[str, Params] | None = None) -> StabilityResult:
    """Read stability.json (a file or the folder holding it) as the result type its "kind" names,
    validating the fields consumers use; with `expect` = (run name, weights), refused unless it
    was measured on exactly those weights (its "inputs" record)."""
    path = Path(path)
    if path.is_dir():
        path = path / STABILITY_FILE
    d = read_json(path)
    if expect is not None:
        check_inputs(path, d, [expect])
    for key in ("kind", "epsilon", "loss", "by_start_layer"):
        if key not in d:
            raise IsthmusError(
                f"{path}: missing field {key!r}; re-create it with `isthmus stability`"
            )
    if not isinstance(d["kind"], str) or d["kind"] not in _KINDS:
        raise IsthmusError(f"{path}: unknown kind {d['kind']!r}; expected one of {list(_KINDS)}")
    return _KINDS[d["kind"]].from_json(d, str(path))
