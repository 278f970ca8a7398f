"""Strict, deterministic tests: fixed seeds per test, small shared data on CPU."""

from __future__ import annotations

import pytest
import torch


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
