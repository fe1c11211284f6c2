"""argparse value types: checked at parse time, the error names the allowed range (no heavy imports)."""

from __future__ import annotations

import argparse


def positive_float(s: str) -> float:
    """A finite float > 0."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number; allowed: a float > 0") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{s!r}; allowed: a finite float > 0")
    return v


def unit_float(s: str) -> float:
    """A float in [0, 1)."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number; allowed: 0 <= x < 1") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"{s!r}; allowed: 0 <= x < 1")
    return v


def positive_int(s: str) -> int:
    """An int >= 1."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer; allowed: an int >= 1") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s!r}; allowed: an int >= 1")
    return v


def min2_int(s: str) -> int:
    """An int >= 2."""
    v = positive_int(s)
    if v < 2:
        raise argparse.ArgumentTypeError(f"{s!r}; allowed: an int >= 2")
    return v


SEED_MAX = 2**63 - 1


def seed_int(s: str) -> int:
    """A seed for ``torch.Generator.manual_seed``: 0 .. 2**63-1."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer; allowed: 0 .. 2**63-1") from None
    if not 0 <= v <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{s!r}; allowed: 0 .. 2**63-1")
    return v
