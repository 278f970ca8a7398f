"""The Theorem 1 path of Kuditipudi et al. 2019 ("Explaining landscape connectivity of low-cost
solutions for multilayer nets"): a piecewise-linear path between two eps-dropout-stable nets whose
train loss never exceeds max(L_A, L_B) + eps, with a certificate for every segment.

Only two kinds of moves are used (SCIENCE.md section 1, "Two moves"):
  (a) interpolate the output layer (W_d, b_d) while every hidden layer stays fixed: the output is
      (1-s) f_0 + s f_1 and the loss is convex in f, so the loss stays <= max of the endpoint losses;
  (b) change the incoming weights of *free* units (no live unit reads them): the function does not
      change at all;
  (c) duplicate-and-shift, built from (b): copy a unit's incoming weights into a free slot (a (b)
      segment), then move its outgoing weights from the old slot to the copy (a (c) segment: both
      slots compute the same value, so the function is constant).

Construction (SCIENCE.md "Theorem 1 path", made concrete; d weight layers, n = d-1 hidden layers):
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

Certificate (`certify`): every (a) segment has bit-identical hidden layers at both ends and its
endpoint losses are computed exactly (float64); every (b)/(c) segment's outputs at s = 0.25, 0.5,
0.75, 1 equal those at s = 0 to 1e-10 relative to max(1, max |f(x)|). The bound is the max of the
(a)-segment endpoint losses only, which are L_A, L_B and the L(theta_i) of both nets, hence
<= max(L_A, L_B) + max(eps, 0). The loss is also evaluated densely (>= 20 points per segment) and
`holds` says whether all of it stays within the bound (+1e-9).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data import Dataset
from ..errors import IsthmusError
from ..models import TensorSlice, Units, units_of
from ..params import Params, check_compatible, evaluate, has_bn, is_float, output_fn, to
from ..stability import DropoutChoice, StabilityResult, default_r, dropout_params, validate_kept
from .base import PathResult, PiecewiseLinearPath, evaluate_path

KINDS = ("a", "b", "c", "line")
PROBES = (0.25, 0.5, 0.75, 1.0)
DEVIATION_TOL = 1e-10  # (b)/(c): max |f(s) - f(0)| / max(1, max |f(0)|)
LOSS_TOL = 1e-9  # dense loss <= bound + LOSS_TOL
PER_SEGMENT = 20

Placement = str | Callable[[int, list[int], list[int]], Sequence[int]]
Choices = Sequence[DropoutChoice] | dict[int, tuple[dict[str, list[int]], dict[str, float] | None]]


# ----------------------------------------------------------------------------- the path object


class ConstructivePath(PiecewiseLinearPath):
    """A piecewise-linear path whose segments carry a kind: "a", "b", "c" or "line".

    `notes[k]` says what segment k does; `layout` records every slot the construction chose (so
    the path can be audited); `head` names the output-layer tensors (for the (a) check).
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

    @property
    def segment_count(self) -> int:
        return len(self.kinds)

    def tensors(self) -> dict[str, Tensor]:
        """Nodes, knots, the kinds as codes (index into KINDS) and the output-layer names (as
        empty tensors "head.<name>"), for path.safetensors."""
        out, seen = {}, set()
        for key, t in super().tensors().items():
            # nodes share unchanged tensors; safetensors stores each one separately
            ptr = t.untyped_storage().data_ptr() if t.numel() else None
            out[key] = t.clone() if ptr in seen else t
            seen.add(ptr)
        out["kinds"] = torch.tensor([KINDS.index(k) for k in self.kinds], dtype=torch.uint8)
        out.update({f"head.{name}": torch.zeros(0) for name in self.head})  # names as keys
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], method: str = "dropout") -> ConstructivePath:
        """Rebuild a path written by `tensors()` (e.g. read back from path.safetensors)."""
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
        return cls(nodes, kinds, head=head, knots=knots, method=method)


# ----------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class _Net:
    """What the construction needs from `Units`: rows (incoming) and columns (outgoing) per layer."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    rows: tuple[tuple[TensorSlice, ...], ...]
    cols: tuple[tuple[TensorSlice, ...], ...]
    head: tuple[str, ...]

    @property
    def n(self) -> int:
        return len(self.sizes)

    def col(self, l: int, name: str) -> TensorSlice | None:
        """The outgoing slice of hidden layer l on tensor `name` (None if l reads no column)."""
        if l < 0:
            return None
        return next((o for o in self.cols[l] if o.name == name), None)


def _structure(units: Units, params: Params) -> _Net:
    """Check that the architecture is a plain feed-forward ReLU stack the construction supports."""
    if any("running_mean" in k or "running_var" in k for k in params):
        raise IsthmusError(
            "the constructive paths need nets without BatchNorm (SCIENCE.md section 1): the "
            "BN policy recomputes statistics at every point, which no function-preserving move "
            "survives; train the nets with batchnorm=false"
        )
    layers = units.layers
    n = len(layers)
    covered = set(units.head)
    for l, layer in enumerate(layers):
        nxt = {s.name for s in layers[l + 1].incoming} if l + 1 < n else set(units.head)
        for s in layer.incoming:
            if s.name not in params:
                raise IsthmusError(f"layer {layer.name}: tensor {s.name} is not in the parameters")
            if s.axis != 0 or s.block != 1 or params[s.name].shape[0] != layer.size:
                raise IsthmusError(
                    f"layer {layer.name}: incoming tensor {s.name} must hold one row per unit "
                    "along axis 0 (the constructive paths support MLP and ConvNet layouts)"
                )
            covered.add(s.name)
        for o in layer.outgoing:
            if o.name not in nxt:
                raise IsthmusError(
                    f"layer {layer.name}: its outputs are read by {o.name}, which is not the next "
                    "layer; skip connections are not supported by the constructive paths"
                )
            if params[o.name].shape[o.axis] != layer.size * o.block:
                raise IsthmusError(
                    f"layer {layer.name}: {o.name} axis {o.axis} has "
                    f"{params[o.name].shape[o.axis]} entries, expected {layer.size} x {o.block}"
                )
        if l > 0:
            reads = {o.name for o in layers[l - 1].outgoing}
            for s in layer.incoming:
                if s.name not in reads and params[s.name].dim() != 1:
                    raise IsthmusError(
                        f"layer {layer.name}: tensor {s.name} is neither read from the layer below "
                        "nor a per-unit vector; the constructive paths cannot move it"
                    )
    loose = [k for k, v in params.items() if is_float(v) and k not in covered]
    if loose:
        raise IsthmusError(
            f"tensors {loose[:5]} belong to no hidden unit and not to the output layer; the "
            "constructive paths cannot carry them from A to B"
        )
    return _Net(
        tuple(x.name for x in layers),
        tuple(x.size for x in layers),
        tuple(tuple(x.incoming) for x in layers),
        tuple(tuple(x.outgoing) for x in layers),
        tuple(units.head),
    )


def _idx(units: Sequence[int], like: Tensor, s: TensorSlice | None = None) -> Tensor:
    t = torch.as_tensor(list(units), dtype=torch.long, device=like.device)
    return t if s is None else s.index(t)


def _rows(p: Params, net: _Net, l: int, units: Sequence[int]) -> dict[str, Tensor]:
    """The incoming tensors of `units` of layer l (leading axis: the units, in order)."""
    return {s.name: p[s.name].index_select(0, _idx(units, p[s.name])) for s in net.rows[l]}


def _remap(
    rows: dict[str, Tensor],
    net: _Net,
    l: int,
    src: Sequence[int],
    dst: Sequence[int],
    r: float,
) -> dict[str, Tensor]:
    """Rows that read only units `src` of layer l-1, times r, from slots `dst`; zero elsewhere."""
    out = {}
    for name, t in rows.items():
        o = net.col(l - 1, name)
        if o is None:
            out[name] = t
            continue
        vals = t.index_select(o.axis, _idx(src, t, o)) * r
        out[name] = torch.zeros_like(t).index_copy_(o.axis, _idx(dst, t, o), vals)
    return out


def _write_rows(
    p: Params, net: _Net, l: int, slots: Sequence[int], rows: dict[str, Tensor]
) -> Params:
    out = dict(p)
    if not len(slots):
        return out
    for s in net.rows[l]:
        out[s.name] = p[s.name].clone().index_copy_(0, _idx(slots, p[s.name]), rows[s.name])
    return out


def _head(src: Params, net: _Net, kept: Sequence[int], dst: Sequence[int], r: float) -> Params:
    """Output layer of a dropout version: reads units `kept` (times r) from slots `dst` only."""
    out = {}
    for name in net.head:
        o = net.col(net.n - 1, name)
        t = src[name]
        if o is None:
            out[name] = t.clone()
        else:
            vals = t.index_select(o.axis, _idx(kept, t, o)) * r
            out[name] = torch.zeros_like(t).index_copy_(o.axis, _idx(dst, t, o), vals)
    return out


def _shift(
    p: Params,
    net: _Net,
    l: int,
    src: Sequence[int],
    dst: Sequence[int],
    readers: Sequence[int] | None,
) -> Params:
    """Move the outgoing weights of units `src` of layer l to slots `dst` in the rows `readers` of
    layer l+1 (all rows of the output layer)."""
    out = dict(p)
    for o in net.cols[l]:
        t = p[o.name]
        head = o.name in net.head
        rows = torch.arange(t.shape[0], device=t.device) if head else _idx(readers or [], t)
        if not len(rows):
            continue
        sub = t.index_select(0, rows)
        vals = sub.index_select(o.axis, _idx(src, t, o))
        sub.index_fill_(o.axis, _idx(src, t, o), 0)
        sub.index_copy_(o.axis, _idx(dst, t, o), vals)
        out[o.name] = t.clone().index_copy_(0, rows, sub)
    return out


# ----------------------------------------------------------------------------- kept sets


@dataclass(frozen=True)
class _Choice:
    """Kept units (sorted) and factor r per hidden-layer index, for layers l0..n-1."""

    l0: int
    kept: dict[int, list[int]]
    r: dict[int, float]


def _choices(units: Units, choices: Choices, who: str) -> dict[int, _Choice]:
    """Validate the kept sets of every start layer 1..d-1 and index them by l0 = i-1."""
    if isinstance(choices, StabilityResult):
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
        r = {**default_r(units, kept), **(r or {})}
        bad = [k for k, v in r.items() if k in kept and not (isinstance(v, int | float) and v == v)]
        if bad:
            raise IsthmusError(f"net {who}, start layer {i}: factor r of {bad} is not a number")
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


# ----------------------------------------------------------------------------- the construction


@dataclass
class _Descent:
    """Step 1 for one net: nodes theta -> ... -> theta_1 and where theta_1's chain lives."""

    nodes: list[Params]
    kinds: list[str]
    notes: list[str]
    live: list[list[int]]  # live slots per layer at the end (theta_1)
    slots: list[list[int]]  # slot of each kept unit of theta_1 (aligned with the sorted kept set)
    stages: list[dict]


def _write_chain(
    cur: Params,
    src: Params,
    net: _Net,
    c: _Choice,
    slots: dict[int, list[int]],
    move_base: bool,
) -> Params:
    """Write the dropout version `c` of net `src` into `slots` (layers l0+1.. or l0.. if moved)."""
    out = cur
    for l in range(c.l0 if move_base else c.l0 + 1, net.n):
        rows = _rows(src, net, l, c.kept[l])
        if l > c.l0:
            rows = _remap(rows, net, l, c.kept[l - 1], slots[l - 1], c.r[l - 1])
        out = _write_rows(out, net, l, slots[l], rows)
    return out


def _set_head(cur: Params, head: Params) -> Params:
    return {**cur, **head}


def _drop_down(p: Params, net: _Net, choices: dict[int, _Choice], who: str) -> _Descent:
    """theta -> theta_{d-1} -> ... -> theta_1 by shadow chains (b) and output switches (a)."""
    n = net.n
    cur, nodes, kinds, notes, stages = p, [p], [], [], []
    live = [list(range(h)) for h in net.sizes]
    slots: dict[int, list[int]] = {}
    for l0 in range(n - 1, -1, -1):
        c = choices[l0]
        slots = {l0: c.kept[l0]}
        for l in range(l0 + 1, n):
            taken = set(live[l])
            free = [s for s in range(net.sizes[l]) if s not in taken]
            if len(free) < len(c.kept[l]):  # cannot happen: |live| <= floor(h/2)
                raise RuntimeError(f"net {who}: layer {net.names[l]} has too few free units")
            slots[l] = free[: len(c.kept[l])]
        if l0 < n - 1:
            cur = _write_chain(cur, p, net, c, slots, move_base=False)
            nodes.append(cur)
            kinds.append("b")
            notes.append(
                f"{who}: write the shadow chain of theta_{l0 + 1} into free units of hidden "
                f"layers {l0 + 2}..{n}"
            )
        cur = _set_head(cur, _head(p, net, c.kept[n - 1], slots[n - 1], c.r[n - 1]))
        nodes.append(cur)
        kinds.append("a")
        notes.append(f"{who}: switch the output layer to theta_{l0 + 1}")
        live[l0] = list(c.kept[l0])
        for l in range(l0 + 1, n):
            live[l] = list(slots[l])
        stages.append({"i": l0 + 1, "slots": {net.names[l]: slots[l] for l in range(l0 + 1, n)}})
    return _Descent(nodes, kinds, notes, live, [slots[l] for l in range(n)], stages)


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


def _bridge(
    a_star: Params,
    live_a: list[list[int]],
    pb: Params,
    net: _Net,
    cb: _Choice,
    target: list[list[int]],
    b_star: Params,
    placement: Placement,
) -> _Bridge:
    """Steps 2 and 3: A* -> B_1's chain in A*'s free units -> switch -> permute into B*'s slots."""
    n = net.n
    nodes, kinds, notes = [], [], []
    placed = []
    for l in range(n):
        taken = set(live_a[l])
        free = [s for s in range(net.sizes[l]) if s not in taken]
        placed.append(_place(placement, l, free, target[l], net.names[l]))
    cur = _write_chain(a_star, pb, net, cb, dict(enumerate(placed)), move_base=True)
    nodes.append(cur)
    kinds.append("b")
    notes.append("write B_1's chain into free units of A*")
    cur = _set_head(cur, _head(pb, net, cb.kept[n - 1], placed[n - 1], cb.r[n - 1]))
    nodes.append(cur)
    kinds.append("a")
    notes.append("switch the output layer from A_1 to B_1")

    pos = [list(c) for c in placed]
    rounds, scratch = 0, {}
    for rnd in (1, 2):
        moves: dict[int, list[tuple[int, int, int]]] = {}  # layer -> (unit, from, to)
        for l in range(n):
            occupied, tset = set(pos[l]), set(target[l])
            pool = iter(s for s in range(net.sizes[l]) if s not in occupied and s not in tset)
            mv = []
            for m, (c, t) in enumerate(zip(pos[l], target[l], strict=True)):
                if c == t:
                    continue
                if t not in occupied:
                    mv.append((m, c, t))
                    continue
                z = next(pool, None)
                if rnd == 2 or z is None:  # cannot happen (docs/provable_paths.md)
                    raise RuntimeError(f"layer {net.names[l]}: no scratch slot for unit {m}")
                mv.append((m, c, z))
                scratch[net.names[l]] = scratch.get(net.names[l], 0) + 1
            if mv:
                moves[l] = mv
        if not moves:
            break
        rounds += 1
        for l, mv in moves.items():
            cur = _write_rows(
                cur, net, l, [t for _, _, t in mv], _rows(cur, net, l, [c for _, c, _ in mv])
            )
        nodes.append(cur)
        kinds.append("b")
        notes.append(f"duplicate-and-shift round {rnd}: copy moving units into their new slots")
        for l, mv in moves.items():
            readers = None
            if l + 1 < n:
                readers = sorted(set(pos[l + 1]) | {t for _, _, t in moves.get(l + 1, [])})
            cur = _shift(cur, net, l, [c for _, c, _ in mv], [t for _, _, t in mv], readers)
        nodes.append(cur)
        kinds.append("c")
        notes.append(f"duplicate-and-shift round {rnd}: move outgoing weights to the copies")
        for l, mv in moves.items():
            for m, _, t in mv:
                pos[l][m] = t

    final = cur
    for l in range(n):
        keep = set(pos[l])
        free = [s for s in range(net.sizes[l]) if s not in keep]
        final = _write_rows(final, net, l, free, _rows(b_star, net, l, free))
    wrong = [k for k in b_star if not torch.equal(final[k], b_star[k])]
    if wrong:  # a bug, not a user error: the chain was not carried exactly into B*'s slots
        raise RuntimeError(f"Theorem 1 construction: tensors {wrong} do not reach B* exactly")
    nodes.append(b_star)
    kinds.append("b")
    notes.append("set every free unit to B*'s values")
    layout = {
        "placement": placement if isinstance(placement, str) else "custom",
        "b1_written_at": {net.names[l]: placed[l] for l in range(n)},
        "b1_target": {net.names[l]: target[l] for l in range(n)},
        "a_star_live": {net.names[l]: live_a[l] for l in range(n)},
        "rounds": rounds,
        "scratch_units": scratch,
    }
    return _Bridge(nodes, kinds, notes, layout)


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
        `StabilityResult.by_start_layer`) or {i: (kept by layer name, r by layer name or None)}.
      placement: where B_1's chain is written in A*'s free units: "direct" (default; at its final
        slot when free, so one duplicate-and-shift round suffices), "lowest" (lowest free slots,
        the SCIENCE.md design; may need the scratch round) or f(layer, free, targets) -> slots.

    Returns a `ConstructivePath` (method "dropout") with one kind per segment, notes, and
    `layout` recording every slot chosen; its segment count is `segment_formula(d, R)`.
    """
    check_compatible(params_a, params_b)
    net = _structure(units, params_a)
    n = net.n
    if n == 0:  # a linear model: the straight line is itself an (a) move
        return ConstructivePath(
            [params_a, params_b],
            ["a"],
            head=net.head,
            notes=["interpolate the output layer"],
            layout={"rounds": 0, "segment_count": 1, "formula": "1 (no hidden layer)"},
        )
    ca, cb = _choices(units, choices_a, "A"), _choices(units, choices_b, "B")
    da = _drop_down(params_a, net, ca, "A")
    db = _drop_down(params_b, net, cb, "B")
    br = _bridge(da.nodes[-1], da.live, params_b, net, cb[0], db.slots, db.nodes[-1], placement)
    nodes = da.nodes + br.nodes + db.nodes[::-1][1:]
    kinds = da.kinds + br.kinds + db.kinds[::-1]
    notes = da.notes + br.notes + [f"{m} (reversed)" for m in db.notes[::-1]]
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
    return ConstructivePath(nodes, kinds, head=net.head, notes=notes, layout=layout)


# ----------------------------------------------------------------------------- certificate


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


def _outputs(model: nn.Module, p: Params, x: Tensor, batch_size: int | None) -> Tensor:
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
    affine in s and the loss convex); endpoint losses exact; the affine deviation is recorded.
    (b)/(c) segments: max |f(s) - f(0)| over x and the probe values s, divided by
    max(1, max |f(0)|), must be <= 1e-10. "line" segments are measured only.
    bound = max of the (a)-segment endpoint losses; holds = every check passes and the dense loss
    on every certified segment is <= bound + 1e-9.

    Args:
      ts, dense_loss: a dense grid and the losses there (default: `dense_ts(path)`, evaluated here).
      probes: interior values of s checked on (b)/(c) and (a) segments.
      batch_size, chunk, strategy: passed to `isthmus.params.evaluate`.

    Returns (segments, certificate) in the path.json layout (SCIENCE.md section 5) plus extras:
    per segment "max_loss", "barrier", "points", "note"; "max_output_deviation_abs" ((b)/(c)),
    "hidden_unchanged" and "max_affine_deviation" ((a)).
    """
    nodes, kinds, kn = path.nodes, path.kinds, path.knots()
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
    bar = tqdm(
        list(enumerate(kinds)),
        desc="certify",
        unit="segment",
        disable=None if progress is None else not progress,
    )
    for k, kind in bar:
        t0, t1 = kn[k], kn[k + 1]
        l0, l1 = float(node_loss[k]), float(node_loss[k + 1])
        inside = (ts >= t0) & (ts <= t1)
        seg_max = max([l0, l1, *dense[inside].tolist()])
        seg = {
            "kind": kind,
            "t0": t0,
            "t1": t1,
            "loss0": l0,
            "loss1": l1,
            "max_output_deviation": None,
            "max_loss": seg_max,
            "barrier": seg_max - max(l0, l1),
            "points": int(inside.sum()),
            "note": path.notes[k] if k < len(path.notes) else "",
        }
        if kind != "line":
            f0 = _outputs(model, nodes[k], x, batch_size)
            scale = max(1.0, float(f0.abs().max()))
            pts = path.points(
                torch.tensor([t0 + s * (t1 - t0) for s in probes], dtype=torch.float64)
            )
            fs = [
                _outputs(model, {n: v[j] for n, v in pts.items()}, x, batch_size)
                for j in range(len(probes))
            ]
            if kind == "a":
                f1 = _outputs(model, nodes[k + 1], x, batch_size)
                seg["hidden_unchanged"] = all(
                    torch.equal(nodes[k][n], nodes[k + 1][n])
                    for n in nodes[k]
                    if n not in path.head
                )
                seg["max_affine_deviation"] = max(
                    float((f - ((1 - s) * f0 + s * f1)).abs().max()) / scale
                    for s, f in zip(probes, fs, strict=True)
                )
            else:
                dev = max(float((f - f0).abs().max()) for f in fs)
                seg["max_output_deviation"] = dev / scale
                seg["max_output_deviation_abs"] = dev
        segments.append(seg)
    a_ends = [max(s["loss0"], s["loss1"]) for s in segments if s["kind"] == "a"]
    bound = max(a_ends) if a_ends else None
    certified = [s for s in segments if s["kind"] != "line"]
    max_cert = max((s["max_loss"] for s in certified), default=None)
    devs_ok = all(
        s["max_output_deviation"] <= DEVIATION_TOL for s in certified if s["kind"] in "bc"
    )
    a_ok = all(s["hidden_unchanged"] for s in certified if s["kind"] == "a")
    holds = bool(
        bound is not None
        and devs_ok
        and a_ok
        and max_cert is not None
        and max_cert <= bound + LOSS_TOL
    )
    certificate = {
        "bound": bound,
        "max_loss_on_path": max(float(dense.max()), float(node_loss.max())),
        "holds": holds,
        "max_loss_certified_segments": max_cert,
        "certified_segments": [k for k, s in enumerate(segments) if s["kind"] != "line"],
        "loss_tolerance": LOSS_TOL,
        "deviation_tolerance": DEVIATION_TOL,
        "deviation": "max |f(x; s) - f(x; 0)| over x and s in probes, / max(1, max |f(x; 0)|)",
        "probes": list(probes),
        "dtype": dtype,
        "min_points_per_segment": min(s["points"] for s in segments),
    }
    return segments, certificate


# ----------------------------------------------------------------------------- end to end


def _float64(model: nn.Module, *params: Params) -> tuple[nn.Module, list[Params]]:
    m = copy.deepcopy(model).double()
    return m, [to(p, dtype=torch.float64) for p in params]


def _check_model(model: nn.Module) -> Units:
    if has_bn(model):
        raise IsthmusError(
            "the constructive paths need nets without BatchNorm (SCIENCE.md section 1); train "
            "with batchnorm=false"
        )
    return units_of(model)


def _stability_of(model, params, data, given, seed, progress, who) -> StabilityResult:
    if given is not None:
        if given.kind != "dropout" or not given.by_start_layer:
            raise IsthmusError(
                f"stability result of {who} is of kind {given.kind!r} without kept sets; give a "
                "dropout stability result (`isthmus stability RUN --kind dropout`)"
            )
        return given
    from .. import stability

    search = getattr(stability, "dropout_stability", None)
    if search is None:
        raise IsthmusError(
            f"no stability result for {who} and this isthmus has no dropout_stability search; "
            "pass the kept sets explicitly"
        )
    return search(model, params, data, seed=seed, progress=progress)


def _theta_losses(model, params, units, choices, data, batch_size) -> list[float]:
    pts = [dropout_params(params, units, c.kept, c.r or None) for c in choices]
    return evaluate(
        model, pts, data.x_train, data.y_train, loss=data.loss, batch_size=batch_size
    ).loss.tolist()


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
      model: the architecture (its own weights are not used; it is copied and cast to float64).
      params_a, params_b: the two nets.
      data: train split for the certificate and the dense losses; test split evaluated too.
      stability_a, stability_b: dropout stability results whose kept sets the path uses; None runs
        `isthmus.stability.dropout_stability(model, params, data, seed=seed)`.
      points: equally spaced t evaluated, on top of >= 20 per segment and every knot.
      placement: see `theorem1_path`. batch_size: examples per forward pass (None: all).

    Returns (path, PathResult) with method "dropout", `segments` and `certificate` as in
    SCIENCE.md section 5; the certificate also holds epsilon_a/b (from the stability results and
    recomputed in float64), loss_a/b, segment_count and formula.
    """
    units = _check_model(model)
    check_compatible(params_a, params_b)
    steps = tqdm(total=4, desc="Theorem 1 path", disable=None if progress is None else not progress)
    sa = _stability_of(model, params_a, data, stability_a, seed, progress, "A")
    sb = _stability_of(model, params_b, data, stability_b, seed, progress, "B")
    steps.update()
    m64, (pa, pb) = _float64(model, params_a, params_b)
    d64 = data.to(dtype=torch.float64)
    path = theorem1_path(pa, pb, units, sa.by_start_layer, sb.by_start_layer, placement=placement)
    steps.update()
    ts = dense_ts(path, points=points)
    res = evaluate_path(m64, path, d64, ts=ts, batch_size=batch_size)
    steps.update()
    segments, cert = certify(
        m64,
        path,
        d64.x_train,
        d64.y_train,
        d64.loss,
        ts=ts,
        dense_loss=res.train_loss,
        batch_size=batch_size,
    )
    steps.update()
    steps.close()
    la, lb = res.train_loss[0], res.train_loss[-1]
    th_a = _theta_losses(m64, pa, units, sa.by_start_layer, d64, batch_size)
    th_b = _theta_losses(m64, pb, units, sb.by_start_layer, d64, batch_size)
    eps_a, eps_b = max(th_a) - la, max(th_b) - lb
    allowed = max(la + max(eps_a, 0.0), lb + max(eps_b, 0.0))
    cert.update(
        {
            "epsilon_a": sa.epsilon,
            "epsilon_b": sb.epsilon,
            "epsilon_a_float64": eps_a,
            "epsilon_b_float64": eps_b,
            "loss_a": la,
            "loss_b": lb,
            "theorem_bound": allowed,
            "bound_within_theorem": bool(cert["bound"] <= allowed + LOSS_TOL),
            "segment_count": path.segment_count,
            "formula": path.layout.get("formula"),
        }
    )
    extra = {
        "layout": path.layout,
        "kept_a": [_choice_json(c) for c in sa.by_start_layer],
        "kept_b": [_choice_json(c) for c in sb.by_start_layer],
        "search_a": sa.search,
        "search_b": sb.search,
    }
    return path, replace(res, method="dropout", segments=segments, certificate=cert, extra=extra)


def _choice_json(c: DropoutChoice) -> dict:
    return {"i": c.i, "loss": c.loss, "kept": c.kept, "r": c.r}
