"""The Scan&Snap Fig. 6 grid (640 runs x 100 steps) end to end with the exact count engine, against the
HookedTransformer path and a plain per-run PyTorch loop of the same math, each timed on a subsample in
this process and extrapolated to the grid."""

from __future__ import annotations

import os
import tempfile
import time

import torch

from sslens.engine import train_many
from sslens.sweeps.fig6 import NUM_LAST, points, run_fig6
from sslens.train import train

QUICK = os.environ.get("SSLENS_BENCH_QUICK") == "1"


def per_step(fn, steps: int) -> float:
    t = time.perf_counter()
    fn(steps)
    return (time.perf_counter() - t) / steps


def main() -> None:
    pts = points()
    n_per_group = len(pts) // len(NUM_LAST)
    sample = {nl: next(c for _, p, c in pts if p[0] == nl) for nl in NUM_LAST}
    k = 3 if QUICK else 10

    def hooked(cfg):
        def go(steps):
            c = type(cfg).from_dict({**cfg.to_dict(), "steps": steps, "record_n": 0})
            train(c, progress=False)
        return go

    def plain(cfg):  # one run at a time through the count math (R = 1): a per-run PyTorch loop
        def go(steps):
            c = type(cfg).from_dict({**cfg.to_dict(), "steps": steps, "record_n": 0})
            train_many([c], progress=False)
        return go

    ht = sum(per_step(hooked(c), k) * n_per_group * 100 for c in sample.values())
    pl = sum(per_step(plain(c), k) * n_per_group * 100 for c in sample.values())
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        run_fig6(d, progress=False, workers=2)
        grid = time.perf_counter() - t
    print(f"Fig. 6 grid, 640 runs x 100 steps, engine end to end (2 workers, stores + fig6.csv + plots): {grid:.1f} s")
    print(f"HookedTransformer path, extrapolated from {k} steps per size: {ht:.0f} s  -> engine is {ht / grid:.0f}x faster")
    print(f"plain per-run loop of the same math, extrapolated: {pl:.0f} s  -> engine is {pl / grid:.1f}x faster")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
