"""Evaluation batch size on CPU (not a test): the plan's batches against one forward pass of all.

`params.eval_plan` caps one batch's activations at `params.CPU_BATCH_BYTES` on CPU, so that the C
allocator reuses its memory instead of mapping fresh pages on every pass (glibc maps blocks above
a threshold that adapts up to 32 MiB; setting MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_
to 4294967296 before the command shows the timings without that effect). For each net (untrained: timings do not depend on the
values) this times a no-grad forward pass over every training example (a) in the plan's batches
and (b) all at once (the plain baseline), and, for the record, (c) at a few other batch sizes;
best of `--repeat` alternating runs in this process. The ratio all-at-once / plan says what the
cap buys (above 1: faster). Run by hand:

    OMP_NUM_THREADS=2 python benchmarks/bench_eval_batch.py [--out bench.json]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from isthmus.data import load
from isthmus.io import write_json
from isthmus.models import ModelConfig, build_model
from isthmus.params import ACTIVATION_COPIES, activation_bytes, eval_plan


@torch.no_grad()
def forward_all(model: torch.nn.Module, x: torch.Tensor, batch: int) -> None:
    for i in range(0, len(x), batch):
        model(x[i : i + batch])


def best_of(fns: list, repeat: int) -> list[float]:
    """Best-of-`repeat` seconds of each function, alternating (load drifts hit all alike)."""
    for fn in fns:
        fn()
    best = [math.inf] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per size [7]")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    data = load("mnist1d")
    shape = data.input_shape
    nets = {
        "mlp 3x256": (ModelConfig(kind="mlp", depth=3, width=256, input_shape=shape), data.x_train),
        "cnn": (ModelConfig(kind="cnn", input_shape=shape), data.x_train),
        "resnet": (ModelConfig(kind="resnet", depth=1, width=1, input_shape=shape), data.x_train),
        "transformer": (
            ModelConfig(kind="transformer", depth=2, width=64, input_shape=shape),
            data.x_train,
        ),
        "convfc (CIFAR shapes)": (
            ModelConfig(kind="convfc", input_shape=(3, 32, 32)),
            torch.randn(1000, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
        ),
    }
    repeat = args.repeat
    if args.quick:
        nets = {k: (c, x[:64]) for k, (c, x) in list(nets.items())[:2]}
        repeat = 1
    rows = []
    for name, (cfg, x) in nets.items():
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # as `data.cpu_layout`
        n, plan = len(x), eval_plan(model, x)
        others = sorted({max(1, n // k) for k in (2, 4, 8, 16)} - {plan.batch_size, n})
        sizes = [plan.batch_size, n, *others]
        ts = best_of([lambda b=b, m=model, x=x: forward_all(m, x, b) for b in sizes], repeat)
        per = ACTIVATION_COPIES * activation_bytes(model, x)
        row = {
            "net": name,
            "examples": n,
            "plan_batch": plan.batch_size,
            "plan_s": ts[0],
            "all_at_once_s": ts[1],
            "ratio_all_over_plan": ts[1] / ts[0],
            "others": {str(b): t for b, t in zip(others, ts[2:], strict=True)},
        }
        rows.append(row)
        mib = per * plan.batch_size / 2**20
        rest = ", ".join(f"{b}: {t * 1e3:.1f} ms" for b, t in zip(others, ts[2:], strict=True))
        print(
            f"{name}: plan batch {plan.batch_size} ({mib:.1f} MiB of activations) "
            f"{ts[0] * 1e3:.1f} ms, all {n} at once {ts[1] * 1e3:.1f} ms, "
            f"ratio {row['ratio_all_over_plan']:.2f}x | {rest}"
        )
    if args.out:
        write_json(args.out, {"rows": rows})


if __name__ == "__main__":
    main()
