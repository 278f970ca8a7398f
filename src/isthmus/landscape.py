"""Loss landscapes as functions of flat parameter vectors: the one protocol every tool accepts.

A `Landscape` maps a batch of points in R^D to their losses, `(P, D) -> (P,)`, differentiably. Lines,
fitted curves and families, AutoNEB, planes and curvature take either a module plus data
or a Landscape, so a toy landscape (a quadratic with a known Hessian, the Muller-Brown potential,
the wedge model of Fort & Jastrzebski 2019) reuses every tool, and a real net can be seen as a
Landscape through `ModuleLandscape` (flat vectors of its trainable tensors).

A point of a Landscape travels through the path and surface code as the parameter dict
{"x": vector} (`as_point`), so paths, planes and their files need no second implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .data import Dataset
from .errors import IsthmusError
from .params import Params, evaluate_splits, flatten, mean_loss, unflatten

KEY = "x"  # the one entry of a Landscape point's parameter dict


@runtime_checkable
class Landscape(Protocol):
    """A differentiable loss over flat vectors: `loss(x)` maps (P, D) to (P,)."""

    dim: int

    def loss(self, x: Tensor) -> Tensor: ...


def is_landscape(obj: object) -> bool:
    """Whether `obj` is a Landscape (a module is never one: it is evaluated with data)."""
    return isinstance(obj, Landscape) and not isinstance(obj, nn.Module)


def as_point(x: Tensor | Sequence[float]) -> Params:
    """A Landscape point as a parameter dict, so every path and plane class takes it."""
    return {KEY: torch.as_tensor(x, dtype=torch.float64).reshape(-1)}


def flat(points: Params) -> Tensor:
    """Stacked Landscape points {"x": (P, D)} -> (P, D)."""
    if set(points) != {KEY}:
        raise IsthmusError(
            f"a Landscape point is the dict {{'{KEY}': vector}} (see landscape.as_point); "
            f"got entries {sorted(points)}"
        )
    return points[KEY]


def evaluate_points(
    target: nn.Module | Landscape,
    points: Params,
    data: Dataset | None = None,
    **kw,
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Train loss, train accuracy, test loss, test accuracy at P stacked points.

    A module is evaluated on `data` (`params.evaluate_splits`, keyword arguments passed on); a
    Landscape has one loss, reported as both train and test loss, and no accuracy (nan).
    """
    if is_landscape(target):
        with torch.no_grad():
            v = target.loss(flat(points)).detach().double().cpu().tolist()
        nan = [float("nan")] * len(v)
        return v, nan, list(v), list(nan)
    if data is None:
        raise IsthmusError(
            "evaluating a module needs data (a Dataset); only a Landscape needs none"
        )
    return evaluate_splits(target, points, data, **kw)


# ----------------------------------------------------------------------------- landscapes


class FunctionLandscape:
    """Any batched function `fn: (P, D) -> (P,)` as a Landscape."""

    def __init__(self, fn: Callable[[Tensor], Tensor], dim: int):
        self.fn, self.dim = fn, dim

    def loss(self, x: Tensor) -> Tensor:
        return self.fn(x)


class Quadratic:
    """L(x) = c + 1/2 (x - m)^T H (x - m) with a symmetric H: values, gradients and the Hessian
    are known in closed form, which the tests of lines, planes and curvature check against."""

    def __init__(self, hessian: Tensor, minimum: Tensor | None = None, offset: float = 0.0):
        H = torch.as_tensor(hessian, dtype=torch.float64)
        if H.dim() != 2 or H.shape[0] != H.shape[1] or not torch.allclose(H, H.T):
            raise IsthmusError(
                f"the Hessian must be a symmetric square matrix, got {tuple(H.shape)}"
            )
        self.hessian, self.dim, self.offset = H, H.shape[0], float(offset)
        self.minimum = (
            torch.zeros(self.dim, dtype=torch.float64)
            if minimum is None
            else torch.as_tensor(minimum, dtype=torch.float64).reshape(self.dim)
        )

    def loss(self, x: Tensor) -> Tensor:
        d = x - self.minimum.to(x)
        return self.offset + 0.5 * ((d @ self.hessian.to(x)) * d).sum(-1)


_MB = (
    (-200.0, -100.0, -170.0, 15.0),  # A
    (-1.0, -1.0, -6.5, 0.7),  # a
    (0.0, 0.0, 11.0, 0.6),  # b
    (-10.0, -10.0, -6.5, 0.7),  # c
    (1.0, 0.0, -0.5, -1.0),  # x0
    (0.0, 0.5, 1.5, 1.0),  # y0
)


def muller_brown(x: Tensor) -> Tensor:
    """The Muller-Brown potential (Muller & Brown 1979), a 2-D test surface with three minima and
    two saddles on the minimum-energy path: (P, 2) -> (P,)."""
    A, a, b, c, x0, y0 = (torch.tensor(v, dtype=x.dtype, device=x.device) for v in _MB)
    dx, dy = x[:, :1] - x0, x[:, 1:2] - y0
    return (A * torch.exp(a * dx * dx + b * dx * dy + c * dy * dy)).sum(1)


class MullerBrown:
    """The Muller-Brown potential as a Landscape (D = 2)."""

    dim = 2

    def loss(self, x: Tensor) -> Tensor:
        return muller_brown(x)


class ModuleLandscape:
    """A net's training loss as a Landscape over the flat vector of its trainable tensors.

    `like` gives the other entries (buffers) and the shapes; `point(params)` and `params(x)`
    convert between a parameter dict and its flat vector (the module's parameter order). The loss
    is `params.mean_loss` on (x, y): pass a minibatch for stochastic use.
    """

    def __init__(self, model: nn.Module, like: Params, x: Tensor, y: Tensor, loss: str = "ce"):
        self.model, self.like, self.x, self.y, self.kind = model, like, x, y, loss
        self.keys = [n for n, _ in model.named_parameters() if n in like]
        self.dim = sum(like[k].numel() for k in self.keys)

    def point(self, p: Params) -> Tensor:
        return flatten(p, self.keys)

    def params(self, x: Tensor) -> Params:
        return unflatten(x, self.like, self.keys)

    def loss(self, x: Tensor) -> Tensor:
        return mean_loss(
            self.model, self.params(x.reshape(-1, self.dim)), self.x, self.y, self.kind
        )
