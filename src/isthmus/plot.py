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
        ax.legend(fontsize=8)
    return save(fig, path, pdf)


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
        ax.legend(fontsize=8)
    return save(fig, path, pdf)
