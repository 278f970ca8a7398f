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

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from . import plot
from .align import align
from .data import Dataset, load
from .io import write_json
from .models import ModelConfig, build_model
from .params import Params
from .paths import PathResult, evaluate_path, line
from .paths.bezier import BezierPath
from .paths.dropout import connect_dropout
from .paths.fit import FitConfig, fit_curve
from .progress import stage
from .report import Link, Mark, Report
from .stability import StabilityResult, dropout_loss_curve, dropout_stability
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


@dataclass
class _Demo:
    """What every section of the demo shares: settings, data, the report and its summary."""

    s: DemoSettings
    data: Dataset
    out: Path
    seed: int
    pdf: bool
    rep: Report
    summary: dict
    progress: bool | None = None  # a line per section, a bar per loop (`progress` module)

    def mlp(self, width: int) -> ModelConfig:
        return ModelConfig(
            kind="mlp",
            depth=self.s.depth,
            width=width,
            input_shape=self.data.input_shape,
            num_classes=self.data.num_classes,
        )

    def train(self, cfg: ModelConfig, tc: TrainConfig, seeds: list[int], name: str | None):
        out = self.out / "runs" / name if name else None
        return train_population(cfg, self.data, tc, seeds, out=out, progress=False)

    def line(self, model: nn.Module, a: Params, b: Params) -> PathResult:
        return evaluate_path(model, line(a, b), self.data, points=self.s.points)

    def bezier(self, model: nn.Module, a: Params, b: Params) -> PathResult:
        fit = fit_curve(
            model,
            BezierPath.on_line(a, b, 1),
            self.data,
            FitConfig(epochs=self.s.bezier_epochs),
            seed=self.seed,
            progress=False,
        )
        return evaluate_path(model, fit.path, self.data, points=self.s.points)

    def epsilon(self, model: nn.Module, p: Params, draws: int) -> StabilityResult:
        return dropout_stability(
            model, p, self.data, draws=draws, swaps=draws, seed=self.seed, progress=False
        )


HEADER = ["net", "train loss", "train acc", "test loss", "test acc"]


def _two_nets(d: _Demo) -> tuple[nn.Module, Params, Params]:
    """1. Two independently trained nets (one population call) and their learning curves."""
    s, seed = d.s, d.seed
    cfg = d.mlp(s.width)
    model = build_model(cfg)
    plain = d.train(cfg, TrainConfig(epochs=s.epochs), [seed, seed + 1], "plain")
    d.rep.heading("1. Two independently trained MLPs (no dropout)")
    d.rep.table(HEADER, _metrics_rows(plain, "plain", seed))
    png = plot.learning_curves(
        [r.metrics["history"] for r in plain],
        [f"seed {seed + i}" for i in range(2)],
        d.out / "learning_curves",
        d.pdf,
    )
    d.rep.figure(png, "Learning curves (solid: train split, dashed: test split).")
    return model, plain[0].params, plain[1].params


def _line_vs_bezier(d: _Demo, model: nn.Module, a: Params, b: Params) -> PathResult:
    """2. The straight line vs a fitted one-bend Bezier curve (Garipov et al. 2018)."""
    straight = d.line(model, a, b)
    bez = d.bezier(model, a, b)
    d.rep.heading("2. Straight line vs Bezier curve")
    d.rep.table(
        ["path", "train-loss barrier", "vs endpoint mean", "test-loss barrier", "t of max"],
        [["straight line", *straight.barrier.values()], ["Bezier (1 bend)", *bez.barrier.values()]],
    )
    png = plot.path_profiles(
        [straight, bez], ["straight line", "Bezier, 1 bend"], d.out / "line_vs_bezier", d.pdf
    )
    d.rep.figure(png, "Loss and accuracy along the straight line and the fitted Bezier curve.")
    d.summary["line_vs_bezier"] = {"line": straight.barrier, "bezier": bez.barrier}
    return straight


def _barrier_rows(before: PathResult, after: PathResult) -> list[list]:
    return [
        ["before alignment", before.barrier["train_loss"], before.barrier["test_loss"]],
        ["after weight matching", after.barrier["train_loss"], after.barrier["test_loss"]],
    ]


def _alignment(d: _Demo, model: nn.Module, a: Params, b: Params, straight: PathResult) -> None:
    """3. The straight line after permutation alignment (weight matching), for the MLPs and
    for two CNNs."""
    s, seed = d.s, d.seed
    aligned = align(model, a, b, method="weights", seed=seed, progress=False)
    after = d.line(model, a, aligned.params)
    d.rep.heading("3. Straight line after weight matching")
    d.rep.table(
        ["straight line", "train-loss barrier", "test-loss barrier"], _barrier_rows(straight, after)
    )
    ccfg = ModelConfig(
        kind="cnn",
        channels=s.cnn_channels,
        input_shape=d.data.input_shape,
        num_classes=d.data.num_classes,
    )
    cmodel = build_model(ccfg)
    cnns = d.train(ccfg, TrainConfig(epochs=s.cnn_epochs), [seed, seed + 1], "cnn")
    ca, cb = cnns[0].params, cnns[1].params
    c_before = d.line(cmodel, ca, cb)
    c_aligned = align(cmodel, ca, cb, method="weights", seed=seed, progress=False)
    c_after = d.line(cmodel, ca, c_aligned.params)
    d.rep.table(
        ["CNN straight line", "train-loss barrier", "test-loss barrier"],
        _barrier_rows(c_before, c_after),
    )
    png = plot.alignment_curves(
        [("MLP, weight matching", straight, after), ("CNN, weight matching", c_before, c_after)],
        d.out / "alignment",
        d.pdf,
    )
    d.rep.figure(
        png,
        "Straight-line loss between two independently trained nets before and after "
        f"aligning B to A (MLP: {s.epochs} epochs; CNN {list(s.cnn_channels)}: "
        f"{s.cnn_epochs} epochs).",
    )
    d.summary["cnn_alignment"] = {"before": c_before.barrier, "after": c_after.barrier}
    d.summary["alignment"] = {"before": straight.barrier, "after": after.barrier}


def _provable(d: _Demo, model: nn.Module, a: Params) -> Params:
    """4. Provable connectivity (Kuditipudi et al. 2019, Theorem 1): a dropout-trained pair, its
    dropout stability, the certified path vs the straight line vs a Bezier curve."""
    s, seed = d.s, d.seed
    drop = d.train(
        d.mlp(s.width), TrainConfig(epochs=s.epochs, dropout=s.dropout), [seed + 2, seed + 3],
        "dropout",
    )  # fmt: skip
    da, db = drop[0].params, drop[1].params
    stab = [d.epsilon(model, p, s.draws) for p in (da, db)]
    path, cert = connect_dropout(
        model, da, db, d.data, stability_a=stab[0], stability_b=stab[1], seed=seed,
        points=s.points, progress=False,
    )  # fmt: skip
    d_line = d.line(model, da, db)
    d_bez = d.bezier(model, da, db)
    plain_eps = d.epsilon(model, a, s.draws).epsilon
    c = cert.certificate
    d.rep.heading("4. Provable connectivity (Kuditipudi et al. 2019, Theorem 1)")
    d.rep.table(HEADER, _metrics_rows(drop, f"dropout {s.dropout}", seed + 2))
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
        ["certificate", Mark("holds", "good") if c["holds"] else Mark("fails", "bad")],
        ["segments", len(cert.segments)],
        ["straight line: max train loss", max(d_line.train_loss)],
        ["Bezier curve: max train loss", max(d_bez.train_loss)],
    ]
    d.rep.table(["quantity", "value"], rows)
    png = plot.certified_path(cert, d.out / "certified_path", line=d_line, bezier=d_bez, pdf=d.pdf)
    d.rep.figure(
        png,
        "Train loss along the certified Theorem 1 path (segments shaded by kind), the "
        "straight line and a Bezier curve between the same dropout-trained nets.",
    )
    d.summary["provable"] = {
        "epsilon": [st.epsilon for st in stab],
        "plain_epsilon": plain_eps,
        "certificate": c,
        "segments": len(cert.segments),
        "line_max": max(d_line.train_loss),
        "bezier_max": max(d_bez.train_loss),
    }
    return da


def _keep_rate(d: _Demo, model: nn.Module, dropped: Params, plain: Params) -> None:
    """Train loss against the dropout keep rate, for a net trained with and without dropout."""
    s, seed = d.s, d.seed
    keep = [
        (
            f"trained with dropout {s.dropout}",
            dropout_loss_curve(model, dropped, d.data, draws=s.keep_draws, seed=seed),
        ),
        (
            "trained without dropout",
            dropout_loss_curve(model, plain, d.data, draws=s.keep_draws, seed=seed),
        ),
    ]
    png = plot.dropout_keep_curves(keep, d.out / "keep_rate", d.pdf)
    d.rep.figure(
        png,
        "Train loss after random unit dropout (keep fraction q, survivors scaled by "
        "1/q) against q; bands: +-1 std over draws.",
    )


def _epsilon_vs_width(d: _Demo) -> None:
    """Dropout-stability epsilon against width, with and without dropout in training."""
    s, seed = d.s, d.seed
    series: dict[str, list[float]] = {f"dropout {s.dropout}": [], "no dropout": []}
    for w in s.widths:
        cw = d.mlp(w)
        mw = build_model(cw)
        for name, p in (("no dropout", 0.0), (f"dropout {s.dropout}", s.dropout)):
            r = d.train(cw, TrainConfig(epochs=s.width_epochs, dropout=p), [seed], None)[0]
            series[name].append(d.epsilon(mw, r.params, s.width_draws).epsilon)
    png = plot.epsilon_vs_width(list(s.widths), series, d.out / "epsilon_vs_width", d.pdf)
    d.rep.figure(
        png,
        f"Dropout-stability epsilon against width ({s.width_epochs} epochs each, search with "
        f"{s.width_draws} draws and swaps).",
    )
    d.summary["epsilon_vs_width"] = {"widths": list(s.widths), **series}


def run_demo(
    out: str | Path,
    seed: int = 0,
    quick: bool = False,
    pdf: bool = False,
    command: Sequence[str] | None = None,
    progress: bool | None = None,
) -> Path:
    """Run every section of the demo into `out` and write out/report.html (returned; one
    self-contained page, figures embedded) and out/summary.json (every number of the report).
    `quick`: the small settings of the tests; `command`: the command line the report shows;
    `progress`: a line per section and a bar per loop on a terminal (`progress` module)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = QUICK if quick else DemoSettings()
    t0 = time.perf_counter()
    data = load("mnist1d", seed=seed)
    if quick:  # the tests' smoke run: a small subset keeps every section to seconds
        data = data.subset(400, 200, seed=seed)
    rep = Report("isthmus demo: connectivity on mnist1d", generator="isthmus demo")
    rep.text(
        "Every number below was computed by this run (settings at the end of the page); train "
        "loss is the mean cross-entropy over the whole training split."
    )
    d = _Demo(s, data, out, seed, pdf, rep, {"settings": asdict(s), "seed": seed}, progress)
    say = lambda msg: stage(f"demo {msg}", progress=progress)  # noqa: E731
    say("1/6: two nets trained as one population")
    model, a, b = _two_nets(d)
    say("2/6: straight line vs a fitted Bezier curve")
    straight = _line_vs_bezier(d, model, a, b)
    say("3/6: permutation alignment")
    _alignment(d, model, a, b, straight)
    say("4/6: provable connectivity (Theorem 1 path)")
    dropped = _provable(d, model, a)
    say("5/6: dropout keep rate")
    _keep_rate(d, model, dropped, a)
    say("6/6: dropout stability against width")
    _epsilon_vs_width(d)
    say(f"writing {out / 'report.html'}")
    d.summary["seconds"] = time.perf_counter() - t0
    write_json(out / "summary.json", d.summary)
    rep.heading("How it was made")
    if command:
        rep.command(list(command))
    rep.settings({"seed": seed, "quick": quick, **asdict(s)}, "settings")
    rep.text(f"Total time: {d.summary['seconds']:.0f} s.")
    files = [
        "summary.json",
        *(p.name for p in sorted(out.glob("*.png")) + sorted(out.glob("*.pdf"))),
    ]
    rep.links(
        [Link(f, f) for f in files],
        "Files beside this page (summary.json holds every number of the report; the figures are "
        "also embedded above):",
    )
    return rep.write(out / "report.html")
