"""Reproducing Kuditipudi et al. 2019, "Explaining landscape connectivity of low-cost solutions
for multilayer nets", claim by claim (docs/reproduction.md fixes each statistic and threshold).

K1 nets trained with dropout are far more dropout stable than nets trained without (per
   architecture: MLP and CNN); epsilon against width is measured and shown, not judged;
K2 the Theorem 1 path stays under its certificate while the straight line crosses a barrier;
K3 nets attenuate injected noise (noise stability), and the Theorem 2 path's straight segments
   between a net and its dropout version stay low while its other segments are certified;
K4 the counterexample: minimisers in different components keep a barrier that ordinary data
   does not (the proof is docs/counterexample.md; the searches are evidence).
Every step reuses the library: train_population, stability.dropout_stability / noise_stability /
dropout_loss_curve, paths.connect_dropout / connect_noise, counterexample.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ... import counterexample as cx
from ... import plot
from ...data import Dataset
from ...models import ModelConfig, build_model
from ...params import to
from ...paths import connect_dropout, connect_noise, evaluate_path, line
from ...stability import dropout_loss_curve, dropout_stability, noise_stability
from ...stability.results import DropoutStability
from ...train import TrainConfig, train
from .common import (
    Claim,
    Section,
    Steps,
    begin,
    figure,
    fmt,
    train_nets,
    verdict,
    write_outputs,
)

PAPER = "kuditipudi2019"
TITLE = "connectivity from dropout and noise stability"
REFERENCE = (
    "Kuditipudi, Wang, Lee, Zhang, Li, Hu, Ge, Arora: Explaining landscape connectivity of "
    "low-cost solutions for multilayer nets, NeurIPS 2019"
)
ARCHS = ("mlp", "cnn")
RATIO = 0.5  # K1: "far more" stable = mean epsilon at most this fraction of the plain nets'
NOISE = (0.5, 1.0)  # K3a: output change reproduced below / failed at or above
T2_BARRIER = (0.02, 0.1)  # K3b: straight-segment barrier reproduced at or below / failed above
CX_FACTOR = 10.0  # K4: barrier between components at least this many times the control's


@dataclass(frozen=True)
class Sizes:
    subset: tuple[int, int] | None  # (train, test) examples; None: the whole data set
    nets: int  # nets per family (seeds seed .. seed + nets - 1)
    width: int  # MLP hidden width (depth 3)
    epochs: int
    dropout: float
    channels: tuple  # CNN plan
    cnn_epochs: int
    draws: int  # dropout-stability random draws and swaps per start layer
    keep_draws: int  # draws per keep rate of the keep-rate curve
    widths: tuple[int, ...]  # epsilon against width
    width_epochs: int
    width_draws: int
    paths_on: tuple[str, ...]  # architectures that get the Theorem 1 and 2 paths
    points: int  # equally spaced t per path (on top of each segment's own)
    noise_examples: int
    noise_proj: int
    cx_width: int  # counterexample student width h
    cx_epochs: int  # its Bezier fit
    cx_steps: int  # its AutoNEB steps


SIZES = {
    "smoke": Sizes((300, 150), 2, 16, 2, 0.5, (4, "M", 4, "M"), 2, 8, 2, (8, 16), 1, 4,
                   ("mlp",), 11, 64, 8, 2, 50, 20),
    "quick": Sizes((2000, 500), 2, 128, 15, 0.5, (16, "M", 32, "M"), 8, 64, 10, (32, 64, 128),
                   8, 16, ("mlp",), 31, 128, 32, 3, 500, 100),
    "full": Sizes(None, 3, 512, 30, 0.5, (32, "M", 64, "M", 64, "M"), 30, 256, 20,
                  (32, 64, 128, 256, 512), 30, 64, ("mlp", "cnn"), 61, 256, 128, 3, 2000, 300),
}  # fmt: skip


def _model_cfg(s: Sizes, data: Dataset, arch: str, width: int | None = None) -> ModelConfig:
    if arch == "mlp":
        return ModelConfig(
            kind="mlp",
            depth=3,
            width=width or s.width,
            input_shape=data.input_shape,
            num_classes=data.num_classes,
        )
    return ModelConfig(
        kind="cnn", channels=s.channels, input_shape=data.input_shape, num_classes=data.num_classes
    )


@dataclass
class _Run:
    s: Sizes
    data: Dataset
    steps: Steps
    out: Path
    seed: int
    pdf: bool

    def seeds(self) -> list[int]:
        return [self.seed + k for k in range(self.s.nets)]

    def nets(self, arch: str, kind: str):
        s = self.s
        epochs = s.epochs if arch == "mlp" else s.cnn_epochs
        tc = TrainConfig(epochs=epochs, dropout=s.dropout if kind == "dropout" else 0.0)
        cfg = _model_cfg(s, self.data, arch)
        params, _ = train_nets(self.steps, f"train_{arch}_{kind}", cfg, self.data, tc, self.seeds())
        return cfg, params


def _stability(r: _Run, arch: str) -> dict:
    """K1: epsilon of every net of both families; the keep-rate curve of the first of each."""
    s = r.s
    cfg, drop = r.nets(arch, "dropout")
    _, plain = r.nets(arch, "plain")
    model = build_model(cfg)

    def fn(folder: Path) -> dict:
        kw = dict(draws=s.draws, swaps=s.draws, seed=r.seed, progress=False)
        res = {
            k: [dropout_stability(model, p, r.data, **kw).to_json() for p in ps]
            for k, ps in (("dropout", drop), ("plain", plain))
        }
        curves = [
            (
                f"trained with dropout {s.dropout}",
                dropout_loss_curve(model, drop[0], r.data, draws=s.keep_draws, seed=r.seed),
            ),
            (
                "trained without dropout",
                dropout_loss_curve(model, plain[0], r.data, draws=s.keep_draws, seed=r.seed),
            ),
        ]
        png = plot.dropout_keep_curves(curves, folder / f"keep_rate_{arch}", r.pdf)
        res["figures"] = [
            figure(
                r.out,
                png,
                f"{arch.upper()}: train loss after random dropout keeping a "
                "fraction q of every hidden layer (survivors scaled by 1/q), against q; first "
                f"net of each family, {s.keep_draws} draws per q, bands +-1 std.",
            )
        ]
        return res

    return r.steps.run(f"stability_{arch}", fn, {"draws": s.draws, "keep_draws": s.keep_draws})


def _theorem1(r: _Run, arch: str, stab: dict) -> dict:
    """K2: the certified Theorem 1 path between the first two dropout-trained nets, and the
    straight line between them (float64)."""
    cfg, drop = r.nets(arch, "dropout")
    model = build_model(cfg)

    def fn(folder: Path) -> dict:
        sa, sb = (DropoutStability.from_json(d) for d in stab["dropout"][:2])
        _, res = connect_dropout(
            model,
            drop[0],
            drop[1],
            r.data,
            stability_a=sa,
            stability_b=sb,
            seed=r.seed,
            points=r.s.points,
            progress=False,
        )
        m64, d64 = copy.deepcopy(model).double(), r.data.to(dtype=torch.float64)
        pa, pb = (to(p, dtype=torch.float64) for p in drop[:2])
        lin = evaluate_path(m64, line(pa, pb), d64, points=r.s.points)
        png = plot.certified_path(
            res,
            folder / f"theorem1_{arch}",
            line=lin,
            pdf=r.pdf,
            title=f"Theorem 1 path, {arch.upper()} (dropout-trained pair)",
        )
        c = res.certificate
        keys = (
            "bound",
            "max_loss_on_path",
            "holds",
            "bound_within_theorem",
            "theorem_bound",
            "segment_count",
            "loss_a",
            "loss_b",
            "epsilon_a",
            "epsilon_b",
        )
        return {
            "certificate": {k: c.get(k) for k in keys},
            "line": {"max_loss": max(lin.train_loss), **lin.barrier},
            "figures": [
                figure(
                    r.out,
                    png,
                    f"{arch.upper()}: train loss along the certified "
                    "Theorem 1 path (segments shaded by kind), its certified bound "
                    "and the straight line between the same two nets.",
                )
            ],
        }

    return r.steps.run(f"theorem1_{arch}", fn, {"points": r.s.points})


def _theorem2(r: _Run, arch: str) -> dict:
    """K3: noise stability of the two dropout-trained nets (and of a plain one, for contrast)
    and the Theorem 2 path between the dropout-trained pair."""
    s = r.s
    cfg, drop = r.nets(arch, "dropout")
    _, plain = r.nets(arch, "plain")
    model = build_model(cfg)

    def fn(folder: Path) -> dict:
        kw = dict(n_examples=s.noise_examples, n_proj=s.noise_proj, seed=r.seed)
        na, nb, npl = (noise_stability(model, p, r.data, **kw) for p in (*drop[:2], plain[0]))
        _, res = connect_noise(
            model,
            drop[0],
            drop[1],
            r.data,
            stability_a=na,
            stability_b=nb,
            seed=r.seed,
            points=s.points,
            progress=False,
        )
        png = plot.certified_path(
            res,
            folder / f"theorem2_{arch}",
            pdf=r.pdf,
            title=f"Theorem 2 path, {arch.upper()} (dropout-trained pair)",
        )
        png2 = plot.stability_noise(na, folder / f"noise_{arch}", r.pdf)
        c = res.certificate
        keys = (
            "bound",
            "max_loss_on_path",
            "holds",
            "loss_a",
            "loss_b",
            "loss_a1",
            "loss_b1",
            "line_max_loss",
            "line_barrier",
            "segment_count",
        )
        return {
            "certificate": {k: c.get(k) for k in keys},
            "output_change": {
                "a": na.output_relative_change,
                "b": nb.output_relative_change,
                "plain": npl.output_relative_change,
            },
            "noise_epsilon": [na.epsilon, nb.epsilon, npl.epsilon],
            "figures": [
                figure(
                    r.out,
                    png,
                    f"{arch.upper()}: train loss along the Theorem 2 path; its "
                    "first and last segments are straight lines from each net to its dropout "
                    "version (measured), the middle ones certified.",
                ),
                figure(
                    r.out,
                    png2,
                    f"{arch.upper()}: cushions and the attenuation of noise "
                    "injected at each hidden layer, first dropout-trained net.",
                ),
            ],
        }

    return r.steps.run(
        f"theorem2_{arch}",
        fn,
        {"n_examples": s.noise_examples, "n_proj": s.noise_proj, "points": s.points},
    )


def _width(r: _Run) -> dict:
    """Epsilon against width, with and without dropout in training (measured, not judged)."""
    s = r.s

    def fn(folder: Path) -> dict:
        series: dict[str, list[float]] = {f"dropout {s.dropout}": [], "no dropout": []}
        for w in s.widths:
            cfg = _model_cfg(s, r.data, "mlp", w)
            model = build_model(cfg)
            for name, p in (("no dropout", 0.0), (f"dropout {s.dropout}", s.dropout)):
                run = train(
                    cfg,
                    r.data,
                    TrainConfig(epochs=s.width_epochs, dropout=p),
                    r.seed,
                    progress=False,
                )
                st = dropout_stability(
                    model,
                    run.params,
                    r.data,
                    draws=s.width_draws,
                    swaps=s.width_draws,
                    seed=r.seed,
                    progress=False,
                )
                series[name].append(st.epsilon)
        png = plot.epsilon_vs_width(list(s.widths), series, folder / "epsilon_vs_width", r.pdf)
        cap = (
            f"MLP depth 3: dropout-stability epsilon against width ({s.width_epochs} epochs "
            f"each, seed {r.seed}, {s.width_draws} draws and swaps)."
        )
        return {"widths": list(s.widths), "epsilon": series, "figures": [figure(r.out, png, cap)]}

    return r.steps.run(
        "epsilon_vs_width",
        fn,
        {"widths": list(s.widths), "epochs": s.width_epochs, "draws": s.width_draws},
    )


def _counterexample(r: _Run) -> dict:
    s = r.s

    def fn(folder: Path) -> dict:
        h = s.cx_width
        res = cx.experiment(h, seed=r.seed, epochs=s.cx_epochs, steps=s.cx_steps)
        checks = {
            "labels": cx.check_labels(h),
            "blocking": cx.check_blocking(h),
            "private_units": cx.check_private_units(h),
        }
        png = plot.counterexample_paths(res, folder / "counterexample", r.pdf)
        cap = (
            f"Squared error along the straight line, a Bezier curve ({s.cx_epochs} epochs) and "
            f"AutoNEB ({s.cx_steps} steps): student width h = {h}, minimisers in different "
            "components (left) vs two exact fits of generic data (right)."
        )
        return {**res, "checks": checks, "figures": [figure(r.out, png, cap)]}

    return r.steps.run(
        "counterexample", fn, {"width": s.cx_width, "epochs": s.cx_epochs, "steps": s.cx_steps}
    )


# ----------------------------------------------------------------------------- claims


def _claim_k1(arch: str, st: dict) -> Claim:
    eps_d = [x["epsilon"] for x in st["dropout"]]
    eps_p = [x["epsilon"] for x in st["plain"]]
    mean_d, mean_p = sum(eps_d) / len(eps_d), sum(eps_p) / len(eps_p)
    ratio = mean_d / mean_p if mean_p > 0 else None  # undefined when plain nets are stable too
    ok = ratio is not None and max(eps_d) < min(eps_p) and ratio <= RATIO
    return Claim(
        f"K1_{arch}",
        f"{arch.upper()}: nets trained with dropout are far more dropout stable (smaller "
        "epsilon) than nets trained without.",
        "mean epsilon of the dropout-trained nets / mean epsilon of the nets trained without",
        f"reproduced: every dropout net's epsilon below every plain net's and ratio <= {RATIO:g}; "
        "not reproduced: mean epsilon with dropout >= without (inconclusive when the plain nets' "
        "mean epsilon is <= 0)",
        ratio,
        f"ratio {fmt(ratio)} (eps dropout {', '.join(fmt(e) for e in eps_d)}; "
        f"no dropout {', '.join(fmt(e) for e in eps_p)})",
        verdict(ok, mean_p > 0 and mean_d >= mean_p),
        [f"train_{arch}_dropout", f"train_{arch}_plain", f"stability_{arch}"],
        {"epsilon_dropout": eps_d, "epsilon_plain": eps_p},
    )


def _claim_k2(arch: str, t1: dict) -> Claim:
    c, ln = t1["certificate"], t1["line"]
    holds = bool(c["holds"])
    above = ln["max_loss"] - c["bound"]
    return Claim(
        f"K2_{arch}",
        f"{arch.upper()}: the Theorem 1 path between two dropout-stable nets stays under its "
        "certified bound (<= max(L_A, L_B) + epsilon) at every point, while the straight line "
        "crosses a barrier.",
        "certificate holds; straight line's max train loss minus the certified bound",
        "reproduced: certificate holds and the line rises above the bound (> 0); not reproduced: "
        "the certificate fails",
        above,
        f"path max {fmt(c['max_loss_on_path'], 4)} <= bound {fmt(c['bound'], 4)}: "
        f"{'holds' if holds else 'FAILS'}; line max {fmt(ln['max_loss'], 4)} "
        f"(barrier {fmt(ln['train_loss'])}), {c['segment_count']} segments",
        verdict(holds and above > 0, not holds),
        [f"train_{arch}_dropout", f"stability_{arch}", f"theorem1_{arch}"],
        {"certificate": c, "line": ln},
    )


def _claim_k3(arch: str, t2: dict) -> tuple[Claim, Claim]:
    oc = t2["output_change"]
    first = [v[0] for v in (oc["a"], oc["b"]) if v and v[0] is not None]
    change = sum(first) / len(first) if first else None
    plain = oc["plain"][0] if oc["plain"] else None
    steps = [f"train_{arch}_dropout", f"train_{arch}_plain", f"theorem2_{arch}"]
    noise = Claim(
        f"K3a_{arch}",
        f"{arch.upper()}: trained nets are noise stable: Gaussian noise as large as a hidden "
        "layer's own activations is strongly attenuated on its way to the output.",
        "relative output change for noise of relative size 1 injected at hidden layer 1, mean "
        "of the two dropout-trained nets",
        f"reproduced: < {NOISE[0]:g}; not reproduced: >= {NOISE[1]:g} (no attenuation)",
        change,
        f"{fmt(change)} (net trained without dropout: {fmt(plain)})",
        verdict(change is not None and change < NOISE[0], change is None or change >= NOISE[1]),
        steps,
        {"output_change": oc, "noise_epsilon": t2["noise_epsilon"]},
    )
    c = t2["certificate"]
    barrier = max(c["line_barrier"])
    lo, hi = T2_BARRIER
    path = Claim(
        f"K3b_{arch}",
        f"{arch.upper()}: the Theorem 2 path (straight from each net to its dropout version, "
        "then certified moves) connects the nets at low loss.",
        "larger barrier of the two straight segments (net to its dropout version), with the "
        "certificate of the middle segments",
        f"reproduced: certificate holds and barrier <= {lo:g} nats; not reproduced: certificate "
        f"fails or barrier > {hi:g}",
        barrier,
        f"straight-segment barriers {', '.join(fmt(b) for b in c['line_barrier'])}; path max "
        f"{fmt(c['max_loss_on_path'], 4)}, endpoints {fmt(c['loss_a'], 4)}, {fmt(c['loss_b'], 4)}; "
        f"certificate {'holds' if c['holds'] else 'FAILS'}",
        verdict(bool(c["holds"]) and barrier <= lo, not c["holds"] or barrier > hi),
        steps,
        {"certificate": c},
    )
    return noise, path


def _claim_k4(res: dict) -> Claim:
    special = min(res["counterexample"][k]["max_loss"] for k in ("bezier", "neb"))
    ordinary = max(res["ordinary"][k]["max_loss"] for k in ("bezier", "neb"))
    ch = res["checks"]
    proof = (
        ch["labels"]["max_abs_zero_label"] == 0.0
        and ch["labels"]["min_positive_label"] > 0
        and ch["blocking"] <= 1e-9
        and ch["private_units"]
    )
    ratio = special / max(ordinary, 1e-12)
    return Claim(
        "K4",
        "Overparametrisation alone is not enough: there are data on which the global minimisers "
        f"of a wide two-layer ReLU net (here h = {res['h']}) are disconnected.",
        "lowest max loss of the Bezier and AutoNEB paths between minimisers in different "
        "components / highest of the same searches between exact fits of generic data",
        f"reproduced: the proof's checks pass and the ratio >= {CX_FACTOR:g}; not reproduced: a "
        "check fails or the ratio <= 1",
        ratio,
        f"ratio {fmt(ratio)} (between components {fmt(special)}, ordinary data {fmt(ordinary)}); "
        f"proof checks {'pass' if proof else 'FAIL'}",
        verdict(proof and ratio >= CX_FACTOR, not proof or ratio <= 1),
        ["counterexample"],
        {"checks": ch, "between_components": special, "ordinary": ordinary},
    )


def run(
    out: Path,
    *,
    size: str = "full",
    seed: int = 0,
    data: str = "mnist1d",
    root: str | None = None,
    resume: bool = False,
    pdf: bool = False,
    command: Sequence[str] | None = None,
    progress: bool | None = None,
) -> Path:
    """Every step and claim of this paper into `out`; returns out/report.html."""
    t0 = time.perf_counter()
    s = SIZES[size]
    settings, ds, steps = begin(
        PAPER, s, out, size=size, seed=seed, data=data, root=root, resume=resume,
        progress=progress,
    )  # fmt: skip
    r = _Run(s, ds, steps, out, seed, pdf)
    claims, sections = [], []
    for arch in ARCHS:
        st = _stability(r, arch)
        claims.append(_claim_k1(arch, st))
        eps = [
            [f"{k} seed {seed + i}", x["loss"], x["epsilon"]]
            for k in ("dropout", "plain")
            for i, x in enumerate(st[k])
        ]
        sections.append(
            Section(
                f"Dropout stability, {arch.upper()}",
                f"{s.nets} nets trained with dropout {s.dropout} and {s.nets} without (same seeds); "
                "epsilon = max over start layers of L(theta_i) - L(theta), best kept sets found by "
                "the search.",
                [f"stability_{arch}"],
                ["net", "train loss", "epsilon"],
                eps,
            )
        )
    width = _width(r)
    w_rows = [
        [w, *(width["epsilon"][k][i] for k in width["epsilon"])]
        for i, w in enumerate(width["widths"])
    ]
    sections.append(
        Section(
            "Epsilon against width (measured, not a claim)",
            "How dropout stability varies with the hidden width, with and without dropout in training.",
            ["epsilon_vs_width"],
            ["width", *width["epsilon"]],
            w_rows,
        )
    )
    for arch in s.paths_on:
        st = steps.done[f"stability_{arch}"]["result"]
        t1 = _theorem1(r, arch, st)
        claims.append(_claim_k2(arch, t1))
        t2 = _theorem2(r, arch)
        claims += _claim_k3(arch, t2)
        sections.append(
            Section(
                f"Theorem 1 and Theorem 2 paths, {arch.upper()}",
                "Between the first two dropout-trained nets (seeds "
                f"{seed} and {seed + 1}), in float64.",
                [f"theorem1_{arch}", f"theorem2_{arch}"],
            )
        )
    res = _counterexample(r)
    claims.append(_claim_k4(res))
    sections.append(
        Section(
            "The counterexample (Theorem 4)",
            "Our own construction and proof (docs/counterexample.md); the searches between its "
            "minimisers are evidence, the proof is the document.",
            ["counterexample"],
        )
    )
    measured = {"epsilon_vs_width": {"widths": width["widths"], "epsilon": width["epsilon"]}}
    return write_outputs(
        out,
        paper=PAPER,
        title=TITLE,
        reference=REFERENCE,
        size=size,
        settings=settings,
        steps=steps,
        claims=claims,
        sections=sections,
        measured=measured,
        command=command,
        seconds=time.perf_counter() - t0,
    )
