"""Stage-1 (condensation) and stage-2 (key-query rank collapse) analyses of a rank-collapse run
(theory.md 2.2-2.3), read from the run's checkpoints.

Rules where the paper is silent (docs/rank_collapse.md):
- data for v and F: a fixed sample of ``n_data`` sequences from the run's task (generator seed 12345);
  X = W_E[tokens] (+ W_pos when the model has positions);
- W_V alignment: mean |cos| of W_V's columns with v (every stage-1 update of W_V is v^T (W1 W2)^T, so
  columns move along v) and of its rows with (W1 W2)^T;
- stage boundaries: t1 = first checkpoint where the outer weights' relative change
  ||W_t - W_0||_F/||W_0||_F (W_V, W1, W2 together) reaches half its final value; t2 = the same for the
  attention weights (W_Q, W_K). The two-stage picture predicts t1 < t2;
- escape time: first checkpoint where the loss falls below 90 % of its initial value.
"""

from __future__ import annotations

import numpy as np
import torch

from sslens.analyses import rank
from sslens.analyses.condensation import mean_abs_cos, relative_change
from sslens.store import RunStore
from sslens.tasks import build_task
from sslens.theory import rank_collapse as th

OUTER = ("W_V", "W1", "W2")
ATTN = ("W_Q", "W_K")


def weights(tensors: dict) -> dict:
    """Named matrices of the theory from a checkpoint's ``model.*`` tensors."""
    g = lambda k: tensors[f"model.{k}"].double()  # noqa: E731
    w = {"W_Q": g("blocks.0.attn.W_Q")[0], "W_K": g("blocks.0.attn.W_K")[0], "W_V": g("blocks.0.attn.W_V")[0],
         "W1": g("blocks.0.mlp.W_in")}
    w["W2"] = g("unembed.W_U")[:, 0] if g("unembed.W_U").shape[1] == 1 else g("blocks.0.mlp.W_out")
    return w


def data(store: RunStore, n_data: int = 2048):
    cfg = store.read_config()
    task = build_task(cfg["task"])
    tokens, target = task.batch(n_data, torch.Generator().manual_seed(12345))
    t0, _ = store.load_checkpoint(store.checkpoint_steps()[0])
    X = t0["model.embed.W_E"].double()[tokens]
    if "model.pos_embed.W_pos" in t0:
        X = X + t0["model.pos_embed.W_pos"].double()[: tokens.shape[1]]
    return X, target.double(), cfg


def stage_metrics(run_dir, n_data: int = 2048) -> dict:
    """Every stage-1/stage-2 quantity at every checkpoint (lists aligned with ``steps``)."""
    store = RunStore(run_dir)
    X, y, cfg = data(store, n_data)
    scalar = cfg["model"].get("head") == "scalar"
    steps = store.checkpoint_steps()
    Ws = [weights(store.load_checkpoint(s)[0]) for s in steps]
    out: dict = {"steps": steps, "scalar_head": scalar}
    loss = {r["step"]: r["loss"] for r in store.read_metrics()}
    out["loss"] = [loss.get(s, float("nan")) for s in steps]
    w0 = Ws[0]
    cat = lambda w, names: torch.cat([w[n].flatten() for n in names])  # noqa: E731
    out["rel_change_outer"] = [relative_change(cat(w, OUTER), cat(w0, OUTER)) for w in Ws]
    out["rel_change_attn"] = [relative_change(cat(w, ATTN), cat(w0, ATTN)) for w in Ws]
    QK = torch.stack([w["W_Q"] @ w["W_K"].T for w in Ws])
    out["norm_W_Q"] = [w["W_Q"].norm().item() for w in Ws]
    for name, mats in (("QK", QK), ("W_Q", torch.stack([w["W_Q"] for w in Ws])),
                       ("W_K", torch.stack([w["W_K"] for w in Ws])), ("W_V", torch.stack([w["W_V"] for w in Ws])),
                       ("W1", torch.stack([w["W1"] for w in Ws]))):
        for m in ("effective_rank", "stable_rank", "top1_energy"):
            out[f"{m}.{name}"] = rank.METRICS[m](mats).tolist()
    if scalar:
        v = th.target_direction(X, y)
        out["v"] = v.tolist()
        out["energy"] = [th.energy(v, w["W_V"], w["W1"], w["W2"]).item() for w in Ws]
        cons = [torch.cat(th.conservation(v, w["W_V"], w["W1"], w["W2"])) for w in Ws]
        scale = [cat(w, OUTER).pow(2).sum().item() for w in Ws]
        out["conservation_drift"] = [((c - cons[0]).abs().max() / max(s0, 1e-300)).item() for c, s0 in zip(cons, scale)]
        A = [th.sign_conditions(v, w["W_V"], w["W1"], w["W2"]) for w in Ws]
        out["A1"], out["A2"] = [a[0] for a in A], [a[1] for a in A]
        out["cos_WV_cols_v"] = [mean_abs_cos(w["W_V"].T, v) for w in Ws]
        out["cos_WV_rows_W1W2"] = [mean_abs_cos(w["W_V"], w["W1"] @ w["W2"]) for w in Ws]
        Fs = [th.stage2_F(X, y, w["W_V"], w["W1"], w["W2"]) for w in Ws]
        out["sigma1_F"] = [torch.linalg.svdvals(F)[0].item() for F in Fs]
        out["sigma_gap_F"] = [(lambda s: (s[0] / s[1]).item())(torch.linalg.svdvals(F)) for F in Fs]
        out["cos_QK_F"] = [rank.rank1_alignment(qk, *_uv(F)).item() for qk, F in zip(QK, Fs)]
    out["t1"], out["t2"] = boundary(steps, out["rel_change_outer"]), boundary(steps, out["rel_change_attn"])
    if scalar:
        F1 = Fs[steps.index(out["t1"])]  # F frozen once the outer weights have condensed (stage-2 premise)
        out["cos_QK_F_t1"] = [rank.rank1_alignment(qk, *_uv(F1)).item() for qk in QK]
    return out


def _uv(F):
    u, _, v = rank.top_singular_pair(F)
    return u, v


def boundary(steps: list[int], series: list[float], frac: float = 0.5) -> int:
    """First step where ``series`` reaches ``frac`` of its final value."""
    s = np.asarray(series)
    return int(steps[int(np.argmax(s >= frac * s[-1]))]) if s[-1] > 0 else steps[-1]


def growth_rate(steps: list[int], norms: list[float], lo: int, hi: int) -> float:
    """Slope of ln ||W_Q||_F against step between checkpoints ``lo`` and ``hi`` (least squares)."""
    t = np.asarray(steps, dtype=float)
    sel = (t >= lo) & (t <= hi)
    return float(np.polyfit(t[sel], np.log(np.asarray(norms)[sel]), 1)[0]) if sel.sum() >= 2 else float("nan")


def escape_step(steps: list[int], loss: list[float], frac: float = 0.9) -> float:
    """First checkpoint where the loss is below ``frac`` x its initial value (nan if never)."""
    l0 = loss[1] if np.isnan(loss[0]) else loss[0]
    for s, l in zip(steps, loss):
        if l < frac * l0:
            return float(s)
    return float("nan")


def loglog_slope(eps: list[float], t_esc: list[float], n_boot: int = 2000, seed: int = 0) -> dict:
    """Slope of log t_escape against log eps, with a 95 % bootstrap interval over the (eps, t) pairs."""
    x, y = np.log(np.asarray(eps)), np.log(np.asarray(t_esc))
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    slope = float(np.polyfit(x, y, 1)[0])
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(x), len(x))
        if len(set(x[i])) >= 2:
            boots.append(np.polyfit(x[i], y[i], 1)[0])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"slope": slope, "ci95": [float(lo), float(hi)], "n": int(len(x))}
