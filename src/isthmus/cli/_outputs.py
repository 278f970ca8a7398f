"""Output folders and files of the subcommands: claimed safely (`io.claim_output`), never an
input, never replaced without --overwrite."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..errors import IsthmusError


def new_output(out: str, inputs: Sequence[str], args=None, *, adds: bool = False) -> Path:
    """--out claimed for this command (`io.claim_output`: never an input, not an existing non-empty
    folder unless --resume/--overwrite, locked against a second writer)."""
    from ..io import claim_output

    resume, overwrite = getattr(args, "resume", False), getattr(args, "overwrite", False)
    return claim_output(out, inputs, resume=resume, overwrite=overwrite, adds=adds)


def new_file(out: str | None, default: Path, overwrite: bool) -> Path:
    """An output file: `default` (a command's own file, replaced on a rerun) unless --out names
    one; an existing --out only with --overwrite, and never a run's weights, config or metrics."""
    if out is None:
        return default
    path = Path(out)
    if path.is_dir():
        raise IsthmusError(f"--out {out} is a directory; name a .json file")
    if path.name in ("model.safetensors", "config.json", "metrics.json"):
        raise IsthmusError(f"--out {out} would replace a run's own file; name another file")
    if path.exists() and not overwrite:
        raise IsthmusError(
            f"--out {out} exists; pass --overwrite to replace it, or name a new file"
        )
    return path


def add_output(
    p: argparse.ArgumentParser, what: str = "output folder", required: bool = True
) -> None:
    """--out and --overwrite (commands that resume add --resume themselves); an optional --out
    defaults to None (the command picks its file)."""
    p.add_argument("--out", required=required, default=None, help=what)
    p.add_argument(
        "--overwrite", action="store_true", help="write over an existing, non-empty --out"
    )
