"""Reports: the page builder, the report of every kind of result folder, the figures' legends, and
the pages in a real browser (headless Chromium: every image decodes, no console errors)."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from browser import browser, load  # noqa: F401 - the fixture

from isthmus import plot
from isthmus.cli import main
from isthmus.errors import IsthmusError
from isthmus.report import Link, Mark, Report, build_report, detect, flatten, write_report


def _png() -> bytes:
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [1, 0])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _sources(html: str) -> list[str]:
    return [part.split('"', 1)[0] for part in html.split('<img src="')[1:]]


# ----------------------------------------------------------------------------- the page


def test_figures_are_embedded_and_decode_to_the_same_bytes(tmp_path):
    png = _png()
    (tmp_path / "f.png").write_bytes(png)
    rep = Report("t")
    rep.figure(tmp_path / "f.png", "from a file")
    rep.figure(png, "from bytes")
    srcs = _sources(rep.html())
    assert len(srcs) == 2
    for src in srcs:
        head, data = src.split(",", 1)
        assert head == "data:image/png;base64" and base64.b64decode(data) == png


def test_text_is_escaped_and_cells_are_formatted():
    rep = Report("<b>title</b>")
    rep.table(["a<", "b"], [[Link("x&y", "run/"), 0.123456789], [Mark("fails", "bad"), 3]])
    html = rep.html()
    assert "<b>title</b>" not in html and "&lt;b&gt;title&lt;/b&gt;" in html
    assert '<a href="run/">x&amp;y</a>' in html and '<td class="bad">fails</td>' in html
    assert '<td class="num">0.1235</td>' in html and '<td class="num">3</td>' in html


def test_settings_read_as_a_table_not_a_json_dump():
    doc = {
        "model": {"kind": "mlp", "width": 16, "channels": [32, "M"]},
        "loss": None,
        "loss_nonfinite": "inf",
        "t": list(range(61)),
        "dropout": 0.5,
        "bn": False,
    }
    rows = dict(flatten(doc))
    assert rows == {
        "model.kind": "mlp",
        "model.width": "16",
        "model.channels": "32, M",
        "loss": "inf",
        "t": "61 values, from 0 to 60",
        "dropout": "0.5",
        "bn": "no",
    }
    rep = Report("t")
    rep.settings(doc)
    assert "{" not in rep.html().split("<body>")[1]


def test_unknown_json_and_a_sweep_folder_become_tables(tmp_path):
    (tmp_path / "sweep.json").write_text(
        json.dumps({"backend": "local", "jobs": [{"kind": "train"}]})
    )
    with open(tmp_path / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["job", "seed", "test_acc"], ["train-0", 0, 0.8125], ["train-1", 1, 0.75]])
    (tmp_path / "grid.png").write_bytes(_png())
    (tmp_path / "extra.json").write_text(json.dumps({"answer": 42, "rows": [{"a": 1, "b": 2.5}]}))
    (tmp_path / "job-0").mkdir()  # a job's result folder inside the sweep
    (tmp_path / "job-0" / "hessian.json").write_text(json.dumps({"eigenvalues": [2.0]}))
    assert detect(tmp_path) == ["sweep"]
    html = build_report(tmp_path).html()
    assert '<a href="job-0/">job-0 (Hessian)</a>' in html and "<td>train</td>" in html
    assert "<td>train-1</td>" in html and '<td class="num">0.8125</td>' in html
    assert "<td>answer</td><td>42</td>" in html and '<td class="num">2.5</td>' in html
    assert len(_sources(html)) == 1 and "backend" in html


def test_a_result_file_of_another_layout_is_shown_as_it_is(tmp_path):
    (tmp_path / "path.json").write_text(json.dumps({"barrier": [1, 2], "method": "mine"}))
    html = build_report(tmp_path).html()
    assert "does not have the layout of an isthmus connection result" in html
    assert "<td>method</td><td>mine</td>" in html


def test_a_report_never_replaces_another_commands_file(tmp_path):
    (tmp_path / "numbers.json").write_text(json.dumps({"x": 1.5}))
    out = write_report(tmp_path)
    assert out == tmp_path / "report.html"
    with pytest.raises(IsthmusError, match="--overwrite"):
        write_report(tmp_path)
    assert write_report(tmp_path, overwrite=True) == out
    Report("demo", generator="isthmus demo").write(tmp_path / "demo.html")
    (tmp_path / "mine.html").write_text("<html>hand written</html>")
    for name in ("demo.html", "mine.html"):
        with pytest.raises(IsthmusError, match="never replaced"):
            write_report(tmp_path, tmp_path / name, overwrite=True)
    with pytest.raises(IsthmusError, match=".html"):
        write_report(tmp_path, tmp_path / "numbers.json", overwrite=True)
    assert json.loads((tmp_path / "numbers.json").read_text()) == {"x": 1.5}
    (tmp_path / "empty").mkdir()
    with pytest.raises(IsthmusError, match="no result found"):
        write_report(tmp_path / "empty")


# ----------------------------------------------------------------------------- figures


@pytest.fixture
def figures(monkeypatch):
    """The figures plot functions draw, kept open for inspection."""
    kept = []
    monkeypatch.setattr(plot.plt, "close", lambda fig=None: kept.append(fig))
    return kept


def _path(shift: float) -> dict:
    t = [i / 10 for i in range(11)]
    loss = [1 + shift + 4 * x * (1 - x) for x in t]
    b = {"train_loss": 1.0, "train_loss_vs_mean": 1.0, "test_loss": 1.0, "t_max": 0.5}
    return {
        "t": t,
        "train_loss": loss,
        "test_loss": loss,
        "train_acc": t,
        "test_acc": t,
        "barrier": b,
    }


def _outside(legend, ax) -> bool:
    fig = ax.figure
    fig.canvas.draw()
    lb, ab = legend.get_window_extent(), ax.get_window_extent()
    return lb.y1 <= ab.y0 or lb.y0 >= ab.y1 or lb.x1 <= ab.x0 or lb.x0 >= ab.x1


def test_path_and_alignment_legends_cover_no_curve(tmp_path, figures):
    plot.path_profiles([_path(0), _path(0.1)], ["line", "bezier"], tmp_path / "p")
    fig = figures[-1]
    assert fig.legends and all(_outside(fig.legends[0], ax) for ax in fig.axes)
    hist = [
        {"epoch": e, "train_loss": 1 / e, "test_loss": 1.1 / e, "train_acc": 0.5, "test_acc": 0.4}
        for e in (1, 2)
    ]
    plot.learning_curves([hist, hist], ["a", "b"], tmp_path / "l")
    fig = figures[-1]
    assert fig.legends and all(_outside(fig.legends[0], ax) for ax in fig.axes)
    plot.alignment_curves([("mlp", _path(0), _path(-0.5))], tmp_path / "a")
    ax = figures[-1].axes[0]
    assert ax.get_legend() is not None and _outside(ax.get_legend(), ax)


def test_keep_rate_legend_names_the_dashed_lines(tmp_path, figures):
    q = [0.5, 0.75, 1.0]
    curve = {
        "keep_rates": q,
        "mean": [2, 1.5, 1],
        "std": [0.1] * 3,
        "min": [1.9, 1.4, 1],
        "draws": 2,
        "loss": 1.0,
    }
    plot.dropout_keep_curves([("with dropout", curve), ("without", curve)], tmp_path / "k")
    ax = figures[-1].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    dashed = [ln.get_label() for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 2 and all(d in labels for d in dashed)


def test_epsilon_vs_width_ticks_are_the_widths(tmp_path, figures):
    plot.epsilon_vs_width([32, 64, 128], {"dropout": [0.1, 0.05, 0.02]}, tmp_path / "e")
    ax = figures[-1].axes[0]
    figures[-1].canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["32", "64", "128"]
    assert ax.get_xaxis().get_minor_ticks() == [] or not any(
        t.label1.get_text() for t in ax.get_xaxis().get_minor_ticks()
    )


# ----------------------------------------------------------------------------- in a browser


def _check(driver, page: Path, images: int) -> str:
    got = load(driver, page)
    assert got["errors"] == [], got["errors"]
    assert len(got["images"]) == images, got["images"]
    assert all(i["complete"] and i["width"] > 0 for i in got["images"]), got["images"]
    assert all(i["src"].startswith("data:image/") for i in got["images"])
    return got["text"]


def test_the_browser_check_sees_a_broken_image(tmp_path, browser):  # noqa: F811
    (tmp_path / "broken.html").write_text("<!doctype html><img src='missing.png'>")
    got = load(browser, tmp_path / "broken.html")
    assert got["images"][0]["width"] == 0 and got["errors"]


def _cli(*argv: str) -> None:
    assert main([str(a) for a in argv]) == 0, argv


@pytest.mark.e2e
def test_reports_of_every_kind_render_alone_in_a_browser(tmp_path, browser, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)  # commands record paths as typed: relative to here
    net = ["--data", "digits", "--width", "8", "--depth", "2", "--epochs", "1"]
    _cli("train", *net, "--population", "3", "--out", "pop")
    runs = ["pop/0", "pop/1", "pop/2"]
    _cli("connect", *runs[:2], "--method", "linear", "--points", "5", "--out", "conn")
    _cli("tree", *runs, "--method", "linear", "--points", "5", "--out", "tree")
    _cli("surface", *runs, "--grid", "3", "--out", "surf")
    _cli("align", *runs[:2], "--points", "5", "--out", "al")
    _cli(
        "stability", runs[0], "--draws", "2", "--swaps", "1", "--curve-draws", "1", "--out", "stab"
    )
    _cli(
        "hessian",
        runs[0],
        "--top",
        "1",
        "--density",
        "--probes",
        "1",
        "--examples",
        "64",
        "--out",
        "hess",
    )
    _cli("ensemble", *runs, "--out", "ens")
    cmd = json.loads(Path("conn/command.json").read_text())
    assert cmd["argv"][:2] == ["isthmus", "connect"] and cmd["cwd"] == str(tmp_path)
    # folder: (kinds, images on its page)
    kinds = {
        "pop": (["population"], 1),
        "pop/0": (["run"], 1),
        "conn": (["connection"], 1),
        "tree": (["spanning tree"], 1),
        "surf": (["loss surface"], 1),
        "al": (["alignment", "run"], 2),
        "stab": (["stability"], 1),
        "hess": (["Hessian"], 1),
        "ens": (["ensembles"], 3),
    }
    alone = tmp_path / "alone"
    alone.mkdir()
    for folder, (kind, images) in kinds.items():
        assert detect(folder) == kind
        _cli("report", folder)
        page = Path(folder) / "report.html"
        text = _check(browser, page, images)
        assert "isthmus" in text and "setting" in text
        moved = alone / f"{folder.replace('/', '_')}.html"
        shutil.copy(page, moved)
        _check(browser, moved, images)  # moved alone, it still shows every figure
    html = Path("conn/report.html").read_text()
    barrier = json.loads(Path("conn/path.json").read_text())["barrier"]["train_loss"]
    assert f"{barrier:.4g}" in html and "isthmus connect pop/0 pop/1" in html
    for run in runs[:2]:  # the runs it was computed from are linked, relative to the page
        assert f'href="../{run}/report.html"' in html or f'href="../{run}/"' in html
