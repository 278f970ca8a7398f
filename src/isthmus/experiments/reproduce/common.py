"""What every paper's reproduction shares: claims with verdicts, resumable steps, the data, and
the output (results.json and one self-contained report.html).

A reproduction is a list of steps (each a function of its own folder returning a JSON-able dict,
figures drawn into that folder) and a list of claims computed from the steps' results. A step's
result is written atomically to `OUT/steps/NAME/result.json` as its last act, so a step is done
exactly when that file exists; `--resume` skips done steps (after checking that they were written
for the same settings) and reruns the rest, whose own training continues from its per-epoch
checkpoint. docs/reproduction.md defines every claim's statistic, threshold and seeds.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...data import Dataset, load
from ...errors import IsthmusError
from ...io import check_resume, read_json, write_json
from ...report import Link, Mark, Report
from ...version import __version__

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
SIZES = ("smoke", "quick", "full")
RESULT = "result.json"  # a step's result, written last: its presence means the step is done
SETTINGS = "settings.json"  # the run's settings, checked on --resume
_TONE = {REPRODUCED: "good", NOT_REPRODUCED: "bad", INCONCLUSIVE: "neutral"}


@dataclass(frozen=True)
class Claim:
    """One claim of a paper and what this run measured for it.

    claim: the paper's statement in our words; statistic: what we compute; threshold: when the
    verdict is "reproduced" (and when "not reproduced"); value: the statistic (None: not
    computable); shown: the number(s) as the report's table shows them; verdict: reproduced, not
    reproduced or inconclusive; steps: the steps it was computed from (their durations add up);
    detail: the supporting numbers."""

    key: str
    claim: str
    statistic: str
    threshold: str
    value: float | None
    shown: str
    verdict: str
    steps: list[str]
    detail: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in _TONE:
            raise ValueError(f"verdict {self.verdict!r}")


@dataclass(frozen=True)
class Figure:
    """A figure a step drew (path relative to the output folder) and its caption."""

    file: str
    caption: str


@dataclass
class Steps:
    """Runs named steps into OUT/steps/NAME, skipping finished ones on resume."""

    out: Path
    resume: bool
    settings: dict
    progress: bool | None = None
    done: dict[str, dict] = field(default_factory=dict)

    def run(self, name: str, fn: Callable[[Path], dict], settings: dict | None = None) -> dict:
        """fn(folder) -> result dict (JSON-able; may hold "figures": [Figure, ...]). Returns the
        stored record {"step", "settings", "seconds", "resumed", "result"}."""
        if name in self.done:  # asked again by a later step of the same run
            return self.done[name]["result"]
        folder = self.out / "steps" / name
        meta = _plain({"run": self.settings, "step": settings or {}})
        file = folder / RESULT
        if self.resume and file.exists():
            rec = read_json(file)
            check_resume(file, rec.get("settings"), meta, what=f"reproduction step {name}")
            rec["resumed"] = True
        else:
            if folder.exists() and not self.resume:
                shutil.rmtree(folder)  # a step of an overwritten run starts from scratch
            folder.mkdir(parents=True, exist_ok=True)
            if self.progress is not False:
                print(f"step {name} ...", flush=True)
            t0 = time.perf_counter()
            res = fn(folder)
            rec = {
                "step": name,
                "settings": meta,
                "seconds": time.perf_counter() - t0,
                "resumed": False,
                "result": _plain(res),
            }
            write_json(file, rec)
        self.done[name] = rec
        return rec["result"]

    def folder(self, name: str) -> Path:
        return self.out / "steps" / name

    def seconds(self, names: Sequence[str]) -> float:
        return sum(self.done[n]["seconds"] for n in names if n in self.done)


def _plain(obj):
    if isinstance(obj, Figure):
        return asdict(obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj  # so that settings compare equal to their JSON copy on resume


def figure(out: Path, png: Path, caption: str) -> Figure:
    """A step's figure, recorded relative to the output folder."""
    return Figure(str(Path(png).relative_to(out)), caption)


def start(out: Path, resume: bool, settings: dict) -> None:
    """Record the run's settings; on resume, refuse a folder written for other settings; without
    it (an --overwrite), drop the steps of the earlier run so that none of them is reported."""
    file, settings = out / SETTINGS, _plain(settings)
    if resume:
        saved = read_json(file) if file.exists() else None
        if saved is None:
            raise IsthmusError(f"--resume: {out} holds no reproduction; start without --resume")
        check_resume(file, saved, settings, what="reproduction")
    elif (out / "steps").is_dir():
        shutil.rmtree(out / "steps")
    write_json(file, settings)


def begin(
    paper: str,
    sizes,
    out: Path,
    *,
    size: str,
    seed: int,
    data: str,
    root: str | None,
    resume: bool,
    progress: bool | None,
) -> tuple[dict, Dataset, Steps]:
    """The opening every paper's run shares: its settings (recorded, checked on resume), the data
    set (classification only) and the step runner."""
    settings = {
        "paper": paper,
        "size": size,
        "seed": seed,
        "data": data,
        "root": root,
        "sizes": asdict(sizes),
    }
    start(out, resume, settings)
    ds = load_data(data, root, sizes.subset, seed)
    if ds.task != "classification":
        raise IsthmusError(f"--data {data}: the reproduction needs a classification data set")
    return settings, ds, Steps(out, resume, settings, progress)


def load_data(name: str, root: str | None, subset: tuple[int, int] | None, seed: int) -> Dataset:
    """The data set of a run: a built-in one, or MNIST / CIFAR-10 read from `root`; a seeded
    subset of (train, test) examples where the size asks for one (smaller than the data set)."""
    if name in ("mnist", "fashion-mnist", "cifar10") and root is None:
        raise IsthmusError(f"--data {name} is read from local files: give --root DIR")
    data = load(name, root=root, seed=seed)
    if subset is not None:
        n_tr, n_te = min(subset[0], len(data.x_train)), min(subset[1], len(data.x_test))
        data = data.subset(n_tr, n_te, seed=seed)
    return data


def verdict(ok: bool, bad: bool) -> str:
    """reproduced when `ok`, not reproduced when `bad` (and not ok), inconclusive otherwise."""
    return REPRODUCED if ok else NOT_REPRODUCED if bad else INCONCLUSIVE


def fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}g}"


@dataclass(frozen=True)
class Section:
    """One experiment of the report: a heading, what it shows, the steps it comes from, a table
    of its key numbers (header, rows) and the figures of its steps."""

    title: str
    text: str
    steps: list[str]
    header: list[str] = field(default_factory=list)
    rows: list[list] = field(default_factory=list)


def write_outputs(
    out: Path,
    *,
    paper: str,
    title: str,
    reference: str,
    size: str,
    settings: dict,
    steps: Steps,
    claims: list[Claim],
    sections: list[Section],
    measured: dict,
    command: Sequence[str] | None,
    seconds: float,
) -> Path:
    """results.json (claims, measured numbers, step durations, settings, command) and
    report.html (claims first, then each experiment with its figures and settings)."""
    doc = {
        "paper": paper,
        "reference": reference,
        "size": size,
        "isthmus_version": __version__,
        "command": list(command) if command else None,
        "settings": settings,
        "claims": [
            {
                **asdict(c),
                "seconds": steps.seconds(c.steps),
                "settings": {
                    n: steps.done[n]["settings"]["step"] for n in c.steps if n in steps.done
                },
            }
            for c in claims
        ],
        "measured": measured,
        "steps": {
            n: {
                "seconds": r["seconds"],
                "resumed": r.get("resumed", False),
                "folder": f"steps/{n}",
                "settings": r["settings"]["step"],
            }
            for n, r in steps.done.items()
        },
        "seconds": seconds,
    }
    write_json(out / "results.json", doc)
    rep = Report(f"isthmus reproduce {paper}: {title}", generator=f"isthmus reproduce {paper}")
    rep.text(
        f"{reference}. Size: {size}. Each claim below is the paper's statement in our words, the "
        "statistic this run computed, the threshold fixed in advance (docs/reproduction.md) and "
        "the verdict. Durations are the time of the steps each claim comes from (a step taken "
        "from an earlier run with --resume keeps that run's time)."
    )
    rep.table(
        ["", "claim", "statistic", "our number", "threshold", "verdict", "duration (s)"],
        [
            [
                c.key,
                c.claim,
                c.statistic,
                c.shown,
                c.threshold,
                Mark(c.verdict, _TONE[c.verdict]),
                round(steps.seconds(c.steps), 1),
            ]
            for c in claims
        ],
        "Claims and verdicts",
    )
    for s in sections:
        rep.heading(s.title)
        rep.text(s.text)
        if s.rows:
            rep.table(s.header, s.rows)
        for name in s.steps:
            rec = steps.done.get(name)
            if rec is None:
                continue
            for f in rec["result"].get("figures", []):
                rep.figure(out / f["file"], f["caption"])
            step_settings = rec["settings"]["step"]
            if step_settings:
                rep.settings(step_settings, f"settings of step {name} ({rec['seconds']:.1f} s)")
    rep.heading("How it was made")
    if command:
        rep.command(list(command))
    rep.settings(settings, "settings of the run")
    rep.text(f"Total time of this invocation: {seconds:.0f} s.")
    figs = sorted(p.relative_to(out).as_posix() for p in out.glob("steps/*/*.png"))
    rep.links(
        [Link("results.json", "results.json")] + [Link(f, f) for f in figs],
        "Files beside this page (results.json holds every number; the figures are also embedded "
        "above):",
    )
    return rep.write(out / "report.html")


def train_nets(steps: Steps, name: str, model_cfg, data: Dataset, train_cfg, seeds: list[int]):
    """Step `name`: nets of one configuration trained as one population into OUT/steps/NAME/k
    (checkpointed every epoch: an interrupted step continues on --resume). Returns the loaded
    parameters, in seed order."""
    from ...io import load_run
    from ...train import STATE_FILE, train_population

    def fn(folder: Path) -> dict:
        resume = steps.resume and (folder / ".checkpoint" / STATE_FILE).exists()
        runs = train_population(
            model_cfg, data, train_cfg, seeds, out=folder, resume=resume, progress=steps.progress
        )
        return {"metrics": [{k: v for k, v in r.metrics.items() if k != "history"} for r in runs]}

    settings = {"model": model_cfg.to_dict(), "train": asdict(train_cfg), "seeds": list(seeds)}
    res = steps.run(name, fn, settings)
    return [load_run(steps.folder(name) / str(k)).params for k in range(len(seeds))], res
