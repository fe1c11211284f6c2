"""``sslens analyze RUN`` for Scan&Snap runs: metrics.json + an offline report.html.

Panels: the measured-vs-predicted table with the regime and docs/theory.md's known failures, c_n heatmaps
over time (Fig. 4 style), entropy against step with t0 and the measured snap marked, z trajectories,
chi(t) measured vs Thm 4, recall against threshold (Figs. 11-12), long-sequence c_n against the
empirical composition of the probe batch, the loss, and one circuitsvis view of the probe batch with a
panel per chosen step.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure

from sslens.analyses.c_n import empirical_trajectory, total_variation, trajectory
from sslens.analyses.report import Report, attention_steps_view, legend, step_axis
from sslens.analyses.scan_snap_checks import checks
from sslens.hooks.recorder import Recording
from sslens.store import RunStore, atomic_write_json


def _subplots(figsize) -> tuple[Figure, matplotlib.axes.Axes]:
    """One-axes Figure (not registered with pyplot; the backend is left alone)."""
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots()


def composition_heatmap(traj, k: int, show_steps: list[int] | None = None, ax=None):
    """c_n of class k (rows: steps, columns: the class's common then distinct tokens), Fig. 4 style."""
    spec = traj.spec
    toks = spec.common[k] + spec.distinct[k]
    idx = [traj.steps.index(s) for s in (show_steps or traj.steps) if s in traj.steps]
    img = traj.c[idx][:, k, toks].numpy()
    if ax is None:
        ax = Figure(figsize=(5.2, 0.32 * len(idx) + 1.2), layout="constrained").subplots()
    im = ax.imshow(img, aspect="auto", cmap="viridis")
    ax.axvline(len(spec.common[k]) - 0.5, color="w", ls="--", lw=1)
    ax.set_yticks(range(len(idx)), [f"step {traj.steps[i]}" for i in idx], fontsize=7)
    ax.set_xticks(range(len(toks)), toks, fontsize=6, rotation=90)
    ax.set_xlabel("token id (common | distinct, P rising)")
    ax.set_title(f"c_n, class {k} (query {spec.queries[k]}, next {spec.nexts[k]})", fontsize=9)
    ax.figure.colorbar(im, ax=ax, fraction=0.04)
    return ax


def _fig_entropy(traj, out):
    fig, ax = _subplots(figsize=(5.5, 3.2))
    s = np.asarray(traj.steps, dtype=float)
    x = np.maximum(s, 0.5)
    ax.plot(x, traj.entropy.mean(1).numpy(), label="entropy of c_n (all tokens)")
    ax.plot(x, traj.distinct_entropy.mean(1).numpy(), label="entropy on distinct tokens (Fig. 6 metric)")
    ax.axvline(max(out["t0"], 0.5), color="k", ls="--", lw=1, label=f"predicted t0 = {out['t0']:.3g}")
    ax.axvline(max(out["snap_step"], 0.5), color="r", ls=":", lw=1, label=f"measured snap = {out['snap_step']:g}")
    ax.set_xscale("log")
    ax.set_xlabel("step (0 drawn at 0.5)")
    ax.set_ylabel("nats (mean over classes)")
    legend(ax, fontsize=7)
    return fig


def _fig_z(traj, k=0):
    spec = traj.spec
    z = traj.z_of_class(k).numpy()
    P = spec.P()[k].numpy()
    fig, ax = _subplots(figsize=(5.5, 3.2))
    cmap = matplotlib.colormaps["plasma"]
    pmax = P[spec.distinct[k]].max()
    for l in spec.distinct[k]:
        ax.plot(traj.steps, z[:, l], color=cmap(P[l] / pmax * 0.9))
    for l in spec.common[k]:
        ax.plot(traj.steps, z[:, l], color="0.6", lw=0.8)
    step_axis(ax, traj.steps)  # log-spaced recordings: symlog; evenly spaced: linear
    ax.set_xlim(left=0)
    ax.set_ylabel("z_ml")
    ax.set_title(f"z trajectories, class {k}: distinct (colour = P(l|n)), common (grey)", fontsize=9)
    return fig


def _fig_chi(out):
    fig, ax = _subplots(figsize=(5.5, 3.2))
    t = np.asarray(out["steps"], dtype=float)
    ax.plot(t, out["chi_measured"], "o-", ms=3, label="measured e^{2 dz} (top distinct token)")
    ax.plot(t, out["chi_predicted"], "--", label="Thm 4 chi(t)")
    ax.axvline(out["t0"], color="k", ls=":", lw=1)
    step_axis(ax, list(out["steps"]))
    ax.set_xlim(left=0)
    ax.set_yscale("log")
    ax.set_ylabel("chi")
    legend(ax, fontsize=7)
    return fig


def _fig_recall(traj, thresholds):
    fig, ax = _subplots(figsize=(5.5, 3.2))
    rec = traj.recall(torch.as_tensor(thresholds))
    idx = sorted(set(np.linspace(0, len(traj.steps) - 1, 4).round().astype(int).tolist()))
    for i in idx:
        ax.plot(thresholds, rec[i].numpy(), label=f"step {traj.steps[i]}")
    ax.axvline(1 / traj.spec.M, color="k", ls=":", lw=1, label="1/M")
    ax.set_xscale("log")
    ax.set_xlabel("threshold on c_{l|n}")
    ax.set_ylabel("recall of distinct tokens")
    legend(ax, fontsize=7)
    return fig


def _fig_empirical(traj, emp_steps, emp, k=0):
    """Final-step c_n (long-sequence limit) against the probe batch's empirical composition, class k."""
    spec = traj.spec
    s = emp_steps[-1]
    c = traj.c[traj.steps.index(s), k].numpy()
    e = emp[-1, k].numpy()
    toks = spec.common[k] + spec.distinct[k]
    fig, ax = _subplots(figsize=(6.5, 3.0))
    x = np.arange(len(toks))
    ax.bar(x - 0.2, c[toks], 0.4, label="c_n (long-sequence limit, from Z)")
    ax.bar(x + 0.2, e[toks], 0.4, label="probe batch (last query row)")
    ax.set_xticks(x, toks, fontsize=6, rotation=90)
    ax.set_xlabel("token id (common | distinct)")
    ax.set_title(f"class {k}, step {s}", fontsize=9)
    legend(ax, fontsize=7)
    return fig


def _fig_loss(rows):
    fig, ax = _subplots(figsize=(5.5, 2.8))
    ax.semilogy([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    return fig


THRESHOLDS = np.geomspace(1e-3, 0.5, 60)


def analyze(run_dir: Path, out_dir: Path | None = None, view_steps: int = 4) -> dict:
    """Write metrics.json and report.html for a Scan&Snap run; return the metrics."""
    store = RunStore(run_dir)
    out_dir = Path(out_dir or run_dir)
    cfg = store.read_config()
    traj = trajectory(store)
    rec = Recording(store)
    out = checks(traj, cfg)
    rows = store.read_metrics()
    metrics = {
        "regime": out["regime"], "known_failures": out["known_failures"], "checks": out["rows"],
        "t0": out["t0"], "t0_flow": out["t0_flow"], "snap_step": out["snap_step"],
        "snap_step_theory": out["snap_step_theory"], "final_loss": rows[-1]["loss"] if rows else None,
        "final_entropy": traj.entropy[-1].tolist(), "final_distinct_entropy": traj.distinct_entropy[-1].tolist(),
        "steps": traj.steps, "entropy": traj.entropy.tolist(), "distinct_entropy": traj.distinct_entropy.tolist(),
        "final_c_n": traj.c[-1].tolist(),
        "recall_thresholds": THRESHOLDS.tolist(), "final_recall": traj.recall(torch.as_tensor(THRESHOLDS))[-1].tolist(),
    }
    emp = None
    if "blocks.0.pattern" in rec.keys():
        emp_steps, emp = empirical_trajectory(store)
        tv = total_variation(emp[-1], traj.c[-1])
        metrics["final_tv_probe_vs_c_n"] = tv.tolist()
    atomic_write_json(out_dir / "metrics.json", metrics)

    rep = Report(f"Scan&Snap analysis: {Path(run_dir).name}")
    rep.p(f"Regime: {out['regime_text']}; {out['regime']['steps']} steps; M = {traj.spec.M}, K = {traj.spec.K}.")
    for note in out["known_failures"]:
        rep.note("Known failure regime — " + note)
    rep.h2("Measured vs predicted")
    rep.table(out["rows"])
    rep.h2("Attention composition c_n over time")
    for k in range(min(traj.spec.K, 2)):
        fig, ax = _subplots(figsize=(5.6, 0.3 * len(traj.steps) + 1.3))
        composition_heatmap(traj, k, ax=ax)
        rep.figure(fig, f"c_n of class {k} at every recorded step (long-sequence limit from the recorded Z)")
    rep.figure(_fig_entropy(traj, out),
               "Entropy of c_n against step; dashed: predicted snap t0 (in steps); dotted: measured snap")
    rep.figure(_fig_z(traj), "z_ml(t) for the query of class 0")
    rep.figure(_fig_chi(out), "chi(t): measured against Thm 4 (steps mapped to gradient-flow time for SGD momentum)")
    rep.figure(_fig_recall(traj, THRESHOLDS), "Recall (Figs. 11-12): fraction of distinct tokens with c_{l|n} above a threshold")
    if emp is not None:
        T = int(rec.at(traj.steps[0])["probe.tokens"].shape[1])
        rep.figure(_fig_empirical(traj, emp_steps, emp),
                   f"Long-sequence c_n against the recorded probe attention (T = {T}; the limit is exact as T -> inf). "
                   f"TV distance per class: {', '.join(f'{v:.3f}' for v in metrics['final_tv_probe_vs_c_n'])}")
    if rows:
        rep.figure(_fig_loss(rows), "Training loss")
    if rec.steps and "blocks.0.pattern" in rec.keys():
        idx = sorted(set(np.linspace(0, len(rec.steps) - 1, view_steps).round().astype(int).tolist()))
        steps = [rec.steps[i] for i in idx]
        pats = torch.stack([rec.at(s)["blocks.0.pattern"][0, 0] for s in steps])
        tokens = rec.at(steps[0])["probe.tokens"][0].tolist()
        rep.h2("Probe attention (circuitsvis)")
        rep.circuitsvis(attention_steps_view(pats, tokens, steps, max_tokens=48),
                        "First probe sequence, last 48 positions; one panel per step (the query is the last row).")
    rep.save(out_dir / "report.html")
    return metrics
