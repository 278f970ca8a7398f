"""`isthmus report DIR`: any result folder as one self-contained HTML page.

The kind of result is read from the files present (`KINDS`: `path.json` is a connection,
`config.json` + `model.safetensors` a trained run, ...); each kind adds a table of its main numbers,
then every figure in the folder is embedded, the command that wrote the folder (`command.json`,
recorded by the CLI) and its settings are shown as tables, and the JSON files and the related
result folders (the runs a result was computed from) are linked. JSON the page does not know is
shown as a key / value table, CSV files as tables. The page layout is in docs/report.md.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import IsthmusError
from ..io import read_json
from .folder import COMMAND_FILE, REPORT_FILE, Page, read_command
from .kinds import KINDS, detect, is_records, population_section, run_section
from .page import GENERATOR, Link, Report, generator_of

# what each figure an isthmus command writes shows (others are captioned with their file name)
CAPTIONS = {
    "path.png": "Train (solid) and test (dashed) loss and accuracy along the path.",
    "certified_path.png": "Train loss along the certified path, segments shaded by kind.",
    "tree.png": "The minimum spanning tree over the runs, edges weighted by the path's loss.",
    "surface.png": "The loss surface (log colour scale) with the anchor nets and projected paths.",
    "align.png": "Straight-line loss between the two nets before and after alignment.",
    "stability.png": "Dropout or noise stability of the net, per layer.",
    "hessian_density.png": "The Hessian's spectral density with its top eigenvalues.",
    "subspace.png": "Train loss at the vertices and samples of the complex, and along its edges.",
    "ensemble_growth.png": "Ensemble accuracy and NLL against the number of members.",
    "ensemble_diversity.png": "Diversity of the members against the gain of the ensemble.",
    "ensemble_pca.png": "The members' predictions projected on two principal directions.",
    "counterexample.png": "Loss along the searched paths between the two global minima.",
    "instability.png": "Error and loss barrier between copies against the spawn step.",
}


def _generic(pg: Page) -> None:
    """JSON and CSV files no section has read: key / value tables and tables."""
    known = {f for f, _, _ in KINDS} | {COMMAND_FILE, "config.json", "metrics.json", "eval.json"}
    for f in sorted(pg.folder.glob("*.json")):
        if f.name in known:
            continue
        doc = read_json(f)
        pg.rep.heading(f.name)
        pg.rep.settings({k: v for k, v in doc.items() if not is_records(v)}, f.name)
        for k, v in doc.items():
            if is_records(v):
                pg.rep.records(v, f"{f.name}: {k}")
    for f in sorted(pg.folder.glob("*.csv")):
        with open(f, newline="") as fh:
            rows = [{k: _cell_value(v) for k, v in r.items()} for r in csv.DictReader(fh)]
        pg.rep.heading(f.name)
        pg.rep.records(rows, f"{f.name} ({len(rows)} rows)")


def _cell_value(v: str):
    """A CSV field as a number where it is one (so tables align and round it)."""
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def build_report(folder: str | Path, page: str | Path | None = None) -> Report:
    """The report of one result folder, to be written to `page` (default folder/report.html:
    links are relative to the page's folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IsthmusError(
            f"{folder}: not a folder; give a result folder written by an isthmus command"
        )
    kinds = detect(folder)
    has_any = any(folder.glob("*.json")) or any(folder.glob("*.csv")) or any(folder.glob("*.png"))
    if not kinds and not has_any:
        raise IsthmusError(
            f"{folder}: no result found (no JSON, CSV or PNG files, no run); give a folder an isthmus command wrote"
        )
    cmd = read_command(folder)
    pg = Page(
        folder,
        Path(page or folder / REPORT_FILE),
        Report(f"{(kinds or ['result'])[0].capitalize()}: {folder.resolve().name}"),
        cwd=(cmd or {}).get("cwd"),
    )
    for f, kind, section in KINDS:
        if (folder / f).is_file():
            doc = read_json(folder / f)
            mark = len(pg.rep.parts)
            try:
                section(pg, doc)
            except (AttributeError, KeyError, IndexError, TypeError, ValueError) as e:
                del pg.rep.parts[mark:]  # a file of another layout: its fields as they are
                pg.rep.heading(f)
                pg.rep.text(f"{f} does not have the layout of an isthmus {kind} result ({e!r}).")
                pg.rep.settings(doc, f)
    if "run" in kinds:
        run_section(pg)
    elif "population" in kinds:
        population_section(pg)
    _generic(pg)
    _figures(pg)
    _provenance(pg, cmd)
    return pg.rep


def _figures(pg: Page) -> None:
    pngs = sorted(pg.folder.glob("*.png"))
    if pngs:
        pg.rep.heading("Figures")
    for f in pngs:
        pg.rep.figure(f, f"{f.name}: {CAPTIONS.get(f.name, 'figure written with this result.')}")


def _provenance(pg: Page, cmd: dict | None) -> None:
    pg.rep.heading("How it was made")
    if cmd:
        pg.rep.text(
            f"The command (isthmus {cmd.get('isthmus_version', '?')}), run in {cmd.get('cwd')}:"
        )
        pg.rep.command([str(a) for a in cmd["argv"]])
    else:
        pg.rep.text(
            "The command was not recorded (command.json is missing: the result was written from Python or by an isthmus older than the record)."
        )
    for caption, obj in pg.settings:
        pg.rep.settings(obj, caption)
    files = sorted(
        p
        for p in pg.folder.iterdir()
        if p.suffix in (".json", ".csv", ".pdf", ".html")
        and p.is_file()
        and p.resolve() != pg.page.resolve()
    )
    pg.rep.links([Link(p.name, pg.href(p)) for p in files], "Files of this result:")
    _related(pg)


def _related(pg: Page) -> None:
    """Links to the result folders this one was computed from and to those inside it (the jobs
    of a sweep, the runs of the demo), each with its kind and, where it has one, its report."""

    def link(label: str, target: Path) -> Link:
        kind = ", ".join(detect(target)) or "folder"
        page = target / REPORT_FILE
        href = pg.href(page if page.is_file() else target)
        return Link(f"{label} ({kind}{'; its report' if page.is_file() else ''})", href)

    links, seen = [], set()
    for r in pg.related:
        target = pg.resolve(r)
        if target is None or target.resolve() in seen:
            continue
        seen.add(target.resolve())
        links.append(link(r, target))
    missing = [r for r in dict.fromkeys(pg.related) if pg.resolve(r) is None]
    pg.rep.links(links, "Results this one was computed from:")
    if missing:
        pg.rep.text("Not found from here: " + ", ".join(missing) + ".")
    if "population" not in detect(pg.folder):  # a population's members are in its table
        inner = [p for p in sorted(pg.folder.iterdir()) if p.is_dir() and detect(p)]
        pg.rep.links([link(p.name, p) for p in inner], "Results inside this folder:")


def write_report(
    folder: str | Path, out: str | Path | None = None, overwrite: bool = False
) -> Path:
    """Write the report of `folder` to `out` (default folder/report.html) and return its path.

    Never replaces an input or another command's file: `out` must be an .html file, and an
    existing one is replaced only with `overwrite` and only if `isthmus report` wrote it."""
    folder = Path(folder)
    path = Path(out) if out is not None else folder / REPORT_FILE
    if path.suffix.lower() != ".html":
        raise IsthmusError(f"--out {path}: a report is an .html file; name one ending in .html")
    if path.is_dir():
        raise IsthmusError(f"--out {path} is a folder; name an .html file")
    if path.exists():
        gen = generator_of(path)
        if gen != GENERATOR:
            by = f"by {gen}" if gen else "by another program"
            raise IsthmusError(
                f"{path} exists and was written {by}, not by isthmus report; it is never replaced: name another file with --out"
            )
        if not overwrite:
            raise IsthmusError(
                f"{path} exists; pass --overwrite to replace it, or name another file with --out"
            )
    return build_report(folder, path).write(path)
