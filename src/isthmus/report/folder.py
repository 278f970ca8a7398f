"""Result folders as reports see them: the command record (`command.json`), which folders hold
runs, figures drawn for a page, and `Page`, what the sections of one report share."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..io import read_json, write_json
from .page import Report

COMMAND_FILE = "command.json"
REPORT_FILE = "report.html"


def record_command(folder: str | Path, argv: Sequence[str], cwd: str | Path | None = None) -> None:
    """Write `folder/command.json`: the command line (as typed, after `isthmus`), the folder it
    ran in and the version, so that a report can show how a result was made."""
    from ..version import __version__

    doc = {
        "argv": ["isthmus", *argv],
        "cwd": str(cwd or os.getcwd()),
        "isthmus_version": __version__,
    }
    write_json(Path(folder) / COMMAND_FILE, doc)


def read_command(folder: Path) -> dict | None:
    """The recorded command of a result folder, or of the population a run folder belongs to."""
    for f in (
        folder / COMMAND_FILE,
        folder.parent / COMMAND_FILE if folder.name.isdigit() else None,
    ):
        if f is not None and f.is_file():
            doc = read_json(f)
            if isinstance(doc.get("argv"), list):
                return doc
    return None


def is_run(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def members(folder: Path) -> list[Path]:
    subs = [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and is_run(p)]
    return sorted(subs, key=lambda p: int(p.name))


def drawn(fn: Callable, *args) -> bytes:
    """A figure from `isthmus.plot` rendered to PNG bytes (never written beside the results)."""
    with tempfile.TemporaryDirectory() as tmp:
        return Path(fn(*args, Path(tmp) / "figure")).read_bytes()


@dataclass
class Page:
    """What the sections of one report share: the result folder, the page's path (links are
    relative to its folder), the report being built, and the settings and related run folders
    the sections collect for the end of the page."""

    folder: Path
    page: Path
    rep: Report
    settings: list[tuple[str, Mapping]] = field(default_factory=list)
    related: list[str] = field(default_factory=list)
    cwd: str | None = None

    def href(self, target: Path) -> str:
        rel = os.path.relpath(target.resolve(), self.page.parent.resolve())
        return Path(rel).as_posix() + ("/" if target.is_dir() else "")

    def resolve(self, recorded: str) -> Path | None:
        """A run path as a command recorded it (relative to where it ran), if it exists here."""
        p = Path(recorded)
        bases = [Path(self.cwd)] if self.cwd else []
        bases += [self.folder.parent, self.folder, Path.cwd()]
        for cand in [p] if p.is_absolute() else [b / p for b in bases]:
            if cand.is_dir():
                return cand
        return None
