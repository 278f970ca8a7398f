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
