"""Path benchmarks (not tests): evaluating a path at 61 points, and one epoch of Bezier fitting.

For each model (an MLP on mnist1d; `convfc` and `vgg16` with BatchNorm on random CIFAR-shaped
tensors, untrained random nets):
  (i)  61-point path evaluation (train pass + test pass; for BN nets also the BN-statistics
       recompute of docs/definitions.md at every point): a plain PyTorch loop (load each point into
       the module, forward over train and test in fixed batches, no DataLoader) vs
       `isthmus.paths.evaluate_path`;
  (ii) one epoch of Bezier fitting (batch 128): a plain loop in the style of Garipov et al.'s
       curve layers (one t per minibatch, parameters assembled tensor by tensor) vs
       `isthmus.paths.fit_curve` with one t per minibatch (same work) and with 4 (the default).
Both are measured in this process (evaluations under 10 s: best of 5, alternating). isthmus runs at
its API defaults (`params.eval_plan` chooses batch size and chunk) unless --eval-batch/--chunk are
given; the plain loop uses the same batch size.

`--reference DIR` instead races the reference code itself (a checkout of
timgaripov/dnn-mode-connectivity), in separate alternating processes, on the same data and nets:
see benchmarks/reference_race.py for the edits applied to a copy of the checkout and the work.

Data: GPU 10,000 train + 1,000 test images; CPU 2,000 + 200. `--quick` shrinks everything to check
that the script runs (a few seconds per model); the real measurement is run by hand:

    python benchmarks/bench_paths.py --device cuda [--models mlp,convfc,vgg16bn] [--out bench.json]
    python benchmarks/bench_paths.py --device cpu --models mlp,convfc
    OMP_NUM_THREADS=2 python benchmarks/bench_paths.py --device cpu --reference DIR [--out race.json]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call

from isthmus.data import Dataset, load
from isthmus.io import write_json
from isthmus.models import ModelConfig, build_model
from isthmus.params import bn_subset, eval_plan, has_bn, params_of
from isthmus.paths import BezierPath, FitConfig, evaluate_path, fit_curve
from isthmus.paths.bezier import bernstein


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev: torch.device):
    sync(dev)
    t0 = time.perf_counter()
    out = fn()
    sync(dev)
    return time.perf_counter() - t0, out


def cifar_like(n_train: int, n_test: int, dev: torch.device, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    return Dataset(
        "cifar-shaped", x[:n_train].to(dev), y[:n_train].to(dev), x[n_train:].to(dev),
        y[n_train:].to(dev), 10, "classification", (3, 32, 32),
    )  # fmt: skip


def setup(name: str, dev: torch.device, n_train: int, n_test: int, quick: bool = False):
    """Model, three random nets (A, bend, B) on `dev`, and the data."""
    if name == "mlp":
        data = load("mnist1d", device=dev)
        data = data.subset(n_train, n_test) if quick else data
        cfg = ModelConfig(kind="mlp", depth=3, width=256, input_shape=data.input_shape)
    else:
        data = cifar_like(n_train, n_test, dev)
        kind, bn = {"convfc": ("convfc", False), "vgg16bn": ("vgg16", True)}[name]
        cfg = ModelConfig(kind=kind, batchnorm=bn, input_shape=(3, 32, 32), num_classes=10)
    torch.manual_seed(0)
    model = build_model(cfg).to(dev)
    nets = [{k: v.to(dev) for k, v in params_of(build_model(cfg)).items()} for _ in range(3)]
    return model, nets, data


# ----------------------------------------------------------------------------- plain baselines


@torch.no_grad()
def plain_eval(model, path: BezierPath, data: Dataset, ts, batch: int):
    """The usual loop: load a point, (BN: recompute statistics), forward train and test."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    losses, bn_seconds = [], 0.0
    for t in ts.tolist():
        model.load_state_dict(path.point(t))
        if bns:
            t0 = time.perf_counter()
            for m in bns:
                m.reset_running_stats()
                m.momentum = None
            model.train()
            for i in range(0, len(data.x_train), batch):
                model(data.x_train[i : i + batch])
            sync(data.x_train.device)
            bn_seconds += time.perf_counter() - t0
        model.eval()
        row = []
        for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
            tot = 0.0
            for i in range(0, len(x), batch):
                tot += float(
                    F.cross_entropy(model(x[i : i + batch]), y[i : i + batch], reduction="sum")
                )
            row.append(tot / len(x))
        losses.append(row[0])
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom
    return torch.tensor(losses, dtype=torch.float64), bn_seconds


def plain_bezier_epoch(model, path: BezierPath, data: Dataset, batch: int, lr: float = 0.05):
    """Garipov-style: one t per minibatch, each tensor assembled from its control points."""
    names = [n for n, _ in model.named_parameters()]
    bends = [{k: path.bends[0][k].clone().requires_grad_(True) for k in names}]
    opt = torch.optim.SGD([v for b in bends for v in b.values()], lr=lr, momentum=0.9)
    buffers = {k: v.clone() for k, v in path.start.items() if k not in names}  # BN: scratch
    model.train(has_bn(model))
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data.x_train), generator=g).to(data.x_train.device)
    for i in range(0, len(order), batch):
        idx = order[i : i + batch]
        w = bernstein(torch.rand(1, generator=g, dtype=torch.float64), 2)[0].tolist()
        p = {k: w[0] * path.start[k] + w[1] * bends[0][k] + w[2] * path.end[k] for k in names}
        out = functional_call(model, {**p, **buffers}, (data.x_train[idx],))
        loss = F.cross_entropy(out, data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


# ----------------------------------------------------------------------------- one model


def bench(name: str, dev: torch.device, n_train: int, n_test: int, points: int, args) -> dict:
    model, (a, bend, b), data = setup(name, dev, n_train, n_test, args.quick)
    path = BezierPath(a, b, [bend])
    bn_x = bn_subset(data.x_train) if has_bn(model) else None
    ts = torch.linspace(0, 1, points, dtype=torch.float64)
    kw = dict(batch_size=args.eval_batch, chunk=args.chunk, bn_x=bn_x)
    plan = eval_plan(model, data.x_train)
    batch = (
        args.eval_batch or plan.batch_size
    )  # the plain loop's batch: isthmus's on the train split
    chunk = args.chunk or plan.chunk
    # warm-up both (CUDA context, cuDNN autotuning, and isthmus's one-off loop/vmap choice, which
    # is cached per chunk size: warm up with the chunk sizes the timed call will use)
    plain_eval(model, path, data, ts[:2], batch)
    for size in {min(chunk, points), points % chunk} - {0}:
        evaluate_path(model, path, data, ts=ts[:size], **kw)
    t_plain, (loss_plain, bn_plain) = timed(lambda: plain_eval(model, path, data, ts, batch), dev)
    t_isth, res = timed(lambda: evaluate_path(model, path, data, ts=ts, **kw), dev)
    if t_plain + t_isth < 10:  # cheap: best of 5, alternating, so that load drifts hit both alike
        for _ in range(4):
            t_plain = min(t_plain, timed(lambda: plain_eval(model, path, data, ts, batch), dev)[0])
            t_isth = min(
                t_isth, timed(lambda: evaluate_path(model, path, data, ts=ts, **kw), dev)[0]
            )
    diff = float((torch.tensor(res.train_loss, dtype=torch.float64) - loss_plain).abs().max())
    row = {
        "model": name,
        "device": str(dev),
        "train": len(data.x_train),
        "test": len(data.x_test),
        "points": points,
        "eval_batch": batch,
        "chunk": chunk,
        "eval_plain_s": t_plain,
        "eval_isthmus_s": t_isth,
        "eval_speedup": t_plain / t_isth,
        "per_point_plain_s": t_plain / points,
        "per_point_isthmus_s": t_isth / points,
        "bn_recompute_per_point_plain_s": bn_plain / points if bn_x is not None else None,
        "max_abs_loss_difference": diff,
    }
    plain_bezier_epoch(model, path, data.subset(min(256, n_train), None), 128)  # warm-up
    t_pe, _ = timed(lambda: plain_bezier_epoch(model, path, data, 128), dev)
    for m in getattr(args, "samples", (1, 4)):  # t per minibatch
        cfg = FitConfig(epochs=1, batch_size=128, samples=m)
        fit_curve(model, path, data.subset(min(256, n_train), None), cfg, progress=False)
        t_fit, _ = timed(lambda c=cfg: fit_curve(model, path, data, c, progress=False), dev)
        row[f"epoch_isthmus_m{m}_s"] = t_fit
    row["epoch_plain_s"] = t_pe
    row["epoch_speedup_m1"] = t_pe / row["epoch_isthmus_m1_s"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default=None, help="comma-separated: mlp,convfc,vgg16bn")
    ap.add_argument("--points", type=int, default=61)
    ap.add_argument("--eval-batch", type=int, default=None, help="examples per forward [auto]")
    ap.add_argument("--chunk", type=int, default=None, help="points per batched call [auto]")
    ap.add_argument("--train", type=int, default=None, help="CIFAR-shaped train images [10k/2k]")
    ap.add_argument("--test", type=int, default=None, help="CIFAR-shaped test images [1k/200]")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check that it runs")
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    ap.add_argument(
        "--reference", default=None, metavar="DIR",
        help="race the reference code in this dnn-mode-connectivity checkout instead",
    )  # fmt: skip
    ap.add_argument("--repeats", type=int, default=4, help="alternating runs of the race [4]")
    ap.add_argument(
        "--budgets", default=None, metavar="MIB,...",
        help="with --reference: also isthmus at these eval_plan memory budgets (the curve)",
    )  # fmt: skip
    args = ap.parse_args()
    dev = torch.device(args.device)
    if args.reference:
        from reference_race import print_race, race

        sizes = (64, 16, 3, 1) if args.quick else (args.train, args.test, args.points, args.repeats)
        n_tr, n_te, pts, reps = sizes
        budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else None
        r = race(args.reference, n_train=n_tr or 2000, n_test=n_te or 200, points=pts,
                 repeats=reps, device=args.device, budgets=budgets)  # fmt: skip
        print_race(r)
        if args.out:
            write_json(args.out, {"race": r, "quick": args.quick})
        return
    torch.backends.cudnn.benchmark = True
    gpu = dev.type == "cuda"
    n_train, n_test = (10_000, 1_000) if gpu else (2_000, 200)
    n_train, n_test = args.train or n_train, args.test or n_test
    points = args.points
    if args.quick:
        n_train, n_test, points = 64, 16, 3
    models = args.models.split(",") if args.models else (
        ["mlp", "convfc", "vgg16bn"] if gpu or args.quick else ["mlp", "convfc"]
    )  # fmt: skip
    sizes = (
        "API defaults (params.eval_plan)"
        if args.eval_batch is None and args.chunk is None
        else (f"eval batch {args.eval_batch or 'auto'}, chunk {args.chunk or 'auto'}")
    )
    print(f"device {dev}, threads {torch.get_num_threads()}, CIFAR-shaped {n_train}+{n_test}, "
          f"{points} points, {sizes}")  # fmt: skip
    rows = []
    for name in models:
        r = bench(name, dev, n_train, n_test, points, args)
        rows.append(r)
        bn = r["bn_recompute_per_point_plain_s"]
        print(
            f"{name:8s} eval {points} pts: plain {r['eval_plain_s']:.2f} s, isthmus "
            f"{r['eval_isthmus_s']:.2f} s ({r['eval_speedup']:.1f}x; "
            f"{r['per_point_isthmus_s']:.3f} s/point"
            + (f"; plain BN recompute {bn:.3f} s/point" if bn is not None else "")
            + f"; max |loss diff| {r['max_abs_loss_difference']:.1e})"
        )
        print(
            f"{'':8s} Bezier epoch: plain {r['epoch_plain_s']:.2f} s, isthmus m=1 "
            f"{r['epoch_isthmus_m1_s']:.2f} s ({r['epoch_speedup_m1']:.1f}x), m=4 "
            f"{r['epoch_isthmus_m4_s']:.2f} s"
        )
    if args.out:
        write_json(args.out, {"rows": rows, "quick": args.quick})
    if not math.isfinite(sum(r["max_abs_loss_difference"] for r in rows)):
        raise SystemExit("isthmus and the plain loop disagree (non-finite losses)")


if __name__ == "__main__":
    main()
