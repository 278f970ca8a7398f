"""Joining solutions by a complex: on the wedge model it avoids the high loss the straight lines
cross; the evaluation's batched samples equal a loop; BatchNorm solutions reproduce their own
metrics inside the complex; resuming gives the numbers of an uninterrupted fit; the subspace
folder round-trips and bad files are refused with a message naming file and field."""

from __future__ import annotations

import json

import pytest
import torch

from isthmus.data import Dataset
from isthmus.errors import IsthmusError
from isthmus.io import file_sha256, load_tensors, save_tensors
from isthmus.landscape import as_point, evaluate_points
from isthmus.models import ModelConfig, build_model
from isthmus.params import bn_subset, evaluate, params_of
from isthmus.paths.fit import FitConfig
from isthmus.subspace import (
    evaluate_complex,
    initial_connectors,
    join,
    load_subspace,
    save_subspace,
    star,
)
from isthmus.wedges import WedgeConfig, WedgeModel, descend, random_starts


def _toy(n: int = 192, seed: int = 3) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    y = (x[:, :3].sum(1) > 0).long() + 2 * (x[:, 3] > 0).long()
    return Dataset(
        "toy", x[: n - 64], y[: n - 64], x[n - 64 :], y[n - 64 :], 4, "classification", (12,)
    )


def _nets(cfg: ModelConfig, seeds) -> tuple[torch.nn.Module, list[dict]]:
    out = []
    for s in seeds:
        torch.manual_seed(s)
        out.append(params_of(build_model(cfg)))
    torch.manual_seed(0)
    return build_model(cfg), out


MLP = ModelConfig(kind="mlp", depth=3, width=16, input_shape=(12,), num_classes=4)


def test_on_the_wedge_model_the_complex_avoids_the_lines_high_loss():
    # 3 wedges of dimension 15 in R^20 share a 5-dimensional subspace, where connectors can sit
    wedges = WedgeModel.random(WedgeConfig(dim=20, wedge_dim=15, wedges=3), seed=1)
    ends = descend(wedges, random_starts(20, 24, 3.0, seed=2), 0.01, 1500)
    hit = wedges.nearest(ends.x)
    pick = [int((hit == k).nonzero()[0]) for k in range(3)]  # one solution on every wedge
    sols = [as_point(ends.x[i]) for i in pick]
    cfg = FitConfig(epochs=300, optimizer="adam", lr=0.1, samples=16)
    cx, res = join(wedges, sols, connectors=2, cfg=cfg, seed=0, progress=False)
    assert all(torch.equal(cx.vertices[i]["x"], sols[i]["x"]) for i in range(3))
    ev = evaluate_complex(wedges, cx, samples=256, edge_points=21)
    lines = max(p["max_train_loss"] for p in ev.lines)
    assert len(ev.lines) == 3 and len(ev.edges) == 7  # 3 x 2 solution-connector edges + c0-c1
    assert lines > 1.0
    assert ev.sample_loss["max"] < 1e-3 * lines
    assert max(p["max_train_loss"] for p in ev.edges) < 1e-3 * lines
    assert res.history[-1]["loss"] < 1e-3 * res.history[0]["loss"]


def test_connectors_start_distinct_around_the_centroid():
    _, sols = _nets(MLP, (0, 1, 2))
    keys = list(sols[0])
    cs = initial_connectors(sols, 4, keys, seed=5)
    again = initial_connectors(sols, 4, keys, seed=5)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(cs, again, strict=True) for k in keys)
    for k in keys:
        mean = torch.stack([s[k] for s in sols]).mean(0)
        spread = torch.stack([s[k] - mean for s in sols]).pow(2).mean().sqrt()
        for c in cs:
            dev = (c[k] - mean).pow(2).mean().sqrt()
            assert 0.03 * spread < dev < 0.3 * spread  # ~ INIT_SCALE times the spread
    assert not torch.equal(cs[0][keys[0]], cs[1][keys[0]])
    cx = star(sols, cs, volume=1.0)
    X = torch.stack([torch.cat([v[k].flatten() for k in keys]) for v in cx.vertices])
    assert torch.isfinite(cx.penalty({k: torch.stack([v[k] for v in cx.vertices]) for k in keys}))
    assert X.shape[0] == 7


def test_batched_samples_equal_a_loop_over_them():
    model, sols = _nets(MLP, (0, 1, 2))
    data = _toy()
    cx = star(sols, initial_connectors(sols, 2, list(sols[0]), seed=1))
    ev = evaluate_complex(model, cx, data, samples=40, edge_points=3, seed=4)
    w = torch.tensor(ev.weights, dtype=torch.float64)
    assert w.shape == (40, 5) and bool((w >= 0).all())
    for i in range(40):
        one = cx.points(w[i : i + 1])
        tr = evaluate(model, one, data.x_train, data.y_train)
        te = evaluate(model, one, data.x_test, data.y_test)
        assert ev.samples["train_loss"][i] == pytest.approx(float(tr.loss[0]), rel=1e-6)
        assert ev.samples["train_acc"][i] == float(tr.acc[0])
        assert ev.samples["test_loss"][i] == pytest.approx(float(te.loss[0]), rel=1e-6)
    # vertices are the nets themselves, bit for bit
    for i in range(3):
        tr = evaluate(model, [sols[i]], data.x_train, data.y_train)
        assert ev.vertices["train_loss"][i] == pytest.approx(float(tr.loss[0]), rel=1e-6)
    # the edges end at their vertices and the lines at their solutions
    for p in ev.edges + ev.lines:
        i, j = p["ends"]
        assert p["train_loss"][0] == pytest.approx(ev.vertices["train_loss"][i], rel=1e-6)
        assert p["train_loss"][-1] == pytest.approx(ev.vertices["train_loss"][j], rel=1e-6)
    assert ev.sample_loss["max"] == max(ev.samples["train_loss"])
    assert ev.sample_loss["quantiles"]["0.5"] <= ev.sample_loss["quantiles"]["0.99"]


def test_batchnorm_solutions_reproduce_their_own_metrics_inside_the_complex():
    bn = ModelConfig(
        kind="mlp", depth=3, width=16, input_shape=(12,), num_classes=4, batchnorm=True
    )
    model, sols = _nets(bn, (0, 1))
    data = _toy()
    fc = FitConfig(epochs=2, batch_size=32)
    cx, _ = join(model, sols, data, connectors=1, cfg=fc, progress=False)
    ev = evaluate_complex(model, cx, data, samples=8, edge_points=3)
    bx = bn_subset(data.x_train)
    for i, p in enumerate(sols):
        own = evaluate(model, [p], data.x_train, data.y_train, bn_x=bx)
        test = evaluate(model, [p], data.x_test, data.y_test, bn_x=bx)
        assert ev.vertices["train_loss"][i] == float(own.loss[0])
        assert ev.vertices["train_acc"][i] == float(own.acc[0])
        assert ev.vertices["test_loss"][i] == float(test.loss[0])
    # and a sample's statistics are its own (recomputed), not a vertex's
    w = torch.tensor(ev.weights[:1], dtype=torch.float64)
    one = evaluate_points(model, cx.points(w), data, bn_x=bx)
    assert ev.samples["train_loss"][0] == one[0][0]


def test_resume_gives_the_numbers_of_an_uninterrupted_fit(tmp_path):
    model, sols = _nets(MLP, (0, 1, 2))
    data = _toy()
    fc = FitConfig(epochs=4, batch_size=32, samples=2)
    whole, rw = join(model, sols, data, cfg=fc, seed=3, progress=False)
    ck = tmp_path / "ck"
    join(model, sols, data, cfg=fc, seed=3, progress=False, checkpoint=ck, max_epochs=2)
    part, rp = join(model, sols, data, cfg=fc, seed=3, progress=False, checkpoint=ck, resume=True)
    assert [h["loss"] for h in rw.history] == [h["loss"] for h in rp.history]
    for a, b in zip(whole.vertices, part.vertices, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    for i in range(3):  # the given solutions never move
        assert all(torch.equal(whole.vertices[i][k], sols[i][k]) for k in sols[i])
    with pytest.raises(IsthmusError, match="another subspace fit"):
        join(model, sols, data, cfg=fc, seed=3, volume=0.5, checkpoint=ck, resume=True)
    with pytest.raises(IsthmusError, match="another curve"):
        join(model, sols[::-1], data, cfg=fc, seed=3, checkpoint=ck, resume=True)


def _saved(tmp_path):
    model, sols = _nets(MLP, (0, 1, 2))
    data = _toy()
    cx, res = join(model, sols, data, cfg=FitConfig(epochs=1, batch_size=64), progress=False)
    ev = evaluate_complex(model, cx, data, samples=16, edge_points=3)
    out = tmp_path / "sub"
    save_subspace(out, cx, ev, method="join", model=MLP.to_dict(), data={"name": "toy"},
                  runs=["a", "b", "c"], fit={"history": res.history})  # fmt: skip
    return out, cx


def test_save_load_round_trip(tmp_path):
    out, cx = _saved(tmp_path)
    doc = json.loads((out / "subspace.json").read_text())
    for key in ("solution_loss", "connector_loss", "sample_loss", "simplices", "dimension",
                "fixed", "model", "data", "runs", "fit", "edges", "lines"):  # fmt: skip
        assert key in doc, key
    assert doc["dimension"] == 2 and doc["fixed"] == [0, 1, 2] and len(doc["solution_loss"]) == 3
    sub = load_subspace(out)
    assert isinstance(sub.module, torch.nn.Module) and sub.config == doc
    assert sub.complex.simplices == cx.simplices and sub.complex.fixed == cx.fixed
    for a, b in zip(sub.vertices, cx.vertices, strict=True):
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    got, want = sub.sample(5, g1), cx.sample(5, g2)
    assert all(torch.equal(got[k], want[k]) for k in want) and got["layers.0.weight"].shape[0] == 5
    from isthmus.ensemble import from_subspace  # the ensemble code reads the folder as is

    assert len(from_subspace(out, 3, seed=1).members) == 3


def test_bad_subspace_files_are_refused_with_a_clear_message(tmp_path):
    out, _ = _saved(tmp_path)
    doc = json.loads((out / "subspace.json").read_text())

    def refused(match: str, **changes):
        bad = {**doc, **changes}
        for k in [k for k, v in changes.items() if v is None]:
            del bad[k]
        (out / "subspace.json").write_text(json.dumps(bad))
        with pytest.raises(IsthmusError, match=match):
            load_subspace(out)

    refused(r"subspace.json: missing field 'simplices'", simplices=None)
    refused(r"field 'fixed' must be a list of integers", fixed=["0"])
    refused(r"field 'dimension' is 3", dimension=3)
    refused(r"'simplices', 'fixed' or 'penalty' do not describe", simplices=[[0, 9, 4]])
    refused(r"field 'model'", model={**doc["model"], "width": 17})
    (out / "subspace.json").write_text(json.dumps(doc))
    t = load_tensors(out / "subspace.safetensors")
    save_tensors(
        out / "subspace.safetensors",
        {**t, "vertex1.layers.0.weight": t["vertex1.layers.0.weight"][:3]},
    )
    with pytest.raises(IsthmusError, match="its sha256 differs from field 'files'"):
        load_subspace(out)  # the tensors are not those the manifest was written with

    def rehash() -> None:  # a manifest that vouches for the changed file: the deeper checks
        doc["files"]["subspace.safetensors"] = file_sha256(out / "subspace.safetensors")
        (out / "subspace.json").write_text(json.dumps(doc))

    rehash()
    with pytest.raises(
        IsthmusError, match=r"subspace.safetensors: vertex1.layers.0.weight is \(3, 12\)"
    ):
        load_subspace(out)
    (out / "subspace.safetensors").write_bytes(b"not safetensors")
    rehash()
    with pytest.raises(IsthmusError, match="not a valid safetensors file"):
        load_subspace(out)
    with pytest.raises(IsthmusError, match="not a subspace folder"):
        load_subspace(tmp_path / "nowhere")
