"""The Scan&Snap Fig. 6 sweep (docs/theory.md §1.4) and its recall curves (Figs. 11-12).

Grid: num_last in {1,3,5,10} x eta_Z in {0.5,1,2,3} x eta_Y/eta_Z in {1,2,5,10} x seeds 1..10;
Syn-Medium, random init, SGD momentum 0.9, batch 128, T 128, 100 steps. Metric: entropy (nats) of
the final c_n on each class's distinct tokens, renormalised, averaged over classes; mean and sample
std over seeds. Every run is a run store written by the exact count engine: config, checkpoints at
0 and 100 (every parameter of the HookedTransformer), metrics, COMPLETE; no recordings (the probe
forward at M = 240 would double the sweep's time) -- the analyses read Z from the checkpoints.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from sslens.data.sequence_classes import spec_from_dict, syn_medium
from sslens.models.scan_snap import scan_snap_config
from sslens.store import RunStore, atomic_write_bytes
from sslens.sweeps.grid import run_points
from sslens.tasks import SequenceClassTask
from sslens.theory.c_n import composition, distinct_entropy, recall
from sslens.train import TrainConfig

NUM_LAST = (1, 3, 5, 10)
ETA_Z = (0.5, 1.0, 2.0, 3.0)
RATIO = (1.0, 2.0, 5.0, 10.0)
SEEDS = tuple(range(1, 11))


def points(num_last=NUM_LAST, eta_Z=ETA_Z, ratio=RATIO, seeds=SEEDS, steps=100, batch=128, T=128):
    """(name, TrainConfig) for every grid point."""
    out = []
    for nl in num_last:
        spec = syn_medium(nl, T=T)
        task = SequenceClassTask(spec).to_dict()
        model = scan_snap_config(spec.M, n_ctx=T, init="random")
        for ez in eta_Z:
            for r in ratio:
                for s in seeds:
                    cfg = TrainConfig(model=model, task=task, steps=steps, batch=batch, optimizer="sgd",
                                      lr={"blocks.0.attn.W_Q": ez, "unembed.W_U": ez * r}, momentum=0.9, seed=s,
                                      record_n=0, checkpoint_every=steps)
                    out.append((f"nl{nl}_ez{ez:g}_r{r:g}_s{s}", (nl, ez, r, s), cfg))
    return out


def final_c(run_dir: Path):
    """Final c_n of a run (from its last checkpoint) and its spec."""
    store = RunStore(run_dir)
    tensors, _ = store.load_checkpoint(keys=["model.blocks.0.attn.W_Q"])
    spec = spec_from_dict(store.read_config()["task"]["spec"])
    Z = tensors["model.blocks.0.attn.W_Q"][0].double()
    return composition(Z, spec.P(), spec.queries), spec


def run_fig6(out_dir: str | Path, progress: bool | None = None, workers: int = 2, backend: str = "local",
             address: str | None = None, max_retries: int = 3, **grid) -> Path:
    """Run (or resume) the grid into ``out_dir/runs`` as one generic grid (:func:`sslens.sweeps.grid.run_points`:
    results.csv, summary.png); then write fig6.csv, fig6.png, recall.csv, recall.png.

    With ``workers >= 2`` local workers and two cores of our own, the Fig. 6 outputs are computed in a forked helper
    (:class:`sslens.procs.Forked`, which writes no files) while this process reads results.csv's rows and draws
    summary.png; here otherwise, and here again if the helper fails, cannot fork, or runs past its time (said on
    stderr). Not with Ray, whose threads live on in this process."""
    from sslens.procs import Forked, helpers_pay

    out_dir = Path(out_dir)
    pts = points(**grid)
    helper: Forked | None = None

    def start() -> None:
        nonlocal helper
        if workers >= 2 and backend == "local" and helpers_pay():
            helper = Forked(fig6_outputs, out_dir, pts)

    files = None
    try:
        run_points([(n, {"num_last": nl, "eta_Z": ez, "ratio": r, "seed": s}, c.to_dict()) for n, (nl, ez, r, s), c in pts],
                   out_dir, backend=backend, workers=workers, address=address, max_retries=max_retries, progress=progress,
                   after_runs=start)
        if helper is not None:  # ~3 ms a run on one core; a helper far past that is stuck
            files = helper.result(timeout=60 + 0.05 * len(pts))
            if files is None:
                print(f"fig6: the helper gave no outputs ({helper.error}); computing them here", file=sys.stderr)
    finally:
        if helper is not None:
            helper.close()
    for name, data in (files or fig6_outputs(out_dir, pts)).items():
        atomic_write_bytes(out_dir / name, data)
    return out_dir / "fig6.csv"


def fig6_outputs(out_dir: Path, pts: list) -> dict[str, bytes]:
    """fig6.csv, recall.csv, fig6.png and recall.png (file name -> bytes) from the finished run stores."""
    thresholds = torch.tensor(np.geomspace(1e-3, 1e-1, 41))
    ent, rec = {}, {}
    for name, (nl, ez, r, s), _ in pts:
        c, spec = final_c(out_dir / "runs" / name)
        ent.setdefault((nl, ez, r), []).append(distinct_entropy(c, spec.distinct).mean().item())
        rec.setdefault((nl, ez, r), []).append(recall(c, spec.distinct, thresholds).numpy())
    rows = [{"num_last": nl, "eta_Z": ez, "ratio": r, "entropy_mean": float(np.mean(v)),
             "entropy_std": float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"), "n": len(v)}
            for (nl, ez, r), v in sorted(ent.items())]
    recall_rows = [{"num_last": nl, "eta_Z": ez, "ratio": r, "threshold": float(t), "recall": float(v)}
                   for (nl, ez, r), vs in sorted(rec.items()) for t, v in zip(thresholds.tolist(), np.mean(vs, 0))]
    return {"fig6.csv": _csv(rows), "recall.csv": _csv(recall_rows),
            "fig6.png": _png(plot_fig6(rows)), "recall.png": _png(plot_recall(rec, thresholds))}


def _csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_fig6(rows: list[dict]):
    """One panel per num_last: entropy against eta_Y/eta_Z, a line per eta_Z, error bars = sample std."""
    nls = sorted({r["num_last"] for r in rows})
    fig = Figure(figsize=(3.2 * len(nls), 3))
    axes = fig.subplots(1, len(nls), sharey=True, squeeze=False)
    for ax, nl in zip(axes[0], nls):
        for ez in sorted({r["eta_Z"] for r in rows}):
            sel = [r for r in rows if r["num_last"] == nl and r["eta_Z"] == ez]
            ax.errorbar([r["ratio"] for r in sel], [r["entropy_mean"] for r in sel],
                        yerr=[r["entropy_std"] for r in sel], marker="o", ms=3, capsize=2, label=f"eta_Z={ez:g}")
        ax.set_xscale("log")
        ax.set_xlabel("eta_Y / eta_Z")
        ax.set_title(f"num_last = {nl}", fontsize=9)
    axes[0][0].set_ylabel("distinct-token entropy (nats)")
    axes[0][-1].legend(fontsize=7)
    return fig


def plot_recall(rec: dict, thresholds):
    """Figs. 11-12: recall of distinct tokens against threshold (mean over seeds), per num_last."""
    nls = sorted({k[0] for k in rec})
    fig = Figure(figsize=(3.2 * len(nls), 3))
    axes = fig.subplots(1, len(nls), sharey=True, squeeze=False)
    for ax, nl in zip(axes[0], nls):
        for (n, ez, r), v in sorted(rec.items()):
            if n == nl and r in (min(k[2] for k in rec), max(k[2] for k in rec)):
                ax.plot(thresholds, np.mean(v, 0), ls="-" if r == min(k[2] for k in rec) else "--",
                        label=f"eta_Z={ez:g}, ratio {r:g}")
        ax.set_xscale("log")
        ax.set_xlabel("threshold")
        ax.set_title(f"num_last = {nl}", fontsize=9)
    axes[0][0].set_ylabel("recall of distinct tokens")
    axes[0][-1].legend(fontsize=6)
    return fig
