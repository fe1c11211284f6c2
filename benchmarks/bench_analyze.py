"""``sslens analyze-checkpoints`` over 1000 ``torch.save`` state dicts (``model_<step>.pt`` + config.json) of a
1-layer model (d_model 128, 4 heads, d_head 32, d_mlp 512, d_vocab 200, n_ctx 64, LayerNorm, GELU), default
analyses: end to end through the CLI as a subprocess (goal <= 15 s on 2 cores; best of 2, with the machine's
load), and in this process the batched path with its weight metrics in a forked helper against the same in one
process, the report's figures on two processes against one, and the batched path against the per-checkpoint
path (timed on every 20th checkpoint and extrapolated to 1000). CPU times include the forked helpers. Also the
wall time of ``sslens --help`` and of each verb's ``--help`` (goal <= 1.5 s)."""

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
    """CPU seconds of this process and of its reaped children (the forked helpers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    from sslens.analyses.batched import start_weights
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

        runs = []
        for k in range(1 if QUICK else 2):
            before = load()
            w, c = wall([sys.executable, "-m", "sslens.cli", "analyze-checkpoints", str(tmp / "ck"), "--out",
                         str(tmp / f"out_cli{k}"), "--quiet"])
            runs.append(w)
            print(f"analyze-checkpoints, {n} checkpoints, end to end through the CLI (subprocess, import included, "
                  f"run {k + 1}): {w:.1f} s wall, {c:.1f} s CPU (goal <= 15 s for 1000); {before} before, {load()} after")
        print(f"  best: {min(runs):.1f} s wall")
        s = open_series(str(tmp / "ck"))
        t0, c0 = time.perf_counter(), cpu()
        res = analyze_series(s, progress=False)
        t1, c1 = time.perf_counter(), cpu()
        report([res], tmp / "out1", workers=1)
        t2, c2 = time.perf_counter(), cpu()
        job = start_weights(str(tmp / "ck"))
        res_job = analyze_series(s, progress=False, job=job)
        t3, c3 = time.perf_counter(), cpu()
        report([res_job], tmp / "out2", workers=2)
        t4, c4 = time.perf_counter(), cpu()
        assert job is None or job.used, "the weights helper's result was not used"
        assert res_job.to_json() == res.to_json()
        print(f"in process (TransformerLens already imported), one process: batched analysis {t1 - t0:.1f} s wall / "
              f"{c1 - c0:.1f} s CPU (weight metrics on a thread), report (metrics.json, report.html) {t2 - t1:.1f} s / "
              f"{c2 - c1:.1f} s CPU; with the forked helpers (weight metrics and weight plots in one, half the other "
              f"figures in another): analysis {t3 - t2:.1f} s / {c3 - c2:.1f} s CPU, report {t4 - t3:.1f} s / "
              f"{c4 - c3:.1f} s CPU: {(t2 - t0) / (t4 - t2):.2f}x for both; {load()}")
        old_s = open_series(str(sub))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the batched path runs; with 2 threads on a busy machine it is far slower
        t5, c5 = time.perf_counter(), cpu()
        analyze_series(old_s, progress=False, batched=False)
        torch.set_num_threads(threads)
        k = n / len(old_s.steps)
        old, old_c = (time.perf_counter() - t5) * k, (cpu() - c5) * k
        print(f"per-checkpoint path (one model load + recorder per checkpoint, 1 thread), extrapolated from {len(old_s.steps)} "
              f"checkpoints: {old:.1f} s wall / {old_c:.1f} s CPU -> the batched analysis (one process) is "
              f"{old / (t1 - t0):.1f}x faster (wall), {old_c / (c1 - c0):.1f}x less CPU; {load()}")
    for args in [[]] + [[v] for v in VERBS]:
        w, c = wall([sys.executable, "-m", "sslens.cli", *args, "--help"])
        print(f"sslens {' '.join(args + ['--help'])}: {w:.2f} s wall, {c:.2f} s CPU")


if __name__ == "__main__":
    main()
