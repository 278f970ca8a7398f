"""Reproducing Fort & Jastrzebski 2019, "Large scale structure of neural network loss
landscapes", claim by claim (docs/reproduction.md fixes each statistic and threshold).

F1-F4 the wedge model (our concrete design, docs/large_scale.md): descent lands on wedges;
   straight lines between wedges cross high loss while paths through an intersection stay low;
   random-subspace training succeeds only above d = D - n; a larger learning rate ends farther
   out and flatter (a random 2-D cut, the "radial tunnel", is shown, not judged);
F5 real nets: learning rate, width and L2 change the curvature at the end of training in similar
   ways (larger lr or width: flatter; larger L2: the same knob turned the other way);
F6 N solutions are joined by a low-loss complex (Benton et al.'s construction);
F7 ensembles: independent solutions are more diverse, and a better ensemble, than samples from
   one low-loss simplex grown around one of them.
Every step reuses the library: experiments.wedges, study.run_study, subspace.join /
grow_simplex / evaluate_complex, ensemble.compare.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ... import plot
from ...data import Dataset
from ...ensemble import Source, compare
from ...models import ModelConfig, build_model
from ...params import unstack
from ...paths.fit import FitConfig
from ...seeding import generator
from ...study import run_study
from ...subspace import evaluate_complex, grow_simplex, join
from ...train import TrainConfig
from ...wedges import WedgeConfig, WedgeModel
from .. import wedges as wx
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

PAPER = "fort2019"
TITLE = "large-scale structure of loss landscapes"
REFERENCE = (
    "Fort, Jastrzebski: Large scale structure of neural network loss landscapes, NeurIPS 2019"
)
SAMPLE_STREAM = 229  # seeding purpose: the members drawn from the grown simplex
LANDED = (0.9, 0.5)  # F1: reproduced at or above / not reproduced below
TUNNEL = 0.01  # F2: intersection path's max loss at most this fraction of the line's
SUBSPACE = (0.1, 0.9)  # F3: success below d = D - n at most / above at least
TREND = 0.1  # F5: a relative change of the top eigenvalue of at least 10% counts
JOIN_EXCESS = 0.1  # F6: nats above the worst solution for the 99% quantile of the samples
HYPERS = ("lr", "width", "l2")
EXPECTED = {"lr": -1, "width": -1, "l2": +1}  # F5: sign of the top eigenvalue's change


@dataclass(frozen=True)
class Sizes:
    subset: tuple[int, int] | None
    wedge: tuple[int, int, int]  # D, n, K
    starts: int  # landing runs
    steps: int  # descent steps (landing, subspaces, cut)
    sub_starts: int
    grid: int  # cut resolution
    lr_starts: int
    lr_steps: int
    eig_points: int
    channels: tuple  # CNN plan of F5-F7 (a width w scales it by w / 32)
    epochs: int
    study_values: dict  # hyperparameter -> values
    study_seeds: int
    examples: int  # Hessian examples
    probes: int
    directions: int
    solutions: int  # N
    connectors: int
    join_epochs: int
    samples: int  # uniform samples of the complex
    edge_points: int
    grow_k: int
    grow_epochs: int


SIZES = {
    "smoke": Sizes((300, 150), (20, 12, 3), 16, 300, 8, 11, 16, 500, 4, (4, "M", 4, "M"), 1,
                   {"lr": (0.01, 0.1), "width": (16, 32), "l2": (0.0, 0.01)}, 1, 100, 2, 1,
                   3, 1, 2, 32, 5, 2, 1),
    "quick": Sizes((2000, 500), (40, 24, 4), 100, 1000, 32, 31, 64, 2000, 8,
                   (16, "M", 32, "M"), 10,
                   {"lr": (0.01, 0.1), "width": (8, 32), "l2": (0.0, 0.01)}, 1, 500, 5, 2,
                   4, 2, 20, 128, 11, 3, 5),
    "full": Sizes(None, (200, 120, 6), 500, 2000, 64, 61, 200, 3000, 16,
                  (32, "M", 64, "M", 64, "M"), 30,
                  {"lr": (0.01, 0.02, 0.05, 0.1), "width": (8, 16, 32, 64),
                   "l2": (0.0, 0.0001, 0.001, 0.01)}, 3, 1000, 20, 5,
                  5, 2, 200, 256, 21, 4, 20),
}  # fmt: skip


@dataclass
class _Run:
    s: Sizes
    data: Dataset
    steps: Steps
    out: Path
    seed: int
    pdf: bool

    def cnn(self) -> ModelConfig:
        return ModelConfig(
            kind="cnn",
            channels=self.s.channels,
            input_shape=self.data.input_shape,
            num_classes=self.data.num_classes,
        )


# ----------------------------------------------------------------------------- wedge model


def _wedges(r: _Run) -> dict[str, dict]:
    s = r.s
    D, n, K = s.wedge
    model = WedgeModel.random(WedgeConfig(dim=D, wedge_dim=n, wedges=K), seed=r.seed)
    cfg = {"dim": D, "wedge_dim": n, "wedges": K}
    runs = {
        "landing": (
            lambda: wx.landing(model, starts=s.starts, steps=s.steps, seed=r.seed),
            plot.wedge_landing,
            {"starts": s.starts, "steps": s.steps},
            f"Final loss and radius of {s.starts} descents from random starts.",
        ),
        "tunnels": (
            lambda: wx.tunnels(model, seed=r.seed),
            plot.wedge_tunnels,
            {},
            "Loss along the straight line between solutions on two wedges, along the "
            "path through their intersection and along AutoNEB.",
        ),
        "subspaces": (
            lambda: wx.subspaces(model, starts=s.sub_starts, steps=s.steps, seed=r.seed),
            plot.wedge_subspaces,
            {"starts": s.sub_starts, "steps": s.steps},
            "Success rate of training in a random d-dimensional subspace against d.",
        ),
        "cut": (
            lambda: wx.cut(model, grid=s.grid, steps=s.steps, seed=r.seed),
            plot.wedge_cut,
            {"grid": s.grid, "steps": s.steps},
            "Loss on a random plane through the origin and a solution: a radial tunnel.",
        ),
        "lr": (
            lambda: wx.learning_rates(
                model, starts=s.lr_starts, steps=s.lr_steps, eig_points=s.eig_points, seed=r.seed
            ),
            plot.wedge_learning_rates,
            {"starts": s.lr_starts, "steps": s.lr_steps, "eig_points": s.eig_points},
            "Final radius and top Hessian eigenvalue against the learning rate (with and "
            "without L2), and the curvature across a wedge against the radius.",
        ),
    }
    out = {}
    for name, (compute, draw, settings, caption) in runs.items():

        def fn(folder: Path, compute=compute, draw=draw, caption=caption, name=name) -> dict:
            res = compute()
            png = draw(res, folder / f"wedge_{name}", pdf=r.pdf)
            doc = res.to_json()
            if name == "cut":  # the grid is in the figure; keep the file small
                doc = {"kept": "figure only"}
            return {
                **doc,
                "figures": [
                    figure(r.out, png, f"Wedge model (D = {D}, n = {n}, K = {K}): {caption}")
                ],
            }

        out[name] = r.steps.run(f"wedge_{name}", fn, {**cfg, **settings})
    return out


def _claims_wedges(w: dict) -> list[Claim]:
    landed = w["landing"]["landed"]
    lo_land = LANDED[1]
    m = w["tunnels"]["max_loss"]
    frac = m["intersection"] / max(m["line"], 1e-300)
    below = [x["success"] for x in w["subspaces"]["rows"] if x["d"] < x["dim"] - x["wedge_dim"]]
    above = [x["success"] for x in w["subspaces"]["rows"] if x["d"] > x["dim"] - x["wedge_dim"]]
    b_mean = sum(below) / len(below) if below else None
    a_mean = sum(above) / len(above) if above else None
    rows = sorted(
        (
            x
            for x in w["lr"]["rows"]
            if x["l2"] == 0
            and x["radius_mean"] == x["radius_mean"]
            and x["top_eigenvalue_mean"] is not None
        ),
        key=lambda x: x["lr"],
    )
    if len(rows) >= 2:
        r0, r1 = rows[0], rows[-1]
        out_ = r1["radius_mean"] > r0["radius_mean"]
        flat = r1["top_eigenvalue_mean"] < r0["top_eigenvalue_mean"]
        lr_val = r1["radius_mean"] / r0["radius_mean"]
        lr_shown = (
            f"lr {r0['lr']:g} -> {r1['lr']:g}: radius {fmt(r0['radius_mean'])} -> "
            f"{fmt(r1['radius_mean'])}, top eigenvalue {fmt(r0['top_eigenvalue_mean'])} -> "
            f"{fmt(r1['top_eigenvalue_mean'])}"
        )
    else:
        out_ = flat = False
        lr_val, lr_shown = None, "fewer than two learning rates converged"
    sub_ok = b_mean is not None and a_mean is not None
    return [
        Claim(
            "F1",
            "Gradient descent from random starts ends on the low-loss wedges.",
            "fraction of descents whose final loss is below 1% of their start loss",
            f"reproduced: >= {LANDED[0]:g}; not reproduced: < {lo_land:g}",
            landed,
            f"{landed:.0%} of {len(w['landing']['final_loss'])} runs",
            verdict(landed >= LANDED[0], landed < lo_land),
            ["wedge_landing"],
        ),
        Claim(
            "F2",
            "Straight lines between solutions on different wedges cross high loss, "
            "while a path through the wedges' intersection stays at (near) zero loss.",
            "max loss through the intersection / max loss on the straight line",
            f"reproduced: <= {TUNNEL:g}; not reproduced: >= 1",
            frac,
            f"{fmt(frac)} (line {fmt(m['line'])}, intersection {fmt(m['intersection'])}, "
            f"AutoNEB {fmt(m['autoneb'])})",
            verdict(frac <= TUNNEL, frac >= 1),
            ["wedge_tunnels"],
            {"max_loss": m},
        ),
        Claim(
            "F3",
            "Training restricted to a random d-dimensional subspace succeeds only when "
            "d > D - n (a random d-plane meets an n-dimensional wedge when d + n > D).",
            "mean success rate for d > D - n minus that for d < D - n",
            f"reproduced: below <= {SUBSPACE[0]:g} and above >= {SUBSPACE[1]:g}; not "
            "reproduced: above <= below",
            (a_mean - b_mean) if sub_ok else None,
            f"below {fmt(b_mean)}, above {fmt(a_mean)}",
            verdict(
                sub_ok and b_mean <= SUBSPACE[0] and a_mean >= SUBSPACE[1],
                not sub_ok or a_mean <= b_mean,
            ),
            ["wedge_subspaces"],
        ),
        Claim(
            "F4",
            "A larger learning rate ends farther out, where wedges are wider and the "
            "curvature is lower.",
            "radius and top Hessian eigenvalue at the smallest vs the largest converged "
            "learning rate (no L2)",
            "reproduced: radius grows and top eigenvalue falls; not reproduced: the radius "
            "does not grow",
            lr_val,
            lr_shown,
            verdict(out_ and flat, not out_),
            ["wedge_lr"],
        ),
    ]


# ----------------------------------------------------------------------------- real nets


def _study(r: _Run, hyper: str) -> dict:
    s = r.s
    values = list(s.study_values[hyper])
    seeds = [r.seed + k for k in range(s.study_seeds)]
    tc = TrainConfig(epochs=s.epochs)

    def fn(folder: Path) -> dict:
        res = run_study(
            r.cnn(),
            r.data,
            tc,
            hyper,
            values,
            seeds,
            examples=s.examples,
            directions=s.directions,
            probes=s.probes,
            measure_every=0,
            progress=False,
        )
        png = plot.study_trends(res, folder / f"study_{hyper}", pdf=r.pdf)
        doc = res.to_json()
        cap = (
            f"CNN {list(s.channels)} ({s.epochs} epochs, {len(seeds)} seed(s)): radius, "
            f"curvature and loss rises against {hyper} (mean +- std over seeds)."
        )
        return {
            "summary": doc["summary"],
            "rows": doc["rows"],
            "figures": [figure(r.out, png, cap)],
        }

    settings = {
        "values": values,
        "seeds": seeds,
        "model": r.cnn().to_dict(),
        "train": asdict(tc),
        "examples": s.examples,
        "probes": s.probes,
        "directions": s.directions,
    }
    return r.steps.run(f"study_{hyper}", fn, settings)


def _claim_trends(studies: dict[str, dict]) -> Claim:
    agree, parts, detail = 0, [], {}
    for h in HYPERS:
        summ = studies[h]["summary"]
        a, b = summ[0]["top_eigenvalue"]["mean"], summ[-1]["top_eigenvalue"]["mean"]
        change = (b - a) / max(abs(a), 1e-12)
        ok = change * EXPECTED[h] >= TREND
        agree += ok
        parts.append(f"{h} {summ[0]['value']:g} -> {summ[-1]['value']:g}: {fmt(a)} -> {fmt(b)}")
        detail[h] = {"first": a, "last": b, "relative_change": change, "as_expected": ok}
    return Claim(
        "F5",
        "Learning rate, width and L2 change the curvature of the region training reaches in "
        "similar ways: a larger learning rate or width ends flatter, a larger L2 sharper (the "
        "same knob turned the other way).",
        "hyperparameters (of 3) whose top Hessian eigenvalue changes in that direction by at "
        f"least {TREND:.0%} from the smallest to the largest value",
        "reproduced: 3 of 3; not reproduced: 0 or 1 of 3",
        float(agree),
        f"{agree} of 3 ({'; '.join(parts)})",
        verdict(agree == 3, agree <= 1),
        [f"study_{h}" for h in HYPERS],
        detail,
    )


def _solutions(r: _Run):
    s = r.s
    seeds = [r.seed + k for k in range(s.solutions)]
    return train_nets(
        r.steps, "train_solutions", r.cnn(), r.data, TrainConfig(epochs=s.epochs), seeds
    )[0]


def _join(r: _Run, sols) -> dict:
    s = r.s
    model = build_model(r.cnn())
    fit = FitConfig(epochs=s.join_epochs, lr=0.05, samples=1)

    def fn(folder: Path) -> dict:
        cx, _ = join(
            model, sols, r.data, connectors=s.connectors, cfg=fit, seed=r.seed, progress=False
        )
        ev = evaluate_complex(
            model, cx, r.data, samples=s.samples, edge_points=s.edge_points, seed=r.seed
        ).to_json()
        shape = {
            "method": "join",
            "vertices": len(cx.vertices),
            "simplices": [list(x) for x in cx.simplices],
        }
        png = plot.subspace_losses({**ev, **shape}, folder / "complex", pdf=r.pdf)
        keys = ("solution_loss", "connector_loss", "sample_loss", "line_max_loss")
        cap = (
            f"{s.solutions} CNNs joined by {s.connectors} connectors: train loss at the "
            "solutions, connectors and uniform samples beside the straight lines' maxima; "
            "loss along every edge."
        )
        return {**{k: ev[k] for k in keys}, "figures": [figure(r.out, png, cap)]}

    return r.steps.run(
        "join",
        fn,
        {
            "connectors": s.connectors,
            "fit": asdict(fit),
            "samples": s.samples,
            "edge_points": s.edge_points,
        },
    )


def _claim_join(j: dict) -> Claim:
    worst = max(j["solution_loss"])
    q99 = j["sample_loss"]["quantiles"]["0.99"]
    excess, line_excess = q99 - worst, j["line_max_loss"] - worst
    return Claim(
        "F6",
        "Sets of N solutions, not only pairs, are joined by low-loss subspaces (here a complex "
        "of simplices sharing trained connectors).",
        "99% quantile of the train loss of uniform samples of the complex minus the worst "
        "solution's train loss (nats)",
        f"reproduced: <= {JOIN_EXCESS:g}; not reproduced: above that and above the straight "
        "lines' excess (the complex no better than the lines)",
        excess,
        f"{fmt(excess)} (straight lines: {fmt(line_excess)}; worst solution {fmt(worst)})",
        verdict(excess <= JOIN_EXCESS, excess > max(JOIN_EXCESS, line_excess)),
        ["train_solutions", "join"],
        {"line_excess": line_excess, "worst_solution": worst, "q99": q99},
    )


def _ensembles(r: _Run, sols) -> dict:
    s = r.s
    model = build_model(r.cnn())
    fit = FitConfig(epochs=s.grow_epochs)

    def fn(folder: Path) -> dict:
        cx, _ = grow_simplex(model, sols[0], s.grow_k, r.data, fit, seed=r.seed, progress=False)
        drawn = unstack(cx.sample(s.solutions, generator(r.seed, 0, SAMPLE_STREAM)))
        srcs = [Source("independent", model, list(sols)), Source("one simplex", model, drawn)]
        res = compare(srcs, r.data, seed=r.seed)
        png1 = plot.ensemble_diversity(res, folder / "ensemble_diversity", pdf=r.pdf)
        png2 = plot.ensemble_growth(res, folder / "ensemble_growth", pdf=r.pdf)
        keep = ("members", "accuracy", "nll", "disagreement", "js", "member_accuracy")
        doc = {k: {f: v[f] for f in keep} for k, v in res.to_json()["sources"].items()}
        return {
            "sources": doc,
            "figures": [
                figure(
                    r.out,
                    png1,
                    f"{s.solutions} independent CNNs vs {s.solutions} samples of a "
                    f"{s.grow_k}-simplex grown around the first: diversity against ensemble gain.",
                ),
                figure(r.out, png2, "Ensemble accuracy and NLL against the number of members."),
            ],
        }

    return r.steps.run(
        "ensembles", fn, {"grow_k": s.grow_k, "fit": asdict(fit), "members": s.solutions}
    )


def _claim_ensembles(e: dict) -> Claim:
    ind, sub = e["sources"]["independent"], e["sources"]["one simplex"]
    ratio = ind["disagreement"] / max(sub["disagreement"], 1e-12)
    better = ind["nll"] <= sub["nll"]
    return Claim(
        "F7",
        "Independently trained solutions are more diverse than samples from one low-loss "
        "subspace, and the better ensemble.",
        "test disagreement of independent members / of simplex samples; ensemble test NLL of both",
        "reproduced: ratio > 1 and the independent ensemble's NLL <= the simplex's; not "
        "reproduced: ratio <= 1",
        ratio,
        f"ratio {fmt(ratio)}; NLL independent {fmt(ind['nll'])} vs simplex {fmt(sub['nll'])}",
        verdict(ratio > 1 and better, ratio <= 1),
        ["train_solutions", "ensembles"],
        {"independent": ind, "simplex": sub},
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
    w = _wedges(r)
    claims = _claims_wedges(w)
    studies = {h: _study(r, h) for h in HYPERS}
    claims.append(_claim_trends(studies))
    sols = _solutions(r)
    j = _join(r, sols)
    claims.append(_claim_join(j))
    e = _ensembles(r, sols)
    claims.append(_claim_ensembles(e))
    D, n, K = s.wedge
    trend_rows = [
        [
            h,
            x["value"],
            x["radius"]["mean"],
            x["top_eigenvalue"]["mean"],
            x["trace"]["mean"],
            x["train_loss"]["mean"],
        ]
        for h in HYPERS
        for x in studies[h]["summary"]
    ]
    ens_rows = [
        [k, v["members"], v["accuracy"], v["nll"], v["disagreement"], v["js"]]
        for k, v in e["sources"].items()
    ]
    sections = [
        Section(
            "The wedge model",
            f"K = {K} random n = {n}-dimensional wedges in R^D, D = {D} "
            "(our design from the paper's description, docs/large_scale.md).",
            [f"wedge_{k}" for k in ("landing", "tunnels", "subspaces", "cut", "lr")],
        ),
        Section(
            "Learning rate, width and L2 on a CNN",
            "End-of-training measurements, mean over seeds.",
            [f"study_{h}" for h in HYPERS],
            ["hyperparameter", "value", "radius", "top eigenvalue", "trace", "train loss"],
            trend_rows,
        ),
        Section(
            "N solutions joined by a complex",
            f"{s.solutions} CNNs (seeds {seed}..."
            f"{seed + s.solutions - 1}) and {s.connectors} trained connectors.",
            ["join"],
        ),
        Section(
            "Ensembles",
            "Independent solutions vs samples of one grown simplex, test split.",
            ["ensembles"],
            ["ensemble", "members", "accuracy", "NLL", "disagreement", "JS"],
            ens_rows,
        ),
    ]
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
        measured={},
        command=command,
        seconds=time.perf_counter() - t0,
    )
