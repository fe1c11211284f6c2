"""Seconds per training step of the HookedTransformer Y/Z model at M = 34 and M = 240, with and without
the CircuitRecorder at its default schedule (log_schedule(steps), probe batch 8), and the overhead ratio.

Runs are interleaved (without, with, without, with) and the minimum per-step time of each kind is kept.
The recorder's own cost is also timed directly (seconds inside ``recorder.record`` / training seconds).
"""

from __future__ import annotations

import os
import tempfile
import time

import torch

from sslens.data import syn_medium, syn_small
from sslens.models import scan_snap_config
from sslens.tasks import SequenceClassTask
from sslens.train import TrainConfig, train

QUICK = os.environ.get("SSLENS_BENCH_QUICK") == "1"


def one_run(spec, steps: int, record: bool) -> tuple[float, float]:
    """(seconds per step, seconds spent in recorder.record) of a 'sslens train' run to a temp store."""
    cfg = TrainConfig(
        model=scan_snap_config(spec.M, n_ctx=spec.T, init="random"), task=SequenceClassTask(spec).to_dict(),
        steps=steps, batch=128, lr={"blocks.0.attn.W_Q": 1.0, "unembed.W_U": 2.0}, momentum=0.9, seed=1,
        checkpoint_every=steps, record_n=24 if record else 0,
    )
    from sslens.hooks import recorder as rec_mod

    spent = [0.0]
    orig = rec_mod.CircuitRecorder.record

    def timed(self, *a, **k):
        t = time.perf_counter()
        out = orig(self, *a, **k)
        spent[0] += time.perf_counter() - t
        return out

    rec_mod.CircuitRecorder.record = timed
    try:
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            train(cfg, out=d, progress=False)
            total = time.perf_counter() - t
    finally:
        rec_mod.CircuitRecorder.record = orig
    return total / steps, spent[0]


def main() -> None:
    for name, spec, steps, reps in (
        ("syn-small  M=34 ", syn_small(), 40 if QUICK else 100, 2 if QUICK else 3),
        ("syn-medium M=240", syn_medium(10), 10 if QUICK else 100, 1 if QUICK else 2),
    ):
        one_run(spec, 3, False)  # warm-up
        without, with_, rec_s = [], [], []
        for _ in range(reps):
            without.append(one_run(spec, steps, False)[0])
            s, r = one_run(spec, steps, True)
            with_.append(s)
            rec_s.append(r)
        a, b = min(without), min(with_)
        direct = min(rec_s) / (a * steps)
        print(
            f"{name}: {a:.4f} s/step without recorder, {b:.4f} s/step with (default schedule, {steps} steps); "
            f"with/without = {b / a:.3f}; recorder time / training time = {direct:.3%}"
        )


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("SSLENS_BENCH_THREADS", torch.get_num_threads())))
    main()
