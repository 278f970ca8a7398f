"""The end-to-end demo: train nets on built-in mnist1d, connect them, write an HTML report.

Each section is a few lines calling the library, so the demo doubles as an example of the API:
  1. two independently trained MLPs (one population call) and their learning curves;
  2. the straight line between them vs a fitted one-bend Bezier curve (Garipov et al. 2018);
  3. the straight line after permutation alignment (weight matching, Ainsworth et al. 2023);
  4. provable connectivity (Kuditipudi et al. 2019): a dropout-trained pair, its dropout
     stability epsilon, the certified Theorem 1 path vs the straight line vs a Bezier curve;
     train loss vs dropout keep rate; epsilon vs width.
Run it with `isthmus demo --out demo`; `--quick` shrinks every setting for the tests.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import plot
from .align import align
from .data import load
from .io import write_json
from .models import ModelConfig, build_model
from .paths import evaluate_path, line
from .paths.bezier import BezierPath
from .paths.dropout import connect_dropout
from .paths.fit import FitConfig, fit_curve
from .report import Report
from .stability import dropout_loss_curve, dropout_stability
from .train import TrainConfig, train_population


@dataclass(frozen=True)
class DemoSettings:
    width: int = 256
    depth: int = 3
    epochs: int = 30
    bezier_epochs: int = 20
    dropout: float = 0.5
    draws: int = 128
    keep_draws: int = 10
    widths: tuple[int, ...] = (32, 64, 128)
    width_epochs: int = 10
    width_draws: int = 32
    points: int = 61
    cnn_channels: tuple = (32, "M", 64, "M", 64, "M")
    cnn_epochs: int = 10


QUICK = DemoSettings(
    width=32,
    epochs=2,
    bezier_epochs=1,
    draws=8,
    keep_draws=2,
    widths=(8, 16),
    width_draws=4,
    width_epochs=1,
    points=11,
)


def _metrics_rows(runs, label: str, seed: int) -> list[list]:
    return [
        [
            f"{label} seed {seed + i}",
            r.metrics["train_loss"],
            r.metrics["train_acc"],
            r.metrics["test_loss"],
            r.metrics["test_acc"],
        ]
        for i, r in enumerate(runs)
    ]


def run_demo(out: str | Path, seed: int = 0, quick: bool = False, pdf: bool = False) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = QUICK if quick else DemoSettings()
    t0 = time.perf_counter()
    data = load("mnist1d", seed=seed)
    if quick:  # the tests' smoke run: a small subset keeps every section to seconds
        data = data.subset(400, 200, seed=seed)
    rep = Report("isthmus demo: connectivity on mnist1d")
    rep.text(
        f"Settings: {json.dumps(asdict(s))}, seed {seed}. Every number below was computed by "
        "this run; train loss is the mean cross-entropy over the whole training split."
    )
    summary: dict = {"settings": asdict(s), "seed": seed}
    header = ["net", "train loss", "train acc", "test loss", "test acc"]

    def mlp(width: int) -> ModelConfig:
        return ModelConfig(
            kind="mlp",
            depth=s.depth,
            width=width,
            input_shape=data.input_shape,
            num_classes=data.num_classes,
        )

    # 1. Two independently trained nets (one population call).
    cfg = mlp(s.width)
    model = build_model(cfg)
    plain = train_population(
        cfg,
        data,
        TrainConfig(epochs=s.epochs),
        [seed, seed + 1],
        out=out / "runs" / "plain",
        progress=False,
    )
    a, b = plain[0].params, plain[1].params
    rep.heading("1. Two independently trained MLPs (no dropout)")
    rep.table(header, _metrics_rows(plain, "plain", seed))
    png = plot.learning_curves(
        [r.metrics["history"] for r in plain],
        [f"seed {seed + i}" for i in range(2)],
        out / "learning_curves",
        pdf,
    )
    rep.figure(png, "Learning curves (solid: train split, dashed: test split).")

    # 2. Straight line vs a fitted one-bend Bezier curve.
    straight = evaluate_path(model, line(a, b), data, points=s.points)
    fit = fit_curve(
        model,
        BezierPath.on_line(a, b, 1),
        data,
        FitConfig(epochs=s.bezier_epochs),
        seed=seed,
        progress=False,
    )
    bez = evaluate_path(model, fit.path, data, points=s.points)
    rep.heading("2. Straight line vs Bezier curve")
    rep.table(
        ["path", "train-loss barrier", "vs endpoint mean", "test-loss barrier", "t of max"],
        [["straight line", *straight.barrier.values()], ["Bezier (1 bend)", *bez.barrier.values()]],
    )
    png = plot.path_profiles(
        [straight, bez], ["straight line", "Bezier, 1 bend"], out / "line_vs_bezier", pdf
    )
    rep.figure(png, "Loss and accuracy along the straight line and the fitted Bezier curve.")
    summary["line_vs_bezier"] = {"line": straight.barrier, "bezier": bez.barrier}

    # 3. Permutation alignment, then the straight line again.
    aligned = align(model, a, b, method="weights", seed=seed, progress=False)
    after = evaluate_path(model, line(a, aligned.params), data, points=s.points)
    rep.heading("3. Straight line after weight matching")
    rep.table(
        ["straight line", "train-loss barrier", "test-loss barrier"],
        [
            ["before alignment", straight.barrier["train_loss"], straight.barrier["test_loss"]],
            ["after weight matching", after.barrier["train_loss"], after.barrier["test_loss"]],
        ],
    )
    ccfg = ModelConfig(
        kind="cnn",
        channels=s.cnn_channels,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
    )
    cmodel = build_model(ccfg)
    cnns = train_population(
        ccfg,
        data,
        TrainConfig(epochs=s.cnn_epochs),
        [seed, seed + 1],
        out=out / "runs" / "cnn",
        progress=False,
    )
    ca, cb = cnns[0].params, cnns[1].params
    c_before = evaluate_path(cmodel, line(ca, cb), data, points=s.points)
    c_aligned = align(cmodel, ca, cb, method="weights", seed=seed, progress=False)
    c_after = evaluate_path(cmodel, line(ca, c_aligned.params), data, points=s.points)
    rep.table(
        ["CNN straight line", "train-loss barrier", "test-loss barrier"],
        [
            ["before alignment", c_before.barrier["train_loss"], c_before.barrier["test_loss"]],
            ["after weight matching", c_after.barrier["train_loss"], c_after.barrier["test_loss"]],
        ],
    )
    png = plot.alignment_curves(
        [("MLP, weight matching", straight, after), ("CNN, weight matching", c_before, c_after)],
        out / "alignment",
        pdf,
    )
    rep.figure(
        png,
        "Straight-line loss between two independently trained nets before and after "
        f"aligning B to A (MLP: {s.epochs} epochs; CNN {list(s.cnn_channels)}: "
        f"{s.cnn_epochs} epochs).",
    )
    summary["cnn_alignment"] = {"before": c_before.barrier, "after": c_after.barrier}
    summary["alignment"] = {"before": straight.barrier, "after": after.barrier}

    # 4. Provable connectivity from dropout stability.
    drop = train_population(
        cfg,
        data,
        TrainConfig(epochs=s.epochs, dropout=s.dropout),
        [seed + 2, seed + 3],
        out=out / "runs" / "dropout",
        progress=False,
    )
    da, db = drop[0].params, drop[1].params
    stab = [
        dropout_stability(model, p, data, draws=s.draws, swaps=s.draws, seed=seed, progress=False)
        for p in (da, db)
    ]
    path, cert = connect_dropout(
        model,
        da,
        db,
        data,
        stability_a=stab[0],
        stability_b=stab[1],
        seed=seed,
        points=s.points,
        progress=False,
    )
    d_line = evaluate_path(model, line(da, db), data, points=s.points)
    d_fit = fit_curve(
        model,
        BezierPath.on_line(da, db, 1),
        data,
        FitConfig(epochs=s.bezier_epochs),
        seed=seed,
        progress=False,
    )
    d_bez = evaluate_path(model, d_fit.path, data, points=s.points)
    plain_eps = dropout_stability(
        model, a, data, draws=s.draws, swaps=s.draws, seed=seed, progress=False
    ).epsilon
    c = cert.certificate
    rep.heading("4. Provable connectivity (Kuditipudi et al. 2019, Theorem 1)")
    rep.table(header, _metrics_rows(drop, f"dropout {s.dropout}", seed + 2))
    rows = [
        ["epsilon of A (dropout-trained)", stab[0].epsilon],
        ["epsilon of B", stab[1].epsilon],
        ["epsilon of a net trained without dropout", plain_eps],
        [
            "max(L_A, L_B) + max(eps_A, eps_B)",
            max(stab[0].loss, stab[1].loss) + max(stab[0].epsilon, stab[1].epsilon),
        ],
        ["certified bound (max over (a)-segment endpoints)", c["bound"]],
        ["max train loss on the constructed path (dense)", c["max_loss_on_path"]],
        ["certificate holds", str(c["holds"])],
        ["segments", len(cert.segments)],
        ["straight line: max train loss", max(d_line.train_loss)],
        ["Bezier curve: max train loss", max(d_bez.train_loss)],
    ]
    rep.table(["quantity", "value"], rows)
    png = plot.certified_path(cert, out / "certified_path", line=d_line, bezier=d_bez, pdf=pdf)
    rep.figure(
        png,
        "Train loss along the certified Theorem 1 path (segments shaded by kind), the "
        "straight line and a Bezier curve between the same dropout-trained nets.",
    )
    summary["provable"] = {
        "epsilon": [st.epsilon for st in stab],
        "plain_epsilon": plain_eps,
        "certificate": c,
        "segments": len(cert.segments),
        "line_max": max(d_line.train_loss),
        "bezier_max": max(d_bez.train_loss),
    }

    keep = [
        (
            f"trained with dropout {s.dropout}",
            dropout_loss_curve(model, da, data, draws=s.keep_draws, seed=seed),
        ),
        (
            "trained without dropout",
            dropout_loss_curve(model, a, data, draws=s.keep_draws, seed=seed),
        ),
    ]
    png = plot.dropout_keep_curves(keep, out / "keep_rate", pdf)
    rep.figure(
        png,
        "Train loss after random unit dropout (keep fraction q, survivors scaled by "
        "1/q) against q; bands: +-1 std over draws.",
    )

    series: dict[str, list[float]] = {f"dropout {s.dropout}": [], "no dropout": []}
    for w in s.widths:
        cw = mlp(w)
        mw = build_model(cw)
        for name, p in (("no dropout", 0.0), (f"dropout {s.dropout}", s.dropout)):
            r = train_population(
                cw, data, TrainConfig(epochs=s.width_epochs, dropout=p), [seed], progress=False
            )[0]
            series[name].append(
                dropout_stability(
                    mw,
                    r.params,
                    data,
                    draws=s.width_draws,
                    swaps=s.width_draws,
                    seed=seed,
                    progress=False,
                ).epsilon
            )
    png = plot.epsilon_vs_width(list(s.widths), series, out / "epsilon_vs_width", pdf)
    rep.figure(
        png,
        f"Dropout-stability epsilon against width ({s.width_epochs} epochs each, search with {s.width_draws} draws and swaps).",
    )
    summary["epsilon_vs_width"] = {"widths": list(s.widths), **series}

    summary["seconds"] = time.perf_counter() - t0
    write_json(out / "summary.json", summary)
    rep.text(f"Total time: {summary['seconds']:.0f} s. Machine-readable numbers: summary.json.")
    return rep.write(out / "report.html")
