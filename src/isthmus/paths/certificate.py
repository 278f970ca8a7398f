"""Constructive paths and their certificate (Kuditipudi et al. 2019, Theorems 1 and 2;
docs/provable_paths.md).

A `ConstructivePath` is piecewise linear; every segment carries the kind of move it makes:
  (a) interpolate the output layer while every hidden layer stays fixed: the output is
      (1-s) f_0 + s f_1 and the loss is convex in f, so it stays <= max of the endpoint losses;
  (b) change the incoming weights of *free* units (no live unit reads them): the function is
      unchanged;
  (c) move outgoing weights between two slots that compute the same value: the function is
      unchanged;
  "line": a straight segment that is measured, not certified.
Every (a)-segment endpoint also names the net it computes (`Version`): A or B themselves or one of
their dropout versions theta_i, with its kept sets.

`certify` checks all of it on data: (a) segments have bit-identical hidden layers at both ends,
exact (float64) endpoint losses, and endpoints that compute the named versions, recomputed here
from the path's own ends A and B (so path, certificate and epsilon agree); (b)/(c) segments' outputs
at s = 0.25, 0.5, 0.75, 1 equal those at s = 0 to 1e-10 relative to max(1, max |f(x)|). The bound
is the max of the (a)-segment endpoint losses; the loss is also evaluated densely (>= 20 points per
segment) and `holds` says whether every check passes and all of it stays within the bound.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ..errors import IsthmusError
from ..models import units_of
from ..params import Params, evaluate, is_float, output_fn, to
from ..progress import bar
from ..stability import dropout_params, validate_kept
from .base import PiecewiseLinearPath

KINDS = ("a", "b", "c", "line")
PROBES = (0.25, 0.5, 0.75, 1.0)
DEVIATION_TOL = 1e-10  # (b)/(c): max |f(s) - f(0)| / max(1, max |f(0)|)
LOSS_TOL = 1e-9  # dense loss <= bound + LOSS_TOL
PER_SEGMENT = 20


@dataclass(frozen=True)
class Version:
    """The net a path node computes: `net` "A" (the path's start) or "B" (its end) itself (i = 0),
    or its dropout version theta_i with `kept` units and factors `r` by hidden-layer name."""

    net: str
    i: int = 0
    kept: dict[str, list[int]] | None = None
    r: dict[str, float] | None = None

    @property
    def label(self) -> str:
        return self.net if self.i == 0 else f"theta_{self.net},{self.i}"

    def params(self, path: PiecewiseLinearPath, model: nn.Module) -> Params:
        """This version's parameters, recomputed from the path's end it names."""
        end = path.nodes[0] if self.net == "A" else path.nodes[-1]
        if self.i == 0:
            return end
        units = units_of(model)
        validate_kept(units, self.i, self.kept or {})
        return dropout_params(end, units, self.kept or {}, self.r)


class ConstructivePath(PiecewiseLinearPath):
    """A piecewise-linear path whose segments carry a kind: "a", "b", "c" or "line".

    `notes[k]` says what segment k does; `layout` records every slot the construction chose (so
    the path can be audited); `head` names the output-layer tensors (for the (a) check);
    `versions[k]` names the net node k computes (required at every (a)-segment endpoint).
    """

    method = "dropout"

    def __init__(
        self,
        nodes: list[Params],
        kinds: Sequence[str],
        *,
        head: Sequence[str],
        notes: Sequence[str] | None = None,
        layout: dict | None = None,
        knots: list[float] | None = None,
        method: str = "dropout",
        versions: dict[int, Version] | None = None,
    ):
        super().__init__(nodes, knots, method)
        if len(kinds) != len(nodes) - 1 or any(k not in KINDS for k in kinds):
            raise IsthmusError(
                f"a constructive path needs one kind in {KINDS} per segment; got {list(kinds)} "
                f"for {len(nodes) - 1} segments"
            )
        self.kinds = list(kinds)
        self.head = tuple(head)
        self.notes = list(notes) if notes is not None else [""] * len(self.kinds)
        self.layout = layout or {}
        self.versions = dict(versions or {})

    @property
    def segment_count(self) -> int:
        return len(self.kinds)

    def tensors(self) -> dict[str, Tensor]:
        """Nodes, knots, the kinds as codes (index into KINDS) and the output-layer names (as
        empty tensors "head.<name>"), for path.safetensors (versions travel in path.json)."""
        out, seen = {}, set()
        for key, t in super().tensors().items():
            # nodes share unchanged tensors; safetensors stores each one separately
            ptr = t.untyped_storage().data_ptr() if t.numel() else None
            out[key] = t.clone() if ptr in seen else t
            seen.add(ptr)
        out["kinds"] = torch.tensor([KINDS.index(k) for k in self.kinds], dtype=torch.uint8)
        out.update({f"head.{name}": torch.zeros(0) for name in self.head})  # names as keys
        return out

    def versions_json(self) -> dict[str, dict]:
        """The named versions by node index, for path.json (`from_tensors(..., versions=...)`)."""
        return {str(k): asdict(v) for k, v in sorted(self.versions.items())}

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, Tensor], method: str = "dropout", versions: dict | None = None
    ) -> ConstructivePath:
        """Rebuild a path written by `tensors()` (e.g. read back from path.safetensors); `versions`
        is `versions_json()` (path.json's extra["versions"]), without which nothing certifies."""
        try:
            knots = tensors["knots"].tolist()
            kinds = [KINDS[int(c)] for c in tensors["kinds"].tolist()]
        except KeyError as e:
            raise IsthmusError(
                f"path tensors lack {e}; write them with ConstructivePath.tensors()"
            ) from None
        nodes: list[Params] = [{} for _ in knots]
        for key, v in tensors.items():
            if key.startswith("node"):
                i, name = key[4:].split(".", 1)
                nodes[int(i)][name] = v
        head = [key[5:] for key in tensors if key.startswith("head.")]
        named = {int(k): Version(**v) for k, v in (versions or {}).items()}
        return cls(nodes, kinds, head=head, knots=knots, method=method, versions=named)


def in_float64(model: nn.Module, *params: Params) -> tuple[nn.Module, list[Params]]:
    """A float64 copy of the model and the parameter dicts (certificates are computed in float64)."""
    m = copy.deepcopy(model).double()
    return m, [to(p, dtype=torch.float64) for p in params]


def dense_ts(path: PiecewiseLinearPath, per_segment: int = PER_SEGMENT, points: int = 61) -> Tensor:
    """`points` equally spaced t, plus `per_segment` + 1 equally spaced t in every segment."""
    kn = path.knots()
    parts = [torch.linspace(0, 1, points, dtype=torch.float64)]
    parts += [
        torch.linspace(a, b, per_segment + 1, dtype=torch.float64)
        for a, b in zip(kn, kn[1:], strict=False)
    ]
    parts.append(torch.tensor(kn, dtype=torch.float64))
    return torch.unique(torch.cat(parts))


def outputs(model: nn.Module, p: Params, x: Tensor, batch_size: int | None = None) -> Tensor:
    """f(x) at parameters p, model in eval mode (no dropout masks)."""
    f = output_fn(model)
    dt = next(v.dtype for v in p.values() if is_float(v))
    step = batch_size or len(x)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([f(p, x[i : i + step].to(dt)) for i in range(0, len(x), step)])
    finally:
        model.train(was)


def _dense_loss(model, path, ts, x, y, loss, batch_size, chunk, strategy) -> Tensor:
    out = []
    for i in range(0, len(ts), chunk):
        pts = path.points(ts[i : i + chunk])
        m = evaluate(
            model, pts, x, y, loss=loss, batch_size=batch_size, chunk=chunk, strategy=strategy
        )
        out.append(m.loss)
    return torch.cat(out)


def _check_versions(model, path: ConstructivePath, k: int, x, batch_size, scale: float) -> dict:
    """Whether both ends of (a) segment k compute the versions the path names for them."""
    labels, devs = [], []
    for node in (k, k + 1):
        v = path.versions.get(node)
        if v is None:
            labels.append(None)
            devs.append(None)
            continue
        labels.append(v.label)
        try:
            ref = v.params(path, model)
        except IsthmusError:  # not a valid dropout version (e.g. more than floor(h/2) kept)
            devs.append(None)
            continue
        f, fr = outputs(model, path.nodes[node], x, batch_size), outputs(model, ref, x, batch_size)
        devs.append(float((f - fr).abs().max()) / scale)
    ok = all(d is not None and d <= DEVIATION_TOL for d in devs)
    return {"versions": labels, "version_deviation": devs, "ends_are_versions": ok}


def _check_segment(model, path: ConstructivePath, k: int, x, batch_size, probes) -> dict:
    """The move checks of segment k ((a): hidden layers fixed, output affine, named versions;
    (b)/(c): outputs unchanged at the probes)."""
    nodes, kind, kn = path.nodes, path.kinds[k], path.knots()
    t0, t1 = kn[k], kn[k + 1]
    f0 = outputs(model, nodes[k], x, batch_size)
    scale = max(1.0, float(f0.abs().max()))
    pts = path.points(torch.tensor([t0 + s * (t1 - t0) for s in probes], dtype=torch.float64))
    fs = [
        outputs(model, {n: v[j] for n, v in pts.items()}, x, batch_size) for j in range(len(probes))
    ]
    if kind != "a":
        dev = max(float((f - f0).abs().max()) for f in fs)
        return {"max_output_deviation": dev / scale, "max_output_deviation_abs": dev}
    f1 = outputs(model, nodes[k + 1], x, batch_size)
    return {
        "hidden_unchanged": all(
            torch.equal(nodes[k][n], nodes[k + 1][n]) for n in nodes[k] if n not in path.head
        ),
        "max_affine_deviation": max(
            float((f - ((1 - s) * f0 + s * f1)).abs().max()) / scale
            for s, f in zip(probes, fs, strict=True)
        ),
        **_check_versions(model, path, k, x, batch_size, scale),
    }


def _verdict(segments: list[dict]) -> dict:
    """The bound (max of the (a)-segment endpoint losses) and whether every check passes."""
    a_ends = [max(s["loss0"], s["loss1"]) for s in segments if s["kind"] == "a"]
    bound = max(a_ends) if a_ends else None
    certified = [s for s in segments if s["kind"] != "line"]
    max_cert = max((s["max_loss"] for s in certified), default=None)
    moves_ok = all(
        s["max_output_deviation"] <= DEVIATION_TOL for s in certified if s["kind"] in "bc"
    )
    a_ok = all(
        s["hidden_unchanged"] and s["ends_are_versions"] for s in certified if s["kind"] == "a"
    )
    holds = bool(
        bound is not None
        and moves_ok
        and a_ok
        and max_cert is not None
        and max_cert <= bound + LOSS_TOL
    )
    return {
        "bound": bound,
        "holds": holds,
        "max_loss_certified_segments": max_cert,
        "certified_segments": [k for k, s in enumerate(segments) if s["kind"] != "line"],
    }


def certify(
    model: nn.Module,
    path: ConstructivePath,
    x: Tensor,
    y: Tensor,
    loss: str = "ce",
    *,
    ts: Tensor | None = None,
    dense_loss: Sequence[float] | Tensor | None = None,
    probes: Sequence[float] = PROBES,
    batch_size: int | None = None,
    chunk: int = 64,
    strategy: str = "auto",
    progress: bool | None = None,
) -> tuple[list[dict], dict]:
    """Check every segment of a constructive path on the data (x, y); float64 parameters.

    (a) segments: all tensors but the output layer bit-identical at both ends (so the output is
    affine in s and the loss convex); endpoint losses exact; both endpoints compute the versions
    `path.versions` names for them (A, B or a dropout version theta_i recomputed from the path's
    ends, outputs equal to 1e-10 relative; a node without a name fails); the affine deviation is
    recorded. (b)/(c) segments: max |f(s) - f(0)| over x and the probe values s, divided by
    max(1, max |f(0)|), must be <= 1e-10. "line" segments are measured only.
    bound = max of the (a)-segment endpoint losses; holds = every check passes and the dense loss
    on every certified segment is <= bound + 1e-9.

    Args:
      ts, dense_loss: a dense grid and the losses there (default: `dense_ts(path)`, evaluated here).
      probes: interior values of s checked on (b)/(c) and (a) segments.
      batch_size, chunk, strategy: passed to `isthmus.params.evaluate`.

    Returns (segments, certificate) in the path.json layout (docs/definitions.md) plus extras:
    per segment "max_loss", "barrier", "points", "note"; "max_output_deviation_abs" ((b)/(c)),
    "hidden_unchanged", "max_affine_deviation", "versions", "version_deviation" and
    "ends_are_versions" ((a)).
    """
    nodes, kn = path.nodes, path.knots()
    node_loss = evaluate(
        model, nodes, x, y, loss=loss, batch_size=batch_size, chunk=chunk, strategy=strategy
    ).loss
    if dense_loss is None:
        ts = dense_ts(path) if ts is None else ts
        dense_loss = _dense_loss(model, path, ts, x, y, loss, batch_size, chunk, strategy)
    elif ts is None:
        raise IsthmusError("certify: give `ts` together with `dense_loss`")
    ts = torch.as_tensor(ts, dtype=torch.float64)
    dense = torch.as_tensor(dense_loss, dtype=torch.float64)
    dtype = str(next(v.dtype for v in nodes[0].values() if is_float(v))).replace("torch.", "")
    segments = []
    steps = bar(list(enumerate(path.kinds)), progress=progress, desc="certify", unit="segment")
    for k, kind in steps:
        l0, l1 = float(node_loss[k]), float(node_loss[k + 1])
        inside = (ts >= kn[k]) & (ts <= kn[k + 1])
        seg_max = max([l0, l1, *dense[inside].tolist()])
        seg = {
            "kind": kind,
            "t0": kn[k],
            "t1": kn[k + 1],
            "loss0": l0,
            "loss1": l1,
            "max_output_deviation": None,
            "max_loss": seg_max,
            "barrier": seg_max - max(l0, l1),
            "points": int(inside.sum()),
            "note": path.notes[k] if k < len(path.notes) else "",
        }
        if kind != "line":
            seg.update(_check_segment(model, path, k, x, batch_size, probes))
        segments.append(seg)
    certificate = {
        **_verdict(segments),
        "max_loss_on_path": max(float(dense.max()), float(node_loss.max())),
        "loss_tolerance": LOSS_TOL,
        "deviation_tolerance": DEVIATION_TOL,
        "deviation": "max |f(x; s) - f(x; 0)| over x and s in probes, / max(1, max |f(x; 0)|)",
        "probes": list(probes),
        "dtype": dtype,
        "min_points_per_segment": min(s["points"] for s in segments),
    }
    return segments, certificate
