"""CircuitRecorder storage and overhead (issue 9 item 2).

1. GPT-2-small shape (12 layers, 12 heads, d_model 768, d_head 64, d_mlp 3072, vocab 50257; built from a
   HookedTransformerConfig, random init, no download): bytes of one recorded step on disk with the defaults
   (factored W_Q/W_K/W_V/W_O + biases, spectra, scores, default probe patterns; goal <= 130 MB) and with
   ``spectra_only=True`` (goal <= 2 MB), and the seconds one ``record`` takes.
2. Overhead: a 2-layer, d_model 128, 4-head model (d_mlp 512, vocab 1000), AdamW, batch 32 x 128 tokens,
   1000 steps, recorder at its default schedule (every power of two: 11 records) writing to a temp run
   directory. Loops without and with the recorder alternate in one process (best of ``reps`` each);
   goal: with / without <= 1.05. The recorder's own time (inside ``record``) / training time is also printed.

``SSLENS_BENCH_QUICK=1`` runs 200 steps once each. On a loaded machine the loop is shortened automatically
when 1000 steps x 2 loops x ``reps`` would take longer than ``BUDGET_S`` (the output then says so: fewer steps
mean fewer training steps between the same ~log2(steps) records, so the ratio is a pessimistic bound).
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sslens.hooks import CircuitRecorder

QUICK = os.environ.get("SSLENS_BENCH_QUICK") == "1"
BUDGET_S = float(os.environ.get("SSLENS_BENCH_BUDGET_S", "600"))


def _model(**kw) -> HookedTransformer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HookedTransformer(HookedTransformerConfig(device="cpu", **kw))


def gpt2_small_bytes() -> None:
    torch.manual_seed(0)
    model = _model(n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024,
                   act_fn="gelu_new", normalization_type="LN")
    for name, kw in (("default", {}), ("spectra_only", {"spectra_only": True})):
        with tempfile.TemporaryDirectory() as d:
            rec = CircuitRecorder(model, store=d, schedule=[0], verbose=False, **kw)
            t = time.perf_counter()
            rec.attach()  # W_0 copy + records step 0
            rec.detach()
            secs = time.perf_counter() - t
            size = (Path(d) / "recordings" / "step_00000000.safetensors").stat().st_size
        goal = 130 if name == "default" else 2
        print(f"GPT-2-small shape, {name:12s}: {size / 1e6:8.2f} MB per recorded step on disk "
              f"(estimate {rec.estimate_bytes() / 1e6:.2f} MB; goal <= {goal} MB: {'PASS' if size <= goal * 1e6 else 'FAIL'});"
              f" attach + record {secs:.1f} s", flush=True)


def _loop(steps: int, record: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    model = _model(n_layers=2, d_model=128, n_heads=4, d_head=32, d_mlp=512, d_vocab=1000, n_ctx=128,
                   act_fn="gelu", normalization_type="LN")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, 1000, (32, 128), generator=g) for _ in range(8)]
    spent = [0.0]
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        rec = None
        if record:
            rec = CircuitRecorder(model, store=d, verbose=False)
            orig = rec.record

            def timed(*a, **k):
                t = time.perf_counter()
                out = orig(*a, **k)
                spent[0] += time.perf_counter() - t
                return out

            rec.record = timed
            rec.attach(opt)
        for i in range(steps):
            loss = model(data[i % len(data)], return_type="loss")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        total = time.perf_counter() - t0
        if rec is not None:
            rec.detach()
            n_rec = len(list((Path(d) / "recordings").glob("step_*.safetensors")))
            assert n_rec == sum(1 for s in range(steps + 1) if s & (s - 1) == 0), n_rec
    return total, spent[0]


def overhead() -> None:
    steps, reps = (200, 1) if QUICK else (1000, 2)
    _loop(5, True)  # warm-up
    probe_s = _loop(20, False)[0] / 20
    note = ""
    if 2 * reps * steps * probe_s > BUDGET_S:
        full = steps
        reps = 1
        steps = max(100, int(BUDGET_S / (2 * probe_s)))
        if steps < full:
            note = (f" [SHORTENED from {full} steps: {probe_s * 1e3:.0f} ms/step on this loaded machine would exceed "
                    f"the {BUDGET_S:.0f} s budget; fewer steps per record, so a pessimistic ratio]")
        else:
            steps = full
    without, with_, inside = [], [], []
    for _ in range(reps):
        without.append(_loop(steps, False)[0])
        t, s = _loop(steps, True)
        with_.append(t)
        inside.append(s)
    a, b = min(without), min(with_)
    print(f"overhead, 2 layers d_model 128 4 heads, batch 32x128, {steps} steps (best of {reps}): "
          f"{a / steps * 1e3:.1f} ms/step without, {b / steps * 1e3:.1f} ms/step with recorder (default schedule); "
          f"with/without = {b / a:.3f} (goal <= 1.05: {'PASS' if b / a <= 1.05 else 'FAIL'}); "
          f"time inside record() / training time = {min(inside) / a:.2%}{note}", flush=True)


def main() -> None:
    gpt2_small_bytes()
    overhead()


if __name__ == "__main__":
    main()
