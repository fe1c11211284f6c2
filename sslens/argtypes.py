"""argparse value types: checked at parse time, the error names the allowed range (no heavy imports)."""

from __future__ import annotations

import argparse
import math
from typing import Callable

from sslens.constants import SEED_MAX, STEPS_MAX


def _value(s: str, cast: Callable, ok: Callable, kind: str, allowed: str):
    """``cast(s)`` if it parses and ``ok`` holds; else one argparse error naming what is allowed."""
    try:
        v = cast(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not {kind}; allowed: {allowed}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"{s!r}; allowed: {allowed}")
    return v


def positive_float(s: str) -> float:
    """A finite float > 0."""
    return _value(s, float, lambda v: v > 0 and math.isfinite(v), "a number", "a finite float > 0")


def unit_float(s: str) -> float:
    """A float in [0, 1)."""
    return _value(s, float, lambda v: 0 <= v < 1, "a number", "0 <= x < 1")


def positive_int(s: str) -> int:
    """An int in 1 .. 2**63-1 (torch's int64)."""
    return _value(s, int, lambda v: 1 <= v <= SEED_MAX, "an integer", "an int in 1 .. 2**63-1")


def step_count(s: str) -> int:
    """A number of optimizer steps: 1 .. STEPS_MAX (run files are named by 8-digit steps)."""
    return _value(s, int, lambda v: 1 <= v <= STEPS_MAX, "an integer", f"an int in 1 .. {STEPS_MAX}")


def min2_int(s: str) -> int:
    """An int >= 2."""
    return _value(s, int, lambda v: v >= 2, "an integer", "an int >= 2")


def seed_int(s: str) -> int:
    """A seed for ``torch.Generator.manual_seed``: 0 .. 2**63-1."""
    return _value(s, int, lambda v: 0 <= v <= SEED_MAX, "an integer", "0 .. 2**63-1")
