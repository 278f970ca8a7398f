"""One self-contained HTML page: headings, text, tables, figures embedded as base64 PNG data URIs,
the command that produced a result and its settings as a readable table, links to files beside it.

A page has no external resource: moved alone, it still shows every figure. Pages only arrange
results computed elsewhere; nothing here computes. Used by `isthmus report`, the demo, and any
command that writes a report (a reproduction adds its claim / verdict tables with `table`, `Mark`
and `Link`).
"""

from __future__ import annotations

import base64
import html
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..io import atomic_write_bytes

GENERATOR = "isthmus report"  # the <meta name="generator"> of pages `isthmus report` writes
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
_STYLE = (
    "body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;line-height:1.4}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
    "text-align:left;vertical-align:top}th{background:#f0f0f0}caption{text-align:left;"
    "font-weight:bold;padding:4px 0}td.num{text-align:right;font-variant-numeric:tabular-nums}"
    "img{max-width:100%}figure{margin:1.5em 0}figcaption{font-size:90%;color:#444}"
    "pre{background:#f4f4f4;padding:8px;white-space:pre-wrap;word-break:break-all}"
    ".good{color:#14691e;font-weight:bold}.bad{color:#a31515;font-weight:bold}"
    ".neutral{color:#7a5a00;font-weight:bold}footer{margin-top:3em;font-size:85%;color:#666}"
)


@dataclass(frozen=True)
class Link:
    """A table cell or list item that links `href` (relative to the page) under `text`."""

    text: str
    href: str


@dataclass(frozen=True)
class Mark:
    """A highlighted cell, e.g. a verdict: tone "good", "bad" or "neutral"."""

    text: str
    tone: str = "neutral"


def number(v: float, digits: int = 4) -> str:
    """A float for a table: `digits` significant digits; inf and nan spelled out."""
    return f"{v:.{digits}g}" if math.isfinite(v) else str(v)


def describe(v, nonfinite=None, digits: int = 6) -> str:
    """One readable line for any JSON value: short lists written out, long ones summarised, a
    null that stands for a non-finite number (its `<name>_nonfinite` sibling) named."""
    if v is None:
        return str(nonfinite) if isinstance(nonfinite, str) else "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return number(v, digits)
    if isinstance(v, int | str):
        return str(v)
    if isinstance(v, Mapping):
        return "(empty)" if not v else f"{len(v)} fields"
    if isinstance(v, Sequence):
        if not v:
            return "(empty list)"
        if all(isinstance(x, int | float | str | bool) or x is None for x in v):
            if len(v) <= 12:
                return ", ".join(describe(x, digits=digits) for x in v)
            nums = [x for x in v if isinstance(x, int | float) and not isinstance(x, bool)]
            if len(nums) == len(v):
                return f"{len(v)} values, from {describe(min(nums))} to {describe(max(nums))}"
            return f"{len(v)} values"
        if all(isinstance(x, Sequence) and not isinstance(x, str) for x in v):
            return f"{len(v)} x {len(v[0])} grid"
        return f"{len(v)} entries" if len(v) > 1 else "1 entry"
    return str(v)


def flatten(obj: Mapping, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, readable value) for every field of a nested JSON object: nested objects are
    opened (`model.width`), lists described (`describe`), `<name>_nonfinite` folded into name."""
    rows: list[tuple[str, str]] = []
    for k, v in obj.items():
        if str(k).endswith("_nonfinite") and str(k)[: -len("_nonfinite")] in obj:
            continue
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            rows += flatten(v, key + ".")
        else:
            rows.append((key, describe(v, obj.get(f"{k}_nonfinite"))))
    return rows


def _cell(v) -> str:
    if isinstance(v, Link):
        return f'<td><a href="{html.escape(v.href)}">{html.escape(v.text)}</a></td>'
    if isinstance(v, Mark):
        return f'<td class="{html.escape(v.tone)}">{html.escape(v.text)}</td>'
    if isinstance(v, float):
        return f'<td class="num">{number(v)}</td>'
    if isinstance(v, int) and not isinstance(v, bool):
        return f'<td class="num">{v}</td>'
    if v is None:  # not applicable (a null that means "not finite" is `describe`d before)
        return "<td>&ndash;</td>"
    return f"<td>{html.escape(describe(v) if not isinstance(v, str) else v)}</td>"


def data_uri(png: str | Path | bytes, mime: str = "image/png") -> str:
    """An image as a data URI, so that the page needs no file beside it."""
    if not isinstance(png, bytes):
        mime = _MIME.get(Path(png).suffix.lower(), mime)
        png = Path(png).read_bytes()
    return f"data:{mime};base64,{base64.b64encode(png).decode('ascii')}"


@dataclass
class Report:
    """A page under construction: call the methods in reading order, then `write` or `html`.

    `generator` goes into the page's <meta name="generator">: `isthmus report` replaces a page
    only if it wrote it (never another command's report)."""

    title: str
    generator: str = GENERATOR
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def code(self, text: str) -> None:
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def command(self, argv: Sequence[str], cwd: str | None = None) -> None:
        """The command line that produced a result, quoted for a shell, and where it ran."""
        line = shlex.join(argv)
        self.code(f"cd {shlex.quote(cwd)}\n{line}" if cwd else line)

    def table(self, header: Sequence[str], rows: Sequence[Sequence], caption: str = "") -> None:
        """Rows of cells: numbers right-aligned (floats to 4 significant digits), `Link` and
        `Mark` cells as links and highlighted text, anything else `describe`d."""
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(_cell(v) for v in r) + "</tr>" for r in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.parts.append(
            f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )

    def settings(self, obj: Mapping, caption: str = "settings") -> None:
        """A nested JSON object (a config, a command's settings) as a two-column table."""
        rows = flatten(obj)
        if rows:
            self.table(["setting", "value"], rows, caption)

    def records(self, rows: Sequence[Mapping], caption: str = "", limit: int = 200) -> None:
        """A list of flat objects (one per row; the columns: every key any row has), at most
        `limit` rows shown (the caption says how many were left out)."""
        keys: list[str] = []
        for r in rows:  # nested values (a run's trajectory) do not fit a cell: left out
            keys += [
                k
                for k, v in r.items()
                if k not in keys
                and not str(k).endswith("_nonfinite")
                and not isinstance(v, list | dict)
            ]
        shown = [[r.get(k, "") for k in keys] for r in rows[:limit]]
        more = f" (first {limit} of {len(rows)} rows)" if len(rows) > limit else ""
        self.table(keys, shown, caption + more)

    def figure(self, png: str | Path | bytes, caption: str) -> None:
        """An image embedded in the page (a file's bytes or bytes already rendered)."""
        self.parts.append(
            f'<figure><img src="{data_uri(png)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def links(self, items: Sequence[Link], caption: str = "") -> None:
        """A list of links (hrefs relative to the page's folder)."""
        if not items:
            return
        lis = "".join(
            f'<li><a href="{html.escape(x.href)}">{html.escape(x.text)}</a></li>' for x in items
        )
        cap = f"<p>{html.escape(caption)}</p>" if caption else ""
        self.parts.append(f"{cap}<ul>{lis}</ul>")

    def html(self) -> str:
        from ..version import __version__

        title = html.escape(self.title)
        return (
            f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<meta name='generator' content='{html.escape(self.generator)}'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<link rel='icon' href='data:,'><style>{_STYLE}</style></head><body><h1>{title}</h1>"
            + "\n".join(self.parts)
            + f"<footer>Written by isthmus {html.escape(__version__)}.</footer></body></html>\n"
        )

    def write(self, path: str | Path) -> Path:
        atomic_write_bytes(path, self.html().encode())
        return Path(path)


def generator_of(path: str | Path) -> str | None:
    """The <meta name="generator"> of an HTML page isthmus wrote (None for any other file)."""
    try:
        head = Path(path).read_bytes()[:4096].decode("utf-8", "replace")
    except OSError:
        return None
    tag = "<meta name='generator' content='"
    start = head.find(tag)
    return (
        html.unescape(head[start + len(tag) : head.find("'", start + len(tag))])
        if start >= 0
        else None
    )
