"""REPAIR (Jordan, Sedghi, Saukh, Entezari & Neyshabur 2023, "REPAIR: REnormalizing Permuted
Activations for Interpolation Repair", ICLR): undo the variance collapse of interpolated nets.

Averaging the weights of two aligned nets shrinks the spread of each unit's preactivations (the
units of A and B are correlated, not equal), and the collapse compounds with depth; that, more than
misalignment, keeps the straight-line barrier of deep nets up. REPAIR measures, on training inputs,
the mean and standard deviation of every corrected unit in both endpoints, and rescales and shifts
the unit in the interpolated net theta(t) = (1-t) theta_A + t theta_B so that its mean and std are
(1-t) mean_A + t mean_B and (1-t) std_A + t std_B. The correction y -> a y + c is folded into the
parameters that produce the unit (`models.Affine`: a LayerNorm's gain and shift, or the rows and
bias of a Linear/Conv), so a repaired net is an ordinary parameter dict.

Where: each model lists its correction points in forward order (`repair_points()`): the outputs of
every LayerNorm, and without norms the preactivations of every hidden Linear/Conv. Points are
corrected in forward order, each with the statistics of the net already corrected upstream, as
the reset BatchNorm layers of the paper do; all points are corrected in one pass over the examples
(held as one batch). BatchNorm nets need no REPAIR in isthmus: their statistics are recomputed at
every point of every path (docs/definitions.md, BatchNorm policy), which is the paper's "RESET".
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .data import Dataset
from .errors import IsthmusError
from .models import Affine, repair_points_of
from .params import Params, has_bn, is_float
from .paths.base import PiecewiseLinearPath, evaluate_path, grid, line
from .paths.connect import Connection, eval_sizes
from .seeding import generator

Stats = dict[str, tuple[Tensor, Tensor]]  # point (module name) -> per-unit (mean, std), float64
EPS = 1e-8  # a unit whose std is below this is constant: only shifted, never rescaled


def _points(model: nn.Module) -> tuple[Affine, ...]:
    if has_bn(model):
        raise IsthmusError(
            "REPAIR is for nets without BatchNorm: isthmus already recomputes BatchNorm statistics "
            "at every point of a path (docs/definitions.md, BatchNorm policy); drop --repair"
        )
    pts = repair_points_of(model)
    if not pts:
        raise IsthmusError(f"{type(model).__name__} lists no REPAIR points")
    for p in pts:
        if p.shift is None:
            raise IsthmusError(
                f"REPAIR shifts unit means through a bias, and {p.module} has none: train the "
                "net with bias (without --no-bias) or with LayerNorm"
            )
    return pts


def _moments(y: Tensor, axis: int) -> tuple[Tensor, Tensor]:
    z = y.movedim(axis, -1).reshape(-1, y.shape[axis]).double()
    mean = z.mean(0)
    return mean, (z - mean).pow(2).mean(0).sqrt()


@torch.no_grad()
def _run(
    model: nn.Module, params: Params, x: Tensor, targets: Stats | None
) -> tuple[Stats, dict[str, tuple[Tensor, Tensor]]]:
    """One forward pass over x: the statistics at every point and, with `targets`, the corrections
    (a, c) that map each point's output to the target statistics, applied on the fly so that
    later points see the corrected net."""
    pts = _points(model)
    stats: Stats = {}
    fixes: dict[str, tuple[Tensor, Tensor]] = {}
    handles = []
    for pt in pts:

        def hook(_mod, _args, out, pt=pt):
            mean, std = _moments(out, pt.axis)
            stats[pt.module] = (mean, std)
            if targets is None:
                return None
            t_mean, t_std = targets[pt.module]
            a = torch.where(std > EPS, t_std / std.clamp_min(EPS), torch.ones_like(std))
            c = t_mean - a * mean
            fixes[pt.module] = (a, c)
            shape = [1] * out.dim()
            shape[pt.axis] = -1
            return out * a.to(out.dtype).reshape(shape) + c.to(out.dtype).reshape(shape)

        handles.append(model.get_submodule(pt.module).register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        dev = next(iter(params.values())).device
        dtype = next(v.dtype for v in params.values() if is_float(v))
        functional_call(model, params, (x.to(device=dev, dtype=dtype),))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return stats, fixes


def statistics(model: nn.Module, params: Params, x: Tensor) -> Stats:
    """Per REPAIR point, the mean and std of every unit over the examples x (and positions)."""
    return _run(model, params, x, None)[0]


def interpolate(a: Params, b: Params, t: float) -> Params:
    """theta(t) = (1-t) a + t b for float tensors (integer buffers from a), as on `paths.line`."""
    return line(a, b).point(t)


def repair(
    model: nn.Module,
    params_a: Params,
    params_b: Params,
    t: float,
    x: Tensor,
    *,
    stats_a: Stats | None = None,
    stats_b: Stats | None = None,
) -> Params:
    """The interpolated net theta(t) with every REPAIR point's units rescaled and shifted to the
    interpolated endpoint statistics on x (pass `stats_a`/`stats_b` to reuse them across t)."""
    if not 0.0 <= t <= 1.0:
        raise IsthmusError(
            f"REPAIR interpolates between the endpoints: t must be in [0, 1], got {t}"
        )
    sa = statistics(model, params_a, x) if stats_a is None else stats_a
    sb = statistics(model, params_b, x) if stats_b is None else stats_b
    targets = {
        k: ((1 - t) * sa[k][0] + t * sb[k][0], (1 - t) * sa[k][1] + t * sb[k][1]) for k in sa
    }
    p = interpolate(params_a, params_b, t)
    _, fixes = _run(model, p, x, targets)
    out = dict(p)
    for pt in _points(model):
        a, c = fixes[pt.module]
        for name in pt.scale:
            v = out[name]
            out[name] = v * a.to(v).reshape(-1, *([1] * (v.dim() - 1)))
        out[pt.shift] = out[pt.shift] + c.to(out[pt.shift])
    return out


def repair_examples(data: Dataset | Tensor, n_examples: int = 1000, seed: int = 0) -> Tensor:
    """At most `n_examples` training inputs (a seeded subset) on which REPAIR measures statistics."""
    x = data.x_train if isinstance(data, Dataset) else data
    if n_examples < 1:
        raise IsthmusError(f"REPAIR needs at least one example, got n_examples={n_examples}")
    if len(x) <= n_examples:
        return x
    g = generator(seed, 0, 75)  # which examples REPAIR reads
    return x[torch.randperm(len(x), generator=g)[:n_examples].sort().values.to(x.device)]


def repaired_line(
    model: nn.Module, params_a: Params, params_b: Params, x: Tensor, points: int = 61
) -> PiecewiseLinearPath:
    """The straight line with REPAIR applied at `points` equally spaced t, as the polygonal chain
    through the repaired nets (so evaluating it at those t gives exactly the repaired nets, and it
    is saved and loaded like any chain). The endpoints are A and B themselves."""
    ts = grid(line(params_a, params_b), points).tolist()
    sa, sb = statistics(model, params_a, x), statistics(model, params_b, x)
    nodes = [params_a]
    nodes += [repair(model, params_a, params_b, t, x, stats_a=sa, stats_b=sb) for t in ts[1:-1]]
    return PiecewiseLinearPath([*nodes, params_b], knots=ts, method="chain")


def connect_repaired(
    model: nn.Module,
    params_a: Params,
    params_b: Params,
    data: Dataset,
    *,
    points: int = 61,
    n_examples: int = 1000,
    batch_size: int | None = None,
    chunk: int | None = None,
    seed: int = 0,
) -> Connection:
    """The straight line from A to B with REPAIR at every evaluated t (statistics on a seeded
    subset of `n_examples` training inputs), evaluated on `data` like `paths.connect`'s paths,
    next to the plain straight line. Align B to A first (`align.align`): REPAIR corrects the
    statistics of matched units."""
    batch_size, chunk = eval_sizes(model, data.x_train, batch_size, chunk)
    kw = dict(points=points, batch_size=batch_size, chunk=chunk)
    x = repair_examples(data, n_examples, seed)
    path = repaired_line(model, params_a, params_b, x, points)
    straight = evaluate_path(model, line(params_a, params_b), data, **kw)
    result = evaluate_path(model, path, data, **kw)
    extra = {"data": data.name, "seed": seed, "repair": {"n_examples": len(x)}}
    extra["linear"] = {"barrier": straight.barrier}
    return Connection(path, replace(result, extra={**result.extra, **extra}), straight)
