"""Data sets: built-ins are deterministic and normalised on the training split; the MNIST and
CIFAR readers round-trip files written by the package's writers and reject malformed ones."""

import random

import numpy as np
import pytest
import torch

from isthmus.data import DATASETS, Dataset, load, write_cifar_bin, write_idx
from isthmus.errors import IsthmusError

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
IDX_NAMES += ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_NAMES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def test_mnist1d_shapes_and_global_rng_untouched():
    random.seed(123)
    np.random.seed(123)
    py_before, np_before = random.random(), np.random.rand()
    random.seed(123)
    np.random.seed(123)
    ds = load("mnist1d")
    assert (random.random(), np.random.rand()) == (py_before, np_before)
    assert ds.x_train.shape == (4000, 40) and ds.x_test.shape == (1000, 40)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.input_shape == (40,) and ds.num_classes == 10 and ds.loss == "ce"
    assert set(ds.y_train.tolist()) == set(range(10))
    assert torch.equal(load("mnist1d", seed=5).x_train, ds.x_train)  # fixed data set


def test_digits_split_and_training_normalisation():
    ds = load("digits")
    assert ds.x_train.shape == (1437, 64) and ds.x_test.shape == (360, 64)
    assert ds.input_shape == (64,)
    assert ds.x_train.mean(0).abs().max() < 1e-5
    assert ds.x_train.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    assert torch.bincount(ds.y_test).min() >= 35  # stratified
    assert torch.equal(load("digits", seed=3).x_test, ds.x_test)
    assert ds.x_train.view(-1, 1, 8, 8).shape == (1437, 1, 8, 8)


@pytest.mark.parametrize("name", ["gaussians", "teacher"])
def test_synthetic_deterministic_per_seed(name):
    a, b, c = load(name, seed=0), load(name, seed=0), load(name, seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert len(a.x_train) == 2000 and len(a.x_test) == 500


def test_synthetic_shapes():
    g, t = load("gaussians"), load("teacher")
    assert g.input_shape == (20,) and g.num_classes == 10 and g.y_train.dtype == torch.int64
    assert torch.bincount(g.y_train).tolist() == [200] * 10
    assert t.task == "regression" and t.loss == "mse" and t.num_classes == 1
    assert t.y_train.shape == (2000, 1) and t.y_train.dtype == torch.float32
    assert t.y_train.std() > 0.1


def test_unknown_name_lists_datasets():
    with pytest.raises(IsthmusError, match="cifar10"):
        load("imagenet")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_file_sets_need_root(name):
    with pytest.raises(IsthmusError, match="root"):
        load(name)


def _write_mnist(root, gz, n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    arrays = (
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_test, dtype=np.uint8),
    )
    for name, a in zip(IDX_NAMES, arrays, strict=True):
        write_idx(root / (name + (".gz" if gz else "")), a)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_round_trip(tmp_path, gz, name):
    x_tr, y_tr, x_te, y_te = _write_mnist(tmp_path, gz)
    ds = load(name, root=tmp_path)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.input_shape == (1, 28, 28)
    mean, std = (x_tr / 255.0).mean(), (x_tr / 255.0).std()  # the training split's statistics
    for x, orig in ((ds.x_train, x_tr), (ds.x_test, x_te)):
        back = (x.double().numpy()[:, 0] * std + mean) * 255
        np.testing.assert_allclose(back, orig, atol=1e-4)
    assert ds.y_train.tolist() == y_tr.tolist() and ds.y_test.tolist() == y_te.tolist()


def _write_cifar(root, n=4, seed=0):
    rng = np.random.default_rng(seed)
    written = []
    for name in CIFAR_NAMES:
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_cifar_bin(root / name, images, labels)
        written.append((images, labels))
    return written


@pytest.mark.parametrize("subdir", ["", "cifar-10-batches-bin"])
def test_cifar_round_trip(tmp_path, subdir):
    (tmp_path / subdir).mkdir(exist_ok=True)
    written = _write_cifar(tmp_path / subdir)
    ds = load("cifar10", root=tmp_path)
    x_tr = np.concatenate([w[0] for w in written[:5]])
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.input_shape == (3, 32, 32)
    assert ds.x_train.is_contiguous(memory_format=torch.channels_last)  # fast CPU convolutions
    mean = (x_tr / 255.0).mean(axis=(0, 2, 3), keepdims=True)
    std = (x_tr / 255.0).std(axis=(0, 2, 3), keepdims=True)
    for x, orig in ((ds.x_train, x_tr), (ds.x_test, written[5][0])):
        np.testing.assert_allclose((x.double().numpy() * std + mean) * 255, orig, atol=1e-4)
    assert ds.y_train.tolist() == np.concatenate([w[1] for w in written[:5]]).tolist()
    assert ds.y_test.tolist() == written[5][1].tolist()


def test_idx_truncated(tmp_path):
    _write_mnist(tmp_path, gz=False)
    path = tmp_path / IDX_NAMES[0]
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(IsthmusError, match=IDX_NAMES[0]):
        load("mnist", root=tmp_path)


def test_idx_wrong_magic(tmp_path):
    _write_mnist(tmp_path, gz=True)
    write_idx(tmp_path / (IDX_NAMES[3] + ".gz"), np.zeros((5, 2), np.uint8))  # 2-D labels
    with pytest.raises(IsthmusError, match=IDX_NAMES[3]) as err:
        load("mnist", root=tmp_path)
    assert "0x00000801" in str(err.value)


def test_idx_mismatched_counts(tmp_path):
    _write_mnist(tmp_path, gz=False)
    write_idx(tmp_path / IDX_NAMES[1], np.zeros(11, np.uint8))
    with pytest.raises(IsthmusError, match=IDX_NAMES[1]):
        load("mnist", root=tmp_path)


def test_idx_bad_label(tmp_path):
    _write_mnist(tmp_path, gz=False)
    write_idx(tmp_path / IDX_NAMES[3], np.full(5, 10, np.uint8))
    with pytest.raises(IsthmusError, match=IDX_NAMES[3]):
        load("mnist", root=tmp_path)


def test_idx_missing_file(tmp_path):
    _write_mnist(tmp_path, gz=False)
    (tmp_path / IDX_NAMES[2]).unlink()
    with pytest.raises(IsthmusError, match=IDX_NAMES[2]) as err:
        load("fashion-mnist", root=tmp_path)
    assert "zalandoresearch" in str(err.value)


def test_cifar_size_not_multiple(tmp_path):
    _write_cifar(tmp_path)
    path = tmp_path / CIFAR_NAMES[2]
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(IsthmusError, match=CIFAR_NAMES[2]) as err:
        load("cifar10", root=tmp_path)
    assert "3073" in str(err.value)


def test_cifar_missing_file(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / CIFAR_NAMES[5]).unlink()
    with pytest.raises(IsthmusError, match=CIFAR_NAMES[5]) as err:
        load("cifar10", root=tmp_path)
    assert "cs.toronto.edu" in str(err.value)


def test_subset_deterministic():
    ds = load("gaussians")
    a, b = ds.subset(100, 50, seed=1), ds.subset(100, 50, seed=1)
    assert isinstance(a, Dataset) and a.x_train.shape == (100, 20) and len(a.y_test) == 50
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, ds.subset(100, seed=2).x_train)
    assert ds.subset(n_test=10).x_train is ds.x_train
    assert torch.equal(a.x_test, ds.subset(n_test=50, seed=1).x_test)  # splits drawn independently
    with pytest.raises(IsthmusError):
        ds.subset(5000)


def test_to_dtype():
    ds = load("gaussians").to(dtype=torch.float64)
    assert ds.x_train.dtype == torch.float64 and ds.y_train.dtype == torch.int64
    t = load("teacher").to("cpu", torch.float64)
    assert t.x_test.dtype == torch.float64 and t.y_test.dtype == torch.float64


def test_names():
    assert DATASETS == (
        "mnist1d",
        "digits",
        "gaussians",
        "teacher",
        "mnist",
        "fashion-mnist",
        "cifar10",
    )


@pytest.mark.parametrize("shape", [(0, 28, 28), (12, 0, 0)])
def test_idx_without_data_is_refused(tmp_path, shape):
    # no images, or images of no pixels: the standardisation would divide by zero
    _write_mnist(tmp_path, gz=False)
    write_idx(tmp_path / IDX_NAMES[0], np.zeros(shape, np.uint8))
    with pytest.raises(IsthmusError, match=f"{IDX_NAMES[0]}.*hold no data"):
        load("mnist", root=tmp_path)
