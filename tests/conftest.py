"""Strict, deterministic tests: fixed seeds per test, small shared data on CPU."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Hypothesis budgets, one place: "ci" (default) keeps the suite inside CI's time; "thorough" for a
# deeper local check (HYPOTHESIS_PROFILE=thorough python -m pytest). Tests that need a bigger or
# smaller budget scale it with `budget(...)`, never with their own numbers.
_COMMON = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=25, **_COMMON)
settings.register_profile("thorough", max_examples=250, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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
