"""Strict, deterministic tests: fixed seeds per test, small shared data on CPU."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def mnist1d():
    from isthmus.data import load

    return load("mnist1d")


@pytest.fixture(scope="session")
def small_mnist1d(mnist1d):
    return mnist1d.subset(512, 256, seed=0)
