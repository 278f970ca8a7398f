"""Strict, deterministic tests: fixed seeds per test, small shared data on CPU."""

from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N` runs one process per core: each one, and every CLI run its tests start, keeps
    # to one thread so that N workers do not oversubscribe N cores.
    os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from scipy.optimize import root

from isthmus.landscape import muller_brown
from isthmus.models import ModelConfig
from isthmus.train import TrainConfig, train, train_population

# Hypothesis budgets, one place: "ci" (default) keeps the suite inside CI's time; "thorough" for a
# deeper local check (HYPOTHESIS_PROFILE=thorough python -m pytest). Tests that need a bigger or
# smaller budget scale it with `budget(...)`, never with their own numbers.
_COMMON = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=25, **_COMMON)
settings.register_profile("thorough", max_examples=250, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def budget(scale: float = 1.0) -> settings:
    """Hypothesis settings with the active profile's example count times `scale` (at least 1)."""
    return settings(max_examples=max(1, round(settings().max_examples * scale)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Tiny nets: one thread avoids hand-off costs and oversubscription (results do not change)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def mnist1d():
    from isthmus.data import load

    return load("mnist1d")


@pytest.fixture(scope="session")
def small_mnist1d(mnist1d):
    return mnist1d.subset(512, 256, seed=0)


# ----------------------------------------------------------------------------- Muller-Brown

# approximate locations from the literature; the test refines them with scipy before use
GUESS = {
    "A": (-0.558, 1.442),  # deepest minimum
    "B": (0.623, 0.028),
    "C": (-0.050, 0.467),  # the shallow minimum between them
    "S1": (-0.822, 0.624),  # saddle between A and C (the highest point of the A-B path)
    "S2": (0.212, 0.293),  # saddle between C and B
}
MB_NEB = dict(optimizer="adam", lr=0.01, spring=1.0)  # NEB settings for O(100) gradients


def _grad(p: np.ndarray) -> np.ndarray:
    x = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(muller_brown(x[None]).sum(), x)
    return g.numpy()


@pytest.fixture(scope="module")
def mb():
    """Stationary points of Muller-Brown found by root-finding on the gradient, with energies."""
    out = {}
    for name, g in GUESS.items():
        r = root(_grad, np.array(g), tol=1e-13)
        assert r.success and np.linalg.norm(_grad(r.x)) < 1e-8
        x = torch.tensor(r.x, dtype=torch.float64)
        out[name] = (x, float(muller_brown(x[None])[0]))
    # the kinds: minima have positive-definite Hessians, saddles one negative eigenvalue
    for name, (x, _) in out.items():
        h = torch.autograd.functional.hessian(lambda v: muller_brown(v[None])[0], x)
        neg = int((torch.linalg.eigvalsh(h) < 0).sum())
        assert neg == (1 if name.startswith("S") else 0), name
    return out


# ----------------------------------------------------------------------------- shared helpers
# Plain references the provable-path tests compare the library against (no isthmus code inside).


def outputs_at(model, p, x):
    """f(x) at parameters p, without gradients."""
    from torch.func import functional_call

    with torch.no_grad():
        return functional_call(model, p, (x,))


def loss_at(model, p, x, y, loss: str = "ce") -> float:
    """Mean cross-entropy ("ce") or summed-over-outputs squared error ("mse") at p."""
    import torch.nn.functional as F

    f = outputs_at(model, p, x)
    return float(F.cross_entropy(f, y) if loss == "ce" else ((f - y) ** 2).sum(-1).mean())


def points_at(path, ts) -> list[dict]:
    """The path's parameter dicts at the float64 times ts (a float32 t could land in the
    neighbouring segment)."""
    pts = path.points(torch.as_tensor(ts, dtype=torch.float64))
    return [{k: v[j] for k, v in pts.items()} for j in range(len(ts))]


def relative_deviation(f, f0) -> float:
    """max |f - f0| / max(1, max |f0|): the certificate's measure of a changed function."""
    return float((f - f0).abs().max()) / max(1.0, float(f0.abs().max()))


# ----------------------------------------------------------------------------- tiny new models
# The residual nets (no norm, BatchNorm, LayerNorm) and the transformer that capabilities are
# checked on: a few thousand weights each, on the `tiny_mnist1d` subset, a few steps of training.

TINY_MODELS = {
    "resnet": ModelConfig(kind="resnet", depth=1, width=1, input_shape=(40,)),
    "resnet-bn": ModelConfig(kind="resnet", depth=1, width=1, batchnorm=True, input_shape=(40,)),
    "resnet-ln": ModelConfig(kind="resnet", depth=1, width=1, layernorm=True, input_shape=(40,)),
    "transformer": ModelConfig(kind="transformer", depth=1, width=16, heads=2, input_shape=(40,)),
}
TINY_TRAIN = {  # per kind, a few steps: enough for a barrier between two nets
    "resnet": TrainConfig(epochs=3, batch_size=64),
    "transformer": TrainConfig(optimizer="adam", lr=0.003, epochs=3, batch_size=64),
}


@pytest.fixture(scope="session")
def tiny_mnist1d(mnist1d):
    return mnist1d.subset(256, 128, seed=0)


def train_tiny(cfg: ModelConfig, data, seeds, train_cfg: TrainConfig | None = None) -> list:
    """`train.TrainResult`s of `cfg` for each seed (default settings: TINY_TRAIN of its kind): one
    population, or BatchNorm nets, which cannot share one, one at a time."""
    tc = TINY_TRAIN[cfg.kind] if train_cfg is None else train_cfg
    if cfg.batchnorm:
        return [train(cfg, data, tc, s, progress=False) for s in seeds]
    return train_population(cfg, data, tc, list(seeds), progress=False)


def write_spec(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    """A sweep spec file holding `text`."""
    path = tmp_path / name
    path.write_text(text)
    return path
