"""Figures for papers: labelled axes with units, legends, PNG (and PDF on request).

Plot functions take results (dicts / dataclasses already computed) and draw; they compute nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .io import atomic_write_bytes  # noqa: E402


def save(fig, path: str | Path, pdf: bool = False) -> Path:
    """Save PNG (and PDF beside it if asked), atomically; close the figure."""
    import io as _io

    path = Path(path)
    for p, fmt in [(path.with_suffix(".png"), "png")] + (
        [(path.with_suffix(".pdf"), "pdf")] if pdf else []
    ):
        buf = _io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight")
        atomic_write_bytes(p, buf.getvalue())
    plt.close(fig)
    return path.with_suffix(".png")


def _get(r, key: str):
    """A field of a result dataclass (PathResult, SurfaceResult, stability results) or of its JSON
    dict (extra fields at top level)."""
    if isinstance(r, dict):
        return r.get(key)
    if hasattr(r, key):
        return getattr(r, key)
    return getattr(r, "extra", {}).get(key)


def learning_curves(
    histories: Sequence[Sequence[dict]], labels: Sequence[str], path: str | Path, pdf: bool = False
) -> Path:
    """Train/test loss and accuracy per epoch for several runs."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for h, lab in zip(histories, labels, strict=True):
        ep = [r["epoch"] for r in h]
        (l1,) = ax1.plot(ep, [r["train_loss"] for r in h], label=f"{lab} train")
        ax1.plot(ep, [r["test_loss"] for r in h], "--", color=l1.get_color(), label=f"{lab} test")
        ax2.plot(ep, [r["train_acc"] for r in h], color=l1.get_color(), label=f"{lab} train")
        ax2.plot(ep, [r["test_acc"] for r in h], "--", color=l1.get_color(), label=f"{lab} test")
    ax1.set(xlabel="epoch", ylabel="cross-entropy loss (nats)", title="loss")
    ax2.set(xlabel="epoch", ylabel="accuracy (fraction)", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    _figure_legend_below(fig, ax1)
    return save(fig, path, pdf)


def _figure_legend_below(fig, ax) -> None:
    """One legend for panels that draw the same lines (those of `ax`), below them all, where it
    covers no curve."""
    fig.tight_layout()
    handles, names = ax.get_legend_handles_labels()
    ncol = min(4, (len(handles) + 1) // 2)  # lines come in train / test pairs: one per column
    fig.legend(handles, names, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol)


def alignment_curves(
    entries: Sequence[tuple[str, object, object]], path: str | Path, pdf: bool = False
) -> Path:
    """Straight-line train/test loss vs t before and after permutation alignment, one panel each.

    `entries` are (label, before, after); before/after are `PathResult`s or path.json dicts with
    "t", "train_loss", "test_loss" and "barrier".
    """

    def get(r, key):
        return r[key] if isinstance(r, dict) else getattr(r, key)

    n = len(entries)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.8), squeeze=False)
    for ax, (label, before, after) in zip(axes[0], entries, strict=True):
        for r, name, color in ((before, "before", "0.45"), (after, "after", "C0")):
            b = get(r, "barrier")["train_loss"]
            ax.plot(
                get(r, "t"),
                get(r, "train_loss"),
                color=color,
                label=f"train, {name} (barrier {b:.3f})",
            )
            ax.plot(get(r, "t"), get(r, "test_loss"), "--", color=color, label=f"test, {name}")
        ax.set(xlabel="t (0 = net A, 1 = net B)", ylabel="cross-entropy loss (nats)", title=label)
        ax.grid(alpha=0.3)
        _legend_below(ax, ncol=2)
    return save(fig, path, pdf)


def _ticks_at(ax, values: Sequence[float]) -> None:
    """The values themselves as the x ticks (a log axis would label 3x10^1, 4x10^1, ...)."""
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(list(values)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([f"{v:g}" for v in values]))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def _legend_below(ax, ncol: int = 2, fontsize: int = 8) -> None:
    """The axes' legend under its x label, where it can never cover a curve."""
    ax.legend(fontsize=fontsize, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol)


# ----------------------------------------------------------------------------- stability


def stability_dropout(
    result, path: str | Path, curve: dict | None = None, pdf: bool = False
) -> Path:
    """L(theta_i) per start layer against L(theta) (with each search strategy's best), and, if
    given, the loss of random dropout vs keep rate (mean +- std over draws, min)."""
    n = 2 if curve else 1
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.8), squeeze=False)
    ax = axes[0][0]
    choices = _get(result, "by_start_layer")
    starts = [c["i"] if isinstance(c, dict) else c.i for c in choices]
    losses = [c["loss"] if isinstance(c, dict) else c.loss for c in choices]
    base = _get(result, "loss")
    ax.bar(starts, losses, color="C0", alpha=0.7, label="best L(theta_i)")
    ax.axhline(base, color="k", lw=1, label=f"L(theta) = {base:.4f}")
    best = (_get(result, "search") or {}).get("best_loss", {})
    for k, (name, vals) in enumerate(sorted(best.items())):
        ax.plot(starts, vals, "o", ms=5, color=f"C{k + 1}", label=f"{name} search")
    shown = [v for vals in best.values() for v in vals if v is not None] + losses + [base]
    if min(shown) > 0 and max(shown) > 10 * min(shown):  # a poor strategy would flatten the bars
        ax.set_yscale("log")
    ax.set(
        xlabel="start layer i (layers i..d-1 dropped)",
        ylabel="train cross-entropy (nats)",
        title=f"dropout stability: epsilon = {_get(result, 'epsilon'):.4f}",
        xticks=starts,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if curve:
        _keep_curve(axes[0][1], curve, "C0", "random dropout")
        axes[0][1].axhline(curve["loss"], color="k", lw=1, label="L(theta)")
        axes[0][1].legend(fontsize=8)
    return save(fig, path, pdf)


def _keep_curve(ax, curve: dict, color: str, label: str) -> None:
    q, mean = curve["keep_rates"], curve["mean"]
    lo = [m - s for m, s in zip(mean, curve["std"], strict=True)]
    hi = [m + s for m, s in zip(mean, curve["std"], strict=True)]
    ax.plot(q, mean, "o-", color=color, ms=3, label=f"{label} (mean of {curve['draws']})")
    ax.fill_between(q, lo, hi, color=color, alpha=0.2)
    ax.plot(q, curve["min"], ":", color=color, label=f"{label} (best draw)")
    ax.set(
        xlabel="keep fraction per hidden layer (r = 1/keep)",
        ylabel="train cross-entropy (nats)",
        title="loss of random dropout vs keep rate",
    )
    ax.grid(alpha=0.3)


def dropout_keep_curves(
    curves: Sequence[tuple[str, dict]], path: str | Path, pdf: bool = False
) -> Path:
    """Loss vs keep rate for several nets (e.g. trained with and without dropout), +-std bands."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for k, (label, curve) in enumerate(curves):
        _keep_curve(ax, curve, f"C{k}", label)
        ax.axhline(curve["loss"], color=f"C{k}", lw=0.8, ls="--", label=f"{label} (all units kept)")
    _legend_below(ax, ncol=1)
    return save(fig, path, pdf)


def epsilon_vs_width(
    widths: Sequence[int], series: dict[str, Sequence[float]], path: str | Path, pdf: bool = False
) -> Path:
    """Dropout-stability epsilon against hidden width, one line per family of nets."""
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for label, eps in series.items():
        ax.plot(widths, eps, "o-", label=label)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(
        xscale="log",
        xlabel="hidden width (units or channels)",
        ylabel="epsilon (nats of train loss)",
        title="dropout stability vs width",
    )
    _ticks_at(ax, widths)
    ax.grid(alpha=0.3)
    _legend_below(ax, ncol=2)
    return save(fig, path, pdf)


def stability_noise(result, path: str | Path, pdf: bool = False) -> Path:
    """Per-layer cushions (with the random-matrix level 1/sqrt(n)) and the attenuation of noise
    injected at each hidden layer, as it travels to the output."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.5, 3.8))
    cushion = _get(result, "layer_cushion")
    d = len(cushion)
    layers = list(range(1, d + 1))
    nan = float("nan")
    ax1.plot(layers, [nan if v is None else v for v in cushion], "o-", label="layer cushion mu_j")
    mu_from = _get(result, "interlayer_cushion_from")
    ax1.plot(
        layers[:-1],
        [nan if v is None else v for v in mu_from],
        "s-",
        label="interlayer cushion mu_{i->} (min over j > i)",
    )
    dims = _get(result, "dims")
    ax1.plot(layers[:-1], [n**-0.5 for n in dims], "k:", label="1/sqrt(n_i) (random level)")
    c, rho = _get(result, "activation_contraction"), _get(result, "interlayer_smoothness")
    ax1.set(
        xlabel="layer",
        ylabel="cushion (min over examples)",
        yscale="log",
        xticks=layers,
        title=f"c = {c if c is None else round(c, 3)}, rho = {rho if rho is None else round(rho, 3)}",
    )
    ax1.grid(alpha=0.3, which="both")
    ax1.legend(fontsize=8)
    for k, a in enumerate(_get(result, "attenuation")):
        vals = [nan if v is None else v for v in a["relative_change"]]
        ax2.plot(a["layers"], vals, "o-", color=f"C{k}", label=f"noise at layer {a['i']}")
    ax2.set(
        xlabel=f"layer j (j = {d}: output)",
        ylabel="relative change of x^j (f at j = d)",
        yscale="log",
        xticks=layers,
        title=f"noise attenuation (epsilon = {_get(result, 'epsilon'):.3g})",
    )
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=8)
    return save(fig, path, pdf)


# ----------------------------------------------------------------------------- paths and surfaces


def path_profiles(
    results: Sequence, labels: Sequence[str], path: str | Path, pdf: bool = False
) -> Path:
    """Loss and accuracy against t for several paths between the same two nets (train solid, test
    dashed); the legend gives each path's train-loss barrier. `results` are PathResults or
    path.json dicts."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.5, 3.8))
    for k, (r, lab) in enumerate(zip(results, labels, strict=True)):
        t, b, color = _get(r, "t"), _get(r, "barrier") or {}, f"C{k}"
        tag = f"{lab} (barrier {b['train_loss']:.3f})" if "train_loss" in b else lab
        ax1.plot(t, _get(r, "train_loss"), color=color, label=f"{tag} train")
        ax1.plot(t, _get(r, "test_loss"), "--", color=color, label=f"{lab} test")
        ax2.plot(t, _get(r, "train_acc"), color=color, label=f"{lab} train")
        ax2.plot(t, _get(r, "test_acc"), "--", color=color, label=f"{lab} test")
    ax1.set(xlabel="t (0 = net A, 1 = net B)", ylabel="cross-entropy loss (nats)", title="loss")
    ax2.set(xlabel="t (0 = net A, 1 = net B)", ylabel="accuracy (fraction)", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    _figure_legend_below(fig, ax1)
    return save(fig, path, pdf)


def surface(result, path: str | Path, pdf: bool = False, field: str = "train_loss") -> Path:
    """A loss surface from `isthmus.surface`: 2-D slices as a log-scaled heatmap with contours, the
    anchor points and the projected paths drawn on it; 1-D slices as loss against the coordinate.
    `result` is a SurfaceResult or a surface.json dict."""
    import numpy as np
    from matplotlib.colors import LogNorm

    x, y, z = _get(result, "x"), _get(result, "y"), np.asarray(_get(result, field), dtype=float)
    kind = _get(result, "kind")
    unit = "cross-entropy (nats)" if "loss" in field else "accuracy (fraction)"
    if y is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        other = field.replace("train", "test") if field.startswith("train") else None
        ax.plot(x, z, label=field.replace("_", " "))
        if other and _get(result, other) is not None:
            ax.plot(x, _get(result, other), "--", label=other.replace("_", " "))
        ax.axvline(0, color="k", lw=0.8)
        ax.set(xlabel="distance along the filter-normalised direction", ylabel=unit)
        ax.set_title(f"{kind} slice")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return save(fig, path, pdf)
    # equal axes for a plane (true distances): size the figure to the plane's aspect ratio
    ratio = (max(y) - min(y)) / max(max(x) - min(x), 1e-12) if kind == "plane" else 0.8
    ratio = min(max(ratio, 0.25), 2.0)
    fig, ax = plt.subplots(figsize=(7.5, 1.6 + 6.0 * ratio))
    if "loss" in field:
        pos = z[z > 0]
        lo = float(pos.min()) if pos.size else 1e-12
        norm = LogNorm(vmin=lo, vmax=max(float(z.max()), lo * 1.01))
        zz = np.clip(z, lo, None)
        mesh = ax.pcolormesh(x, y, zz, norm=norm, cmap="viridis", shading="auto")
        levels = np.geomspace(norm.vmin, norm.vmax, 12)
        ax.contour(x, y, zz, levels=levels, colors="w", linewidths=0.5, alpha=0.6)
    else:
        mesh = ax.pcolormesh(x, y, z, cmap="viridis", shading="auto")
    fig.colorbar(mesh, ax=ax, label=f"{field.replace('_', ' ')}: {unit}", fraction=0.046, pad=0.03)
    for k, (name, pts) in enumerate((_get(result, "paths") or {}).items()):
        p = np.asarray(pts)
        ax.plot(p[:, 0], p[:, 1], "-", color=f"C{k + 1}", lw=2, label=name)
    for name, (px, py) in (_get(result, "points") or {}).items():
        ax.plot(px, py, "o", color="w", mec="k", ms=7)
        ax.annotate(name, (px, py), xytext=(5, 5), textcoords="offset points", color="w")
    axis = "distance in the plane" if kind == "plane" else "filter-normalised direction"
    ax.set(xlabel=f"{axis} (x)", ylabel=f"{axis} (y)", title=f"{kind}: {field.replace('_', ' ')}")
    if _get(result, "paths"):
        ax.legend(fontsize=8, loc="best", framealpha=0.6)
    ax.set_aspect("equal" if kind == "plane" else "auto")
    return save(fig, path, pdf)


# ----------------------------------------------------------------------------- constructive paths

_KIND_COLORS = {"a": "#f4a261", "b": "#a8dadc", "c": "#b5a8dc", "line": "#dddddd"}
_KIND_NAMES = {
    "a": "(a) output-layer interpolation",
    "b": "(b) rewrite free units",
    "c": "(c) shift to duplicates",
    "line": "straight segment (measured)",
}


def certified_path(
    result,
    path: str | Path,
    *,
    line=None,
    bezier=None,
    title: str | None = None,
    pdf: bool = False,
) -> Path:
    """Train loss along a constructive (Theorem 1 / 2) path with its segments shaded by kind, the
    certified bound as a horizontal line, and optionally the straight line's and a Bezier curve's
    train losses on the same axes. Arguments are PathResults or path.json dicts."""

    def get(r, key):
        return r.get(key) if isinstance(r, dict) else getattr(r, key, None)

    # straight segments are measured, never certified: the legend says so
    names = {**_KIND_NAMES, "line": "straight segment (measured, not certified)"}
    fig, ax = plt.subplots(figsize=(8, 4))
    seen = set()
    for seg in get(result, "segments") or []:
        kind = seg["kind"]
        ax.axvspan(
            seg["t0"],
            seg["t1"],
            color=_KIND_COLORS.get(kind, "#eeeeee"),
            alpha=0.45,
            lw=0,
            label=None if kind in seen else names.get(kind, kind),
        )
        seen.add(kind)
    method = get(result, "method") or "constructive"
    ax.plot(get(result, "t"), get(result, "train_loss"), color="k", lw=1.6, label=f"{method} path")
    cert = get(result, "certificate") or {}
    if cert.get("bound") is not None:
        ok = "holds" if cert.get("holds") else "FAILS"
        segs = get(result, "segments") or []
        certified = [seg for seg in segs if seg["kind"] != "line"]
        label = f"certified bound {cert['bound']:.4f} ({ok})"
        if certified and len(certified) < len(segs):  # drawn only where it is certified
            lo, hi = min(g["t0"] for g in certified), max(g["t1"] for g in certified)
            label = f"certified bound {cert['bound']:.4f}, (a)/(b)/(c) segments only ({ok})"
            ax.hlines(cert["bound"], lo, hi, color="C3", ls="--", lw=1.2, label=label)
        else:
            ax.axhline(cert["bound"], color="C3", ls="--", lw=1.2, label=label)
    for other, name, color in ((line, "straight line", "C0"), (bezier, "Bezier curve", "C2")):
        if other is not None:
            b = (get(other, "barrier") or {}).get("train_loss")
            tag = f"{name} (barrier {b:.3f})" if b is not None else name
            ax.plot(get(other, "t"), get(other, "train_loss"), color=color, lw=1.2, label=tag)
    ax.set(
        xlabel="t (0 = net A, 1 = net B)",
        ylabel="train loss (nats)",
        title=title or f"{method} path: loss and certified bound",
    )
    ax.grid(alpha=0.3)
    _legend_below(ax, ncol=2, fontsize=7)  # inside, it covered the path where it climbs to B
    return save(fig, path, pdf)


def counterexample_paths(result: dict, path: str | Path, pdf: bool = False) -> Path:
    """Squared-error loss along line / Bezier / NEB: the counterexample's two minimisers (left)
    vs two exact fits on ordinary data (right); log scale, since the searches reach ~0 there."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    titles = {
        "counterexample": f"counterexample data ({result['samples']} samples)",
        "ordinary": "ordinary data (generic points, same teacher)",
    }
    for ax, key in zip(axes, ("counterexample", "ordinary"), strict=True):
        for name, r in result[key].items():
            ax.semilogy(
                r["t"],
                [max(v, 1e-12) for v in r["loss"]],
                label=f"{name} (max {r['max_loss']:.2g})",
            )
        ax.set(xlabel="t (0 = fit A, 1 = fit B)", title=titles[key])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("mean squared error (clipped at 1e-12)")
    fig.suptitle(f"h = {result['h']} hidden units")
    return save(fig, path, pdf)


def spanning_tree(
    weights, edges, names: Sequence[str], path: str | Path, label: str, pdf: bool = False
) -> Path:
    """Pairwise path weights between N minima as a matrix, the minimum spanning tree's edges
    outlined; the title gives the tree's worst edge, which bounds every pair through the tree."""
    import numpy as np
    from matplotlib.patches import Rectangle

    w = np.asarray(weights, dtype=float)
    n = len(w)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n, 0.8 + 0.5 * n))
    shown = np.where(np.eye(n, dtype=bool), np.nan, w)
    im = ax.imshow(shown, cmap="viridis")
    fig.colorbar(im, ax=ax, label=label)
    for i, j, _ in edges:
        for r, c in ((i, j), (j, i)):
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, ec="red", lw=2))
    if n <= 12:
        mid = np.nanmean([np.nanmin(shown), np.nanmax(shown)])
        for r in range(n):
            for c in range(n):
                if r != c:
                    color = "k" if w[r, c] > mid else "w"  # readable on viridis
                    ax.text(
                        c, r, f"{w[r, c]:.2f}", ha="center", va="center", fontsize=7, color=color
                    )
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set(xlabel="net", ylabel="net")
    worst = max((e[2] for e in edges), default=float("nan"))
    ax.set_title(f"minimum spanning tree (red): worst edge {worst:.3f}", fontsize=9)
    return save(fig, path, pdf)


# ----------------------------------------------------------------------------- the wedge model

_TOY = "toy loss min_k (p_k / w(r_k))^2"


def wedge_landing(result, path: str | Path, pdf: bool = False) -> Path:
    """a. Final toy loss against final radius for every run, coloured by the wedge it ended on."""
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    wedge = np.asarray(_get(result, "wedge"))
    radius = np.asarray(_get(result, "radius"))
    final = np.clip(np.asarray(_get(result, "final_loss"), dtype=float), 1e-32, None)
    start = np.asarray(_get(result, "start_loss"), dtype=float)
    for k in np.unique(wedge):
        m = wedge == k
        ax1.scatter(radius[m], final[m], s=8, label=f"wedge {k}")
    ax1.set(yscale="log", xlabel="radius along the nearest wedge", ylabel=f"final {_TOY}")
    _spread_xaxis(ax1, radius)
    ax1.set_title(f"gradient descent, lr {_get(result, 'lr')}, {_get(result, 'steps')} steps")
    ax2.hist(np.log10(final / start), bins=40, color="C0")
    ax2.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=5))
    ax2.set(xlabel="log10(final loss / start loss)", ylabel="runs (count)")
    ax2.set_title("every run lands on a wedge")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8, markerscale=2)
    return save(fig, path, pdf)


def _spread_xaxis(ax, values) -> None:
    """A log x scale labelled at whole decades when the positive `values` span more than one, else
    a linear one with a few plain ticks: radii that all lie within a few percent (the usual
    landing) would otherwise get crowded, overlapping minor labels such as 2.985x10^0."""
    lo, hi = float(min(values)), float(max(values))
    ticker = matplotlib.ticker
    if lo > 0 and hi / lo > 10:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, numticks=6))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    else:
        ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=4))
        ax.xaxis.set_major_formatter(ticker.ScalarFormatter(useOffset=False))


def wedge_tunnels(result, path: str | Path, pdf: bool = False) -> Path:
    """b. Toy loss along the straight line, the path through the intersection, and AutoNEB."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    names = {"line": "straight line", "intersection": "through U_0 ∩ U_1", "autoneb": "AutoNEB"}
    for k, (name, ts) in enumerate(_get(result, "t").items()):
        loss = [max(v, 1e-32) for v in _get(result, "loss")[name]]
        ax.plot(ts, loss, color=f"C{k}", label=names.get(name, name))
    ax.set(yscale="log", xlabel="t along the path", ylabel=_TOY)
    ax.set_title(f"two wedges, intersection of dimension {_get(result, 'intersection_dim')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path, pdf)


def wedge_subspaces(result, path: str | Path, pdf: bool = False) -> Path:
    """c. Success rate of random-subspace training against d - (D - n), one curve per (D, n)."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    rows = _get(result, "rows")
    sizes = sorted({(r["dim"], r["wedge_dim"]) for r in rows})
    for k, (D, n) in enumerate(sizes):
        rs = sorted((r for r in rows if (r["dim"], r["wedge_dim"]) == (D, n)), key=lambda r: r["d"])
        ax.plot(
            [(r["d"] - (D - n)) / (D - n) for r in rs],
            [r["success"] for r in rs],
            "o-",
            color=f"C{k}",
            label=f"D = {D}, n = {n}",
        )
    ax.axvline(0, color="k", lw=0.8, ls="--", label="d = D - n")
    ax.set(xlabel="(d - (D - n)) / (D - n)", ylabel="success rate (fraction of starts)")
    ax.set_title("training in a random d-dimensional subspace")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path, pdf)


def wedge_cut(result, path: str | Path, pdf: bool = False) -> Path:
    """d. The toy loss on a plane through the origin and a solution (log colour scale)."""
    import numpy as np
    from matplotlib.colors import LogNorm

    x, y = _get(result, "x"), _get(result, "y")
    z = np.asarray(_get(result, "train_loss"), dtype=float)
    # three decades below the top: the exact zeros on the wedge would flatten everything else
    lo = max(float(z.max()) * 1e-3, 1e-30)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    mesh = ax.pcolormesh(
        x,
        y,
        np.clip(z, lo, None),
        norm=LogNorm(vmin=lo, vmax=max(z.max(), lo * 1.01)),
        shading="auto",
    )
    fig.colorbar(mesh, ax=ax, label=_TOY, fraction=0.046, pad=0.03)
    for name, (px, py) in (_get(result, "points") or {}).items():
        ax.plot(px, py, "o", color="w", mec="k", ms=7)
        ax.annotate(name, (px, py), xytext=(5, 5), textcoords="offset points", color="w")
    ax.set(xlabel="distance in the plane (x)", ylabel="distance in the plane (y)")
    ax.set_title("a random plane through the origin and a solution: a radial tunnel")
    ax.set_aspect("equal")
    return save(fig, path, pdf)


def wedge_learning_rates(result, path: str | Path, pdf: bool = False) -> Path:
    """e. Curvature across a wedge against radius, with each learning rate's 2/lr edge and where
    its runs ended (mean radius, measured top Hessian eigenvalue); radius against lr per L2."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(
        _get(result, "radius_grid"), _get(result, "curvature_across"), "k-", label="2 / w(r)^2"
    )
    rows = _get(result, "rows")
    lrs = sorted({r["lr"] for r in rows})
    for k, lr in enumerate(lrs):
        ax1.axhline(2 / lr, color=f"C{k}", ls="--", lw=0.8)
        for r in rows:
            if r["lr"] == lr and r["l2"] == 0 and r["top_eigenvalue_mean"] is not None:
                ax1.plot(
                    r["radius_mean"],
                    r["top_eigenvalue_mean"],
                    "o",
                    color=f"C{k}",
                    ms=8,
                    label=f"lr {lr} (edge 2/lr dashed)",
                )
    ax1.set(yscale="log", xlabel="radius r", ylabel="curvature across the wedge (top eigenvalue)")
    ax1.set_title("descent settles where curvature < 2 / lr")
    ax1.legend(fontsize=7)
    for k, l2 in enumerate(sorted({r["l2"] for r in rows})):
        rs = sorted((r for r in rows if r["l2"] == l2), key=lambda r: r["lr"])
        ax2.errorbar(
            [r["lr"] for r in rs],
            [r["radius_mean"] for r in rs],
            yerr=[r["radius_std"] for r in rs],
            fmt="o-",
            color=f"C{k}",
            capsize=3,
            label=f"L2 {l2}",
        )
    ax2.set(xscale="log", xlabel="learning rate", ylabel="final radius (mean ± std over starts)")
    ax2.set_title("larger steps end farther out; L2 pulls inward")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    return save(fig, path, pdf)


# ----------------------------------------------------------------------------- subspaces


def subspace_losses(doc: dict, path: str | Path, pdf: bool = False) -> Path:
    """A complex joining solutions (subspace.json): train loss at the solutions, the connectors and
    the uniform samples beside the highest loss on each straight line between two solutions; and
    the train loss along every edge of the complex, with the straight lines for contrast."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    groups = [
        ("solutions", doc["solution_loss"], "C0"),
        ("connectors", doc["connector_loss"], "C1"),
        ("samples", doc["samples"]["train_loss"], "C2"),
        ("line maxima", [p["max_train_loss"] for p in doc["lines"]], "0.45"),
    ]
    groups = [g for g in groups if g[1]]
    ax1.violinplot([g[1] for g in groups], showextrema=False)
    for k, (name, vals, color) in enumerate(groups, 1):
        jitter = [k + 0.08 * ((i * 0.618) % 1 - 0.5) for i in range(len(vals))]
        ax1.plot(jitter, vals, "o", ms=3, color=color, alpha=0.7, label=f"{name} ({len(vals)})")
    if doc["solution_loss"]:
        top = max(doc["solution_loss"])
        ax1.axhline(top + 0.1, color="k", ls="--", lw=0.8, label="worst solution + 0.1")
    ax1.set_xticks(range(1, len(groups) + 1), [g[0] for g in groups])
    ax1.set(ylabel="train cross-entropy loss (nats)")
    ax1.set_title(f"{doc['method']}: {doc['vertices']} vertices, {len(doc['simplices'])} simplices")
    for p in doc["lines"]:
        ax2.plot(p["t"], p["train_loss"], color="0.6", lw=0.8, ls="--")
    for p in doc["edges"]:
        ax2.plot(p["t"], p["train_loss"], color="C0", lw=1)
    ax2.plot([], [], color="C0", label=f"edges of the complex ({len(doc['edges'])})")
    if doc["lines"]:
        ax2.plot([], [], color="0.6", ls="--", label=f"straight lines ({len(doc['lines'])})")
    ax2.set(
        xlabel="position along the segment (0 = lower vertex index)", ylabel="train loss (nats)"
    )
    ax2.set_title("edges vs straight lines between solutions")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save(fig, path, pdf)


# ----------------------------------------------------------------------------- curvature


def hessian_density(
    result, path: str | Path, pdf: bool = False, sigma: float | None = None
) -> Path:
    """The Hessian's spectral density (stochastic Lanczos quadrature, Gaussian-smoothed) on a
    symmetric log scale of eigenvalue, with the top eigenvalues marked."""
    import numpy as np
    import torch

    dens = _get(result, "density")
    nodes = np.concatenate([np.asarray(n) for n in _get(dens, "nodes")])
    lo, hi = float(nodes.min()), float(nodes.max())
    sigma = sigma or max((hi - lo) / 400, 1e-6)
    grid = torch.linspace(lo - 10 * sigma, hi + 10 * sigma, 2000, dtype=torch.float64)
    if isinstance(dens, dict):
        from .curvature import Density

        dens = Density(dens["nodes"], dens["weights"])
    y = dens.smoothed(grid, sigma).numpy()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(grid.numpy(), np.clip(y, 1e-12, None), color="C0", label="density (SLQ)")
    for k, v in enumerate(_get(result, "eigenvalues")):
        ax.axvline(
            v, color="C3", lw=0.8, ls="--", label="top eigenvalues (Lanczos)" if k == 0 else None
        )
    ax.set(yscale="log", xlabel="eigenvalue of the Hessian", ylabel="spectral density")
    ax.set_title(f"Hessian spectrum ({_get(result, 'examples')} training examples)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path, pdf)


def _sources(result) -> dict:
    """{source name: metrics dict} of an ensemble `Comparison` or its ensemble.json dict."""
    doc = result.to_json() if hasattr(result, "to_json") else result
    return doc["sources"]


def ensemble_growth(result, path: str | Path, pdf: bool = False) -> Path:
    """Ensemble test accuracy and NLL against the number of members (the first m), one line per
    source; dotted: the mean over random member orders where computed."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (name, s) in enumerate(_sources(result).items()):
        vs = s["accuracy_vs_members"]
        color = f"C{i}"
        ax1.plot(vs["members"], vs["accuracy"], "o-", color=color, label=name)
        ax2.plot(vs["members"], vs["nll"], "o-", color=color, label=name)
        if "accuracy_mean_over_orders" in vs:
            lab = f"{name}, mean over {vs['orders']} orders"
            ax1.plot(vs["members"], vs["accuracy_mean_over_orders"], ":", color=color, label=lab)
            ax2.plot(vs["members"], vs["nll_mean_over_orders"], ":", color=color, label=lab)
    ax1.set(xlabel="members in the ensemble", ylabel="ensemble accuracy (fraction)")
    ax2.set(xlabel="members in the ensemble", ylabel="ensemble NLL (nats)")
    for ax in (ax1, ax2):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    split = _get(result, "split")
    fig.suptitle(f"ensembles on the {split} split of {_get(result, 'data')}")
    return save(fig, path, pdf)


def ensemble_diversity(result, path: str | Path, pdf: bool = False) -> Path:
    """Diversity against what ensembling gains, one marker per source: accuracy gain over the
    mean member vs pairwise disagreement; NLL reduction below the mean member vs mean JS."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    markers = "osD^v<>p*h"
    for i, (name, s) in enumerate(_sources(result).items()):
        kw = dict(marker=markers[i % len(markers)], color=f"C{i}", s=60, label=name)
        ax1.scatter(s["disagreement"], s["accuracy"] - s["member_accuracy"]["mean"], **kw)
        ax2.scatter(s["js"], s["member_nll"]["mean"] - s["nll"], **kw)
    ax1.set(
        xlabel="mean pairwise disagreement (fraction of test points)",
        ylabel="ensemble accuracy - mean member accuracy",
    )
    ax2.set(
        xlabel="mean pairwise Jensen-Shannon divergence (nats)",
        ylabel="mean member NLL - ensemble NLL (nats)",
    )
    for ax in (ax1, ax2):
        ax.margins(0.25)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("diversity of the members against the gain of the ensemble")
    return save(fig, path, pdf)


def ensemble_pca(result, path: str | Path, pdf: bool = False) -> Path:
    """Every member's test-set predicted probabilities, projected on the first two principal
    directions of all members together; one colour per source."""
    doc = result.to_json() if hasattr(result, "to_json") else result
    pca = doc["pca"]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    markers = "osD^v<>p*h"
    for i, (name, pts) in enumerate(pca["coords"].items()):
        xs = [p[0] for p in pts]
        ys = [p[1] if len(p) > 1 else 0.0 for p in pts]
        ax.scatter(xs, ys, color=f"C{i}", marker=markers[i % len(markers)], s=40, label=name)
        for k, (x, y) in enumerate(zip(xs, ys, strict=True)):  # member k+1 of the source
            ax.annotate(str(k + 1), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7)
    ev = list(pca["explained"]) + [0.0, 0.0]
    ax.set(
        xlabel=f"principal direction 1 ({100 * ev[0]:.0f}% of variance)",
        ylabel=f"principal direction 2 ({100 * ev[1]:.0f}% of variance)",
        title="members' predicted probabilities (PCA; numbers: member)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path, pdf)


def study_trends(result, path: str | Path, pdf: bool = False) -> Path:
    """Radius, top Hessian eigenvalue, trace and directional loss rises against the studied
    hyperparameter (mean +- std over seeds), side by side."""
    hyper = _get(result, "hyperparameter")
    summary = result.summary() if hasattr(result, "summary") else _get(result, "summary")
    panels = [
        ("radius", "weight norm ||theta||"),
        ("top_eigenvalue", "top Hessian eigenvalue"),
        ("trace", "Hessian trace"),
        ("random_rise", "loss rise, random directions (nats)"),
        ("radial_rise", "loss rise, radial direction (nats)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.3))
    xs = [r["value"] for r in summary]
    for ax, (q, label) in zip(axes, panels, strict=True):
        ax.errorbar(
            xs,
            [r[q]["mean"] for r in summary],
            yerr=[r[q]["std"] for r in summary],
            fmt="o-",
            capsize=3,
        )
        ax.set(
            xlabel={"lr": "learning rate", "l2": "L2 coefficient", "width": "width"}[hyper],
            ylabel=label,
        )
        if hyper in ("lr", "l2") and min(xs) > 0:
            ax.set_xscale("log")
        _ticks_at(ax, xs)
        ax.grid(alpha=0.3)
    fig.suptitle(f"curvature explored by training against {hyper}")
    fig.tight_layout()
    return save(fig, path, pdf)


def study_trajectories(result, path: str | Path, pdf: bool = False) -> Path:
    """The study's measurements during training against the epoch, one colour per value of the
    hyperparameter (mean over seeds, the band +- one standard deviation)."""
    hyper = _get(result, "hyperparameter")
    trajs = (
        result.trajectories() if hasattr(result, "trajectories") else _get(result, "trajectories")
    )
    panels = [
        ("radius", "weight norm ||theta||"),
        ("top_eigenvalue", "top Hessian eigenvalue"),
        ("trace", "Hessian trace"),
        ("random_rise", "loss rise, random directions (nats)"),
        ("radial_rise", "loss rise, radial direction (nats)"),
        ("train_loss", "train loss (nats)"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(11, 6.4))
    name = {"lr": "lr", "l2": "L2", "width": "width"}.get(hyper, hyper)
    colors = plt.get_cmap("viridis")([i / max(1, len(trajs) - 1) for i in range(len(trajs))])
    for ax, (q, label) in zip(axes.flat, panels, strict=True):
        for t, color in zip(trajs, colors, strict=True):
            mean, std = t[q]["mean"], t[q]["std"]
            ax.plot(t["epochs"], mean, "o-", ms=3, color=color, label=f"{name} {t['value']:g}")
            band = list(zip(mean, std, strict=True))
            lo, hi = [m - s for m, s in band], [m + s for m, s in band]
            ax.fill_between(t["epochs"], lo, hi, color=color, alpha=0.2, lw=0)
        ax.set(xlabel="epoch", ylabel=label)
        means = [m for t in trajs for m in t[q]["mean"]]
        if q in ("top_eigenvalue", "trace") and min(means) > 0 and max(means) > 10 * min(means):
            ax.set_yscale("log")  # values an order of magnitude apart (the CNN's lr study)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"curvature along training, per {name} (mean +- std over seeds)")
    fig.tight_layout()
    return save(fig, path, pdf)


SWEEP_LABELS = {
    "test_acc": "test accuracy (fraction)",
    "barrier": "barrier on the path (train loss, nats)",
    "epsilon": "stability epsilon (train loss, nats)",
    "top_eigenvalue": "top eigenvalue of the train-loss Hessian",
}


def sweep_results(rows: Sequence[dict], metrics: dict, path: str | Path, pdf: bool = False) -> Path:
    """One panel per job group of a sweep: its main quantity (the first of `metrics[kind]`) at
    every point, one dot per seed (or pair of nets) and a bar at their mean."""
    groups = list(dict.fromkeys(r["group"] for r in rows))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.8), squeeze=False)
    for ax, g in zip(axes[0], groups, strict=True):
        rs = [r for r in rows if r["group"] == g]
        kind, q = rs[0]["kind"], metrics[rs[0]["kind"]][0]

        def where(r: dict) -> str:
            if "net_point" not in r:
                return r["point"]
            own = "" if r["point"] == "-" else f"\n{r['point']}"
            return f"nets {r['net_point']}{own}"

        cats = list(dict.fromkeys(where(r) for r in rs))
        for i, c in enumerate(cats):
            ys = [r[q] for r in rs if where(r) == c and r[q] is not None]
            ax.plot(
                [i] * len(ys),
                ys,
                "o",
                color="C0",
                alpha=0.6,
                label="one net (or pair)" if i == 0 else None,
            )
            if ys:
                m = sum(ys) / len(ys)
                ax.hlines(m, i - 0.3, i + 0.3, color="C3", label="mean" if i == 0 else None)
        ax.set_xticks(range(len(cats)), cats, rotation=30 if len(cats) > 3 else 0, fontsize=8)
        ax.set(xlabel="point of the grid", ylabel=SWEEP_LABELS.get(q, q), title=f"{kind}: {g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path, pdf)


def instability_curve(result: dict, path: str | Path, pdf: bool = False) -> Path:
    """Error barrier (left, percentage points) and loss barrier (right, nats) between copies
    against the spawn step (symmetric-log axis, ticks at the spawn steps): the mean over pairs as
    lines, every pair as dots when there are several, the threshold and the stable step."""
    spawns = result["spawns"]
    ks = [s["step"] for s in spawns]
    settings = result.get("settings") or {}
    several = any(len(s["pairs"]) > 1 for s in spawns)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    panels = (
        (ax1, "error", 100.0, "error barrier (percentage points)"),
        (ax2, "loss", 1.0, "loss barrier (nats)"),
    )
    for ax, q, scale, label in panels:
        for split, style in (("test", "o-"), ("train", "s--")):
            key = f"{split}_{q}"
            means = [scale * s["mean"][key] for s in spawns]
            (ln,) = ax.plot(ks, means, style, label=f"{split} split, mean over pairs")
            if several:
                xs = [s["step"] for s in spawns for _ in s["pairs"]]
                ys = [scale * p[key] for s in spawns for p in s["pairs"]]
                ax.plot(xs, ys, ".", color=ln.get_color(), alpha=0.4, label=f"{split}, each pair")
        ax.set(xlabel="spawn step k (optimiser steps)", ylabel=label)
        ax.set_xscale("symlog", linthresh=1)
        _ticks_at(ax, ks)
        ax.tick_params(axis="x", labelrotation=90, labelsize=8)
        ax.grid(alpha=0.3)
    if "threshold" in settings:
        ax1.axhline(100 * settings["threshold"], color="gray", lw=1, ls=":", label="threshold")
    if result.get("stable_step") is not None:
        for ax in (ax1, ax2):
            ax.axvline(result["stable_step"], color="green", lw=1, ls="-.", label="stable from")
    ax1.set_title("error barrier between copies")
    ax2.set_title("loss barrier between copies")
    fig.tight_layout()
    for ax in (ax1, ax2):
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
    return save(fig, path, pdf)
