"""Ensembles of nets from independent runs, one curve, one subspace or one training run, and how
diverse their members are (docs/ensembles.md).

Fort, Hu & Lakshminarayanan 2019 ("Deep ensembles: a loss landscape perspective") and Fort &
Jastrzebski 2019 compare ensembles of independently trained nets with ensembles drawn from one
low-loss region: samples along a curve (Garipov et al. 2018), inside a simplex (Benton et al. 2021,
Wortsman et al. 2021) or snapshots along one training run (Huang et al. 2017). The metrics here
read member logits (M, N, C) of M members on N test points with C classes; the ensemble predicts
the mean of the members' softmax probabilities.

    from isthmus import ensemble
    srcs = [ensemble.from_runs(["runs/0", "runs/1", "runs/2"]), ensemble.from_path("curve", 3)]
    res = ensemble.compare(srcs, data)
    res.sources["runs"].accuracy, res.sources["curve"].disagreement
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import vmap

from . import io
from .data import Dataset, cpu_layout
from .errors import IsthmusError
from .params import (
    Params,
    auto_strategy,
    batches,
    bn_subset,
    check_compatible,
    has_bn,
    is_float,
    output_fn,
    recompute_bn,
    stack,
    unstack,
)
from .progress import stage
from .seeding import generator

ECE_BINS = 15  # equal-width confidence bins of the calibration error (Guo et al. 2017)
_ORDERS, _PATH_T, _SUBSPACE = 131, 137, 139  # random streams: member orders, curve t, simplex draws


# ----------------------------------------------------------------------------- metrics on logits


def log_probs(logits: Tensor) -> Tensor:
    """Members' log-probabilities (M, N, C), in float64 so that sums over members stay exact."""
    return torch.log_softmax(logits.double(), -1)


def ensemble_log_probs(logits: Tensor) -> Tensor:
    """log of the mean of the members' probabilities, (M, N, C) -> (N, C), by logsumexp (stable
    where members are confident: no probability is ever formed and then logged)."""
    return log_probs(logits).logsumexp(0) - math.log(logits.shape[0])


def accuracy(logp: Tensor, y: Tensor) -> Tensor:
    """Fraction of points whose most probable class is the label; logp (..., N, C) -> (...)."""
    return (logp.argmax(-1) == y).double().mean(-1)


def nll(logp: Tensor, y: Tensor) -> Tensor:
    """Mean negative log-probability of the label (nats); logp (..., N, C) -> (...)."""
    return -logp.gather(-1, y.expand(logp.shape[:-1]).unsqueeze(-1)).squeeze(-1).mean(-1)


def ece(logp: Tensor, y: Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error of one predictive distribution logp (N, C).

    Confidence = the largest probability; bin b holds the points with confidence in
    ((b-1)/bins, b/bins]; ECE = sum_b (n_b / N) |accuracy in b - mean confidence in b|.
    """
    conf, pred = logp.exp().max(-1)
    correct = (pred == y).double()
    idx = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)
    gap = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx.cpu(), (correct - conf).cpu())
    return float(gap.abs().sum() / len(y))  # sum_b |sum_{i in b} (correct_i - conf_i)| / N


def disagreement_matrix(logits: Tensor) -> Tensor:
    """(M, M): fraction of points where members i and j predict different classes."""
    pred = logits.argmax(-1)  # (M, N)
    return (pred[:, None] != pred[None]).double().mean(-1).cpu()


def kl_matrix(logits: Tensor) -> Tensor:
    """(M, M): mean over points of KL(p_i || p_j) = sum_c p_i (log p_i - log p_j), in nats."""
    lp = log_probs(logits)
    return torch.stack(
        [(lp[i].exp() * (lp[i] - lp)).sum(-1).mean(-1) for i in range(len(lp))]
    ).cpu()


def js_matrix(logits: Tensor) -> Tensor:
    """(M, M): mean over points of the Jensen-Shannon divergence of p_i and p_j, in nats:
    JS = KL(p_i || m) / 2 + KL(p_j || m) / 2 with m = (p_i + p_j) / 2; symmetric, in [0, log 2]."""
    lp = log_probs(logits)
    rows = []
    for i in range(len(lp)):
        lm = torch.logaddexp(lp[i], lp) - math.log(2)  # (M, N, C)
        js = 0.5 * (lp[i].exp() * (lp[i] - lm)).sum(-1) + 0.5 * (lp.exp() * (lp - lm)).sum(-1)
        rows.append(js.mean(-1))
    return torch.stack(rows).cpu()


def off_diagonal_mean(mat: Tensor) -> float:
    """Mean over the ordered pairs i != j (both directions of an asymmetric matrix)."""
    m = mat.shape[0]
    if m < 2:
        raise IsthmusError("pairwise diversity needs at least 2 members")
    return float((mat.sum() - mat.diagonal().sum()) / (m * (m - 1)))


def growth(logits: Tensor, y: Tensor, order: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Accuracy and NLL of the ensembles of the first m members (m = 1..M) in `order` (default
    as given): two (M,) tensors, from one cumulative logsumexp over the members."""
    lp = log_probs(logits if order is None else logits[order])
    m = torch.arange(1, len(lp) + 1, dtype=torch.float64, device=lp.device)
    cum = lp.logcumsumexp(0) - m.log()[:, None, None]  # (M, N, C)
    return accuracy(cum, y).cpu(), nll(cum, y).cpu()


def growth_over_orders(
    logits: Tensor, y: Tensor, orders: int, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """`growth` averaged over `orders` random orders of the members (drawn with `seed`)."""
    g = generator(seed, 0, _ORDERS)
    runs = [growth(logits, y, torch.randperm(len(logits), generator=g)) for _ in range(orders)]
    return torch.stack([a for a, _ in runs]).mean(0), torch.stack([b for _, b in runs]).mean(0)


@dataclass(frozen=True)
class EnsembleMetrics:
    """What one ensemble of M >= 2 members scores on one labelled split (docs/ensembles.md)."""

    members: int
    accuracy: float
    nll: float
    ece: float
    member_accuracy: list[float]
    member_nll: list[float]
    disagreement: float  # mean over pairs of the disagreement matrix
    kl: float  # mean over ordered pairs (both directions) of the KL matrix
    js: float  # mean over pairs of the JS matrix
    disagreement_matrix: list[list[float]]
    kl_matrix: list[list[float]]
    js_matrix: list[list[float]]
    accuracy_vs_members: dict  # members, accuracy, nll (first m members); orders and means

    def to_json(self) -> dict:
        acc = self.member_accuracy
        doc = asdict(self)
        doc["member_accuracy"] = {"mean": sum(acc) / len(acc), "min": min(acc), "max": max(acc),
                                  "each": acc}  # fmt: skip
        doc["member_nll"] = {"mean": sum(self.member_nll) / len(acc), "each": self.member_nll}
        return doc


def metrics(logits: Tensor, y: Tensor, *, orders: int = 0, seed: int = 0) -> EnsembleMetrics:
    """Every metric of the ensemble of the members' logits (M, N, C) against labels y (N,).

    orders: also average accuracy and NLL against the number of members over this many random
    member orders (drawn with `seed`); the first-m curve in the given order is always there.
    """
    if logits.dim() != 3 or logits.shape[1] != len(y):
        raise IsthmusError(f"logits must be (M, N, C) with N = {len(y)}; got {tuple(logits.shape)}")
    if len(logits) < 2:
        raise IsthmusError("an ensemble needs at least 2 members")
    y = y.to(logits.device)
    lp = log_probs(logits)
    ens = ensemble_log_probs(logits)
    acc_m, nll_m = growth(logits, y)
    vs = {"members": list(range(1, len(lp) + 1)), "accuracy": acc_m.tolist(), "nll": nll_m.tolist()}
    if orders:
        a, b = growth_over_orders(logits, y, orders, seed)
        vs.update(
            orders=orders, accuracy_mean_over_orders=a.tolist(), nll_mean_over_orders=b.tolist()
        )
    dis, kl, js = disagreement_matrix(logits), kl_matrix(logits), js_matrix(logits)
    return EnsembleMetrics(
        members=len(lp),
        accuracy=float(accuracy(ens, y)),
        nll=float(nll(ens, y)),
        ece=ece(ens, y),
        member_accuracy=accuracy(lp, y).tolist(),
        member_nll=nll(lp, y).tolist(),
        disagreement=off_diagonal_mean(dis),
        kl=off_diagonal_mean(kl),
        js=off_diagonal_mean(js),
        disagreement_matrix=dis.tolist(),
        kl_matrix=kl.tolist(),
        js_matrix=js.tolist(),
        accuracy_vs_members=vs,
    )


def prediction_pca(probs: Sequence[Tensor], k: int = 2) -> tuple[list[Tensor], list[float]]:
    """Members' test-set predictions projected on their top-k principal directions.

    probs: one (M_s, N, C) probability tensor per source. Each member is the vector of its N x C
    probabilities; all members of all sources are centred together and projected by SVD. Returns
    per source (M_s, k) coordinates and the fraction of variance each direction explains. Signs
    are fixed (largest loading positive) so that the picture does not flip between runs.
    """
    x = torch.cat([p.double().reshape(len(p), -1).cpu() for p in probs])
    x = x - x.mean(0)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(k, len(s))
    sign = torch.sign(vh[:k].gather(1, vh[:k].abs().argmax(1, keepdim=True))).squeeze(1)
    coords = u[:, :k] * s[:k] * sign
    var = s**2
    explained = (var[:k] / var.sum()).tolist() if var.sum() > 0 else [0.0] * k
    return list(coords.split([len(p) for p in probs])), explained


# ----------------------------------------------------------------------------- logits of members


@torch.no_grad()
def member_logits(
    model: nn.Module,
    members: Params | Sequence[Params],
    x: Tensor,
    *,
    batch_size: int | None = None,
    chunk: int = 64,
    bn_x: Tensor | None = None,
    strategy: str = "auto",
) -> Tensor:
    """Outputs (M, N, C) of the module at each member on x, in eval mode.

    members: a stacked dict (M, ...) or a list of dicts. batch_size: examples per forward pass
    (None = all). BatchNorm nets follow the project's policy member by member: statistics
    recomputed on `bn_x` (pass `params.bn_subset(x_train)`), then eval mode. Other nets go
    through vmap `chunk` members at a time where `params.auto_strategy` says it pays (GPU).
    """
    pts = unstack(members) if isinstance(members, dict) else list(members)
    if not pts:
        raise IsthmusError("no members to evaluate")
    dtype = next(v.dtype for v in pts[0].values() if is_float(v))
    x = cpu_layout(x)
    f = output_fn(model)
    was_training = model.training
    model.eval()
    try:
        if has_bn(model):
            pts = [recompute_bn(model, p, x if bn_x is None else bn_x) for p in pts]
            strategy = "loop"
        elif strategy == "auto":
            strategy = auto_strategy(x.device)
        parts = list(batches(len(x), batch_size))
        if strategy == "vmap":
            fv = vmap(f, in_dims=(0, None))
            out = [
                torch.cat([fv(stack(pts[i : i + chunk]), x[s].to(dtype)) for s in parts], 1)
                for i in range(0, len(pts), chunk)
            ]
            return torch.cat(out)
        if strategy != "loop":
            raise IsthmusError(f"unknown strategy {strategy!r}; use auto, vmap or loop")
        return torch.stack([torch.cat([f(p, x[s].to(dtype)) for s in parts]) for p in pts])
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------- member sources


@dataclass(frozen=True)
class Source:
    """One ensemble's members: a name, the module they run in, their parameters and how they
    were chosen (`detail`: runs, t values, epochs...). `config` is a run config naming the data
    set the members were trained on (None when unknown)."""

    name: str
    model: nn.Module
    members: list[Params]
    detail: dict = field(default_factory=dict)
    config: dict | None = None


def from_runs(paths: Sequence[str | Path], device: str | torch.device = "cpu") -> Source:
    """Independently trained nets: one member per run directory (`io.load_runs`)."""
    runs = io.load_runs(paths, device)
    return Source(
        "runs", runs[0].model, [r.params for r in runs], {"runs": [str(p) for p in paths]},
        runs[0].config,
    )  # fmt: skip


def curve_times(n: int, spacing: str = "even", seed: int = 0) -> list[float]:
    """n values of t inside (0, 1): evenly spaced k / (n + 1), or uniform draws (sorted)."""
    if spacing == "even":
        return [k / (n + 1) for k in range(1, n + 1)]
    if spacing == "random":
        t = torch.rand(n, generator=generator(seed, 0, _PATH_T), dtype=torch.float64)
        return sorted(t.clamp_min(1e-12).tolist())
    raise IsthmusError(f"spacing must be 'even' or 'random', got {spacing!r}")


def from_path(
    folder: str | Path,
    n: int,
    *,
    spacing: str = "even",
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Source:
    """n nets on one path written by `isthmus connect` (interior t only: the endpoints are
    independent runs). The architecture comes from the first run recorded in path.json."""
    from .paths.connect import load_path

    folder = Path(folder)
    doc = io.read_json(folder / "path.json")
    runs = doc.get("runs")
    if not (isinstance(runs, list) and len(runs) == 2 and all(isinstance(r, str) for r in runs)):
        raise IsthmusError(
            f"{folder / 'path.json'}: no field 'runs' naming the two connected runs; re-create "
            "the path with `isthmus connect`"
        )
    for r in runs:
        if not Path(r).is_dir():
            raise IsthmusError(
                f"{folder / 'path.json'}: field 'runs' names {r!r} (as given to `isthmus "
                "connect`), which is not a folder from here; run from the folder connect ran in"
            )
    a, b = io.load_runs(runs, device)
    path = load_path(folder, device, [(runs[0], a.params), (runs[1], b.params)])
    check_compatible(a.params, path.start, (str(runs[0]), f"{folder} (t = 0)"))
    ts = curve_times(n, spacing, seed)
    members = unstack(path.points(torch.tensor(ts, dtype=torch.float64)))
    detail = {"path": str(folder), "method": path.method, "t": ts, "spacing": spacing}
    return Source("curve", a.model, members, detail, a.config)


def from_subspace(
    folder: str | Path, n: int, *, seed: int = 0, device: str | torch.device = "cpu"
) -> Source:
    """n nets drawn uniformly from the simplices of a subspace written by `isthmus subspace`."""
    try:
        from .subspace import load_subspace
    except ImportError:
        raise IsthmusError(
            "this isthmus cannot read subspace folders (no isthmus.subspace.load_subspace)"
        ) from None
    sub = load_subspace(folder)
    data = sub.config.get("data") or {}
    if not (
        isinstance(data, dict)
        and isinstance(data.get("name", ""), str)
        and isinstance(data.get("root"), str | None)
        and type(data.get("seed", 0)) is int
    ):
        raise IsthmusError(
            f"{Path(folder) / 'subspace.json'}: field 'data' must be an object {{name, root, "
            "seed}}; re-create it with `isthmus subspace`"
        )
    config = {"model": sub.config["model"], "data": data}  # the data set it was made on
    src = subspace_source(sub, n, seed=seed, device=device, detail={"subspace": str(folder)})
    return replace(src, config=config)


def subspace_source(
    sub, n: int, *, seed: int = 0, device: str | torch.device = "cpu", detail: dict | None = None
) -> Source:
    """n members of a loaded subspace (anything with `.module` and `.sample(n, generator)`)."""
    drawn = sub.sample(n, generator(seed, 0, _SUBSPACE))
    members = [{k: v.to(device) for k, v in p.items()} for p in unstack(drawn)]
    return Source("subspace", sub.module.to(device), members, dict(detail or {}), None)


def from_snapshots(run: str | Path, n: int, device: str | torch.device = "cpu") -> Source:
    """The last n snapshots saved along one training run (`isthmus train --snapshots`): a
    snapshot ensemble (Huang et al. 2017) without restarts."""
    load_snapshots = getattr(io, "load_snapshots", None)
    if load_snapshots is None:
        raise IsthmusError("this isthmus cannot read training snapshots (no io.load_snapshots)")
    base = io.load_run(run, device)
    snaps = load_snapshots(run)
    if len(snaps) < 2:
        raise IsthmusError(
            f"{run}: {len(snaps)} snapshot(s); an ensemble needs 2 (train with --snapshots)"
        )
    snaps = snaps[-n:]
    members = []
    for epoch, p in snaps:
        check_compatible(base.params, p, (str(run), f"{run} snapshot of epoch {epoch}"))
        members.append({k: v.to(device) for k, v in p.items()})
    detail = {"run": str(run), "epochs": [int(e) for e, _ in snaps]}
    return Source("snapshots", base.model, members, detail, base.config)


# ----------------------------------------------------------------------------- comparing sources


@dataclass(frozen=True)
class Comparison:
    """Metrics of several ensembles on one split, and a PCA view of all their members."""

    data: str
    split: str
    sources: dict[str, EnsembleMetrics]
    details: dict[str, dict]
    pca: dict  # explained (variance fractions) and coords {source: (M_s, 2) list}

    def to_json(self) -> dict:
        return {
            "data": self.data,
            "split": self.split,
            "sources": {k: {**self.details[k], **m.to_json()} for k, m in self.sources.items()},
            "pca": self.pca,
        }


def compare(
    sources: Sequence[Source],
    data: Dataset,
    *,
    split: str = "test",
    orders: int = 0,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> Comparison:
    """Evaluate every source's members on one split of `data` and score each as an ensemble.

    split: "test" or "train". orders, seed: see `metrics`. BatchNorm statistics per member on
    `params.bn_subset(data.x_train)` (the project's policy). progress: a line per source
    (`progress` module).
    """
    if data.task != "classification":
        raise IsthmusError(f"ensembles need a classification data set; {data.name} is regression")
    if split not in ("test", "train"):
        raise IsthmusError(f"split must be 'test' or 'train', got {split!r}")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise IsthmusError(f"source names must differ: {names}")
    x, y = (data.x_test, data.y_test) if split == "test" else (data.x_train, data.y_train)
    results, probs = {}, []
    for s in sources:
        stage(
            f"ensemble {s.name}: {len(s.members)} members on the {split} split", progress=progress
        )
        bn_x = bn_subset(data.x_train) if has_bn(s.model) else None
        logits = member_logits(s.model, s.members, x, batch_size=batch_size, bn_x=bn_x)
        results[s.name] = metrics(logits, y, orders=orders, seed=seed)
        probs.append(log_probs(logits).exp())
    coords, explained = prediction_pca(probs)
    pca = {
        "explained": explained,
        "coords": {n: c.tolist() for n, c in zip(names, coords, strict=True)},
    }
    details = {s.name: {"members_from": s.detail} for s in sources}
    return Comparison(data.name, split, results, details, pca)
