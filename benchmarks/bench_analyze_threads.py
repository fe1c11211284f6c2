"""``analyze_recording`` with the thread count it sets itself (``sslens.analyses.series.ANALYSIS_THREADS``) against
the same analysis at torch's default (one thread per core), interleaved in this process, best of 3 each: a recording
of a 2-layer attention-only model (8 heads, d_model 128, n_ctx 64, d_vocab 500) at the default schedule of 200
steps (22 recorded steps), as the issue measured it (its 25.7-57.3 s with 2 threads, 5.3-6.5 s with one)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

FIELDS = dict(n_layers=2, n_heads=8, d_model=128, d_head=16, d_vocab=500, n_ctx=64, attn_only=True)


def record(d: Path, steps: int = 200) -> None:
    """Train ``FIELDS`` on repeated random tokens for ``steps`` AdamW steps with a CircuitRecorder attached."""
    import sslens
    from sslens import compat
    from sslens.hooks import CircuitRecorder

    torch.manual_seed(0)
    model = compat.build_from_config(FIELDS)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rec = CircuitRecorder(model, store=d, schedule=sslens.log_schedule(steps))
    rec.attach(opt)
    for _ in range(steps):
        x = torch.randint(0, FIELDS["d_vocab"], (16, FIELDS["n_ctx"] // 2))
        loss = model(torch.cat([x, x], 1), return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
    rec.detach()


def main() -> None:
    from sslens.analyses.series import ANALYSIS_THREADS, analyze_recording, analyze_states, recording_source

    default = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "rec"
        record(d)
        own, at_default = [], []
        for _ in range(3):
            t = time.perf_counter()
            a = analyze_recording(d, progress=False)  # sets ANALYSIS_THREADS itself
            own.append(time.perf_counter() - t)
            old = torch.get_num_threads()
            torch.set_num_threads(default)
            try:
                t = time.perf_counter()
                b = analyze_states.__wrapped__(recording_source(d), progress=False)  # without setting threads
                at_default.append(time.perf_counter() - t)
            finally:
                torch.set_num_threads(old)
        assert a.to_json() == b.to_json() or all(
            torch.allclose(a.head[m], b.head[m], equal_nan=True, atol=1e-9) for m in a.head)
        try:
            la = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        except OSError:
            la = "unknown"
        print(f"analyze_recording, {len(a.steps)} recorded steps of a 2-layer 8-head attention-only model: "
              f"{ANALYSIS_THREADS} thread (its own setting) best {min(own):.2f} s (runs {', '.join(f'{x:.2f}' for x in own)}); "
              f"{default} threads (torch's default) best {min(at_default):.2f} s (runs "
              f"{', '.join(f'{x:.2f}' for x in at_default)}): {min(at_default) / min(own):.2f}x; load average {la}")


if __name__ == "__main__":
    main()
