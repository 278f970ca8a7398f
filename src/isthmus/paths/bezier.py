"""Bezier curves between two nets (Garipov et al. 2018, "Loss Surfaces, Mode Connectivity, and Fast
Ensembling of DNNs", eq. 3).

A Bezier curve of order n = k+1 with control points theta_0 = A, theta_1..theta_k (the *bends*),
theta_{k+1} = B, in Bernstein form:

    phi(t) = sum_{i=0}^{n} C(n, i) t^i (1-t)^(n-i) theta_i.

`points(ts)` computes the Bernstein weights (P, n+1) once and contracts them with the stacked
control points in one einsum per tensor, so P points cost one pass over the control points.
The weights at t = 0 and t = 1 are exactly one-hot, and rows that are one-hot are copied from the
control point (not summed), so the endpoints are bit-exact on every backend (TF32 included).
Bends placed at A + i/n (B - A) reproduce the straight line (degree elevation of a line).

`combine(weights, controls)` is the shared contraction; `isthmus.surface` uses it for planes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import IsthmusError
from ..params import Params, combine, lerp, stack_controls, unshared
from .base import CurveFamily, ParameterPath


def bernstein(ts: Tensor, order: int) -> Tensor:
    """Bernstein basis b_{i,n}(t) = C(n,i) t^i (1-t)^(n-i): (P,) -> (P, n+1), float64.

    Uses integer powers so that 0^0 = 1 and the rows at t = 0 and t = 1 are exactly one-hot.
    """
    if order < 1:
        raise IsthmusError(f"a Bezier curve needs order >= 1, got {order}")
    t = torch.as_tensor(ts, dtype=torch.float64).reshape(-1, 1).cpu()
    i = torch.arange(order + 1, dtype=torch.float64)
    binom = torch.tensor([math.comb(order, j) for j in range(order + 1)], dtype=torch.float64)
    return binom * t.pow(i) * (1 - t).pow(order - i)


class BezierPath(CurveFamily, ParameterPath):
    """Bezier curve A -> B with k bends (order k+1); `bends` are the interior control points."""

    method = "bezier"

    def __init__(self, start: Params, end: Params, bends: Sequence[Params]):
        self.check_bends(start, end, list(bends), "Bezier curve")
        self.start, self.end, self.bends = start, end, list(bends)
        self._stacked = stack_controls(self.controls())

    @property
    def order(self) -> int:
        return len(self.bends) + 1

    def controls(self) -> list[Params]:
        return [self.start, *self.bends, self.end]

    def weights(self, ts: Tensor) -> Tensor:
        """(P, k+2) Bernstein weights of the control points."""
        return bernstein(ts, self.order)

    def points(self, ts: Tensor) -> Params:
        return combine(self.weights(ts), self._stacked, self.start)

    def tensors(self) -> dict[str, Tensor]:
        return unshared(
            {f"control{i}.{k}": v for i, c in enumerate(self.controls()) for k, v in c.items()}
        )

    @staticmethod
    def on_line(a: Params, b: Params, bends: int = 1) -> BezierPath:
        """Bends at i/(k+1) along the straight line: the curve then *is* the line, phi(t) = lerp(t)."""
        n = bends + 1
        return BezierPath(a, b, [lerp(a, b, i / n) for i in range(1, n)])

    @staticmethod
    def from_tensors(tensors: dict[str, Tensor]) -> BezierPath:
        """Inverse of `tensors()` (path.safetensors of `isthmus connect --method bezier`)."""
        controls: dict[int, Params] = {}
        for name, v in tensors.items():
            head, _, key = name.partition(".")
            if not head.startswith("control") or not key:
                raise IsthmusError(f"not a Bezier path file: unexpected tensor {name!r}")
            controls.setdefault(int(head[len("control") :]), {})[key] = v
        idx = sorted(controls)
        if idx != list(range(len(idx))) or len(idx) < 3:
            raise IsthmusError(f"a Bezier path file needs control0..controlK (K >= 2), got {idx}")
        c = [controls[i] for i in idx]
        return BezierPath(c[0], c[-1], c[1:-1])
