"""Measure the constructive paths of Kuditipudi et al. 2019 on mnist1d (the README's numbers).

For each pair (two nets, seeds 0 and 1, trained together with `train_population`):
  * dropout stability of both nets (`isthmus.stability.dropout_stability`, default search);
  * the Theorem 1 path (`connect_dropout`): certified bound, max train loss on the dense path,
    segment count, whether the certificate holds and the bound is within max(L_A, L_B) + eps;
  * the straight line (float64): its max train loss and barrier;
  * the Theorem 2 path (`connect_noise`): bound max(L(A_1), L(B_1)), max loss, barriers of its two
    straight segments, beside the noise-stability quantities of both nets (`noise_stability`:
    epsilon, cushions, contraction, smoothness, and the measured output change for noise and for
    dropping half of each hidden layer), which are what the straight segments depend on.
Pairs: MLP depth 3 width 512 with dropout 0.5 and without; CNN ("cnn", channel dropout 0.5) with
dropout 0.5 and without. Writes provable_paths.json and one figure per pair into --out.

    python benchmarks/provable_paths.py --out /tmp/provable            # full (tens of minutes on CPU)
    python benchmarks/provable_paths.py --out /tmp/provable --quick    # tiny sizes, checks it runs
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from isthmus.data import load
from isthmus.io import write_json
from isthmus.models import ModelConfig, build_model
from isthmus.params import to
from isthmus.paths import connect_dropout, connect_noise, evaluate_path, line
from isthmus.plot import certified_path
from isthmus.stability import dropout_stability, noise_stability
from isthmus.train import TrainConfig, train_population


def measure(name: str, cfg: ModelConfig, dropout: float, data, args) -> dict:
    t0 = time.perf_counter()
    runs = train_population(cfg, data, TrainConfig(epochs=args.epochs, dropout=dropout), [0, 1])
    t_train = time.perf_counter() - t0
    model = build_model(cfg)
    pa, pb = runs[0].params, runs[1].params
    t0 = time.perf_counter()
    kw = {"draws": args.draws, "swaps": args.draws} if args.draws else {}
    sa = dropout_stability(model, pa, data, seed=args.seed, **kw)
    sb = dropout_stability(model, pb, data, seed=args.seed, **kw)
    t_stab = time.perf_counter() - t0
    t0 = time.perf_counter()
    path, res = connect_dropout(model, pa, pb, data, stability_a=sa, stability_b=sb, seed=args.seed)
    t_path = time.perf_counter() - t0
    m64 = copy.deepcopy(model).double()
    d64 = data.to(dtype=torch.float64)
    lin = evaluate_path(
        m64, line(to(pa, dtype=torch.float64), to(pb, dtype=torch.float64)), d64, points=61
    )
    t0 = time.perf_counter()
    nkw = {"n_examples": 64, "n_proj": 8} if args.quick else {}
    na = noise_stability(model, pa, data, seed=args.seed, **nkw)
    nb = noise_stability(model, pb, data, seed=args.seed, **nkw)
    _, noise = connect_noise(model, pa, pb, data, stability_a=na, stability_b=nb, seed=args.seed)
    t_noise = time.perf_counter() - t0
    c, nc = res.certificate, noise.certificate
    certified_path(
        res, Path(args.out) / f"theorem1_{name}", line=lin, title=f"Theorem 1 path, {name}"
    )
    certified_path(noise, Path(args.out) / f"theorem2_{name}", title=f"Theorem 2 path, {name}")
    row = {
        "pair": name,
        "dropout": dropout,
        "train_acc": [runs[0].metrics["train_acc"], runs[1].metrics["train_acc"]],
        "epsilon_a": sa.epsilon,
        "epsilon_b": sb.epsilon,
        "loss_a": c["loss_a"],
        "loss_b": c["loss_b"],
        "theorem1": {
            "bound": c["bound"],
            "max_loss_on_path": c["max_loss_on_path"],
            "holds": c["holds"],
            "bound_within_theorem": c["bound_within_theorem"],
            "theorem_bound": c["theorem_bound"],
            "segment_count": c["segment_count"],
            "formula": c["formula"],
            "max_output_deviation": max(
                s["max_output_deviation"] for s in res.segments if s["kind"] in "bc"
            ),
            "test_loss_max": max(res.test_loss),
            "train_acc_min": min(res.train_acc),
        },
        "line": {
            "max_loss": max(lin.train_loss),
            "barrier": lin.barrier["train_loss"],
            "barrier_vs_mean": lin.barrier["train_loss_vs_mean"],
        },
        "theorem2": {
            "bound": nc["bound"],
            "loss_a1": nc["loss_a1"],
            "loss_b1": nc["loss_b1"],
            "holds": nc["holds"],
            "max_loss_on_path": nc["max_loss_on_path"],
            "line_max_loss": nc["line_max_loss"],
            "line_barrier": nc["line_barrier"],
            "noise_stability_a": _noise_summary(na),
            "noise_stability_b": _noise_summary(nb),
        },
        "seconds": {"train": t_train, "stability": t_stab, "theorem1": t_path, "theorem2": t_noise},
    }
    print(
        f"{name}: eps_A {sa.epsilon:.4f} eps_B {sb.epsilon:.4f} L_A {c['loss_a']:.4f} "
        f"L_B {c['loss_b']:.4f} | T1 bound {c['bound']:.4f} max {c['max_loss_on_path']:.4f} "
        f"holds {c['holds']} segs {c['segment_count']} | line max {max(lin.train_loss):.4f} "
        f"barrier {lin.barrier['train_loss']:.4f} | T2 bound {nc['bound']:.4f} "
        f"max {nc['max_loss_on_path']:.4f} line barriers "
        + ", ".join(f"{b:.4f}" for b in nc["line_barrier"])
        + f" | noise eps_A {na.epsilon:.4g} eps_B {nb.epsilon:.4g}, output change for noise at "
        f"layer 1: A {_fmt(na.output_relative_change[0])}, B {_fmt(nb.output_relative_change[0])}",
        flush=True,
    )
    return row


def _noise_summary(ns) -> dict:
    """The noise-stability quantities the Theorem 2 path's straight segments depend on."""
    keys = (
        "epsilon",
        "layer_cushion",
        "interlayer_cushion_from",
        "activation_contraction",
        "interlayer_smoothness",
        "output_relative_change",
        "dropout_output_change",
    )
    q = ns.quantities()
    return {k: q[k] for k in keys}


def _fmt(v: float | None) -> str:
    return "undefined" if v is None else f"{v:.3g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check that it runs")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--draws", type=int, default=0, help="stability draws/swaps (0: default)")
    ap.add_argument("--only", default=None, help="comma-separated pair names to run")
    args = ap.parse_args()
    data = load("mnist1d")
    channels: tuple = (32, "M", 64, "M", 64, "M")
    if args.quick:
        data = data.subset(256, 128, seed=0)
        args.epochs, args.width, args.draws = 2, 16, 8
        channels = (4, "M", 4, "M")
    mlp = ModelConfig(kind="mlp", depth=3, width=args.width, input_shape=(40,), num_classes=10)
    cnn = ModelConfig(kind="cnn", channels=channels, input_shape=(40,), num_classes=10)
    pairs = [
        ("mlp_dropout", mlp, 0.5),
        ("mlp_plain", mlp, 0.0),
        ("cnn_dropout", cnn, 0.5),
        ("cnn_plain", cnn, 0.0),
    ]
    if args.only:
        keep = set(args.only.split(","))
        pairs = [p for p in pairs if p[0] in keep]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = []
    for name, cfg, p in pairs:
        rows.append(measure(name, cfg, p, data, args))
        write_json(Path(args.out) / "provable_paths.json", {"args": vars(args), "pairs": rows})


if __name__ == "__main__":
    main()
