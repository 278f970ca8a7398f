"""Every GPU benchmark in one run, one table (run it through `benchmarks/gpu.sh`).

Rows (each a plain PyTorch baseline against isthmus, both timed in this process, with the ratio
baseline / isthmus; goals from the project's performance targets):

  eval-mlpW     64 points of an MLP 3xW on mnist1d's train split: a plain loop (load_state_dict +
                forward) vs `params.evaluate` at its defaults (vmap on a GPU). Goal >= 10x.
  population    32 MLPs 3x32, 5 epochs: 32 sequential `train` runs vs one `train_population`.
                Goal >= 8x.
  path-NET      a 61-point path of convfc / vgg16-BN on 10,000 + 1,000 CIFAR-shaped images
                (`bench_paths.bench`: plain loop vs `evaluate_path` at its defaults). Goals:
                convfc < 0.7 s, vgg16-BN < 5 s.
  bezier-NET    one Bezier epoch (batch 128, one t per minibatch): plain Garipov-style loop vs
                `fit_curve` (same run of `bench_paths.bench`).
  curvature     convfc, top-5 Hessian eigenvalues (30 Lanczos steps) and a 20-probe Hutchinson
                trace with `isthmus.curvature`, against the same number of plain double-backward
                Hessian-vector products (what power-iteration tools such as pyhessian compute).
  subspace-K    `bench_subspace.bench`: a complex epoch vs a plain epoch, 256 samples loop vs isthmus.
  race-*        only with --reference DIR (a dnn-mode-connectivity checkout copied to the machine):
                `reference_race.race` on this device, 10,000 + 1,000 images, one repeat: the
                reference's own code vs isthmus per path point (goal >= 20x) and per Bezier epoch
                (goal >= 5x), and peak memory (RSS; GPU memory is not included).

It runs from the source tree with whatever torch it finds; where the `mnist1d` package is missing
it substitutes a synthetic set of mnist1d's shapes (4,000 + 1,000 examples, 40 features, 10
classes, Gaussian, fixed seed), and says so. `--dry-run` runs everything on CPU at tiny sizes to
check the script end to end (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import types
from dataclasses import replace
from pathlib import Path

import torch

import isthmus.data as idata

SYNTHETIC = {"used": False}
_load = idata.load


def _synthetic_mnist1d(device=None) -> idata.Dataset:
    g = torch.Generator().manual_seed(42)
    x = torch.randn(5000, 40, generator=g)
    y = torch.randint(0, 10, (5000,), generator=g)
    d = torch.device(device or "cpu")
    return idata.Dataset("mnist1d-shaped (synthetic)", x[:4000].to(d), y[:4000].to(d),
                         x[4000:].to(d), y[4000:].to(d), 10, "classification", (40,))  # fmt: skip


def load(name: str, *args, **kw) -> idata.Dataset:
    """`isthmus.data.load`, with synthetic mnist1d-shaped data where the package is missing."""
    if name == "mnist1d":
        try:
            import mnist1d  # noqa: F401
        except ImportError:
            SYNTHETIC["used"] = True
            return _synthetic_mnist1d(kw.get("device"))
    return _load(name, *args, **kw)


idata.load = load  # before the benchmark modules import it
import bench_foundation  # noqa: E402
import bench_paths  # noqa: E402
import bench_subspace  # noqa: E402

from isthmus.curvature import hessian_operator, hutchinson_trace, top_eigenvalues  # noqa: E402
from isthmus.models import ModelConfig, build_model  # noqa: E402
from isthmus.params import evaluate, loss_sum, params_of  # noqa: E402
from isthmus.train import TrainConfig, train, train_population  # noqa: E402

bench_foundation.load = bench_paths.load = bench_subspace.load = load


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev: torch.device) -> float:
    sync(dev)
    t0 = time.perf_counter()
    fn()
    sync(dev)
    return time.perf_counter() - t0


def row(name: str, work: str, base: float, isth: float, goal: str = "", note: str = "") -> dict:
    return {"row": name, "work": work, "baseline_s": base, "isthmus_s": isth,
            "ratio": base / isth if isth > 0 else math.inf, "goal": goal, "note": note}  # fmt: skip


def bench_eval(dev, widths, points, n) -> list[dict]:
    data = load("mnist1d", device=dev).subset(n, None)
    x, y = data.x_train, data.y_train
    out = []
    for w in widths:
        cfg = ModelConfig(kind="mlp", depth=3, width=w, input_shape=data.input_shape)
        model = build_model(cfg).to(dev).eval()
        pts = [
            {k: v.to(dev) for k, v in params_of(build_model(cfg)).items()} for _ in range(points)
        ]
        t_loop, t_isth = bench_foundation._race(
            [
                lambda m=model, p=pts: bench_foundation.plain_loop(m, p, x, y),
                lambda m=model, p=pts: evaluate(m, p, x, y),
            ],
            dev, repeat=5,
        )  # fmt: skip
        out.append(
            row(f"eval-mlp{w}", f"{points} points, {len(x)} examples", t_loop, t_isth, ">= 10x")
        )
    return out


def bench_population(dev, k, width, epochs, n) -> dict:
    data = load("mnist1d", device=dev).subset(n, None)
    cfg = ModelConfig(kind="mlp", depth=3, width=width, input_shape=data.input_shape)
    tc = TrainConfig(epochs=epochs)
    seeds = list(range(k))
    train_population(cfg, data, tc, seeds[:2], max_steps=3, progress=False)  # warm-up
    t_pop = timed(lambda: train_population(cfg, data, tc, seeds, progress=False), dev)
    t_seq = timed(lambda: [train(cfg, data, tc, s, progress=False) for s in seeds], dev)
    return row("population", f"{k} MLPs 3x{width}, {epochs} epochs", t_seq, t_pop, ">= 8x")


def bench_path_rows(dev, name, n_train, n_test, points, quick) -> list[dict]:
    samples = (1,) if quick else (1, 4)  # t per minibatch of the Bezier epochs
    args = types.SimpleNamespace(eval_batch=None, chunk=None, quick=quick, samples=samples)
    r = bench_paths.bench(name, dev, n_train, n_test, points, args)
    goal = {"convfc": "< 0.7 s", "vgg16bn": "< 5 s"}[name]
    four = f"4 t: {r['epoch_isthmus_m4_s']:.3g} s" if "epoch_isthmus_m4_s" in r else ""
    work = f"{points} points, {r['train']}+{r['test']} images"
    return [
        row(f"path-{name}", work, r["eval_plain_s"], r["eval_isthmus_s"], goal,
            f"|loss diff| {r['max_abs_loss_difference']:.1e}"),
        row(f"bezier-{name}", f"1 epoch, {r['train']} images, 1 t per batch", r["epoch_plain_s"],
            r["epoch_isthmus_m1_s"], "", four),
    ]  # fmt: skip


def bench_curvature(dev, n_train, batch, steps, probes) -> list[dict]:
    model, nets, data = bench_paths.setup("convfc", dev, n_train, 8)
    p = nets[0]
    op = hessian_operator(model, p, data, batch_size=batch)
    keys = [k for k, _ in model.named_parameters()]
    x, y = data.x_train, data.y_train

    def plain_hvps(count: int) -> None:
        """Double-backward Hessian-vector products over the same batches (the plain way)."""
        ws = {k: p[k].clone().requires_grad_(True) for k in keys}
        bufs = {k: v for k, v in p.items() if k not in ws}
        for _ in range(count):
            vs = {k: torch.randn_like(w) for k, w in ws.items()}
            for i in range(0, len(x), batch):
                out = torch.func.functional_call(model, {**ws, **bufs}, (x[i : i + batch],))
                loss = loss_sum(out, y[i : i + batch], "ce")[0] / len(x)
                g = torch.autograd.grad(loss, list(ws.values()), create_graph=True)
                dot = sum((gi * vs[k]).sum() for gi, k in zip(g, ws, strict=True))
                torch.autograd.grad(dot, list(ws.values()))

    plain_hvps(1)  # warm-up
    top_eigenvalues(op, 5, tol=1e-3, max_steps=3, seed=0)
    eig: list = []
    t_eig = timed(
        lambda: eig.append(top_eigenvalues(op, 5, tol=1e-3, max_steps=steps, seed=0)), dev
    )
    steps = eig[0].steps  # products made (Lanczos stops early where the values have converged)
    t_tr = timed(lambda: hutchinson_trace(op, probes, seed=0), dev)
    t_one = timed(lambda: plain_hvps(2), dev) / 2
    work = f"convfc, {len(x)} images"
    return [
        row("curvature-eigen", f"{work}, top-5, {steps} Lanczos steps", t_one * steps, t_eig,
            "", "baseline: as many plain HVPs"),
        row("curvature-trace", f"{work}, {probes} probes", t_one * probes, t_tr, "",
            "baseline: as many plain HVPs"),
    ]  # fmt: skip


def bench_subspace_rows(dev, quick) -> list[dict]:
    data = load("mnist1d", device=dev)
    models = {
        "mlp": ModelConfig(kind="mlp", depth=3, width=256, input_shape=data.input_shape),
        "cnn": ModelConfig(kind="cnn", input_shape=data.input_shape),
    }
    samples, repeat, epochs = 256, 3, 4
    if quick:
        models = {"mlp": ModelConfig(kind="mlp", depth=3, width=16, input_shape=data.input_shape)}
        data = replace(data, x_train=data.x_train[:256], y_train=data.y_train[:256])
        samples, repeat, epochs = 4, 1, 1
    out = []
    for k, cfg in models.items():
        r = bench_subspace.bench(k, cfg, data, dev, samples, repeat, epochs)
        out.append(row(f"subspace-{k}-epoch", "complex epoch vs plain epoch", r["epoch_plain_s"],
                       r["epoch_complex_s"], ">= 0.77x (<= 1.3 plain)"))  # fmt: skip
        out.append(row(f"subspace-{k}-eval", f"{samples} samples", r["eval_loop_s"],
                       r["eval_isthmus_s"], ">= 1.0x"))  # fmt: skip
    return out


def bench_race(dev, reference: str, dry: bool) -> list[dict]:
    import reference_race

    sizes = dict(n_train=16, n_test=8, points=2) if dry else dict(n_train=10_000, n_test=1_000)
    r = reference_race.race(reference, device=str(dev), repeats=1, **sizes)
    ref, ist = r["reference"], r["isthmus"]
    work = f"convfc, {r['train']}+{r['test']} images"
    note = f"|loss diff| {r['max_abs_loss_difference']:.1e}"
    gb = lambda t, k: f"{t[k] / 1e9:.2f}"  # noqa: E731
    return [
        row("race-point", f"{work}, s per point", ref["seconds_per_point"],
            ist["seconds_per_point"], ">= 20x", note),
        row("race-epoch", f"{work}, Bezier epoch", ref["seconds_per_epoch"],
            ist["seconds_per_epoch"], ">= 5x",
            f"peak RSS GB eval {gb(ref, 'peak_rss_bytes_eval')} / {gb(ist, 'peak_rss_bytes_eval')}"),
    ]  # fmt: skip


def print_table(rows: list[dict], dev: torch.device, total: float) -> None:
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"\n{name}, torch {torch.__version__}, Python {sys.version.split()[0]}, "
          f"{total:.0f} s in all" + ("; mnist1d: SYNTHETIC stand-in" if SYNTHETIC["used"] else ""))  # fmt: skip
    print("| row | work | baseline s | isthmus s | baseline / isthmus | goal | note |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['work']} | {r['baseline_s']:.3g} | {r['isthmus_s']:.3g} | "
              f"{r['ratio']:.2f}x | {r['goal']} | {r['note']} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check it runs")
    ap.add_argument("--device", default=None, help="[cuda; --dry-run: cpu]")
    ap.add_argument("--only", default=None, help="comma-separated row groups: eval,population,"
                    "paths,curvature,subspace")  # fmt: skip
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    ap.add_argument("--reference", default=None, metavar="DIR",
                    help="also race this dnn-mode-connectivity checkout (rows race-*)")  # fmt: skip
    args = ap.parse_args()
    dry = args.dry_run
    dev = torch.device(args.device or ("cpu" if dry else "cuda"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or --dry-run to check on CPU")
    torch.backends.cudnn.benchmark = True
    groups = (args.only or "eval,population,paths,curvature,subspace,race").split(",")
    if not args.reference:
        groups = [g for g in groups if g != "race"]
    t0 = time.perf_counter()
    rows: list[dict] = []
    stages = {
        "eval": lambda: bench_eval(dev, [16] if dry else [32, 128, 512], 4 if dry else 64,
                                   128 if dry else None),
        "population": lambda: [bench_population(dev, 4 if dry else 32, 8 if dry else 32,
                                                1 if dry else 5, 128 if dry else None)],
        "paths": lambda: [
            r
            for name in ("convfc", "vgg16bn")
            for r in bench_path_rows(dev, name, *((8, 4, 2) if dry else (10_000, 1_000, 61)), dry)
        ],
        "curvature": lambda: bench_curvature(dev, *((8, 8, 3, 2) if dry else (10_000, 1000, 30, 20))),
        "subspace": lambda: bench_subspace_rows(dev, dry),
        "race": lambda: bench_race(dev, args.reference, dry),
    }  # fmt: skip
    for g in groups:
        if g not in stages:
            raise SystemExit(f"--only: unknown group {g!r}; choose from {', '.join(stages)}")
        print(f"== {g}", flush=True)
        rows += stages[g]()
    total = time.perf_counter() - t0
    print_table(rows, dev, total)
    if args.out:
        Path(args.out).write_text(json.dumps({"device": str(dev), "dry_run": dry, "rows": rows,
                                              "synthetic_mnist1d": SYNTHETIC["used"]}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
