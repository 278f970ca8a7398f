"""Nets as parameter dicts, and evaluating one module at many parameter points at once.

A net is its state dict, `dict[str, Tensor]` (parameters and buffers). Any `nn.Module` is
evaluated at given parameters with `torch.func.functional_call`; P points at once with
`torch.func.vmap` over a leading point axis (chunked to bound memory). On a GPU the batched call
always wins; on a few CPU cores it does not (measured), so `strategy="auto"` uses the loop there.

BatchNorm nets are evaluated by the policy of SCIENCE.md section 5: reset running statistics,
momentum=None, train-mode passes over a fixed subset, then eval mode, point by point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .errors import IsthmusError

Params = dict[str, Tensor]


# ----------------------------------------------------------------------------- dict helpers


def params_of(model: nn.Module) -> Params:
    """A detached copy of the module's state dict (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def is_float(t: Tensor) -> bool:
    return torch.is_floating_point(t)


def float_keys(p: Params) -> list[str]:
    """Keys of the tensors that live in weight space (integer buffers such as BN counters do not)."""
    return [k for k, v in p.items() if is_float(v)]


def flatten(p: Params, keys: Sequence[str] | None = None) -> Tensor:
    """Concatenate the floating tensors of `p` (in key order) into one vector."""
    keys = float_keys(p) if keys is None else keys
    return torch.cat([p[k].reshape(-1) for k in keys])


def unflatten(vec: Tensor, like: Params, keys: Sequence[str] | None = None) -> Params:
    """Inverse of `flatten`; non-floating entries are copied from `like`."""
    keys = float_keys(like) if keys is None else keys
    need = sum(like[k].numel() for k in keys)
    if need != vec.numel():
        raise IsthmusError(f"vector has {vec.numel()} entries, the parameters need {need}")
    out = dict(like)
    i = 0
    for k in keys:
        n = like[k].numel()
        out[k] = vec[i : i + n].reshape(like[k].shape).to(like[k].dtype)
        i += n
    return out


def stack(points: Sequence[Params]) -> Params:
    """List of P parameter dicts -> one dict with a leading axis of size P."""
    return {k: torch.stack([p[k] for p in points]) for k in points[0]}


def unstack(stacked: Params) -> list[Params]:
    n = next(iter(stacked.values())).shape[0]
    return [{k: v[i] for k, v in stacked.items()} for i in range(n)]


def num_points(stacked: Params) -> int:
    return next(iter(stacked.values())).shape[0]


def lerp(a: Params, b: Params, t: float | Tensor) -> Params:
    """(1-t) a + t b on floating tensors; other entries from `a`."""
    return {k: torch.lerp(a[k], b[k].to(a[k].dtype), t) if is_float(a[k]) else a[k] for k in a}


def to(p: Params, device=None, dtype: torch.dtype | None = None) -> Params:
    """Move a dict; `dtype` applies to floating tensors only."""
    return {k: v.to(device=device, dtype=dtype if is_float(v) else None) for k, v in p.items()}


def check_compatible(a: Params, b: Params, what: tuple[str, str] = ("A", "B")) -> None:
    """Same keys and shapes, or a clear error naming the first mismatch."""
    if a.keys() != b.keys():
        diff = sorted(set(a) ^ set(b))[:5]
        raise IsthmusError(
            f"{what[0]} and {what[1]} have different architectures (tensors {diff} differ)"
        )
    for k in a:
        if a[k].shape != b[k].shape:
            raise IsthmusError(
                f"{what[0]} and {what[1]} have different architectures: {k} is "
                f"{tuple(a[k].shape)} vs {tuple(b[k].shape)}"
            )


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Metrics:
    """Mean loss and accuracy at each of P points (accuracy is nan for regression)."""

    loss: Tensor  # (P,)
    acc: Tensor  # (P,)


def loss_sum(logits: Tensor, y: Tensor, loss: str) -> tuple[Tensor, Tensor]:
    """Summed loss and number correct over a batch (correct is 0 for regression); the training
    loss (differentiable; evaluation uses `eval_sums`)."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="sum"), (logits.argmax(-1) == y).sum()
    if loss == "mse":
        return ((logits - y) ** 2).sum(-1).sum() if logits.dim() > 1 else (
            (logits - y) ** 2
        ).sum(), y.new_zeros((), dtype=torch.long)
    raise IsthmusError(f"unknown loss {loss!r}; use 'ce' or 'mse'")


def _batches(n: int, batch_size: int | None) -> Iterable[slice]:
    step = n if not batch_size else batch_size
    return (slice(i, min(i + step, n)) for i in range(0, n, step))


def eval_sums(out: Tensor, y: Tensor, loss: str) -> tuple[Tensor, Tensor]:
    """Summed loss and number correct over the examples, for outputs with leading point axes.

    `out` is (..., N, C) against labels (N,) for "ce", or (..., *y.shape) for "mse". Cross-entropy
    is logsumexp minus the picked logit: the same value as `F.cross_entropy`, but log_softmax is
    ~2x slower on CPU (measured), and this evaluates a stack of points in one call.
    """
    if loss == "ce":
        lse = out.logsumexp(-1)
        picked = out.gather(-1, y.expand(lse.shape).unsqueeze(-1)).squeeze(-1)
        return (lse - picked).sum(-1), (out.argmax(-1) == y).sum(-1)
    if loss == "mse":
        lead = out.dim() - y.dim()
        sq = ((out - y) ** 2).flatten(lead) if lead else ((out - y) ** 2).reshape(-1)
        return sq.sum(-1), torch.zeros(out.shape[:lead], dtype=torch.long, device=out.device)
    raise IsthmusError(f"unknown loss {loss!r}; use 'ce' or 'mse'")


def cpu_layout(x: Tensor) -> Tensor:
    """Image batches on CPU in channels_last: oneDNN convolutions run ~1.6x faster in NHWC
    (measured on convfc, 2 cores); everything else is returned as is."""
    if x.device.type == "cpu" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


STACK_LIMIT = 1 << 24  # output elements stacked per loss call in the loop (bounds memory)


def loop_sums(
    model: nn.Module,
    points: Sequence[Params],
    x: Tensor,
    y: Tensor,
    loss: str,
    batch_size: int | None,
) -> tuple[Tensor, Tensor]:
    """Summed loss (float64) and number correct at each point, one point at a time.

    Points that match the module's own tensors (keys, shapes, dtypes, devices) are copied into it
    and its state is restored afterwards: a copy costs ~5x less than `functional_call`'s
    reparametrisation per forward (measured); other points go through `functional_call`. The
    outputs of many points are stacked and scored in one `eval_sums` call, since per-point loss
    calls cost more than a narrow net's forward pass on CPU. The module's mode is left as is.
    """
    x = cpu_layout(x)
    dtype = _dtype(points[0])
    live = model.state_dict()
    direct = all(
        k in live and (live[k].shape, live[k].dtype, live[k].device) == (v.shape, v.dtype, v.device)
        for k, v in points[0].items()
    )
    own = {k: live[k].clone() for k in points[0]} if direct else {}
    batches = list(_batches(len(x), batch_size))

    def run(p: Params) -> Tensor | tuple[Tensor, Tensor]:
        """p's outputs over all of x (N, ...), or, when those would exceed STACK_LIMIT elements,
        its (loss, correct) sums scored batch by batch so that memory stays bounded."""
        if direct:
            for k, v in p.items():
                live[k].copy_(v)
        outs: list[Tensor] = []
        sums = None
        for s in batches:
            xs = x[s].to(dtype)
            o = model(xs) if direct else functional_call(model, p, (xs,))
            if sums is None and not outs and o.numel() // len(xs) * len(x) > STACK_LIMIT:
                sums = (torch.zeros((), dtype=torch.float64, device=x.device), 0)
            if sums is None:
                outs.append(o)
            else:
                ls, c = eval_sums(o, y[s], loss)
                sums = (sums[0] + ls.double(), sums[1] + c)
        if sums is not None:
            return sums
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    P = len(points)
    tot = torch.zeros(P, dtype=torch.float64, device=x.device)
    cor = torch.zeros(P, dtype=torch.long, device=x.device)
    try:
        i = 0
        while i < P:
            first = run(points[i])
            if isinstance(first, tuple):  # too big to stack: already scored
                tot[i], cor[i] = first
                i += 1
                continue
            group = max(1, STACK_LIMIT // max(1, first.numel()))
            outs = [first] + [run(p) for p in points[i + 1 : i + group]]
            ls, c = eval_sums(torch.stack(outs), y, loss)  # type: ignore[arg-type]
            tot[i : i + len(outs)] = ls.double()
            cor[i : i + len(outs)] = c
            i += len(outs)
    finally:
        for k, v in own.items():
            live[k].copy_(v)
    return tot, cor


def _eval_vmapped(
    model: nn.Module, stacked: Params, x: Tensor, y: Tensor, loss: str, batch_size: int | None
):
    def f(p: Params, xb: Tensor, yb: Tensor):
        return eval_sums(functional_call(model, p, (xb,)), yb, loss)

    fv = vmap(f, in_dims=(0, None, None))
    P = num_points(stacked)
    tot = torch.zeros(P, dtype=torch.float64, device=x.device)
    cor = torch.zeros(P, dtype=torch.long, device=x.device)
    for s in _batches(len(x), batch_size):
        ls, c = fv(stacked, x[s].to(_dtype(stacked)), y[s])
        tot += ls.double()
        cor += c
    return tot, cor


def _dtype(p: Params) -> torch.dtype:
    return next(v.dtype for v in p.values() if is_float(v))


def auto_strategy(device: torch.device) -> str:
    """vmap on accelerators; the loop on CPU.

    Measured on 2 CPU cores (benchmarks/bench_foundation.py, README): a vmapped call is no faster
    than the loop for MLPs on mnist1d, and choosing by timing at run time would make results depend
    on machine load (the two agree only to float round-off), breaking same-seed reproducibility.
    """
    return "loop" if device.type == "cpu" else "vmap"


def _run_loop(model, stacked, x, y, loss, batch_size):
    return loop_sums(model, unstack(stacked), x, y, loss, batch_size)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    points: Params | Sequence[Params],
    x: Tensor,
    y: Tensor,
    *,
    loss: str = "ce",
    batch_size: int | None = None,
    chunk: int = 64,
    strategy: str = "auto",
    bn_x: Tensor | None = None,
) -> Metrics:
    """Loss and accuracy of `model` at each parameter point, over all of (x, y).

    Args:
      points: a stacked dict (leading axis P) or a list of P dicts.
      batch_size: examples per forward pass (None = all at once).
      chunk: points per vmapped call (bounds memory).
      strategy: "auto" (`auto_strategy`: loop on CPU, vmap on GPU), "vmap" or "loop".
      bn_x: data for recomputing BatchNorm statistics (default: x); BN nets always go point by point.

    The loop borrows the module: points are copied into its tensors and its own values are
    restored on return, so do not run the same module in another thread meanwhile.
    """
    stacked = stack(list(points)) if not isinstance(points, dict) else points
    P = num_points(stacked)
    was_training = model.training
    model.eval()
    try:
        if has_bn(model):
            bx = x if bn_x is None else bn_x
            res = [
                loop_sums(model, [recompute_bn(model, p, bx)], x, y, loss, batch_size)
                for p in unstack(stacked)
            ]
            tot = torch.cat([r[0] for r in res])
            cor = torch.cat([r[1] for r in res])
        else:
            if strategy == "auto":
                strategy = auto_strategy(x.device)
            fn = {"vmap": _eval_vmapped, "loop": _run_loop}.get(strategy)
            if fn is None:
                raise IsthmusError(f"unknown strategy {strategy!r}; use auto, vmap or loop")
            parts = [
                fn(model, {k: v[i : i + chunk] for k, v in stacked.items()}, x, y, loss, batch_size)
                for i in range(0, P, chunk)
            ]
            tot = torch.cat([p[0] for p in parts])
            cor = torch.cat([p[1] for p in parts])
    finally:
        model.train(was_training)
    n = len(x)
    acc = (
        cor.double().cpu() / n
        if loss == "ce"
        else torch.full((P,), float("nan"), dtype=torch.float64)
    )
    return Metrics(loss=(tot.cpu() / n), acc=acc)


def evaluate_one(model: nn.Module, p: Params, x: Tensor, y: Tensor, **kw) -> tuple[float, float]:
    m = evaluate(model, [p], x, y, **kw)
    return float(m.loss[0]), float(m.acc[0])


# ----------------------------------------------------------------------------- BatchNorm policy


def has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


BN_BATCH = 1000  # fixed: cumulative BN averages depend on the batching, so it is part of the policy


@torch.no_grad()
def recompute_bn(model: nn.Module, p: Params, x: Tensor, batch_size: int = BN_BATCH) -> Params:
    """The BN policy: reset running stats, cumulative average over `x` in batches of BN_BATCH.

    Pass a fixed training subset (`bn_subset(x_train)`) so that every consumer of a point (its own
    metrics, a path's endpoints, a surface) gets the same statistics. The module itself is left as it was.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    own = params_of(model)
    model.load_state_dict(p)
    was_training = model.training
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        x = cpu_layout(x)
        for s in _batches(len(x), batch_size):
            model(x[s].to(_dtype(p)))
        out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    finally:
        for m, (mom, _) in zip(bns, saved, strict=True):
            m.momentum = mom
        model.train(was_training)
        model.load_state_dict(own)
    return out


def bn_subset(x: Tensor, seed: int = 0, limit: int = 10_000) -> Tensor:
    """The fixed, seeded subset used for BN statistics: all of x when it has <= `limit` examples."""
    if len(x) <= limit:
        return x
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(len(x), generator=g)[:limit].to(x.device)]


# ----------------------------------------------------------------------------- misc


def output_fn(model: nn.Module) -> Callable[[Params, Tensor], Tensor]:
    """f(params, x) -> outputs, for use under vmap/jvp."""
    return lambda p, x: functional_call(model, p, (x,))
