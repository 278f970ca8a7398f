"""Measure the README's stability table: dropout and noise stability of four mnist1d nets.

MLP depth 3 width 512 and CNN 32,M,64,M,64,M, each trained 30 epochs (seed 0) with dropout 0.5
(channel-wise for the CNN) and without. For each: train loss/accuracy, dropout-stability epsilon
(`dropout_stability`, default search: strategy auto, 256 draws, 256 swaps) and, from
`noise_stability` (defaults), the relative output change for noise injected at each hidden layer.
Same as running `isthmus train` + `isthmus stability --kind dropout|noise` on each net.

    python benchmarks/stability_table.py --out /tmp/stability          # a few minutes on CPU
    python benchmarks/stability_table.py --out /tmp/stability --quick  # tiny sizes, checks it runs
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from isthmus.data import load
from isthmus.io import write_json
from isthmus.models import ModelConfig, build_model
from isthmus.stability import dropout_stability, noise_stability
from isthmus.train import TrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check that it runs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = load("mnist1d")
    epochs, width, channels, kw = 30, 512, (32, "M", 64, "M", 64, "M"), {}
    if args.quick:
        data = data.subset(256, 128, seed=0)
        epochs, width, channels, kw = 2, 16, (4, "M", 4, "M"), {"draws": 8, "swaps": 8}
    mlp = ModelConfig(kind="mlp", depth=3, width=width, input_shape=(40,), num_classes=10)
    cnn = ModelConfig(kind="cnn", channels=channels, input_shape=(40,), num_classes=10)
    rows = []
    for name, cfg, p in [
        ("MLP 3x512, dropout 0.5", mlp, 0.5),
        ("MLP 3x512, no dropout", mlp, 0.0),
        ("CNN, channel dropout 0.5", cnn, 0.5),
        ("CNN, no dropout", cnn, 0.0),
    ]:
        t0 = time.perf_counter()
        run = train(cfg, data, TrainConfig(epochs=epochs, dropout=p), args.seed, progress=False)
        model = build_model(cfg)
        ds = dropout_stability(model, run.params, data, seed=args.seed, **kw)
        ns = noise_stability(model, run.params, data, seed=args.seed)
        change = ns.output_relative_change
        row = {
            "net": name,
            "train_loss": run.metrics["train_loss"],
            "train_acc": run.metrics["train_acc"],
            "epsilon": ds.epsilon,
            "relative_output_change": change,
            "seconds": time.perf_counter() - t0,
        }
        rows.append(row)
        print(
            f"| {name} | {row['train_loss']:.3f} / {row['train_acc']:.3f} | {ds.epsilon:.3f} | "
            + ", ".join(f"{v:.2f}" for v in change)
            + " |",
            flush=True,
        )
        write_json(Path(args.out) / "stability_table.json", {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
