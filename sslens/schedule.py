"""Recording schedules: which optimizer steps a recorder captures."""

from __future__ import annotations

import numpy as np

from sslens.errors import require


def log_schedule(total_steps: int, n: int = 24, include_every: int = 0) -> list[int]:
    """Log-spaced steps in [0, total_steps], always with 0 and the last; dynamics are fast early.

    Step s means "after s optimizer steps"; step 0 is the initial model. ``n`` points are spread as
    ``round(geomspace(1, total_steps, n))`` (deduplicated), plus, if ``include_every`` > 0, every
    multiple of it.
    """
    require(isinstance(total_steps, int) and total_steps >= 0, "total_steps", f"got {total_steps!r}", "an int >= 0")
    require(isinstance(n, int) and n >= 1, "n", f"got {n!r}", "an int >= 1")
    steps = {0, total_steps}
    if total_steps >= 1:
        steps |= set(np.unique(np.round(np.geomspace(1, total_steps, n))).astype(int).tolist())
    if include_every > 0:
        steps |= set(range(0, total_steps + 1, include_every))
    return sorted(steps)
