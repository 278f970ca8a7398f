"""`isthmus reproduce PAPER`: a paper's claims, each with the statistic we compute, the threshold
fixed in advance (docs/reproduction.md), the measured number and a verdict; every figure,
results.json and one self-contained report.html (see `common`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ...errors import IsthmusError
from . import fort2019, kuditipudi2019
from .common import SIZES

PAPERS = {"kuditipudi2019": kuditipudi2019, "fort2019": fort2019}

__all__ = ["PAPERS", "SIZES", "reproduce"]


def reproduce(
    paper: str,
    out: str | Path,
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
    """Run every step of `paper` at `size` (smoke, quick or full) into `out` (steps already done
    there are skipped with `resume`) and return the path of its report.html."""
    if paper not in PAPERS:
        raise IsthmusError(f"unknown paper {paper!r}; choose from {', '.join(PAPERS)}")
    if size not in SIZES:
        raise IsthmusError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    return PAPERS[paper].run(
        Path(out),
        size=size,
        seed=seed,
        data=data,
        root=root,
        resume=resume,
        pdf=pdf,
        command=command,
        progress=progress,
    )
