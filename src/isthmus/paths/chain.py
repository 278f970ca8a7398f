"""Polygonal chains between two nets (Garipov et al. 2018, "Loss Surfaces, Mode Connectivity, and
Fast Ensembling of DNNs", eq. 2).

A chain with k bends theta_1..theta_k has k+1 straight segments through A, theta_1, ..., theta_k, B
at equally spaced knots t_i = i/(k+1) (docs/definitions.md; Garipov et al. use k = 1). It is a
`PiecewiseLinearPath`, so every node is reproduced exactly; `weights(ts)` gives the same point as
hat-function weights over the k+2 nodes, which is how `isthmus.paths.fit` trains the bends.
Bends at i/(k+1) along the straight line make the chain the line itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import IsthmusError
from ..params import Params, lerp, unshared
from .base import CurveFamily, PiecewiseLinearPath


class ChainPath(CurveFamily, PiecewiseLinearPath):
    """Polygonal chain A -> bends -> B with equally spaced knots; `bends` are trainable nodes."""

    method = "chain"

    def __init__(self, start: Params, end: Params, bends: Sequence[Params]):
        self.check_bends(start, end, list(bends), "chain")
        super().__init__([start, *bends, end], method="chain")
        self.bends = list(bends)

    def controls(self) -> list[Params]:
        return list(self.nodes)

    def tensors(self) -> dict[str, Tensor]:
        return unshared(super().tensors())

    def weights(self, ts: Tensor) -> Tensor:
        """(P, k+2) hat-function weights: (1-s, s) on the two nodes of t's segment."""
        seg, s = self.locate(ts)
        w = torch.zeros(len(seg), len(self.nodes), dtype=torch.float64)
        rows = torch.arange(len(seg))
        w[rows, seg] = 1 - s
        w[rows, seg + 1] += s
        return w

    @staticmethod
    def on_line(a: Params, b: Params, bends: int = 1) -> ChainPath:
        """Bends at i/(k+1) along the straight line: the chain then *is* the line."""
        n = bends + 1
        return ChainPath(a, b, [lerp(a, b, i / n) for i in range(1, n)])


def piecewise_from_tensors(
    tensors: dict[str, Tensor], method: str = "chain"
) -> PiecewiseLinearPath:
    """Rebuild a piecewise-linear path (chain, neb, linear, constructive) from `tensors()` output."""
    nodes: dict[int, Params] = {}
    knots = tensors.get("knots")
    for name, v in tensors.items():
        if name == "knots":
            continue
        head, _, key = name.partition(".")
        if not head.startswith("node") or not key:
            raise IsthmusError(f"not a piecewise-linear path file: unexpected tensor {name!r}")
        nodes.setdefault(int(head[len("node") :]), {})[key] = v
    idx = sorted(nodes)
    if idx != list(range(len(idx))) or len(idx) < 2:
        raise IsthmusError(f"a path file needs node0..nodeN (N >= 1), got {idx}")
    ns = [nodes[i] for i in idx]
    kn = None if knots is None else [float(k) for k in knots.tolist()]
    if method == "chain" and kn is not None and len(ns) > 2:
        equal = [i / (len(ns) - 1) for i in range(len(ns))]
        if all(abs(a - b) < 1e-12 for a, b in zip(kn, equal, strict=True)):
            return ChainPath(ns[0], ns[-1], ns[1:-1])
    return PiecewiseLinearPath(ns, kn, method=method)
