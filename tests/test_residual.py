"""Residual nets and transformers: configuration, unit descriptions (one stream group, nested head
groups), function preservation under permutation, weight and activation matching."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MODELS, budget
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
    permute,
    random_permutation,
    weight_matching,
)
from isthmus.errors import IsthmusError
from isthmus.models import ModelConfig, build_model, units_of
from isthmus.params import params_of

CONFIGS = {
    "resnet1d": ModelConfig(kind="resnet", depth=2, width=1, input_shape=(40,)),
    "resnet1d-bn": TINY_MODELS["resnet-bn"],
    "resnet2d-ln": ModelConfig(
        kind="resnet", depth=1, width=1, layernorm=True, input_shape=(3, 8, 8), num_classes=4
    ),
    "resnet1d-nobias": ModelConfig(kind="resnet", depth=1, width=1, bias=False),
    "transformer": ModelConfig(kind="transformer", depth=2, width=16, heads=4, patch=4),
    "transformer-nobias": ModelConfig(
        kind="transformer", depth=1, width=12, heads=3, patch=8, bias=False
    ),
}


SHIFT = 0.5


def _net(kind: str, seed: int = 0):
    """A net with lively statistics: BN entries and biases shifted so that no ReLU unit is dead
    on random inputs (the precondition of recovering a permutation from activations)."""
    cfg = CONFIGS[kind]
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    p = params_of(model)
    g = torch.Generator().manual_seed(seed + 100)
    for k, v in p.items():
        if v.is_floating_point() and k.endswith(("bias", "running_mean", "running_var")):
            p[k] = v + SHIFT * torch.rand(v.shape, generator=g)
    return model, units_of(model), p


def _x(kind: str, n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *CONFIGS[kind].input_shape, generator=g)


def _out(model, p, x):
    with torch.no_grad():
        return functional_call(model, p, (x,))


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_units_cover_every_tensor_they_name(kind):
    model, units, p = _net(kind)
    for layer in units.layers:
        for s in (*layer.incoming, *layer.outgoing):
            assert p[s.name].shape[s.axis] == layer.size * s.block, (layer.name, s)
        if layer.parent is not None:  # nested: a whole number of entries per parent unit
            parent = next(la for la in units.layers if la.name == layer.parent)
            assert layer.size % parent.size == 0
    # every tensor but the head's is moved by some group (the transformer's position embedding too)
    touched = {s.name for la in units.layers for s in (*la.incoming, *la.outgoing)}
    assert set(p) - touched <= set(units.head) | {"num_batches_tracked"} | {
        k for k in p if k.endswith("num_batches_tracked")
    }


@pytest.mark.parametrize("kind", sorted(CONFIGS))
@budget(10 / 25)
@given(seed=st.integers(0, 2**31 - 1))
def test_a_random_permutation_of_every_group_keeps_the_function(kind, seed):
    model, units, p = _net(kind, seed=seed % 7)
    perm = random_permutation(units, torch.Generator().manual_seed(seed))
    q = permute(p, units, perm)
    x = _x(kind, seed=seed % 5)
    torch.testing.assert_close(_out(model, q, x), _out(model, p, x), atol=1e-5, rtol=1e-5)
    back = permute(q, units, invert(perm))
    assert all(torch.equal(back[k], p[k]) for k in p)


def test_the_stream_is_one_group_and_heads_nest():
    model, units, p = _net("transformer")
    names = [la.name for la in units.layers]
    assert names.count("stream") == 1
    stream = units.layers[0]
    readers = {s.name for s in stream.outgoing}
    assert {"blocks.0.q.weight", "blocks.1.fc1.weight", "head.weight"} <= readers
    assert units.children("blocks.0.heads") == tuple(
        la for la in units.layers if la.name in ("blocks.0.qk", "blocks.0.vo")
    )
    # queries and keys share one order inside each head: swapping two dims of q alone breaks it
    perm = identity(units)
    qk = perm["blocks.0.qk"].clone()
    qk[[0, 1]] = qk[[1, 0]]
    q = permute(p, units, {**perm, "blocks.0.qk": qk})
    x = _x("transformer")
    torch.testing.assert_close(_out(model, q, x), _out(model, p, x), atol=1e-5, rtol=1e-5)
    q_only = dict(p)
    q_only["blocks.0.q.weight"] = q["blocks.0.q.weight"]
    q_only["blocks.0.q.bias"] = q["blocks.0.q.bias"]
    assert (_out(model, q_only, x) - _out(model, p, x)).abs().max() > 1e-4


def test_nested_permutations_must_move_whole_heads():
    _, units, p = _net("transformer")
    perm = identity(units)
    bad = perm["blocks.0.vo"].clone()
    bad[[0, 4]] = bad[[4, 0]]  # mixes dims of heads 0 and 1
    with pytest.raises(IsthmusError, match="keep each block"):
        permute(p, units, {"blocks.0.vo": bad})
    heads = torch.tensor([1, 0, 2, 3])
    with pytest.raises(IsthmusError, match="as the permutation of 'blocks.0.heads'"):
        permute(p, units, {"blocks.0.heads": heads, "blocks.0.vo": perm["blocks.0.vo"]})
    # the parent alone moves whole heads, dims in order
    model = build_model(CONFIGS["transformer"]).eval()
    x = _x("transformer")
    q = permute(p, units, {"blocks.0.heads": heads})
    torch.testing.assert_close(_out(model, q, x), _out(model, p, x), atol=1e-5, rtol=1e-5)


# activation matching needs every unit alive on the data (dead units are interchangeable); the
# unnormalised and BatchNorm resnets have dead channels at initialisation, so they run weights only
LIVELY = ["resnet1d-nobias", "resnet2d-ln", "transformer", "transformer-nobias"]
CASES = [(k, "weights") for k in sorted(CONFIGS)] + [(k, "activations") for k in LIVELY]


@pytest.mark.parametrize(("kind", "method"), CASES)
def test_matching_a_permuted_copy_recovers_it(kind, method):
    model, units, p = _net(kind, seed=3)
    if method == "activations":  # the precondition of the property
        corr = activation_correlations(model, p, p, units, _x(kind, 512, seed=4))
        assert all(bool((c.diagonal() > 0.999).all()) for c in corr.values())
    perm = random_permutation(units, torch.Generator().manual_seed(5))
    b = permute(p, units, perm)
    if method == "weights":
        found = weight_matching(p, b, units, seed=2)
    else:
        found = activation_matching(model, p, b, units, _x(kind, 512, seed=4), batch_size=128)
    assert is_identity(compose(perm, found))
    res = align(model, p, b, method=method, data=_x(kind, 512, seed=4), seed=2)
    assert all(torch.equal(res.params[k], p[k]) for k in p)  # barrier of the line: exactly 0


@pytest.mark.parametrize("kind", ["resnet1d", "resnet2d-ln", "transformer"])
@pytest.mark.parametrize("method", ["weights", "activations"])
def test_aligning_an_independent_net_keeps_its_function(kind, method):
    model, _, a = _net(kind, seed=1)
    _, _, b = _net(kind, seed=2)
    x = _x(kind, 256, seed=6)
    res = align(model, a, b, method=method, data=x, seed=0)
    torch.testing.assert_close(_out(model, res.params, x), _out(model, b, x), atol=1e-5, rtol=1e-5)
    if method == "weights":
        assert res.extra["objective_after"] >= res.extra["objective_before"]


def test_bad_residual_configs_are_clear_errors():
    for kw, field in (
        (dict(kind="resnet", width=2000), "width"),
        (dict(kind="resnet", batchnorm=True, layernorm=True, width=1), "layernorm"),
        (dict(kind="mlp", layernorm=True), "layernorm"),
        (dict(kind="transformer", width=10, heads=3), "heads"),
        (dict(kind="transformer", width=8, patch=7), "patch"),
        (dict(kind="transformer", width=8, batchnorm=True), "batchnorm"),
        (dict(kind="transformer", width=8, heads=0), "heads"),
    ):
        with pytest.raises(IsthmusError, match=f"model.{field}"):
            ModelConfig(**kw).validate()
    for cfg in CONFIGS.values():
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_resnet20_has_three_blocks_per_stage():
    model = build_model(ModelConfig(kind="resnet", depth=3, width=1, input_shape=(3, 32, 32)))
    convs = [
        m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    assert len(convs) + 1 == 20  # 19 convs and the linear head
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "flags",
    [
        ["--model", "resnet", "--depth", "1", "--layernorm"],
        ["--model", "transformer", "--depth", "1", "--width", "16", "--heads", "2"],
    ],  # fmt: skip
)
def test_cli_trains_the_new_models(tmp_path, flags):
    from isthmus.cli import main
    from isthmus.io import load_run

    out = tmp_path / "run"
    argv = ["train", *flags, "--data", "mnist1d"]
    argv += ["--epochs", "1", "--batch-size", "256", "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    run = load_run(out)
    assert run.config["model"]["kind"] == flags[1]
    assert torch.isfinite(torch.cat([v.flatten().double() for v in run.params.values()])).all()
