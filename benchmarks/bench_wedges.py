"""Wedge-model benchmark (not a test): the learning-rate sweep as one batched population against a
plain Python loop over the starts, in the same process.

The sweep: `--starts` random starts x `--lrs` learning rates, `--steps` steps of full-batch
gradient descent on the wedge model (D = 200, n = 120, K = 6 by default). isthmus runs all
starts x rates as one population (`wedges.descend`, closed-form gradients, one batched call per
step). The baseline is the plain way: a Python loop over the runs, each with its own tensor and
autograd through `WedgeModel.loss`. The loop is timed on `--loop-runs` runs and its time per run
is scaled to the whole sweep (the whole loop would take hours on 2 cores); the script says so in
its output. Both compute the same end points (checked on the timed runs).

    python benchmarks/bench_wedges.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from isthmus.wedges import WedgeConfig, WedgeModel, descend, random_starts


def _loop_run(model: WedgeModel, x0: torch.Tensor, lr: float, steps: int) -> torch.Tensor:
    """One run, the plain way: autograd on the model's loss, one point at a time."""
    x = x0.clone()
    for _ in range(steps):
        xg = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model.loss(xg[None])[0], xg)
        x = x - lr * g
    return x.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    ap.add_argument("--starts", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lrs", default="0.002,0.005,0.01,0.05,0.2")
    ap.add_argument("--loop-runs", type=int, default=10, help="runs timed in the plain loop")
    args = ap.parse_args()
    cfg = WedgeConfig()
    if args.quick:
        cfg = WedgeConfig(dim=40, wedge_dim=24, wedges=4)
        args.starts, args.steps, args.loop_runs = 20, 50, 2
    lrs = [float(v) for v in args.lrs.split(",")]
    model = WedgeModel.random(cfg, seed=0)
    x0 = random_starts(cfg.dim, args.starts, 3.0, seed=0)
    xs = x0.repeat(len(lrs), 1)
    lr_t = torch.tensor(lrs, dtype=torch.float64).repeat_interleave(args.starts)
    runs = len(xs)

    t0 = time.perf_counter()
    pop = descend(model, xs, lr_t, args.steps, record=args.steps, progress=False)
    batched = time.perf_counter() - t0

    picks = torch.linspace(0, runs - 1, args.loop_runs).round().long().tolist()
    t0 = time.perf_counter()
    ends = [_loop_run(model, xs[i], float(lr_t[i]), args.steps) for i in picks]
    loop_per_run = (time.perf_counter() - t0) / len(picks)
    diff = max(float((e - pop.x[i]).abs().max()) for e, i in zip(ends, picks, strict=True))

    print(
        f"wedge lr sweep: D = {cfg.dim}, n = {cfg.wedge_dim}, K = {cfg.wedges}; {args.starts} starts "
        f"x {len(lrs)} learning rates = {runs} runs x {args.steps} steps, CPU"
    )
    print(f"  isthmus, one batched population:  {batched:9.2f} s")
    print(
        f"  plain loop over the runs:        {loop_per_run * runs:9.2f} s  "
        f"(timed on {len(picks)} runs, {loop_per_run:.3f} s each, scaled to {runs})"
    )
    print(f"  ratio loop / isthmus: {loop_per_run * runs / batched:.1f}x")
    print(f"  max |end point difference| on the timed runs: {diff:.2e}")


if __name__ == "__main__":
    main()
