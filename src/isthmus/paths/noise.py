"""The Theorem 2 path of Kuditipudi et al. 2019: five segments between two noise-stable nets.

Theorem 2 (paper): for eps-noise-stable nets a path of at most 10 segments keeps the loss within
max(L_A, L_B) + O~(eps), because noise stability lets one interpolate *directly* between a net and
its dropout version. Design (docs/provable_paths.md, 5 segments): choose kept sets S^A_j and S^B_j
that are disjoint halves of every hidden layer (|S| <= floor(h_j/2); with odd widths one unit is in
neither), and A_1, B_1 the dropout versions with start layer 1 (factor r_j = h_j/|S_j| by default):

  0. A -> A_1        straight line, all layers at once ("line": measured, not certified);
  1. A_1 -> A_1 + B_1's chain written into units S^B (free in A_1)  (b: function preserved);
  2. switch the output layer from A_1's to B_1's                    (a: loss <= max(L(A_1), L(B_1)));
  3. restore every unit outside S^B to B_1's values (free now)      (b: function preserved);
  4. B_1 -> B        straight line ("line").

Because the kept sets are disjoint, B_1's chain sits in exactly its own slots, so no permutation is
needed. The kept sets come from `isthmus.paths.kept_pair.complementary_kept` (or from two dropout
stability results whose start-layer-1 sets are disjoint). Segments 1-3 are certified by
`isthmus.paths.certificate.certify`; the straight segments depend on noise stability, so their
measured maximum and barrier are reported, beside the noise-stability quantities when given.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..data import Dataset
from ..errors import IsthmusError
from ..models import Units, require_chain, units_of
from ..params import Params, check_compatible
from ..stability import (
    DropoutStability,
    KeptSets,
    NoiseStability,
    StabilityResult,
    default_r,
    dropout_params,
)
from .base import PathResult, evaluate_path
from .certificate import ConstructivePath, Version, certify, dense_ts, in_float64
from .kept_pair import check_disjoint, complementary_kept
from .slots import chain_slots, read_rows, write_rows

SEGMENTS = 5
KINDS = ("line", "b", "a", "b", "line")
NOTES = (
    "A -> A_1: straight line to the dropout version (measured)",
    "write B_1's chain into the units S^B, free in A_1",
    "switch the output layer from A_1 to B_1",
    "restore B_1's dropped units (free after the switch)",
    "B_1 -> B: straight line from the dropout version (measured)",
)


def theorem2_path(
    params_a: Params,
    params_b: Params,
    units: Units,
    kept_a: KeptSets,
    kept_b: KeptSets,
    r_a: dict[str, float] | None = None,
    r_b: dict[str, float] | None = None,
) -> ConstructivePath:
    """The 5-segment Theorem 2 path A -> A_1 -> (b) -> (a) -> (b) = B_1 -> B.

    Args:
      kept_a, kept_b: kept units of every hidden layer (start layer 1), by layer name; disjoint.
      r_a, r_b: factors by layer name (default h_j / |S_j|).
    Returns a `ConstructivePath` with method "noise", kinds line, b, a, b, line, and the version
    each node computes (A, A_1, A_1, B_1, B_1, B).
    """
    check_compatible(params_a, params_b)
    chain = chain_slots(units, params_a)
    if chain.n == 0:
        raise IsthmusError("the Theorem 2 path needs at least one hidden layer (depth >= 2)")
    check_disjoint(units, kept_a, kept_b)
    r_a = {**default_r(units, kept_a), **(r_a or {})}
    r_b = {**default_r(units, kept_b), **(r_b or {})}
    a1 = dropout_params(params_a, units, kept_a, r_a)
    b1 = dropout_params(params_b, units, kept_b, r_b)
    slots_b = [sorted(kept_b[name]) for name in chain.names]
    n2 = a1
    for l, slots in enumerate(slots_b):
        n2 = write_rows(n2, chain, l, slots, read_rows(b1, chain, l, slots))
    n3 = {**n2, **{h: b1[h] for h in chain.head}}
    # n3 and b1 agree on B_1's live rows and the output layer; only free rows differ
    for l, slots in enumerate(slots_b):
        for name, t in read_rows(n3, chain, l, slots).items():
            if not torch.equal(t, read_rows(b1, chain, l, slots)[name]):
                raise RuntimeError(f"Theorem 2 construction: rows of {name} differ from B_1")
    layout = {
        "kept_a": {k: sorted(v) for k, v in kept_a.items()},
        "kept_b": {k: sorted(v) for k, v in kept_b.items()},
        "r_a": r_a,
        "r_b": r_b,
        "segment_count": SEGMENTS,
        "formula": "5: line, b, a, b, line",
    }
    va = Version("A", 1, layout["kept_a"], r_a)
    vb = Version("B", 1, layout["kept_b"], r_b)
    versions = dict(enumerate([Version("A"), va, va, vb, vb, Version("B")]))
    return ConstructivePath(
        [params_a, a1, n2, n3, b1, params_b],
        KINDS,
        head=chain.head,
        notes=list(NOTES),
        layout=layout,
        method="noise",
        versions=versions,
    )


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
      model: a plain chain without BatchNorm (`isthmus.models.require_chain`).
      stability_a, stability_b: dropout stability results whose start-layer-1 kept sets are used
        when both are given and disjoint in every layer; noise stability results are attached to
        the result (their per-layer quantities) and the kept sets are searched jointly.
      seed, draws: the joint search (`complementary_kept`). points: equally spaced t evaluated,
        on top of >= 20 per segment and the knots.

    Returns (path, PathResult) with method "noise"; `segments` report each segment's measured
    maximum and barrier; the certificate's bound max(L(A_1), L(B_1)) covers segments 1-3.
    """
    require_chain(model, "the Theorem 2 path")
    units = units_of(model)
    check_compatible(params_a, params_b)
    if isinstance(stability_a, DropoutStability) and isinstance(stability_b, DropoutStability):
        ca, cb = stability_a.choice(1), stability_b.choice(1)
        check_disjoint(units, ca.kept, cb.kept)
        kept_a, kept_b, r_a, r_b = ca.kept, cb.kept, ca.r or None, cb.r or None
        search = {"strategy": "given", "source": "stability results (start layer 1)"}
    else:
        pair = complementary_kept(
            model, params_a, params_b, data.x_train, data.y_train, data.loss, draws=draws,
            seed=seed, batch_size=batch_size, progress=progress,
        )  # fmt: skip
        kept_a, kept_b, r_a, r_b, search = pair.kept_a, pair.kept_b, None, None, pair.search
    m64, (pa, pb) = in_float64(model, params_a, params_b)
    d64 = data.to(dtype=torch.float64)
    path = theorem2_path(pa, pb, units, kept_a, kept_b, r_a, r_b)
    ts = dense_ts(path, points=points)
    res = evaluate_path(m64, path, d64, ts=ts, batch_size=batch_size)
    segments, cert = certify(
        m64, path, d64.x_train, d64.y_train, d64.loss, ts=ts, dense_loss=res.train_loss,
        batch_size=batch_size, progress=progress,
    )  # fmt: skip
    cert.update(
        {
            "scope": "segments 1-3 (b, a, b); the straight segments 0 and 4 are measured only",
            "loss_a": res.train_loss[0],
            "loss_b": res.train_loss[-1],
            "loss_a1": segments[1]["loss0"],
            "loss_b1": segments[3]["loss1"],
            "line_max_loss": [segments[0]["max_loss"], segments[4]["max_loss"]],
            "line_barrier": [segments[0]["barrier"], segments[4]["barrier"]],
            "segment_count": path.segment_count,
            "formula": path.layout["formula"],
        }
    )
    extra = {"layout": path.layout, "versions": path.versions_json(), "search": search}
    for who, s in (("a", stability_a), ("b", stability_b)):
        if isinstance(s, NoiseStability):
            extra[f"noise_stability_{who}"] = s.quantities()
    return path, replace(res, method="noise", segments=segments, certificate=cert, extra=extra)
