"""Nets as parameter dicts, and evaluating one module at many parameter points at once.

A net is its state dict, `dict[str, Tensor]` (parameters and buffers). Any `nn.Module` is
evaluated at given parameters with `torch.func.functional_call`; P points at once with
`torch.func.vmap` over a leading point axis (chunked to bound memory). On a GPU the batched call
always wins; on a few CPU cores it does not (measured), so `strategy="auto"` uses the loop there.

BatchNorm nets are evaluated by the policy of docs/definitions.md: reset running statistics,
momentum=None, train-mode passes over a fixed subset, then eval mode, point by point.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .data import Dataset, cpu_layout
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
    """Inverse of `flatten`: (D,) -> Params like `like`, or (P, D) -> stacked Params (P, ...).

    Entries not in `keys` (non-floating ones by default) are copied from `like` (expanded to P
    points, without copying memory, for a stacked input). Differentiable in `vec`.
    """
    keys = float_keys(like) if keys is None else keys
    need = sum(like[k].numel() for k in keys)
    if vec.dim() not in (1, 2) or need != vec.shape[-1]:
        raise IsthmusError(
            f"vector of shape {tuple(vec.shape)}: the parameters need {need} entries per point"
        )
    lead = tuple(vec.shape[:-1])
    out = {k: v.expand(*lead, *v.shape) if lead else v for k, v in like.items()}
    i = 0
    for k in keys:
        n = like[k].numel()
        out[k] = vec[..., i : i + n].reshape(*lead, *like[k].shape).to(like[k].dtype)
        i += n
    return out


def fingerprint(p: Params) -> str:
    """sha256 of a parameter dict (names, dtypes, shapes and bytes, in name order): it identifies
    the exact weights, so a checkpoint of other nets (also permuted ones) is refused on resume."""
    h = hashlib.sha256()
    for k in sorted(p):
        v = p[k].detach().cpu().contiguous().reshape(-1)  # 0-d tensors too
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)};".encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


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


def stack_controls(controls: Sequence[Params]) -> Params:
    """K control points -> {name: (K, ...)} for the floating tensors (others are not in weight space)."""
    first = controls[0]
    return {k: torch.stack([c[k] for c in controls]) for k in first if is_float(first[k])}


def unshared(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Copies of entries that alias an earlier entry (safetensors refuses shared memory; bends
    built by `lerp` share A's integer buffers, a bend may be A itself)."""
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        ptr = v.data_ptr()
        out[k] = v.clone() if ptr in seen and v.numel() else v
        seen.add(ptr)
    return out


def combine(weights: Tensor, stacked: dict[str, Tensor | Sequence[Tensor]], like: Params) -> Params:
    """sum_k weights[p, k] * control_k for every floating tensor: (P, K) x (K, ...) -> (P, ...).

    The points of every family in isthmus (curves, planes, simplices) are built here. Rows of
    `weights` that are one-hot with a 1 are *copied* from that control point, so anchors
    (endpoints, plane corners) come out bit-exact, and every point is computed by the same
    arithmetic whatever the other rows (results do not depend on chunking). Non-floating entries
    of `like` are repeated P times. `stacked[name]` is a (K, ...) tensor or a sequence of K
    tensors (no copy into one block). Differentiable in `stacked` (curve and subspace fitting).
    """
    w = weights.detach().cpu()
    P = w.shape[0]
    hot = ((w != 0).sum(1) == 1) & (w.max(1).values == 1)
    rows = hot.nonzero().flatten()
    src = w[rows].argmax(1)
    # rows grouped by which weights are nonzero: each point sums only its nonzero terms (a
    # simplex member m + 1 of K), the same numbers as the full sum since the rest are exact zeros
    support, group = torch.unique(w != 0, dim=0, return_inverse=True)
    groups = [
        ((group == g).nonzero().flatten(), support[g].nonzero().flatten().tolist() or [0])
        for g in range(len(support))
    ]
    order = torch.cat([r for r, _ in groups]).argsort() if len(groups) > 1 else None
    out: Params = {}
    moved: dict[tuple, Tensor] = {}  # the weights once per (device, dtype), not once per tensor
    for k, v in like.items():
        if k not in stacked:
            out[k] = v.expand(P, *v.shape).clone()
            continue
        c = stacked[k]
        flat_c = c.reshape(c.shape[0], -1) if isinstance(c, Tensor) else [t.reshape(-1) for t in c]
        first = flat_c[0]
        dev = first.device
        if (dev, first.dtype) not in moved:
            moved[(dev, first.dtype)] = weights.to(dev, first.dtype)
        wk = moved[(dev, first.dtype)]
        # a sum of elementwise products, term by term: every point's arithmetic is the same
        # whatever the other points, so a grid or a path gives the same numbers in any chunking
        # (a matrix product's rounding depends on the number of rows)
        parts = []
        for r, cols in groups:
            wr = wk if order is None else wk[r.to(dev)]
            part = wr[:, cols[0] : cols[0] + 1] * flat_c[cols[0]]
            for j in cols[1:]:
                part = part + wr[:, j : j + 1] * flat_c[j]
            parts.append(part)
        pts = parts[0] if order is None else torch.cat(parts)[order.to(dev)]
        pts = pts.reshape(P, *(c.shape[1:] if isinstance(c, Tensor) else c[0].shape))
        if len(rows):
            if isinstance(c, Tensor):
                anchors = c[src.to(dev)]
            else:
                anchors = torch.stack([c[i] for i in src.tolist()])
            pts = pts.index_copy(0, rows.to(dev), anchors)  # exact anchors
        out[k] = pts
    return out


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


def summed_loss(logits: Tensor, y: Tensor, loss: str) -> Tensor:
    """Summed loss over a batch: the training loss (differentiable; evaluation uses
    `eval_sums`)."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="sum")
    if loss == "mse":
        sq = (logits - y) ** 2
        return sq.sum(-1).sum() if logits.dim() > 1 else sq.sum()
    raise IsthmusError(f"unknown loss {loss!r}; use 'ce' or 'mse'")


def batch_loss(logits: Tensor, y: Tensor, loss: str) -> Tensor:
    """Mean loss over a batch, differentiable: the same numbers as `summed_loss` / batch size,
    bit for bit, value and gradient (the reductions divide by the count last), in two kernels
    fewer per step, which on a small net is a few percent of a training step."""
    if loss == "ce":
        return F.cross_entropy(logits, y)
    if loss == "mse":
        sq = (logits - y) ** 2
        return sq.sum(-1).mean() if logits.dim() > 1 else sq.mean()
    raise IsthmusError(f"unknown loss {loss!r}; use 'ce' or 'mse'")


def loss_sum(logits: Tensor, y: Tensor, loss: str) -> tuple[Tensor, Tensor]:
    """Summed loss and number correct over a batch (correct is 0 for regression)."""
    ls = summed_loss(logits, y, loss)
    if loss == "ce":
        return ls, (logits.argmax(-1) == y).sum()
    return ls, y.new_zeros((), dtype=torch.long)


def batches(n: int, batch_size: int | None) -> Iterable[slice]:
    """Slices of `batch_size` examples covering range(n) (all at once for None or 0)."""
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
    parts = list(batches(len(x), batch_size))

    def run(p: Params) -> Tensor | tuple[Tensor, Tensor]:
        """p's outputs over all of x (N, ...), or, when those would exceed STACK_LIMIT elements,
        its (loss, correct) sums scored batch by batch so that memory stays bounded."""
        if direct:
            for k, v in p.items():
                live[k].copy_(v)
        outs: list[Tensor] = []
        sums = None
        for s in parts:
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
    for s in batches(len(x), batch_size):
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


EVAL_BUDGET_CPU = 256 << 20  # bytes of working memory an evaluation may use on CPU
# on CPU one batch's activations are capped: the C allocator (glibc) maps blocks above its
# threshold (which adapts up to 32 MiB) fresh from the system on every pass and faults their
# pages in; below it, memory is reused and a batch also fits a typical last-level cache. Over
# 4,000 mnist1d examples the CNN ran 2.2x, the resnet 1.7x and the transformer 1.6x faster at
# the capped batch than all at once; with the allocator told to keep its memory
# (MALLOC_MMAP_THRESHOLD_), 1.0-1.25x (benchmarks/bench_eval_batch.py, 2 cores)
CPU_BATCH_BYTES = 32 << 20
MAX_CHUNK = 64  # points per call: more saves nothing measurable
# live copies of the widest stage per example: functional activations (F.relu) between modules
# are invisible to module hooks and hold a second copy of a layer's output
ACTIVATION_COPIES = 2


@dataclass(frozen=True)
class EvalPlan:
    """Examples per forward pass and points per call for one evaluation (`eval_plan`)."""

    batch_size: int
    chunk: int


def _tensors(obj) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    return []


@torch.no_grad()
def activation_bytes(model: nn.Module, x: Tensor) -> int:
    """Bytes live at the widest stage of one example's forward pass: the largest input + output of
    any leaf module (a no-grad forward of a chain frees the rest), read from one eval-mode forward
    of x[:1] with hooks. Depends on shapes only, so the same model and data give the same number."""
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    dtype = next((v.dtype for v in model.state_dict().values() if is_float(v)), x.dtype)
    xs = x[:1].to(dtype)
    seen = [nbytes([xs])]
    hook = lambda m, i, o: seen.append(nbytes(_tensors(i) + _tensors(o)))  # noqa: E731
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        seen.append(nbytes([xs] + _tensors(model(xs))))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return max(seen)


def eval_budget(device: torch.device) -> int:
    """Default working memory of an evaluation: EVAL_BUDGET_CPU on CPU, an eighth of an
    accelerator's total memory (total, not free: the plan must not depend on what else runs)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 8
    return EVAL_BUDGET_CPU


def eval_plan(
    model: nn.Module, x: Tensor, budget_bytes: int | None = None, *, strategy: str = "auto"
) -> EvalPlan:
    """The one rule for evaluation sizes, from the model's shapes and a memory budget (bytes;
    default `eval_budget`):

    - chunk: points materialised at once cost their parameters each; a quarter of the budget goes
      to them, rounded down to a power of two, at most MAX_CHUNK (convfc, 9.7 MB a point: 4; an
      MLP 3x256: 64). On CPU the loop evaluates point by point whatever the chunk, so a small
      chunk costs only a few more cheap calls.
    - batch_size: another quarter goes to activations, at most CPU_BATCH_BYTES on CPU:
      ACTIVATION_COPIES x `activation_bytes` per example (times the chunk when a vmapped call
      runs the chunk's points at once); the examples are split into the fewest batches that fit,
      of equal size (convfc on 2,000 CIFAR images: 18 of 112; the mnist1d CNN: 2 of 2,000; an
      MLP on mnist1d: one batch of all).
    - the other half is headroom: kernel scratch, layout copies, the stacked outputs.

    Deterministic (shapes and budget only), so a seed gives the same numbers on every run.
    """
    budget = eval_budget(x.device) if budget_bytes is None else int(budget_bytes)
    if budget <= 0:
        raise IsthmusError(f"memory budget must be positive, got {budget} bytes")
    per_point = sum(
        v.numel() * v.element_size() for v in model.state_dict().values() if is_float(v)
    )
    fit = max(1, budget // 4 // max(1, per_point))
    chunk = min(MAX_CHUNK, 1 << (fit.bit_length() - 1))
    if strategy == "auto":
        strategy = auto_strategy(x.device)
    per_example = ACTIVATION_COPIES * activation_bytes(model, x)
    per_example *= chunk if strategy == "vmap" and not has_bn(model) else 1
    n = max(1, len(x))
    room = budget // 4 if x.device.type != "cpu" else min(budget // 4, CPU_BATCH_BYTES)
    fit = max(1, room // max(1, per_example))
    parts = -(-n // min(n, fit))
    return EvalPlan(batch_size=-(-n // parts), chunk=chunk)


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
    chunk: int | None = None,
    strategy: str = "auto",
    bn_x: Tensor | None = None,
    budget_bytes: int | None = None,
) -> Metrics:
    """Loss and accuracy of `model` at each parameter point, over all of (x, y).

    Args:
      points: a stacked dict (leading axis P) or a list of P dicts.
      batch_size: examples per forward pass (None = `eval_plan`'s; 0 = all at once).
      chunk: points per call (None = `eval_plan`'s; bounds memory).
      strategy: "auto" (`auto_strategy`: loop on CPU, vmap on GPU), "vmap" or "loop".
      bn_x: data for recomputing BatchNorm statistics (default: x); BN nets always go point by point.
      budget_bytes: the memory budget of `eval_plan` (None = `eval_budget`).

    The loop borrows the module: points are copied into its tensors and its own values are
    restored on return, so do not run the same module in another thread meanwhile.
    """
    stacked = stack(list(points)) if not isinstance(points, dict) else points
    P = num_points(stacked)
    if strategy == "auto":
        strategy = auto_strategy(x.device)
    if batch_size is None or chunk is None:
        plan = eval_plan(model, x, budget_bytes, strategy=strategy)
        batch_size = plan.batch_size if batch_size is None else batch_size
        chunk = plan.chunk if chunk is None else chunk
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


@torch.no_grad()
def _metrics_as_is(
    model: nn.Module, p: Params, x: Tensor, y: Tensor, loss: str, batch_size: int | None
) -> tuple[float, float]:
    """Eval-mode loss and accuracy at p with its BN statistics as they are (already recomputed):
    the same summation as `params.evaluate`, so the numbers agree exactly."""
    if batch_size is None:
        batch_size = eval_plan(model, x).batch_size
    was_training = model.training
    model.eval()
    try:
        tot, cor = loop_sums(model, [p], x, y, loss, batch_size)
    finally:
        model.train(was_training)
    n = len(x)
    acc = float(cor[0].double().cpu() / n) if loss == "ce" else float("nan")
    return float(tot[0].cpu() / n), acc


def evaluate_splits(
    model: nn.Module,
    pts: Params,
    data: Dataset,
    *,
    batch_size: int | None = None,
    chunk: int | None = None,
    bn_x: Tensor | None = None,
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Train loss, train accuracy, test loss, test accuracy at P stacked points (batched calls;
    None sizes: `eval_plan`'s, per split).

    BatchNorm nets follow the BatchNorm policy (docs/definitions.md): statistics recomputed once per point
    on `bn_x` (default: the fixed subset `params.bn_subset` of the *training* split), then used
    for both the train and the test pass.
    """
    if has_bn(model):
        bn_x = bn_subset(data.x_train) if bn_x is None else bn_x
        out: tuple[list[float], ...] = ([], [], [], [])
        for p in unstack(pts):
            q = recompute_bn(model, p, bn_x)
            for j, (x, y) in enumerate(((data.x_train, data.y_train), (data.x_test, data.y_test))):
                loss, acc = _metrics_as_is(model, q, x, y, data.loss, batch_size)
                out[2 * j].append(loss)
                out[2 * j + 1].append(acc)
        return out  # type: ignore[return-value]
    kw = dict(loss=data.loss, batch_size=batch_size, chunk=chunk)
    tr = evaluate(model, pts, data.x_train, data.y_train, **kw)
    te = evaluate(model, pts, data.x_test, data.y_test, **kw)
    return tr.loss.tolist(), tr.acc.tolist(), te.loss.tolist(), te.acc.tolist()


# ----------------------------------------------------------------------------- differentiable loss


VMAP_MAX_PARAMS = 500_000  # per point, on CPU


def vmap_pays(points: Params, x: Tensor) -> bool:
    """Whether one vmapped forward/backward beats a loop over the points; fixed by shapes, never by
    timing, so that a seed gives the same numbers every time. Measured on 2 CPU cores (batch 128,
    forward + backward): vmap is 1.7-2.2x the loop for an MLP 3x256 at 4-13 points, but the loop
    wins for one point, for images (channels_last convolutions: 2x) and for nets of over
    VMAP_MAX_PARAMS parameters (MLP 3x1024: 1.2x). Accelerators always vmap."""
    if x.device.type != "cpu":
        return True
    size = sum(v[0].numel() for v in points.values() if torch.is_floating_point(v))
    return num_points(points) > 1 and x.dim() < 4 and size <= VMAP_MAX_PARAMS


def mean_loss(
    model: nn.Module,
    points: Params,
    x: Tensor,
    y: Tensor,
    loss: str,
    vmapped: bool | None = None,
) -> Tensor:
    """Mean loss over (x, y) at each of P stacked points, differentiable in `points`: (P,).

    The loss that gradients, curve fitting, NEB and Hessian-vector products use (`evaluate` is its
    no-grad, memory-bounded counterpart for reporting). One vmapped call or a loop over the points
    (`vmapped`; None = `vmap_pays`). The module's mode decides BatchNorm: train mode uses batch
    statistics per point (wrap the call in `batch_statistics`); its running-statistics entries in
    `points` are then overwritten scratch.
    """

    def f(p: Params) -> Tensor:
        return batch_loss(functional_call(model, p, (x,)), y, loss)

    if not (vmap_pays(points, x) if vmapped is None else vmapped):
        x = cpu_layout(x)
        # views, not indexing: v[i]'s backward fills a zero (P, ...) tensor per point and entry
        # (a fifth of a small net's step); one point is a squeeze (no copy at all), several an
        # unbind (one stack of the gradients)
        P = num_points(points)
        if P == 1:
            return f({k: v.squeeze(0) for k, v in points.items()})[None]
        cols = {k: v.unbind(0) for k, v in points.items()}
        return torch.stack([f({k: v[i] for k, v in cols.items()}) for i in range(P)])
    return vmap(f)(points)


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Train mode for BN nets (batch statistics per point; no dropout in either case), with BN
    momentum set to a number: momentum=None (cumulative average, used by the evaluation policy)
    reads a counter with .item(), which vmap cannot do. Restores mode and momenta."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    was_training = model.training
    try:
        for m in bns:
            m.momentum = 0.1 if m.momentum is None else m.momentum
        model.train(bool(bns))
        yield
    finally:
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom
        model.train(was_training)


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
        for s in batches(len(x), batch_size):
            model(x[s].to(_dtype(p)))
        out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    finally:
        for m, (mom, _) in zip(bns, saved, strict=True):
            m.momentum = mom
        model.train(was_training)
        model.load_state_dict(own)
    return out


BN_SUBSET_SEED = 0  # fixed: every consumer of a point must get the same statistics


def bn_subset(x: Tensor, *, limit: int = 10_000) -> Tensor:
    """The fixed subset used for BN statistics: all of x when it has <= `limit` examples, else a
    subset drawn with BN_SUBSET_SEED. Never a command's --seed: a run's own metrics (train, eval)
    and every path, surface or alignment of it must use the same statistics."""
    if len(x) <= limit:
        return x
    g = torch.Generator().manual_seed(BN_SUBSET_SEED)
    return x[torch.randperm(len(x), generator=g)[:limit].to(x.device)]


# ----------------------------------------------------------------------------- misc


def output_fn(model: nn.Module) -> Callable[[Params, Tensor], Tensor]:
    """f(params, x) -> outputs, for use under vmap/jvp."""
    return lambda p, x: functional_call(model, p, (x,))
