"""The paper's Fig. 1-2 quantities of any 1- or 2-layer anchor-task run (docs/theory.md §2.4).

From its checkpoints, the two parameter groups of docs/rank_collapse.md ("Anchor task at width") --
attention = W_Q, W_K of every layer; outer = W_V, W_in, W_out (and W_O where it is trained) of every layer.

Per checkpoint: relative change ||W_t - W_0||_F / ||W_0||_F and Frobenius norm of each group, effective rank
of W_Q W_K^T (last layer) and of W_in (first layer), adjacent-checkpoint stability |cos(u1_t, u1_t+1)| of
their top left singular vectors; stage onsets t1 (outer) and t2 (attention) by ``boundary`` (checkpoints) and
``onset`` (interpolated between checkpoints: t1_interp, t2_interp); cosine
matrices (reordered by the principal eigenvector) of W_in's hidden units and of W_Q's columns at the
snapshots 0, t1, t2 and the last step; accuracy of the last checkpoint on fresh sequences.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sslens.analyses import rank
from sslens.analyses.condensation import relative_change, reordered_cosine, top_singular_stability
from sslens.analyses.rank_collapse import boundary, onset
from sslens.store import RunStore
from sslens.tasks import analysis_task as build_task  # a run's config is not trusted to name files

ATTN = ("attn.W_Q", "attn.W_K")
OUTER = ("attn.W_V", "attn.W_O", "mlp.W_in", "mlp.W_out")


def _groups(t: dict, moving: set[str]) -> tuple[torch.Tensor, torch.Tensor]:
    pick = lambda ends: torch.cat([t[k].double().flatten() for k in sorted(t) if k.endswith(ends) and k in moving])  # noqa: E731
    return pick(OUTER), pick(ATTN)


def anchor_metrics(run_dir: str | Path, n_eval: int = 2048) -> dict:
    """Fig. 1-2 series of an anchor-task run (lists aligned with ``steps``; see the module docstring)."""
    store = RunStore(run_dir)
    steps = store.checkpoint_steps()
    T = [{k: v for k, v in store.load_checkpoint(s)[0].items() if k.startswith("model.blocks.")} for s in steps]
    moving = {k for k in T[0] if not torch.equal(T[0][k], T[-1][k])}  # frozen W_O (paper's model) left out
    layers = sorted({int(k.split(".")[2]) for k in T[0]})
    last, first = layers[-1], layers[0]
    G = [_groups(t, moving) for t in T]
    QK = torch.stack([t[f"model.blocks.{last}.attn.W_Q"][0].double() @ t[f"model.blocks.{last}.attn.W_K"][0].double().T
                      for t in T])
    W_in = torch.stack([t[f"model.blocks.{first}.mlp.W_in"].double() for t in T])
    out = {"steps": steps, "n_layers": len(layers)}
    out["rel_change_outer"] = [relative_change(o, G[0][0]) for o, _ in G]
    out["rel_change_attn"] = [relative_change(a, G[0][1]) for _, a in G]
    out["norm_outer"] = [o.norm().item() for o, _ in G]
    out["norm_attn"] = [a.norm().item() for _, a in G]
    out["effective_rank_QK"] = rank.effective_rank(QK).tolist()
    out["effective_rank_W_in"] = rank.effective_rank(W_in).tolist()
    out["stability_QK"] = top_singular_stability(list(QK))
    out["stability_W_in"] = top_singular_stability(list(W_in))
    out["t1"], out["t2"] = boundary(steps, out["rel_change_outer"]), boundary(steps, out["rel_change_attn"])
    out["t1_interp"], out["t2_interp"] = onset(steps, out["rel_change_outer"]), onset(steps, out["rel_change_attn"])
    snaps = sorted({steps[0], out["t1"], out["t2"], steps[-1]})
    out["snapshots"] = snaps
    out["cos_W_in"] = [reordered_cosine(W_in[steps.index(s)].T)[0].tolist() for s in snaps]
    out["cos_W_Q"] = [reordered_cosine(T[steps.index(s)][f"model.blocks.{last}.attn.W_Q"][0].double().T)[0].tolist()
                      for s in snaps]
    cfg = store.read_config()
    tokens, target = build_task(cfg["task"]).batch(n_eval, torch.Generator().manual_seed(4321))
    with torch.no_grad():
        pred = store.load_model(steps[-1])(tokens)[:, -1].argmax(-1)
    out["accuracy"] = (pred == target).double().mean().item()
    loss = {r["step"]: r["loss"] for r in store.read_metrics()}
    out["loss"] = [loss.get(s, float("nan")) for s in steps]
    return out


def band(ax, steps, series: list[list[float]], label: str, **kw) -> None:
    """Median line and min..max band over seeds."""
    v = np.asarray(series, dtype=float)
    (line,) = ax.plot(steps[: v.shape[1]], np.median(v, 0), label=label, **kw)
    ax.fill_between(steps[: v.shape[1]], v.min(0), v.max(0), alpha=0.25, color=line.get_color())


def fig1(ms: list[dict], title: str):
    """Fig. 1 panels with bands over seeds.

    Relative change of both groups (stage-2 onset t2 marked), effective rank of both groups, Frobenius norms.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.2), layout="constrained")
    ax = fig.subplots(1, 3)
    s = ms[0]["steps"]
    band(ax[0], s, [m["rel_change_outer"] for m in ms], "outer")
    band(ax[0], s, [m["rel_change_attn"] for m in ms], "attention (W_Q, W_K)")
    ax[0].axvline(float(np.median([m["t2"] for m in ms])), color="k", ls=":", lw=1, label="stage-2 onset t2")
    ax[0].set_ylabel("||W_t - W_0||_F / ||W_0||_F")
    band(ax[1], s, [m["effective_rank_QK"] for m in ms], "W_Q W_K^T (last layer)")
    band(ax[1], s, [m["effective_rank_W_in"] for m in ms], "W_in (first layer)")
    ax[1].set_ylabel("effective rank")
    band(ax[2], s, [m["norm_outer"] for m in ms], "outer")
    band(ax[2], s, [m["norm_attn"] for m in ms], "attention")
    ax[2].set_yscale("log")
    ax[2].set_ylabel("Frobenius norm")
    for a in ax:
        a.set_xlabel("step")
        a.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def fig2(ms: list[dict], title: str):
    """Fig. 2 panels.

    Adjacent-checkpoint stability of the top singular vector of W_Q W_K^T and W_in (bands over seeds), and
    seed 0's reordered cosine matrices of W_in's hidden units and W_Q's columns at the snapshots.
    """
    from matplotlib.figure import Figure

    m0 = ms[0]
    k = len(m0["snapshots"])
    fig = Figure(figsize=(3 + 2.2 * k, 4.6), layout="constrained")
    gs = fig.add_gridspec(2, k + 1)
    ax = fig.add_subplot(gs[:, 0])
    s = m0["steps"][1:]
    band(ax, s, [m["stability_QK"] for m in ms], "W_Q W_K^T")
    band(ax, s, [m["stability_W_in"] for m in ms], "W_in")
    ax.set_xlabel("step")
    ax.set_ylabel("|cos(u1_t, u1_t+1)|")
    ax.legend(fontsize=7)
    for row, key, name in ((0, "cos_W_in", "W_in units"), (1, "cos_W_Q", "W_Q columns")):
        for j, (step, C) in enumerate(zip(m0["snapshots"], m0[key])):
            a = fig.add_subplot(gs[row, j + 1])
            a.imshow(np.asarray(C), cmap="RdBu_r", vmin=-1, vmax=1)
            a.set_title(f"{name}, step {step}", fontsize=7)
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle(title, fontsize=9)
    return fig
