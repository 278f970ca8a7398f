"""Foundation benchmarks (not tests): batched evaluation and population training.

(i)  evaluate one MLP at 64 parameter points on the full mnist1d training split: isthmus
     (`params.evaluate`, vmap and auto) vs a plain Python loop (load_state_dict + forward).
(ii) train 32 MLPs (width <= 128) as one vmapped population vs 32 sequential `train` runs.

Prints seconds and the ratio baseline / isthmus, both measured in this process.

    python benchmarks/bench_foundation.py [--device cuda] [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from isthmus.data import load
from isthmus.models import ModelConfig, build_model
from isthmus.params import auto_strategy, evaluate, params_of
from isthmus.train import TrainConfig, train, train_population


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _race(fns, dev, repeat: int = 7) -> list[float]:
    """Best-of-`repeat` seconds of each function, run in alternation so that drifts in machine
    load (a shared 2-core machine varies by tens of percent) hit all of them alike."""
    for fn in fns:  # warm-up
        fn()
    _sync(dev)
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


@torch.no_grad()
def plain_loop(model, points, x, y):
    out = []
    for p in points:
        model.load_state_dict(p)
        logits = model(x)
        out.append(
            (torch.nn.functional.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean())
        )
    return out


def bench_eval(dev: torch.device, widths, n_points: int) -> None:
    data = load("mnist1d", device=dev)
    x, y = data.x_train, data.y_train
    print(f"(i) evaluate {n_points} points on {len(x)} examples, device {dev}")
    print(
        f"{'width':>6} {'plain loop s':>12} {'vmap s':>8} {'auto s':>8} {'vmap ratio':>10} "
        f"{'auto ratio':>10}  (auto = {auto_strategy(dev)})"
    )
    for w in widths:
        cfg = ModelConfig(kind="mlp", depth=3, width=w, input_shape=data.input_shape)
        model = build_model(cfg).to(dev).eval()
        points = [
            {k: v.to(dev) for k, v in params_of(build_model(cfg)).items()} for _ in range(n_points)
        ]
        t_loop, t_vmap, t_auto = _race(
            [
                lambda m=model, p=points: plain_loop(m, p, x, y),
                lambda m=model, p=points: evaluate(m, p, x, y, strategy="vmap"),
                lambda m=model, p=points: evaluate(m, p, x, y),
            ],
            dev,
        )
        print(
            f"{w:>6} {t_loop:>12.3f} {t_vmap:>8.3f} {t_auto:>8.3f} {t_loop / t_vmap:>10.2f} "
            f"{t_loop / t_auto:>10.2f}"
        )


def bench_population(dev: torch.device, width: int, k: int, epochs: int) -> None:
    data = load("mnist1d", device=dev)
    cfg = ModelConfig(kind="mlp", depth=3, width=width, input_shape=data.input_shape)
    tc = TrainConfig(epochs=epochs)
    seeds = list(range(k))
    train_population(cfg, data, tc, seeds[:2], max_steps=3, progress=False)  # warm-up
    _sync(dev)
    t0 = time.perf_counter()
    train_population(cfg, data, tc, seeds, progress=False)
    _sync(dev)
    t_pop = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s in seeds:
        train(cfg, data, tc, s, progress=False)
    _sync(dev)
    t_seq = time.perf_counter() - t0
    print(
        f"(ii) {k} MLPs width {width}, {epochs} epochs, device {dev}: sequential {t_seq:.1f} s, "
        f"population {t_pop:.1f} s, ratio {t_seq / t_pop:.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if args.quick:
        bench_eval(dev, [32], 8)
        bench_population(dev, 32, 4, 1)
        return
    bench_eval(dev, [32, 64, 128, 256, 512], 64)
    for w in (32, 128):
        bench_population(dev, w, 32, 5)


if __name__ == "__main__":
    main()
