"""argparse types of the subcommands' flags: integers and numbers with ranges and upper bounds,
seeds, conv plans. A value outside its range is an argparse error (exit 2) naming the flag."""

from __future__ import annotations

import argparse
import math

from ..seeding import SEED_MAX


def positive(text: str) -> int:
    """argparse type: an integer in [1, 10^9]."""
    return bounded(1, 10**9, "an integer")(text)


def bounded(lo: int, hi: int, what: str = "an integer"):
    """argparse type: an integer in [lo, hi] (upper bounds stop a typo from running for ever)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {what} in [{lo}, {hi}], got {text!r}"
            ) from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be in [{lo}, {hi}], got {v}")
        return v

    return parse


def real(lo: float = -math.inf, hi: float = math.inf, *, open_lo: bool = False):
    """argparse type: a finite number in [lo, hi] ((lo, hi] with open_lo); NaN and inf refused."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        low_ok = v > lo if open_lo else v >= lo
        if not math.isfinite(v) or not low_ok or v > hi:
            side = "(" if open_lo else "["
            raise argparse.ArgumentTypeError(
                f"must be a finite number in {side}{lo}, {hi}], got {text}"
            )
        return v

    return parse


seed = bounded(0, SEED_MAX, "a seed")


def channels(text: str) -> tuple[int | str, ...]:
    try:
        return tuple("M" if c.strip().upper() == "M" else int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"channels must be ints and M separated by commas, got {text!r}"
        ) from None
