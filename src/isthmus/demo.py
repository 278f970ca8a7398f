"""The end-to-end demo: train nets on built-in mnist1d, connect them, write an HTML report.

Each section is a few lines calling the library, so the demo doubles as an example of the API.
Run it with `isthmus demo --out demo`; `--quick` shrinks every setting for the tests.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from . import plot
from .data import load
from .io import write_json
from .models import ModelConfig
from .report import Report
from .train import TrainConfig, train_population


@dataclass(frozen=True)
class DemoSettings:
    width: int = 256
    depth: int = 3
    epochs: int = 30
    dropout: float = 0.0


def run_demo(out: str | Path, seed: int = 0, quick: bool = False, pdf: bool = False) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = DemoSettings(width=64, epochs=3) if quick else DemoSettings()
    t0 = time.perf_counter()
    data = load("mnist1d", seed=seed)
    rep = Report("isthmus demo: mnist1d")
    rep.text(
        f"Settings: {json.dumps(s.__dict__)}, seed {seed}. Every number below was computed by this run."
    )

    # 1. Two independently trained nets (one population call).
    mcfg = ModelConfig(
        kind="mlp",
        depth=s.depth,
        width=s.width,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
    )
    tcfg = TrainConfig(epochs=s.epochs, dropout=s.dropout)
    runs = train_population(mcfg, data, tcfg, [seed, seed + 1], out=out / "runs", progress=False)
    rep.heading("1. Two independently trained MLPs")
    rep.table(
        ["net", "train loss", "train acc", "test loss", "test acc"],
        [
            [
                f"seed {seed + i}",
                r.metrics["train_loss"],
                r.metrics["train_acc"],
                r.metrics["test_loss"],
                r.metrics["test_acc"],
            ]
            for i, r in enumerate(runs)
        ],
    )
    png = plot.learning_curves(
        [r.metrics["history"] for r in runs],
        [f"seed {seed + i}" for i in range(2)],
        out / "learning_curves.png",
        pdf,
    )
    rep.figure(png, "Learning curves of the two nets (solid: train split, dashed: test split).")
    summary = {"nets": [r.metrics | {"history": None} for r in runs]}

    summary["seconds"] = time.perf_counter() - t0
    write_json(out / "summary.json", summary)
    rep.text(f"Total time: {summary['seconds']:.1f} s.")
    return rep.write(out / "report.html")
