"""Unit slots of a plain ReLU chain: the moves the constructive paths are built from.

The Theorem 1 and Theorem 2 paths of Kuditipudi et al. 2019 (docs/provable_paths.md) rewrite whole
units: the incoming rows of some slots of hidden layer l (weight rows, bias entries), the columns
of layer l+1 that read them, and the output layer. `chain_slots` checks that a `Units` description
is a plain chain these moves are exact on and returns it as a `Chain`; the functions below read,
remap and write rows and move outgoing columns, all as pure functions over parameter dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import IsthmusError
from ..models import TensorSlice, Units, refuse_batchnorm
from ..params import Params, is_float


@dataclass(frozen=True)
class Chain:
    """What the constructions need from `Units`: rows (incoming) and columns (outgoing) per layer."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    rows: tuple[tuple[TensorSlice, ...], ...]
    cols: tuple[tuple[TensorSlice, ...], ...]
    head: tuple[str, ...]

    @property
    def n(self) -> int:
        """Number of hidden layers (d - 1)."""
        return len(self.sizes)

    def col(self, l: int, name: str) -> TensorSlice | None:
        """The outgoing slice of hidden layer l on tensor `name` (None if l reads no column)."""
        if l < 0:
            return None
        return next((o for o in self.cols[l] if o.name == name), None)


def _check_layer(units: Units, l: int, params: Params) -> None:
    layers, n = units.layers, len(units.layers)
    layer = layers[l]
    nxt = {s.name for s in layers[l + 1].incoming} if l + 1 < n else set(units.head)
    for s in layer.incoming:
        if s.name not in params:
            raise IsthmusError(f"layer {layer.name}: tensor {s.name} is not in the parameters")
        if s.axis != 0 or s.block != 1 or params[s.name].shape[0] != layer.size:
            raise IsthmusError(
                f"layer {layer.name}: incoming tensor {s.name} does not hold one row per unit "
                "along axis 0"
            )
    for o in layer.outgoing:
        if o.name not in nxt:
            raise IsthmusError(
                f"layer {layer.name}: its outputs are read by {o.name}, which is not the next "
                "layer (a skip connection)"
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


def chain_slots(units: Units, params: Params) -> Chain:
    """Check that `units` describes a plain feed-forward ReLU chain without BatchNorm whose every
    float tensor belongs to a hidden unit or the output layer; return it as a `Chain`. The chain
    is checked first, so a residual net or transformer with BatchNorm hears the deeper reason."""
    try:
        for l in range(len(units.layers)):
            _check_layer(units, l, params)
    except IsthmusError as e:
        raise IsthmusError(
            "the constructive paths need a plain chain of layers: their theorems (Kuditipudi et "
            "al. 2019) drop and rewrite whole layers of x^j = relu(W_j x^{j-1} + b_j), one after "
            f"the other, and here {e}"
        ) from None
    refuse_batchnorm(params, "the constructive paths")
    covered = set(units.head) | {s.name for la in units.layers for s in la.incoming}
    loose = [k for k, v in params.items() if is_float(v) and k not in covered]
    if loose:
        raise IsthmusError(
            f"tensors {loose[:5]} belong to no hidden unit and not to the output layer; the "
            "constructive paths cannot carry them from A to B"
        )
    layers = units.layers
    return Chain(
        tuple(x.name for x in layers),
        tuple(x.size for x in layers),
        tuple(tuple(x.incoming) for x in layers),
        tuple(tuple(x.outgoing) for x in layers),
        tuple(units.head),
    )


def unit_index(units: Sequence[int], like: Tensor, s: TensorSlice | None = None) -> Tensor:
    """The unit indices as a LongTensor on `like`'s device (block-expanded along slice `s`)."""
    t = torch.as_tensor(list(units), dtype=torch.long, device=like.device)
    return t if s is None else s.index(t)


def read_rows(p: Params, chain: Chain, l: int, units: Sequence[int]) -> dict[str, Tensor]:
    """The incoming tensors of `units` of layer l (leading axis: the units, in order)."""
    return {s.name: p[s.name].index_select(0, unit_index(units, p[s.name])) for s in chain.rows[l]}


def remap_rows(
    rows: dict[str, Tensor],
    chain: Chain,
    l: int,
    src: Sequence[int],
    dst: Sequence[int],
    r: float,
) -> dict[str, Tensor]:
    """Rows that read only units `src` of layer l-1, times r, from slots `dst`; zero elsewhere."""
    out = {}
    for name, t in rows.items():
        o = chain.col(l - 1, name)
        if o is None:
            out[name] = t
            continue
        vals = t.index_select(o.axis, unit_index(src, t, o)) * r
        out[name] = torch.zeros_like(t).index_copy_(o.axis, unit_index(dst, t, o), vals)
    return out


def write_rows(
    p: Params, chain: Chain, l: int, slots: Sequence[int], rows: dict[str, Tensor]
) -> Params:
    """Copy of p with the incoming rows of `slots` of layer l replaced by `rows`."""
    out = dict(p)
    if not len(slots):
        return out
    for s in chain.rows[l]:
        idx = unit_index(slots, p[s.name])
        out[s.name] = p[s.name].clone().index_copy_(0, idx, rows[s.name])
    return out


def head_reading(
    src: Params, chain: Chain, kept: Sequence[int], dst: Sequence[int], r: float
) -> Params:
    """Output layer of a dropout version: reads units `kept` (times r) from slots `dst` only."""
    out = {}
    for name in chain.head:
        o = chain.col(chain.n - 1, name)
        t = src[name]
        if o is None:
            out[name] = t.clone()
        else:
            vals = t.index_select(o.axis, unit_index(kept, t, o)) * r
            out[name] = torch.zeros_like(t).index_copy_(o.axis, unit_index(dst, t, o), vals)
    return out


def shift_outgoing(
    p: Params,
    chain: Chain,
    l: int,
    src: Sequence[int],
    dst: Sequence[int],
    readers: Sequence[int] | None,
) -> Params:
    """Move the outgoing weights of units `src` of layer l to slots `dst` in the rows `readers` of
    layer l+1 (all rows of the output layer)."""
    out = dict(p)
    for o in chain.cols[l]:
        t = p[o.name]
        head = o.name in chain.head
        rows = torch.arange(t.shape[0], device=t.device) if head else unit_index(readers or [], t)
        if not len(rows):
            continue
        sub = t.index_select(0, rows)
        vals = sub.index_select(o.axis, unit_index(src, t, o))
        sub.index_fill_(o.axis, unit_index(src, t, o), 0)
        sub.index_copy_(o.axis, unit_index(dst, t, o), vals)
        out[o.name] = t.clone().index_copy_(0, rows, sub)
    return out
