"""Permutation alignment: permutations preserve the function, compose and invert; weight and
activation matching recover a hidden permutation; both agree with brute force on one tiny layer."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from conftest import budget
from hypothesis import given
from hypothesis import strategies as st
from torch.func import functional_call

from isthmus.align import (
    activation_correlations,
    activation_matching,
    align,
    compose,
    identity,
    invert,
    is_identity,
    matching_objective,
    perm_from_json,
    permute,
    random_permutation,
    weight_matching,
)
from isthmus.errors import IsthmusError
from isthmus.models import ModelConfig, build_model, units_of
from isthmus.params import params_of

CONFIGS = {
    "mlp": ModelConfig(kind="mlp", depth=4, width=(24, 16, 20), input_shape=(40,)),
    "mlp-nobias": ModelConfig(kind="mlp", depth=3, width=16, bias=False, input_shape=(40,)),
    "cnn": ModelConfig(kind="cnn", channels=(8, "M", 6, "M"), input_shape=(40,)),
    "cnn-bn": ModelConfig(kind="cnn", channels=(8, "M", 6), batchnorm=True, input_shape=(40,)),
    "cnn-nobias": ModelConfig(kind="cnn", channels=(6, 5, "M"), bias=False, input_shape=(40,)),
}


def _net(cfg: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    p = params_of(model)
    g = torch.Generator().manual_seed(seed + 100)
    for k, v in p.items():  # non-trivial BN entries, so that moving them is actually tested
        if k.startswith("bns.") and v.is_floating_point():
            p[k] = v + 0.5 * torch.rand(v.shape, generator=g)
    return model, units_of(model), p


def _x(n: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 40, generator=torch.Generator().manual_seed(seed))


def _out(model, p, x):
    with torch.no_grad():
        return functional_call(model, p, (x,))


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_permuted_net_computes_same_outputs(kind):
    model, units, p = _net(CONFIGS[kind])
    perm = random_permutation(units, torch.Generator().manual_seed(1))
    assert not is_identity(perm)
    q = permute(p, units, perm)
    assert any(not torch.equal(p[k], q[k]) for k in p)  # it really moved something
    x = _x()
    torch.testing.assert_close(_out(model, q, x), _out(model, p, x), atol=1e-5, rtol=1e-5)


def _perm_strategy():
    return st.lists(st.integers(1, 7), min_size=1, max_size=3).flatmap(
        lambda sizes: st.tuples(
            st.just(sizes), st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)
        )
    )


@budget(40 / 25)
@given(_perm_strategy())
def test_permutations_compose_and_invert(spec):
    sizes, s1, s2 = spec
    model = build_model(ModelConfig(kind="mlp", depth=len(sizes) + 1, width=tuple(sizes)))
    units, p = units_of(model), params_of(model)
    a = random_permutation(units, torch.Generator().manual_seed(s1))
    b = random_permutation(units, torch.Generator().manual_seed(s2))
    twice = permute(permute(p, units, a), units, b)
    once = permute(p, units, compose(a, b))
    for k in p:
        assert torch.equal(twice[k], once[k])
    assert is_identity(compose(a, invert(a))) and is_identity(compose(invert(a), a))
    back = permute(permute(p, units, a), units, invert(a))
    assert all(torch.equal(back[k], p[k]) for k in p)
    assert all(torch.equal(invert(invert(a))[k], a[k]) for k in a)
    # associativity
    c = compose(b, a)
    left, right = compose(compose(a, b), c), compose(a, compose(b, c))
    assert all(torch.equal(left[k], right[k]) for k in left)


def test_bad_permutation_is_refused():
    _, units, p = _net(CONFIGS["mlp"])
    with pytest.raises(IsthmusError, match="exactly"):
        permute(p, units, {"layers.0": torch.zeros(24, dtype=torch.long)})
    with pytest.raises(IsthmusError, match="does not have"):
        permute(p, units, {"nope": torch.arange(3)})


def _no_dead_units(model, units, p, x) -> bool:
    corr = activation_correlations(model, p, p, units, x)
    return all(bool((c.diagonal() > 0.999).all()) for c in corr.values())


@pytest.mark.parametrize("kind", sorted(CONFIGS))
@pytest.mark.parametrize("method", ["weights", "activations"])
def test_random_permutation_aligns_back_to_identity(kind, method):
    model, units, p = _net(CONFIGS[kind], seed=3)
    x = _x(512, seed=4)
    assert _no_dead_units(model, units, p, x)  # precondition of the property (docs/definitions.md)
    perm = random_permutation(units, torch.Generator().manual_seed(5))
    b = permute(p, units, perm)
    if method == "weights":
        found = weight_matching(p, b, units, seed=2)
    else:
        found = activation_matching(model, p, b, units, x, batch_size=100)
    assert is_identity(compose(perm, found))
    res = align(model, p, b, method=method, data=x, seed=2)
    assert all(torch.equal(res.params[k], p[k]) for k in p)


def test_weight_matching_equals_brute_force_on_one_layer():
    """One hidden layer: the problem is a single assignment, so coordinate descent is exact."""
    cfg = ModelConfig(kind="mlp", depth=2, width=5, input_shape=(40,))
    _, units, pa = _net(cfg, seed=0)
    _, _, pb = _net(cfg, seed=1)
    found = weight_matching(pa, pb, units)
    best = max(
        matching_objective(pa, pb, units, {"layers.0": torch.tensor(q)})
        for q in itertools.permutations(range(5))
    )
    assert matching_objective(pa, pb, units, found) == pytest.approx(best, rel=1e-12)


def test_activation_matching_equals_brute_force_on_one_layer():
    cfg = ModelConfig(kind="mlp", depth=2, width=5, input_shape=(40,))
    model, units, pa = _net(cfg, seed=0)
    _, _, pb = _net(cfg, seed=1)
    x = _x(300)
    corr = activation_correlations(model, pa, pb, units, x)["layers.0"]
    found = activation_matching(model, pa, pb, units, x)["layers.0"]
    best = max(
        float(corr[torch.arange(5), torch.tensor(q)].sum())
        for q in itertools.permutations(range(5))
    )
    assert float(corr[torch.arange(5), found].sum()) == pytest.approx(best, rel=1e-12)


def test_activation_correlation_matches_numpy():
    """Streaming moments (batched, float64) equal a direct Pearson correlation."""
    model, units, pa = _net(CONFIGS["cnn"], seed=0)
    _, _, pb = _net(CONFIGS["cnn"], seed=1)
    model = model.double()  # float64 forward, so the two computations agree to round-off
    pa, pb = ({k: v.double() for k, v in p.items()} for p in (pa, pb))
    x = _x(200).double()
    corr = activation_correlations(model, pa, pb, units, x, batch_size=64)["convs.0"]
    # direct: conv 0 -> relu -> max-pool, channels with examples x positions as samples
    feats = []
    for p in (pa, pb):
        h = torch.nn.functional.conv1d(
            x[:, None].double(), p["convs.0.weight"].double(), p["convs.0.bias"].double(), padding=1
        )
        h = torch.nn.functional.max_pool1d(h.relu(), 2, 2)
        feats.append(h.transpose(1, 2).reshape(-1, h.shape[1]))
    full = torch.corrcoef(torch.cat(feats, 1).T)
    torch.testing.assert_close(corr, full[:8, 8:], atol=1e-10, rtol=0)


def test_weight_matching_improves_objective_and_is_deterministic():
    cfg = CONFIGS["mlp"]
    model, units, pa = _net(cfg, seed=0)
    _, _, pb = _net(cfg, seed=1)
    p1 = weight_matching(pa, pb, units, seed=7)
    p2 = weight_matching(pa, pb, units, seed=7)
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    assert matching_objective(pa, pb, units, p1) >= matching_objective(
        pa, pb, units, identity(units)
    )
    res = align(model, pa, pb, method="weights", seed=7)
    x = _x()
    torch.testing.assert_close(_out(model, res.params, x), _out(model, pb, x), atol=1e-5, rtol=1e-5)
    assert res.extra["objective_after"] >= res.extra["objective_before"]


def test_align_refuses_bad_input():
    model, _, p = _net(CONFIGS["mlp"])
    with pytest.raises(IsthmusError, match="needs data"):
        align(model, p, p, method="activations")
    with pytest.raises(IsthmusError, match="unknown alignment method"):
        align(model, p, p, method="magic")


@pytest.mark.e2e
def test_align_and_compare_evaluates_the_line_before_and_after(small_mnist1d):
    from isthmus.align import align, align_and_compare
    from isthmus.paths import evaluate_path, line

    d = small_mnist1d.subset(128, 64, seed=0)
    model, _, a = _net(CONFIGS["mlp"], seed=1)
    _, _, b = _net(CONFIGS["mlp"], seed=2)
    c = align_and_compare(model, a, b, d, "weights", seed=3, points=5)
    ref = align(model, a, b, "weights", seed=3)
    assert all(torch.equal(c.result.params[k], ref.params[k]) for k in a)
    before = evaluate_path(model, line(a, b), d, points=5, batch_size=2048)
    after = evaluate_path(model, line(a, ref.params), d, points=5, batch_size=2048)
    assert c.before.train_loss == before.train_loss and c.after.train_loss == after.train_loss
    # the permuted B computes B's function: the lines share both end values
    assert c.after.train_loss[-1] == pytest.approx(c.before.train_loss[-1], rel=1e-5)


def test_cli_align(tmp_path, small_mnist1d, capsys):
    from isthmus.cli import main
    from isthmus.io import load_run, read_json
    from isthmus.train import TrainConfig, train_population

    cfg = ModelConfig(kind="mlp", depth=3, width=32, input_shape=(40,))
    spec = {"name": "mnist1d", "root": None, "seed": 0}
    train_population(
        cfg,
        small_mnist1d,
        TrainConfig(epochs=2),
        [0, 1],
        out=tmp_path / "r",
        data_spec=spec,
        progress=False,
    )
    outs = []
    for method in ("weights", "activations"):
        out = tmp_path / method
        argv = [
            "align",
            str(tmp_path / "r/0"),
            str(tmp_path / "r/1"),
            "--method",
            method,
            "--out",
            str(out),
            "--points",
            "5",
            "--n-examples",
            "300",
            "--device",
            "cpu",
        ]
        assert main(argv) == 0
        printed = capsys.readouterr().out
        assert "before" in printed and "after" in printed
        summary = read_json(out / "align.json")
        assert (out / "align.png").is_file()
        for key in ("barrier_before", "barrier_after"):
            assert set(summary[key]) >= {"train_loss", "test_loss", "train_loss_vs_mean"}
        aligned, b = load_run(out), load_run(tmp_path / "r/1")
        cfg_json = json.loads((out / "config.json").read_text())
        assert cfg_json["aligned_to"] == str(tmp_path / "r/0")
        units = units_of(b.model)
        perm = perm_from_json(cfg_json["permutation"], units)
        assert all(
            torch.equal(aligned.params[k], v) for k, v in permute(b.params, units, perm).items()
        )
        x = small_mnist1d.x_test
        torch.testing.assert_close(
            _out(b.model, aligned.params, x), _out(b.model, b.params, x), atol=1e-5, rtol=1e-5
        )
        # both lines start at A and end at the same function: their endpoint losses agree
        assert summary["before"]["train_loss"][0] == pytest.approx(
            summary["after"]["train_loss"][0]
        )
        assert summary["before"]["train_loss"][-1] == pytest.approx(
            summary["after"]["train_loss"][-1], rel=1e-5
        )
        outs.append(summary)
    # same seed, same numbers
    assert (
        main(
            [
                "align",
                str(tmp_path / "r/0"),
                str(tmp_path / "r/1"),
                "--out",
                str(tmp_path / "again"),
                "--points",
                "5",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    again = read_json(tmp_path / "again/align.json")
    assert again["barrier_after"] == outs[0]["barrier_after"]
    assert (
        main(
            ["align", str(tmp_path / "r/0"), str(tmp_path / "r/1"), "--out", str(tmp_path / "r/1")]
        )
        == 2
    )
