"""The Theorem 1 path of Kuditipudi et al. 2019 ("Explaining landscape connectivity of low-cost
solutions for multilayer nets"): a piecewise-linear path between two eps-dropout-stable nets whose
train loss never exceeds max(L_A, L_B) + eps, with a certificate for every segment.

Only the moves of `isthmus.paths.certificate` are used (docs/provable_paths.md, "Two moves"):
(a) output-layer interpolation, (b) rewriting free units, and duplicate-and-shift built from (b)
and (c): copy a unit's incoming weights into a free slot, then move its outgoing weights from the
old slot to the copy (both slots compute the same value, so the function is constant).

Construction (docs/provable_paths.md, made concrete; d weight layers, n = d-1 hidden layers):
  1. A -> A*: for i = d-1, ..., 1 build theta_{A,i} (dropout on layers i..d-1 with the kept sets of
     start layer i). For i = d-1 only the output layer changes: one (a) segment. For i < d-1 one (b)
     segment writes a *shadow chain* computing theta_i into free units of layers i+1..d-1 (lowest
     free slots; layer i+1 reads r_i * S_i of layer i, each higher layer reads the shadow below),
     then one (a) segment switches the output layer to the shadow. 2(d-1) - 1 segments.
  2. B's step 1 is computed too; it fixes B* = theta_{B,1} and the slot sigma(u) of every unit of
     B's chain. One (b) segment writes B_1's chain into free units of A* (placement "direct": at
     sigma(u) when that slot is free in A*, else at the lowest free slot that is nobody's target),
     one (a) segment switches the output layer: bound max(L(A_1), L(B_1)).
  3. Units not yet at sigma(u) are moved there by duplicate-and-shift, all layers in the same
     segment: a (b) segment copies every moving unit's incoming weights into its destination, a (c)
     segment moves the outgoing weights (in every live row and every copy of the next layer, and in
     the output layer) from source to destination. A destination occupied by another live unit is
     first replaced by a scratch slot outside the current and the target slots (round 1), which
     round 2 moves on; with "direct" placement no target is ever occupied, so one round suffices
     (proof: docs/provable_paths.md). Finally one (b) segment sets every free unit to B*'s values.
  4. B* -> B: B's step 1, reversed.
Segment count: 2(2d-3) + 2 + 2R + 1 = 4d - 3 + 2R, with R in {0, 1, 2} duplicate-and-shift rounds.

Every (a)-segment endpoint is named as the version it computes (A, B or theta_i with its kept
sets), so `certify` can recompute it. The bound is then the max of L_A, L_B and the L(theta_i) of
both nets, hence <= max(L_A, L_B) + max(eps, 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..data import Dataset
from ..errors import IsthmusError
from ..models import Units, require_chain, units_of
from ..params import Params, check_compatible, evaluate
from ..progress import bar
from ..stability import (
    DropoutChoice,
    DropoutStability,
    StabilityResult,
    default_r,
    dropout_params,
    dropout_stability,
    validate_kept,
)
from .base import PathResult, evaluate_path
from .certificate import LOSS_TOL, ConstructivePath, Version, certify, dense_ts, in_float64
from .slots import (
    Chain,
    chain_slots,
    head_reading,
    read_rows,
    remap_rows,
    shift_outgoing,
    write_rows,
)

MAX_R_MULTIPLIER = 2.0  # the fitted-r line search's range (stability.dropout.fit_multiplier)
Placement = str | Callable[[int, list[int], list[int]], Sequence[int]]
Choices = Sequence[DropoutChoice] | dict[int, tuple[dict[str, list[int]], dict[str, float] | None]]


# ----------------------------------------------------------------------------- kept sets


@dataclass(frozen=True)
class _Choice:
    """Kept units (sorted) and factor r per hidden-layer index, for layers l0..n-1."""

    l0: int
    kept: dict[int, list[int]]
    r: dict[int, float]

    def version(self, net: str, chain: Chain) -> Version:
        """The dropout version theta_{l0+1} of `net` this choice defines, by layer name."""
        kept = {chain.names[l]: list(v) for l, v in self.kept.items()}
        r = {chain.names[l]: v for l, v in self.r.items()}
        return Version(net, self.l0 + 1, kept, r)


def _choices(units: Units, choices: Choices, who: str) -> dict[int, _Choice]:
    """Validate the kept sets of every start layer 1..d-1 and index them by l0 = i-1."""
    if isinstance(choices, DropoutStability):
        choices = choices.by_start_layer
    if isinstance(choices, dict):
        items = [(int(i), kr[0], kr[1]) for i, kr in choices.items()]
    else:
        items = [(c.i, c.kept, c.r) for c in choices]
    n = len(units.layers)
    names = [x.name for x in units.layers]
    out: dict[int, _Choice] = {}
    for i, kept, r in items:
        if not 1 <= i <= n:
            raise IsthmusError(f"net {who}: start layer {i} is outside 1..{n}")
        try:
            validate_kept(units, i, kept)
        except IsthmusError as e:
            raise IsthmusError(f"net {who}: {e}") from None
        default = default_r(units, kept)
        stray = sorted(set(r or {}) - set(kept))
        if stray:
            raise IsthmusError(
                f"net {who}, start layer {i}: factor r given for {stray}, which have no kept set "
                f"(kept sets: {sorted(kept)})"
            )
        r = {**default, **(r or {})}
        bad = [
            k
            for k, v in r.items()
            if k in kept and not (isinstance(v, int | float) and math.isfinite(v) and v > 0)
        ]
        if bad:
            raise IsthmusError(
                f"net {who}, start layer {i}: factor r of {bad} is not a positive number"
            )
        ratios = [r[k] / default[k] for k in kept]
        if (
            max(ratios) > MAX_R_MULTIPLIER
            or min(ratios) < 1 / MAX_R_MULTIPLIER
            or (max(ratios) - min(ratios) > 1e-9 * max(ratios))
        ):
            raise IsthmusError(
                f"net {who}, start layer {i}: factors r {r} are not h_j/|S_j| times one multiplier "
                f"in [1/{MAX_R_MULTIPLIER:g}, {MAX_R_MULTIPLIER:g}] (the dropout versions "
                "`isthmus stability` searches); re-create the stability result"
            )
        out[i - 1] = _Choice(
            i - 1,
            {names.index(k): sorted(int(u) for u in v) for k, v in kept.items()},
            {names.index(k): float(r[k]) for k in kept},
        )
    missing = sorted(set(range(1, n + 1)) - {c + 1 for c in out})
    if missing:
        raise IsthmusError(
            f"net {who}: no kept sets for start layer(s) {missing}; the Theorem 1 path needs one "
            f"choice for every start layer 1..{n} (run `isthmus stability` to search them)"
        )
    return out


# ----------------------------------------------------------------------------- step 1: drop down


@dataclass
class _Descent:
    """Step 1 for one net: nodes theta -> ... -> theta_1 and where theta_1's chain lives."""

    nodes: list[Params]
    kinds: list[str]
    notes: list[str]
    live: list[list[int]]  # live slots per layer at the end (theta_1)
    slots: list[list[int]]  # slot of each kept unit of theta_1 (aligned with the sorted kept set)
    stages: list[dict]
    versions: list[Version]  # the net each node computes


def _write_chain(
    cur: Params,
    src: Params,
    chain: Chain,
    c: _Choice,
    slots: dict[int, list[int]],
    move_base: bool,
) -> Params:
    """Write the dropout version `c` of net `src` into `slots` (layers l0+1.. or l0.. if moved)."""
    out = cur
    for l in range(c.l0 if move_base else c.l0 + 1, chain.n):
        rows = read_rows(src, chain, l, c.kept[l])
        if l > c.l0:
            rows = remap_rows(rows, chain, l, c.kept[l - 1], slots[l - 1], c.r[l - 1])
        out = write_rows(out, chain, l, slots[l], rows)
    return out


def _free(chain: Chain, l: int, live: Sequence[int]) -> list[int]:
    taken = set(live)
    return [s for s in range(chain.sizes[l]) if s not in taken]


def _drop_down(p: Params, chain: Chain, choices: dict[int, _Choice], who: str) -> _Descent:
    """theta -> theta_{d-1} -> ... -> theta_1 by shadow chains (b) and output switches (a)."""
    n = chain.n
    d = _Descent([p], [], [], [list(range(h)) for h in chain.sizes], [], [], [Version(who)])
    cur = p
    slots: dict[int, list[int]] = {}
    for l0 in range(n - 1, -1, -1):
        c = choices[l0]
        slots = {l0: c.kept[l0]}
        for l in range(l0 + 1, n):
            free = _free(chain, l, d.live[l])
            if len(free) < len(c.kept[l]):  # cannot happen: |live| <= floor(h/2)
                raise RuntimeError(f"net {who}: layer {chain.names[l]} has too few free units")
            slots[l] = free[: len(c.kept[l])]
        if l0 < n - 1:
            cur = _write_chain(cur, p, chain, c, slots, move_base=False)
            d.nodes.append(cur)
            d.kinds.append("b")
            d.notes.append(
                f"{who}: write the shadow chain of theta_{l0 + 1} into free units of hidden "
                f"layers {l0 + 2}..{n}"
            )
            d.versions.append(d.versions[-1])
        cur = {**cur, **head_reading(p, chain, c.kept[n - 1], slots[n - 1], c.r[n - 1])}
        d.nodes.append(cur)
        d.kinds.append("a")
        d.notes.append(f"{who}: switch the output layer to theta_{l0 + 1}")
        d.versions.append(c.version(who, chain))
        d.live[l0] = list(c.kept[l0])
        for l in range(l0 + 1, n):
            d.live[l] = list(slots[l])
        d.stages.append(
            {"i": l0 + 1, "slots": {chain.names[l]: slots[l] for l in range(l0 + 1, n)}}
        )
    d.slots = [slots[l] for l in range(n)]
    return d


# ----------------------------------------------------------------------------- steps 2-3: bridge


def _place(
    placement: Placement, l: int, free: list[int], targets: list[int], name: str
) -> list[int]:
    """Where B_1's chain is written in A*'s free slots of layer l (one slot per unit, in order)."""
    k = len(targets)
    if callable(placement):
        out = [int(s) for s in placement(l, list(free), list(targets))]
        if len(out) != k or len(set(out)) != k or not set(out) <= set(free):
            raise IsthmusError(
                f"placement for layer {name} returned {out}: need {k} distinct free slots of {free}"
            )
        return out
    if placement == "lowest":
        return free[:k]
    if placement == "direct":
        fset, tset = set(free), set(targets)
        spare = iter(s for s in free if s not in tset)
        # enough spare slots: |free \ T| >= h - |A*| - |T| + |A* & T| >= #units whose target is live
        return [t if t in fset else next(spare) for t in targets]
    raise IsthmusError(f"unknown placement {placement!r}; use 'direct', 'lowest' or a function")


@dataclass
class _Bridge:
    nodes: list[Params]
    kinds: list[str]
    notes: list[str]
    layout: dict


def _moves(chain: Chain, pos: list[list[int]], target: list[list[int]], rnd: int, scratch: dict):
    """Per layer, the (unit, from, to) moves of duplicate-and-shift round `rnd`: to the target
    slot when it is free, else (round 1 only) to a scratch slot outside current and target slots."""
    moves: dict[int, list[tuple[int, int, int]]] = {}
    for l in range(chain.n):
        occupied, tset = set(pos[l]), set(target[l])
        pool = iter(s for s in range(chain.sizes[l]) if s not in occupied and s not in tset)
        mv = []
        for m, (c, t) in enumerate(zip(pos[l], target[l], strict=True)):
            if c == t:
                continue
            if t not in occupied:
                mv.append((m, c, t))
                continue
            z = next(pool, None)
            if rnd == 2 or z is None:  # cannot happen (docs/provable_paths.md)
                raise RuntimeError(f"layer {chain.names[l]}: no scratch slot for unit {m}")
            mv.append((m, c, z))
            scratch[chain.names[l]] = scratch.get(chain.names[l], 0) + 1
        if mv:
            moves[l] = mv
    return moves


def _duplicate_and_shift(
    cur: Params, chain: Chain, moves: dict, pos: list[list[int]]
) -> tuple[Params, Params]:
    """One round: (b) copy every moving unit's rows into its destination, then (c) move the
    outgoing weights from source to destination. Returns the nodes after (b) and after (c)."""
    for l, mv in moves.items():
        rows = read_rows(cur, chain, l, [c for _, c, _ in mv])
        cur = write_rows(cur, chain, l, [t for _, _, t in mv], rows)
    copied = cur
    for l, mv in moves.items():
        readers = None
        if l + 1 < chain.n:
            readers = sorted(set(pos[l + 1]) | {t for _, _, t in moves.get(l + 1, [])})
        cur = shift_outgoing(cur, chain, l, [c for _, c, _ in mv], [t for _, _, t in mv], readers)
    return copied, cur


def _bridge(
    a_star: Params,
    live_a: list[list[int]],
    pb: Params,
    chain: Chain,
    cb: _Choice,
    target: list[list[int]],
    b_star: Params,
    placement: Placement,
) -> _Bridge:
    """Steps 2 and 3: A* -> B_1's chain in A*'s free units -> switch -> permute into B*'s slots."""
    n = chain.n
    placed = [
        _place(placement, l, _free(chain, l, live_a[l]), target[l], chain.names[l])
        for l in range(n)
    ]
    cur = _write_chain(a_star, pb, chain, cb, dict(enumerate(placed)), move_base=True)
    br = _Bridge([cur], ["b"], ["write B_1's chain into free units of A*"], {})
    cur = {**cur, **head_reading(pb, chain, cb.kept[n - 1], placed[n - 1], cb.r[n - 1])}
    br.nodes.append(cur)
    br.kinds.append("a")
    br.notes.append("switch the output layer from A_1 to B_1")
    pos = [list(c) for c in placed]
    rounds, scratch = 0, {}
    for rnd in (1, 2):
        moves = _moves(chain, pos, target, rnd, scratch)
        if not moves:
            break
        rounds += 1
        copied, cur = _duplicate_and_shift(cur, chain, moves, pos)
        br.nodes += [copied, cur]
        br.kinds += ["b", "c"]
        br.notes += [
            f"duplicate-and-shift round {rnd}: copy moving units into their new slots",
            f"duplicate-and-shift round {rnd}: move outgoing weights to the copies",
        ]
        for l, mv in moves.items():
            for m, _, t in mv:
                pos[l][m] = t
    final = cur
    for l in range(n):
        free = _free(chain, l, pos[l])
        final = write_rows(final, chain, l, free, read_rows(b_star, chain, l, free))
    wrong = [k for k in b_star if not torch.equal(final[k], b_star[k])]
    if wrong:  # a bug, not a user error: the chain was not carried exactly into B*'s slots
        raise RuntimeError(f"Theorem 1 construction: tensors {wrong} do not reach B* exactly")
    br.nodes.append(b_star)
    br.kinds.append("b")
    br.notes.append("set every free unit to B*'s values")
    br.layout = {
        "placement": placement if isinstance(placement, str) else "custom",
        "b1_written_at": {chain.names[l]: placed[l] for l in range(n)},
        "b1_target": {chain.names[l]: target[l] for l in range(n)},
        "a_star_live": {chain.names[l]: live_a[l] for l in range(n)},
        "rounds": rounds,
        "scratch_units": scratch,
    }
    return br


# ----------------------------------------------------------------------------- the path


def segment_formula(depth: int, rounds: int) -> int:
    """Number of segments of the Theorem 1 path: 2(2d-3) + 2 + 2R + 1 = 4d - 3 + 2R (d >= 2)."""
    return 1 if depth == 1 else 4 * depth - 3 + 2 * rounds


def theorem1_path(
    params_a: Params,
    params_b: Params,
    units: Units,
    choices_a: Choices,
    choices_b: Choices,
    *,
    placement: Placement = "direct",
) -> ConstructivePath:
    """The Theorem 1 path from A to B through the dropout versions given by the kept sets.

    Args:
      params_a, params_b: the two nets (same architecture; use float64 to certify).
      units: their unit description (`isthmus.models.units_of(model)`).
      choices_a, choices_b: kept sets for every start layer 1..d-1, as `DropoutChoice`s (e.g.
        `DropoutStability.by_start_layer`) or {i: (kept by layer name, r by layer name or None)}.
      placement: where B_1's chain is written in A*'s free units: "direct" (default; at its final
        slot when free, so one duplicate-and-shift round suffices), "lowest" (lowest free slots,
        the design of docs/provable_paths.md; may need the scratch round) or
        f(layer, free, targets) -> slots.

    Returns a `ConstructivePath` (method "dropout") with one kind per segment, notes, the version
    every node computes, and `layout` recording every slot chosen; its segment count is
    `segment_formula(d, R)`.
    """
    check_compatible(params_a, params_b)
    chain = chain_slots(units, params_a)
    n = chain.n
    if n == 0:  # a linear model: the straight line is itself an (a) move
        return ConstructivePath(
            [params_a, params_b],
            ["a"],
            head=chain.head,
            notes=["interpolate the output layer"],
            layout={"rounds": 0, "segment_count": 1, "formula": "1 (no hidden layer)"},
            versions={0: Version("A"), 1: Version("B")},
        )
    ca, cb = _choices(units, choices_a, "A"), _choices(units, choices_b, "B")
    da = _drop_down(params_a, chain, ca, "A")
    db = _drop_down(params_b, chain, cb, "B")
    br = _bridge(da.nodes[-1], da.live, params_b, chain, cb[0], db.slots, db.nodes[-1], placement)
    nodes = da.nodes + br.nodes + db.nodes[::-1][1:]
    kinds = da.kinds + br.kinds + db.kinds[::-1]
    notes = da.notes + br.notes + [f"{m} (reversed)" for m in db.notes[::-1]]
    # the bridge computes theta_{A,1} until its (a) switch, theta_{B,1} after it
    versions = da.versions + [da.versions[-1]] + [db.versions[-1]] * (len(br.nodes) - 1)
    versions += db.versions[::-1][1:]
    d = n + 1
    rounds = br.layout["rounds"]
    if len(kinds) != segment_formula(d, rounds):  # the formula is part of the contract
        raise RuntimeError(f"{len(kinds)} segments, formula says {segment_formula(d, rounds)}")
    layout = {
        **br.layout,
        "a_stages": da.stages,
        "b_stages": db.stages,
        "segment_count": len(kinds),
        "formula": f"2(2d-3) + 2 + 2R + 1 = 4d - 3 + 2R with d = {d}, R = {rounds}",
    }
    return ConstructivePath(
        nodes,
        kinds,
        head=chain.head,
        notes=notes,
        layout=layout,
        versions=dict(enumerate(versions)),
    )


# ----------------------------------------------------------------------------- end to end


def stability_of(
    model: nn.Module,
    params: Params,
    data: Dataset,
    given: StabilityResult | None,
    seed: int,
    progress: bool | None,
    who: str,
) -> DropoutStability:
    """The given dropout stability result of net `who`, or a fresh search."""
    if given is None:
        return dropout_stability(model, params, data, seed=seed, progress=progress)
    if not isinstance(given, DropoutStability) or not given.by_start_layer:
        raise IsthmusError(
            f"stability result of {who} is of kind {given.kind!r} without kept sets; give a "
            "dropout stability result (`isthmus stability RUN --kind dropout`)"
        )
    return given


def _theta_losses(model, params, units, choices, data, batch_size) -> list[float]:
    pts = [dropout_params(params, units, c.kept, c.r) for c in choices]
    return evaluate(
        model, pts, data.x_train, data.y_train, loss=data.loss, batch_size=batch_size
    ).loss.tolist()


def versions_agree(
    path: ConstructivePath, net: str, choices: Sequence[DropoutChoice], units: Units
) -> bool:
    """Whether the dropout versions the path names for `net` are exactly the given choices: the
    same start layers, kept units and factors r (a choice's missing factors are the default
    h / |S|; equal to float round-off of a JSON round trip)."""
    named = {v.i: v for v in path.versions.values() if v.net == net and v.i > 0}

    def same_r(a: dict | None, b: dict) -> bool:
        return (
            a is not None
            and set(a) == set(b)
            and all(abs(float(a[k]) - float(b[k])) <= 1e-12 * max(1.0, abs(float(b[k]))) for k in b)
        )

    return sorted(named) == sorted(c.i for c in choices) and all(
        named[c.i].kept == {k: sorted(u) for k, u in c.kept.items()}
        and same_r(named[c.i].r, {**default_r(units, c.kept), **(c.r or {})})
        for c in choices
    )


def _theorem_checks(cert, path, res, sa, sb, model, pa, pb, units, data, batch_size) -> dict:
    """Theorem 1's side of the certificate: epsilon of both nets recomputed in float64 from the
    kept sets the path uses, the bound within max(L_A + eps_A, L_B + eps_B), and the path's named
    dropout versions equal to the stability results' choices; `holds` requires all of it."""
    la, lb = res.train_loss[0], res.train_loss[-1]
    eps_a = max(_theta_losses(model, pa, units, sa.by_start_layer, data, batch_size)) - la
    eps_b = max(_theta_losses(model, pb, units, sb.by_start_layer, data, batch_size)) - lb
    allowed = max(la + max(eps_a, 0.0), lb + max(eps_b, 0.0))
    within = bool(cert["bound"] <= allowed + LOSS_TOL)
    agree = versions_agree(path, "A", sa.by_start_layer, units) and versions_agree(
        path, "B", sb.by_start_layer, units
    )
    return {
        **cert,
        "holds": bool(cert["holds"] and within and agree),
        "epsilon_a": sa.epsilon,
        "epsilon_b": sb.epsilon,
        "epsilon_a_float64": eps_a,
        "epsilon_b_float64": eps_b,
        "loss_a": la,
        "loss_b": lb,
        "theorem_bound": allowed,
        "bound_within_theorem": within,
        "versions_are_stability_choices": agree,
        "segment_count": path.segment_count,
        "formula": path.layout.get("formula"),
    }


def connect_dropout(
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
    placement: Placement = "direct",
    batch_size: int | None = None,
) -> tuple[ConstructivePath, PathResult]:
    """Build, certify and evaluate the Theorem 1 path between two nets, in float64.

    Args:
      model: the architecture, a plain chain without BatchNorm (`isthmus.models.require_chain`;
        its own weights are not used; it is copied and cast to float64).
      params_a, params_b: the two nets.
      data: train split for the certificate and the dense losses; test split evaluated too.
      stability_a, stability_b: dropout stability results whose kept sets the path uses; None runs
        `isthmus.stability.dropout_stability(model, params, data, seed=seed)`.
      points: equally spaced t evaluated, on top of >= 20 per segment and every knot.
      placement: see `theorem1_path`. batch_size: examples per forward pass (None: all).

    Returns (path, PathResult) with method "dropout", `segments` and `certificate` as in
    docs/definitions.md; the certificate also holds epsilon_a/b (from the stability results and
    recomputed in float64 from the same kept sets), loss_a/b, segment_count and formula; `holds`
    also requires the bound within max(L_A + eps_A, L_B + eps_B) and the path's dropout versions
    to be the stability results' kept sets.
    """
    require_chain(model, "the Theorem 1 path")
    units = units_of(model)
    check_compatible(params_a, params_b)
    steps = bar(total=4, desc="Theorem 1 path", progress=progress)
    sa = stability_of(model, params_a, data, stability_a, seed, progress, "A")
    sb = stability_of(model, params_b, data, stability_b, seed, progress, "B")
    steps.update()
    m64, (pa, pb) = in_float64(model, params_a, params_b)
    d64 = data.to(dtype=torch.float64)
    path = theorem1_path(pa, pb, units, sa.by_start_layer, sb.by_start_layer, placement=placement)
    steps.update()
    ts = dense_ts(path, points=points)
    res = evaluate_path(m64, path, d64, ts=ts, batch_size=batch_size)
    steps.update()
    segments, cert = certify(
        m64, path, d64.x_train, d64.y_train, d64.loss, ts=ts, dense_loss=res.train_loss,
        batch_size=batch_size,
    )  # fmt: skip
    steps.update()
    steps.close()
    cert = _theorem_checks(cert, path, res, sa, sb, m64, pa, pb, units, d64, batch_size)
    extra = {
        "layout": path.layout,
        "versions": path.versions_json(),
        "kept_a": [c.to_json() for c in sa.by_start_layer],
        "kept_b": [c.to_json() for c in sb.by_start_layer],
        "search_a": sa.search,
        "search_b": sb.search,
    }
    return path, replace(res, method="dropout", segments=segments, certificate=cert, extra=extra)
