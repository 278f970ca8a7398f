"""The per-epoch seams of training: the on_epoch hook sees every member after every epoch without
changing a number of training, and snapshots keep the weights along the way."""

from __future__ import annotations

import math

import pytest
import torch

from isthmus.errors import IsthmusError
from isthmus.io import load_run, load_snapshots, save_tensors
from isthmus.models import ModelConfig, build_model
from isthmus.train import TrainConfig, train, train_population

MLP = ModelConfig(kind="mlp", depth=3, width=16, input_shape=(40,))
BN_CNN = ModelConfig(kind="cnn", channels=(4, "M", 4, "M"), batchnorm=True, input_shape=(40,))
TC = TrainConfig(epochs=3, dropout=0.3, batch_size=64)  # dropout: masks come from the global RNG


def _noisy_hook(seen: list):
    """Records a copy, then draws random numbers and scribbles over the tensors it was given."""

    def hook(epoch, stacked):
        seen.append((epoch, {k: v.clone() for k, v in stacked.items()}))
        torch.randn(1000)
        torch.rand(7, generator=None)
        for v in stacked.values():
            v.zero_()

    return hook


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("model,tc", [(MLP, TC), (BN_CNN, TrainConfig(epochs=2, batch_size=64))])
def test_the_hook_sees_every_epoch_and_changes_nothing_solo(model, tc, small_mnist1d):
    plain = train(model, small_mnist1d, tc, 4, progress=False)
    seen: list = []
    hooked = train(model, small_mnist1d, tc, 4, progress=False, on_epoch=_noisy_hook(seen))
    assert _same(plain.params, hooked.params)
    assert plain.metrics["history"] == hooked.metrics["history"]
    assert [e for e, _ in seen] == list(range(1, tc.epochs + 1))
    names = set(build_model(model).state_dict())  # parameters and buffers (BN statistics)
    assert all(set(p) == names and all(v.shape[0] == 1 for v in p.values()) for _, p in seen)
    assert _same({k: v[0] for k, v in seen[-1][1].items()}, plain.params)


def test_the_hook_sees_every_member_and_changes_nothing_in_a_population(small_mnist1d):
    tcs = [TC, TrainConfig(lr=0.02, l2=1e-3, epochs=3, dropout=0.3, batch_size=64)]
    plain = train_population(MLP, small_mnist1d, tcs, [1, 2], progress=False)
    seen: list = []
    hooked = train_population(
        MLP, small_mnist1d, tcs, [1, 2], progress=False, on_epoch=_noisy_hook(seen)
    )
    for a, b in zip(plain, hooked, strict=True):
        assert _same(a.params, b.params)
        assert a.metrics["history"] == b.metrics["history"]
    assert [e for e, _ in seen] == [1, 2, 3]
    for k, member in enumerate(plain):
        assert _same({n: v[k] for n, v in seen[-1][1].items()}, member.params)
    assert not torch.equal(seen[0][1]["layers.0.weight"], seen[1][1]["layers.0.weight"])


def test_snapshots_of_a_population(tmp_path, small_mnist1d):
    tc = TrainConfig(epochs=5, batch_size=64)
    seen: list = []
    hook = _noisy_hook(seen)
    res = train_population(
        MLP, small_mnist1d, tc, [0, 1], out=tmp_path, snapshot_every=2, on_epoch=hook,
        progress=False,
    )  # fmt: skip
    by_epoch = dict(seen)
    for k in range(2):
        files = sorted(p.name for p in (tmp_path / str(k) / "snapshots").iterdir())
        assert files == [
            "epoch_0002.safetensors",
            "epoch_0004.safetensors",
            "epoch_0005.safetensors",
        ]
        snaps = load_snapshots(tmp_path / str(k))
        assert [e for e, _ in snaps] == [2, 4, 5]
        for e, p in snaps:
            assert _same(p, {n: v[k] for n, v in by_epoch[e].items()}), (k, e)
        assert _same(snaps[-1][1], load_run(tmp_path / str(k)).params)
        assert _same(snaps[-1][1], res[k].params)


def test_resume_keeps_the_earlier_snapshots(tmp_path, small_mnist1d):
    tc = TrainConfig(epochs=5, batch_size=64)
    full = tmp_path / "full"
    train(MLP, small_mnist1d, tc, 3, out=full, snapshot_every=2, progress=False)
    part = tmp_path / "part"
    steps = 3 * math.ceil(len(small_mnist1d.x_train) / 64)  # interrupted after epoch 3
    train(MLP, small_mnist1d, tc, 3, out=part, snapshot_every=2, max_steps=steps, progress=False)
    assert [e for e, _ in load_snapshots(part)] == [2, 3]  # the last epoch trained is kept too
    (part / "snapshots" / "epoch_0003.safetensors").unlink()  # not one of the full run's
    train(MLP, small_mnist1d, tc, 3, out=part, snapshot_every=2, resume=True, progress=False)
    got, want = load_snapshots(part), load_snapshots(full)
    assert [e for e, _ in got] == [e for e, _ in want] == [2, 4, 5]
    assert all(_same(a, b) for (_, a), (_, b) in zip(got, want, strict=True))


def test_bad_snapshots_are_refused_by_name(tmp_path, small_mnist1d):
    tc = TrainConfig(epochs=2, batch_size=64)
    with pytest.raises(IsthmusError, match="--snapshots K"):
        train(MLP, small_mnist1d, tc, 0, out=tmp_path / "none", progress=False)
        load_snapshots(tmp_path / "none")
    with pytest.raises(IsthmusError, match="output run directory"):
        train(MLP, small_mnist1d, tc, 0, snapshot_every=1, progress=False)
    run = tmp_path / "run"
    res = train(MLP, small_mnist1d, tc, 0, out=run, snapshot_every=1, progress=False)
    bad = run / "snapshots" / "epoch_0001.safetensors"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    with pytest.raises(IsthmusError, match=r"epoch_0001\.safetensors.*corrupt"):
        load_snapshots(run)
    save_tensors(bad, {**res.params, "layers.0.weight": res.params["layers.0.weight"][:3]})
    with pytest.raises(IsthmusError, match=r"epoch_0001\.safetensors: tensor layers.0.weight"):
        load_snapshots(run)
    save_tensors(bad, {**res.params, "layers.0.weight": res.params["layers.0.weight"] * math.inf})
    with pytest.raises(IsthmusError, match=r"epoch_0001\.safetensors.*NaN or inf"):
        load_snapshots(run)


@pytest.mark.e2e
def test_train_command_writes_snapshots(tmp_path):
    from isthmus.cli import main

    out = tmp_path / "r"
    argv = ["train", "--data", "digits", "--width", "16", "--epochs", "3", "--snapshots", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    assert [e for e, _ in load_snapshots(out)] == [2, 3]
    assert torch.equal(
        load_snapshots(out)[-1][1]["layers.0.weight"], load_run(out).params["layers.0.weight"]
    )
