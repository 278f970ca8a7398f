"""Data sets for connectivity experiments: small built-ins that need no download, local readers.

Built in (offline, generated or bundled):
  * `mnist1d`: MNIST-1D (Greydanus & Kobak 2020, "Scaling down deep learning"), built with the
    `mnist1d` package's `make_dataset` and its default arguments (seed 42): 4,000 / 1,000 samples of
    40 features, 10 classes. Its centering and scaling are part of the data set's definition.
  * `digits`: the UCI optical digits bundled with scikit-learn (8x8 images, 1,437 / 360).
  * `gaussians`: a seeded Gaussian mixture, 10 classes, 20 dimensions, where a linear model is
    clearly worse than an MLP (test accuracy about 72% for logistic regression, 99% for an MLP).
  * `teacher`: regression onto a seeded random ReLU teacher MLP (10 -> 32 -> 32 -> 1).

Read from local files (`root`), never downloaded and never unpickled:
  * `mnist` (LeCun et al. 1998) and `fashion-mnist` (Xiao et al. 2017): the four IDX files,
    optionally gzipped; `write_idx` writes them (tiny fixtures).
  * `cifar10` (Krizhevsky 2009): the "binary version" batches; `write_cifar_bin` writes them.

Normalisation is part of each set's definition: mnist1d keeps the package's own preprocessing,
digits and the local image sets are standardised with statistics of the training split only,
gaussians and teacher are used as generated. `load(name)` returns a `Dataset` of torch tensors;
docs/definitions.md ("Data sets") describes each set.
"""

from __future__ import annotations

import functools
import gzip
import random
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import IsthmusError


def cpu_layout(x: Tensor) -> Tensor:
    """Image batches on CPU in channels_last: oneDNN convolutions run ~1.6x faster in NHWC
    (measured on convfc, 2 cores); everything else is returned as is."""
    if x.device.type == "cpu" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


DATASETS = ("mnist1d", "digits", "gaussians", "teacher", "mnist", "fashion-mnist", "cifar10")

_SOURCES = {
    "mnist": "get them from http://yann.lecun.com/exdb/mnist/ or any mirror",
    "fashion-mnist": "get them from https://github.com/zalandoresearch/fashion-mnist",
    "cifar10": "get 'CIFAR-10 binary version (suitable for C programs)' from "
    "https://www.cs.toronto.edu/~kriz/cifar.html",
}


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors elementwise has no truth value
class Dataset:
    """A train/test split held as tensors, with what a model and a loss need to know about it."""

    name: str
    x_train: Tensor  # (N, *input_shape) float
    y_train: Tensor  # (N,) int64 labels, or (N, out_dim) float targets for regression
    x_test: Tensor
    y_test: Tensor
    num_classes: int  # classes; for regression the output dimension
    task: str  # "classification" | "regression"
    input_shape: tuple[int, ...]

    @property
    def loss(self) -> str:
        """The loss the data set is trained with: "ce" (cross-entropy) or "mse"."""
        return "ce" if self.task == "classification" else "mse"

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Dataset:
        """A copy on `device`; `dtype` converts inputs and regression targets, never labels."""
        ydt = dtype if self.task == "regression" else None
        x_tr, x_te = (x.to(device=device, dtype=dtype) for x in (self.x_train, self.x_test))
        y_tr, y_te = (y.to(device=device, dtype=ydt) for y in (self.y_train, self.y_test))
        return replace(self, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)

    def subset(
        self, n_train: int | None = None, n_test: int | None = None, seed: int = 0
    ) -> Dataset:
        """A seeded random subset (same seed, same examples, kept in their original order), for
        fast tests and small runs. `None` keeps a split whole."""

        def pick(x: Tensor, y: Tensor, n: int | None, split: str) -> tuple[Tensor, Tensor]:
            if n is None:
                return x, y
            if not 0 < n <= len(x):
                raise IsthmusError(f"{self.name}: cannot take {n} of {len(x)} {split} examples")
            gen = torch.Generator().manual_seed(
                seed
            )  # per split: n_train never moves the test pick
            idx = torch.randperm(len(x), generator=gen)[:n].sort().values.to(x.device)
            return x[idx], y[idx]

        x_tr, y_tr = pick(self.x_train, self.y_train, n_train, "training")
        x_te, y_te = pick(self.x_test, self.y_test, n_test, "test")
        return replace(self, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, {self.task}, train={len(self.x_train)}, "
            f"test={len(self.x_test)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes})"
        )


def load(
    name: str, root: str | Path | None = None, seed: int = 0, device: torch.device | str = "cpu"
) -> Dataset:
    """Load data set `name` (one of `DATASETS`) onto `device`.

    `root` is the folder holding the files of mnist / fashion-mnist / cifar10 (ignored otherwise).
    `seed` only affects the synthetic sets (gaussians, teacher); the others are fixed.
    """
    key = name.lower()
    if key in ("mnist", "fashion-mnist"):
        parts = _load_idx(key, root)
    elif key == "cifar10":
        parts = _load_cifar10(root)
    elif key in _BUILTIN:
        parts = _BUILTIN[key](seed)
    else:
        raise IsthmusError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    *arrays, num_classes, task = parts
    for split, a in (("training", arrays[0]), ("test", arrays[2])):
        if len(a) == 0:
            raise IsthmusError(
                f"{name}: the {split} split has no examples; check the files in {root}"
            )
    x_tr, y_tr, x_te, y_te = (torch.as_tensor(a, device=device) for a in arrays)
    # images stay channels_last on CPU once, instead of a copy of the split per evaluation call
    x_tr, x_te = cpu_layout(x_tr), cpu_layout(x_te)
    return Dataset(key, x_tr, y_tr, x_te, y_te, num_classes, task, tuple(x_tr.shape[1:]))


# ----------------------------------------------------------------------------- built-in sets


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays() -> tuple[np.ndarray, ...]:
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds the global generators; a data loader must not change the caller's RNG.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    arrays = (d["x"], d["y"], d["x_test"], d["y_test"])
    for a in arrays:
        a.setflags(write=False)
    return arrays


def _mnist1d(seed: int):
    x_tr, y_tr, x_te, y_te = _mnist1d_arrays()
    y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)  # copies: the cache stays intact
    return x_tr.astype(np.float32), y_tr, x_te.astype(np.float32), y_te, 10, "classification"


def _digits(seed: int):
    """Per-pixel mean but one global std: border pixels are constant in training, and a global
    scale keeps pixels comparable. A 2-D CNN can view x as (N, 1, 8, 8) with `x.view(-1, 1, 8, 8)`.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=360, stratify=y, random_state=0)
    mean = x_tr.mean(axis=0)
    std = (x_tr - mean).std()
    x_tr, x_te = ((a - mean) / std for a in (x_tr, x_te))
    y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)
    return _f32(x_tr), y_tr, _f32(x_te), y_te, 10, "classification"


def _gaussians(seed: int, n_train: int = 2000, n_test: int = 500, classes: int = 10, dim: int = 20):
    """Four clusters per class (means N(0, 1.5^2 I), unit noise): classes are not convex, so a
    linear model stays imperfect while an MLP nearly separates them."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    means = rng.standard_normal((classes, 4, dim)) * 1.5
    y = np.concatenate([rng.permutation(np.arange(k) % classes) for k in (n_train, n_test)])
    x = means[y, rng.integers(0, 4, n)] + rng.standard_normal((n, dim))
    y = y.astype(np.int64)
    return _f32(x[:n_train]), y[:n_train], _f32(x[n_train:]), y[n_train:], classes, "classification"


def _teacher(
    seed: int, n_train: int = 2000, n_test: int = 500, widths: tuple[int, ...] = (10, 32, 32, 1)
):
    """Noise-free targets of a He-initialised ReLU MLP: a big enough student can reach zero loss."""
    rng = np.random.default_rng(seed)
    layers = [
        (rng.standard_normal((i, o)) * np.sqrt(2.0 / i), 0.1 * rng.standard_normal(o))
        for i, o in zip(widths[:-1], widths[1:], strict=True)
    ]
    h = x = rng.standard_normal((n_train + n_test, widths[0]))
    for k, (w, b) in enumerate(layers):
        h = np.maximum(h @ w + b, 0) if k < len(layers) - 1 else h @ w + b
    x, h = _f32(x), _f32(h)
    return x[:n_train], h[:n_train], x[n_train:], h[n_train:], widths[-1], "regression"


_BUILTIN = {"mnist1d": _mnist1d, "digits": _digits, "gaussians": _gaussians, "teacher": _teacher}


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


# ----------------------------------------------------------------------------- IDX (MNIST)

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_IDX_FILES += ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _require_root(name: str, root: str | Path | None) -> Path:
    if root is None:
        raise IsthmusError(f"{name} is read from local files: pass root=<folder>; {_SOURCES[name]}")
    return Path(root)


def _read_bytes(path: Path, name: str) -> bytes:
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError, zlib.error) as e:
        raise IsthmusError(f"{path}: cannot read ({e}); {_SOURCES[name]}") from e


def _read_idx(path: Path, ndim: int, name: str) -> np.ndarray:
    """Parse an unsigned-byte IDX file: magic 0x000008nn (nn = number of dims), big-endian dims."""
    data = _read_bytes(path, name)
    want = f"IDX magic 0x{0x800 | ndim:08x} (unsigned byte, {ndim} dims)"

    def fail(what: str) -> IsthmusError:
        return IsthmusError(f"{path}: {what}; expected {want}; {_SOURCES[name]}")

    if len(data) < 4 or int.from_bytes(data[:4], "big") != 0x800 | ndim:
        raise fail(f"magic 0x{int.from_bytes(data[:4], 'big'):08x}" if len(data) >= 4 else "empty")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise fail(f"truncated header ({len(data)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    if 0 in dims:
        raise fail(f"dims {dims} hold no data")
    if len(data) != header + int(np.prod(dims)):
        raise fail(
            f"{len(data)} bytes, but header + dims {dims} give {header + int(np.prod(dims))}"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _find(root: Path, stem: str, name: str) -> Path:
    for path in (root / stem, root / f"{stem}.gz"):
        if path.is_file():
            return path
    raise IsthmusError(f"{name}: missing file {root / stem} (or {stem}.gz); {_SOURCES[name]}")


def _load_idx(name: str, root: str | Path | None):
    root = _require_root(name, root)
    arrays = []
    for images_stem, labels_stem in (_IDX_FILES[:2], _IDX_FILES[2:]):
        ip, lp = _find(root, images_stem, name), _find(root, labels_stem, name)
        x, y = _read_idx(ip, 3, name), _read_idx(lp, 1, name)
        if len(x) != len(y):
            raise IsthmusError(
                f"{ip} has {len(x)} images but {lp} has {len(y)} labels; expected equal counts; "
                f"{_SOURCES[name]}"
            )
        _check_labels(y, lp, name)
        arrays.append((x, y))
    (x_tr, y_tr), (x_te, y_te) = arrays
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise IsthmusError(f"{name}: train images {x_tr.shape[1:]} != test {x_te.shape[1:]}")
    x_tr, x_te = _standardise(x_tr[:, None], x_te[:, None])  # (N, 1, H, W)
    return x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64), 10, "classification"


def _check_labels(y: np.ndarray, path: Path, name: str) -> None:
    if y.size and y.max() > 9:
        raise IsthmusError(
            f"{path}: label {int(y.max())}; expected labels in 0..9; {_SOURCES[name]}"
        )


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, C, H, W) -> float32 scaled to [0, 1], then standardised per channel with the
    training split's mean and std. The statistics come exactly from a histogram of byte values:
    a float32 sum over 50,000 CIFAR images would lose digits."""
    v = np.arange(256) / 255.0
    counts = [np.bincount(train[:, c].ravel(), minlength=256) for c in range(train.shape[1])]
    mean = np.array([n @ v / n.sum() for n in counts])
    std = np.sqrt([n @ (v - m) ** 2 / n.sum() for n, m in zip(counts, mean, strict=True)])
    std = np.where(std > 0, std, 1.0)  # a constant channel (e.g. blank images) stays finite
    out = []
    for a in (train, test):
        x = a.astype(np.float32)
        x -= (255 * mean[:, None, None]).astype(np.float32)
        x /= (255 * std[:, None, None]).astype(np.float32)
        out.append(x)
    return out[0], out[1]


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped if `path` ends in .gz): tiny MNIST fixtures."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    data = (0x800 | a.ndim).to_bytes(4, "big") + np.asarray(a.shape, ">u4").tobytes() + a.tobytes()
    Path(path).write_bytes(gzip.compress(data) if str(path).endswith(".gz") else data)


# ----------------------------------------------------------------------------- CIFAR-10 binary

_CIFAR_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
_RECORD = 1 + 3 * 32 * 32  # label byte, then R, G, B planes of 32x32


def _read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = _read_bytes(path, "cifar10")
    if not data or len(data) % _RECORD:
        raise IsthmusError(
            f"{path}: {len(data)} bytes; expected a size a multiple of {_RECORD} bytes "
            f"(1 label byte + 3072 pixel bytes per image); {_SOURCES['cifar10']}"
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, _RECORD)
    _check_labels(records[:, 0], path, "cifar10")
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def _load_cifar10(root: str | Path | None):
    root = _require_root("cifar10", root)
    sub = root / "cifar-10-batches-bin"
    folder = sub if not (root / _CIFAR_FILES[0]).is_file() and sub.is_dir() else root
    for f in _CIFAR_FILES:
        if not (folder / f).is_file():
            raise IsthmusError(
                f"cifar10: missing file {folder / f} (also looked in cifar-10-batches-bin/); "
                f"{_SOURCES['cifar10']}"
            )
    parts = [_read_cifar_bin(folder / f) for f in _CIFAR_FILES]
    x_tr, x_te = _standardise(np.concatenate([p[0] for p in parts[:5]]), parts[5][0])
    y_tr = np.concatenate([p[1] for p in parts[:5]])
    return x_tr, y_tr, x_te, parts[5][1], 10, "classification"


def write_cifar_bin(path: str | Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write uint8 images (N, 3, 32, 32) and labels (N,) as one CIFAR-10 binary batch."""
    images = np.asarray(images, dtype=np.uint8).reshape(len(images), -1)
    labels = np.asarray(labels, dtype=np.uint8).reshape(-1, 1)
    Path(path).write_bytes(np.concatenate([labels, images], axis=1).tobytes())
