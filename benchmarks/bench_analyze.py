"""``sslens analyze-checkpoints`` over 1000 ``torch.save`` state dicts (``model_<step>.pt`` + config.json) of a
1-layer model (d_model 128, 4 heads, d_head 32, d_mlp 512, d_vocab 200, n_ctx 64, LayerNorm, GELU), default
analyses: end to end through the CLI as a subprocess (goal <= 15 s on 2 cores), and in this process the batched
path against the per-checkpoint path (timed on every 20th checkpoint and extrapolated to 1000). Also the wall
time of ``sslens --help`` and of each verb's ``--help`` (goal <= 1.5 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

QUICK = os.environ.get("SSLENS_BENCH_QUICK") == "1"
FIELDS = dict(n_layers=1, d_model=128, d_head=32, n_heads=4, d_mlp=512, d_vocab=200, n_ctx=64, act_fn="gelu",
              normalization_type="LN")
VERBS = ("train", "analyze", "analyze-checkpoints", "reproduce", "sweep")


def make_checkpoints(d: Path, n: int, fields: dict = FIELDS) -> None:
    """``n`` state dicts ``model_{i}.pt`` of a model whose weights drift from its initialisation, and config.json."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    d.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(HookedTransformerConfig(**fields, seed=0, device="cpu"))
    g = torch.Generator().manual_seed(0)
    sd0 = model.state_dict()
    drift = {k: 0.02 * torch.randn(v.shape, generator=g) for k, v in sd0.items() if v.is_floating_point() and v.ndim}
    for i in range(n):
        sd = {k: v + drift[k] * (i / n) ** 0.5 + 0.002 * torch.randn(v.shape, generator=g) if k in drift else v
              for k, v in sd0.items()}
        torch.save(sd, d / f"model_{i}.pt")
    (d / "config.json").write_text(json.dumps(fields))


def load() -> str:
    try:
        return "load average " + ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def wall(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + system) of a subprocess; on a shared machine the CPU time is what the
    command would take with the cores to itself (the batched analysis runs one thread)."""
    import resource

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - t, r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime


def cpu() -> float:
    return time.process_time()


def main() -> None:
    from sslens.analyses.checkpoints import analyze_series, report
    from sslens.checkpoints import open_series

    n = 100 if QUICK else 1000
    every = 20 if n >= 200 else 10
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        make_checkpoints(tmp / "ck", n)
        print(f"wrote {n} checkpoints ({sum(f.stat().st_size for f in (tmp / 'ck').iterdir()) / 2**20:.0f} MB) "
              f"in {time.perf_counter() - t:.1f} s")
        sub = tmp / "sub"  # every `every`-th file for the per-checkpoint path
        sub.mkdir()
        for i in range(0, n, every):
            (sub / f"model_{i}.pt").symlink_to(tmp / "ck" / f"model_{i}.pt")
        (sub / "config.json").write_text((tmp / "ck" / "config.json").read_text())

        print(f"before the CLI run: {load()}")
        w, c = wall([sys.executable, "-m", "sslens.cli", "analyze-checkpoints", str(tmp / "ck"), "--out",
                     str(tmp / "out_cli"), "--quiet"])
        print(f"analyze-checkpoints, {n} checkpoints, end to end through the CLI (subprocess, import included): "
              f"{w:.1f} s wall, {c:.1f} s CPU (goal <= 15 s for 1000); after: {load()}")
        t0, c0 = time.perf_counter(), cpu()
        s = open_series(str(tmp / "ck"))
        res = analyze_series(s, progress=False)
        t1, c1 = time.perf_counter(), cpu()
        report([res], tmp / "out")
        t2, c2 = time.perf_counter(), cpu()
        old_s = open_series(str(sub))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the batched path runs; with 2 threads on a busy machine it is far slower
        t3, c3 = time.perf_counter(), cpu()
        analyze_series(old_s, progress=False, batched=False)
        torch.set_num_threads(threads)
        k = n / len(old_s.steps)
        old, old_c = (time.perf_counter() - t3) * k, (cpu() - c3) * k
        print(f"in process: batched analysis {t1 - t0:.1f} s wall / {c1 - c0:.1f} s CPU, report (metrics.json, "
              f"report.html) {t2 - t1:.1f} s / {c2 - c1:.1f} s CPU")
        print(f"per-checkpoint path (one model load + recorder per checkpoint, 1 thread), extrapolated from {len(old_s.steps)} "
              f"checkpoints: {old:.1f} s wall / {old_c:.1f} s CPU -> the batched analysis is {old / (t1 - t0):.1f}x "
              f"faster (wall), {old_c / (c1 - c0):.1f}x less CPU; {load()}")
    for args in [[]] + [[v] for v in VERBS]:
        w, c = wall([sys.executable, "-m", "sslens.cli", *args, "--help"])
        print(f"sslens {' '.join(args + ['--help'])}: {w:.2f} s wall, {c:.2f} s CPU")


if __name__ == "__main__":
    main()
