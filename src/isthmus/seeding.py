"""One seed derivation for every random stream in isthmus.

A command takes one `--seed`; each random stream inside it (an epoch's batch order, a dropout
mask, one start layer's kept-set draws, a random projection) gets its own generator seeded by
(seed, index, purpose). Streams are thereby independent of the order in which work is done, so
an interrupted run resumes to the same numbers and a batched search equals a sequential one.

The rule: every random stream is `generator(seed, index, purpose)` with a purpose constant of its
own call site. Three draws are not streams of a command and keep their own seeds: a module's
initial weights (PyTorch initialises modules from the global generator, seeded with the run's
seed), a data set's subsets (`Dataset.subset(seed=...)`), and the fixed BatchNorm statistics subset.
"""

from __future__ import annotations

import torch

SEED_MAX = 2**63 - 1  # torch.Generator seeds are 64-bit; derived seeds stay below this


def derive_seed(seed: int, index: int, purpose: int) -> int:
    """A generator seed for stream (`index`, `purpose`) of a run seeded by `seed`.

    `index` counts the repetitions of a stream (an epoch, a start layer, a draw); `purpose`
    names the stream (a small constant per call site). Distinct (index, purpose) pairs with
    purpose < 7919 give distinct seeds.
    """
    return (seed * 1_000_003 + index * 7919 + purpose) % SEED_MAX


def generator(seed: int, index: int, purpose: int) -> torch.Generator:
    """A CPU generator for stream (`index`, `purpose`): see `derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, index, purpose))
