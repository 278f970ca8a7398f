"""The one progress convention of isthmus: a line per stage, a bar per loop.

Every long-running function takes `progress: bool | None = None`: True always shows them, False
never does, None shows them only when stderr is a terminal (so logs and tests stay clean).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def shown(progress: bool | None) -> bool:
    """Whether progress is shown: as given, or (None) when stderr is a terminal."""
    return sys.stderr.isatty() if progress is None else bool(progress)


def bar(iterable: Iterable | None = None, *, progress: bool | None = None, **kw: Any) -> tqdm:
    """A tqdm bar following the convention above; `kw` goes to tqdm (desc, total, unit, ...)."""
    return tqdm(iterable, disable=None if progress is None else not progress, **kw)


def stage(message: str, *, progress: bool | None = None) -> None:
    """One line on stderr saying what starts now (a stage of a long command), by the convention."""
    if shown(progress):
        tqdm.write(f"isthmus: {message}", file=sys.stderr)
