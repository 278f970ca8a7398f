import pytest
import torch

from isthmus.errors import IsthmusError
from isthmus.models import MLP, ModelConfig, build_model, num_parameters, put, take, units_of
from isthmus.params import params_of


def _configs():
    return [
        ModelConfig(kind="mlp", depth=4, width=(5, 7, 3), input_shape=(6,), num_classes=3),
        ModelConfig(kind="mlp", depth=2, width=4, bias=False, input_shape=(6,), num_classes=2),
        ModelConfig(kind="cnn", channels=(3, "M", 5, 4, "M"), input_shape=(1, 16), num_classes=3),
        ModelConfig(
            kind="cnn", channels=(2, "M", 3), input_shape=(2, 8, 8), num_classes=4, batchnorm=True
        ),
    ]


@pytest.mark.parametrize("cfg", _configs())
def test_units_cover_every_hidden_tensor(cfg):
    """Every incoming slice has `size` units along its axis; every outgoing `size * block`."""
    model = build_model(cfg)
    p = params_of(model)
    units = units_of(model)
    for layer in units.layers:
        for s in layer.incoming:
            assert p[s.name].shape[s.axis] == layer.size * s.block
        for s in layer.outgoing:
            assert p[s.name].shape[s.axis] == layer.size * s.block
    assert all(h in p for h in units.head)


@pytest.mark.parametrize("cfg", _configs())
def test_zeroing_a_units_outgoing_weights_removes_it(cfg):
    """The description is right iff a unit with zero outgoing slices cannot affect the output."""
    model = build_model(cfg).eval()
    p = params_of(model)
    units = units_of(model)
    x = torch.randn(5, *cfg.input_shape)
    for layer in units.layers:
        idx = torch.tensor([0])
        q = dict(p)
        for s in layer.outgoing:
            q[s.name] = put(q[s.name], s, idx, torch.zeros_like(take(q[s.name], s, idx)))
        base = torch.func.functional_call(model, q, (x,))
        r = dict(q)
        for s in layer.incoming:  # change the dead unit's incoming side (positive: BN var)
            r[s.name] = put(r[s.name], s, idx, torch.rand_like(take(r[s.name], s, idx)) + 0.5)
        torch.testing.assert_close(torch.func.functional_call(model, r, (x,)), base)


def test_benchmark_architectures_have_the_published_sizes():
    assert (
        num_parameters(build_model(ModelConfig(kind="convfc", input_shape=(3, 32, 32))))
        == 2_422_634
    )
    vgg = build_model(ModelConfig(kind="vgg16", batchnorm=True, input_shape=(3, 32, 32)))
    assert num_parameters(vgg) == 15_253_578


def test_bad_config_is_a_clear_error():
    with pytest.raises(IsthmusError, match="model.kind"):
        ModelConfig.from_dict({"kind": "resnet50"})
    with pytest.raises(IsthmusError, match="unknown model field"):
        ModelConfig.from_dict({"kind": "mlp", "wdith": 3})
    with pytest.raises(IsthmusError, match="width"):
        MLP(4, (3, 3), depth=4, num_classes=2)


def test_config_round_trip():
    for cfg in _configs():
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("cfg", _configs())
def test_layer_maps_describe_the_same_chain_as_the_units(cfg):
    """require_chain: the forward pass rebuilt from layer_maps() is the model's; BN nets refused."""
    from isthmus.models import require_chain

    model = build_model(cfg).eval()
    if cfg.batchnorm:
        with pytest.raises(IsthmusError, match="BatchNorm"):
            require_chain(model, "noise stability")
        return
    maps = require_chain(model, "noise stability")
    assert maps.depth == units_of(model).depth
    x = torch.randn(4, *cfg.input_shape)
    torch.testing.assert_close(maps.forward(params_of(model), x)[1][-1], model(x))
