"""The one progress-bar convention of isthmus.

Every long-running function takes `progress: bool | None = None`: True always shows a bar, False
never does, None shows one only when stderr is a terminal (so logs and tests stay clean).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def bar(iterable: Iterable | None = None, *, progress: bool | None = None, **kw: Any) -> tqdm:
    """A tqdm bar following the convention above; `kw` goes to tqdm (desc, total, unit, ...)."""
    return tqdm(iterable, disable=None if progress is None else not progress, **kw)
