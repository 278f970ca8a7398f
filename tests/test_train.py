import math

import pytest
import torch

from isthmus.errors import IsthmusError
from isthmus.models import ModelConfig
from isthmus.train import TrainConfig, lr_factor, train, train_population

MLP = ModelConfig(kind="mlp", depth=3, width=16, input_shape=(40,))
CNN = ModelConfig(kind="cnn", channels=(4, "M", 4, "M"), input_shape=(40,))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("cfg", [MLP, CNN])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_population_member_equals_solo_run(cfg, opt, small_mnist1d):
    """After 10 steps member k of a population equals train(seed=seeds[k]) on the same batches."""
    tc = TrainConfig(
        optimizer=opt, lr=0.05 if opt == "sgd" else 1e-3, epochs=2, batch_size=64, l2=1e-3
    )
    seeds = [3, 7, 11]
    pop = train_population(cfg, small_mnist1d, tc, seeds, max_steps=10, progress=False)
    for s, member in zip(seeds, pop, strict=True):
        solo = train(cfg, small_mnist1d, tc, s, max_steps=10, progress=False)
        for k in solo.params:
            if solo.params[k].is_floating_point():
                assert _rel(member.params[k], solo.params[k]) < 1e-5, k
    # members really differ (different seeds)
    assert not torch.equal(
        pop[0].params["fcs.0.weight" if cfg.kind == "cnn" else "layers.0.weight"],
        pop[1].params["fcs.0.weight" if cfg.kind == "cnn" else "layers.0.weight"],
    )


def test_per_member_hyperparameters(small_mnist1d):
    """A member's lr is its own: lr=0 leaves that member at its initialisation."""
    tcs = [TrainConfig(lr=0.05, epochs=1), TrainConfig(lr=1e-12, epochs=1)]
    pop = train_population(MLP, small_mnist1d, tcs, [0, 0], max_steps=5, progress=False)
    solo0 = train(
        MLP, small_mnist1d, TrainConfig(lr=1e-12, epochs=1), 0, max_steps=0, progress=False
    )
    assert _rel(pop[1].params["layers.0.weight"], solo0.params["layers.0.weight"]) < 1e-9
    assert _rel(pop[0].params["layers.0.weight"], solo0.params["layers.0.weight"]) > 1e-4


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_a_member_with_its_own_lr_and_l2_equals_the_solo_run_with_them(opt, small_mnist1d):
    """The grid of a hyperparameter study as one population: member k, trained with its own
    learning rate and L2, follows train() with exactly those values."""
    base = 0.05 if opt == "sgd" else 1e-3
    grid = [(base, 0.0), (2 * base, 1e-3), (0.5 * base, 1e-2)]
    tcs = [TrainConfig(optimizer=opt, lr=lr, l2=l2, epochs=2, batch_size=64) for lr, l2 in grid]
    pop = train_population(MLP, small_mnist1d, tcs, [5, 5, 5], max_steps=10, progress=False)
    for tc, member in zip(tcs, pop, strict=True):
        solo = train(MLP, small_mnist1d, tc, 5, max_steps=10, progress=False)
        for k in solo.params:
            assert _rel(member.params[k], solo.params[k]) < 1e-5, (tc.lr, tc.l2, k)
    # the same seed with other hyperparameters ends elsewhere
    assert _rel(pop[0].params["layers.0.weight"], pop[1].params["layers.0.weight"]) > 1e-4


def test_same_seed_same_numbers_and_resume(tmp_path, small_mnist1d):
    tc = TrainConfig(epochs=3, dropout=0.3, batch_size=64)
    full = train(MLP, small_mnist1d, tc, 5, out=tmp_path / "full", progress=False)
    again = train(MLP, small_mnist1d, tc, 5, progress=False)
    assert all(torch.equal(full.params[k], again.params[k]) for k in full.params)
    # interrupted after one epoch: simulate by training 1 epoch's worth of steps into `part`
    steps = math.ceil(len(small_mnist1d.x_train) / 64)
    train(MLP, small_mnist1d, tc, 5, out=tmp_path / "part", max_steps=steps, progress=False)
    resumed = train(MLP, small_mnist1d, tc, 5, out=tmp_path / "part", resume=True, progress=False)
    assert all(torch.equal(full.params[k], resumed.params[k]) for k in full.params)
    assert [h["epoch"] for h in resumed.metrics["history"]] == [1, 2, 3]
    assert resumed.metrics["history"] == full.metrics["history"]


def test_resume_without_checkpoint_or_with_other_settings(tmp_path, small_mnist1d):
    with pytest.raises(IsthmusError, match="no run checkpoint"):
        train(MLP, small_mnist1d, TrainConfig(epochs=1), 0, out=tmp_path, resume=True)
    train(MLP, small_mnist1d, TrainConfig(epochs=1), 0, out=tmp_path, max_steps=1, progress=False)
    with pytest.raises(IsthmusError, match="another run"):
        train(MLP, small_mnist1d, TrainConfig(epochs=2), 0, out=tmp_path, resume=True)


def test_divergence_stops_with_a_message(small_mnist1d):
    with pytest.raises(IsthmusError, match="diverged"):
        train(
            MLP,
            small_mnist1d,
            TrainConfig(lr=1e6, epochs=2, schedule="constant"),
            0,
            progress=False,
        )


def test_training_learns(small_mnist1d):
    r = train(MLP, small_mnist1d, TrainConfig(epochs=10, batch_size=32), 0, progress=False)
    h = r.metrics["history"]
    assert h[-1]["train_loss"] < h[0]["train_loss"] < math.log(10) + 0.5
    assert r.metrics["train_acc"] > 0.3


def test_bad_train_config():
    for bad in [dict(lr=-1), dict(optimizer="rmsprop"), dict(dropout=1.0), dict(epochs=0)]:
        with pytest.raises(IsthmusError):
            TrainConfig(**bad).validate()
    with pytest.raises(IsthmusError, match="unknown train field"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_schedules():
    assert lr_factor("constant", 50, 100) == 1.0
    assert lr_factor("cosine", 0, 100) == 1.0 and abs(lr_factor("cosine", 100, 100)) < 1e-12
    assert lr_factor("step", 49, 100) == 1.0 and abs(lr_factor("step", 80, 100) - 0.01) < 1e-12


def test_bn_nets_metrics_follow_the_bn_policy(small_mnist1d):
    """A BN run's own metrics equal a path's endpoint metrics (one policy everywhere)."""
    from isthmus.models import build_model
    from isthmus.paths import evaluate_path, line

    cfg = ModelConfig(kind="cnn", channels=(4, "M"), input_shape=(40,), batchnorm=True)
    r = train(cfg, small_mnist1d, TrainConfig(epochs=1, batch_size=100), 0, progress=False)
    res = evaluate_path(build_model(cfg), line(r.params, r.params), small_mnist1d, points=2)
    for k in ("train_loss", "test_loss", "train_acc", "test_acc"):
        assert abs(getattr(res, k)[0] - r.metrics[k]) < 1e-6, k
