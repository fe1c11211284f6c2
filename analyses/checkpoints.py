"""Analyses over a checkpoint series of any HookedTransformer (``sslens analyze-checkpoints``).

Per checkpoint: rank metrics of QK = W_Q W_K^T and OV = W_V W_O per layer and head; attention entropy
-sum_j a_ij log(a_ij + 1e-8) on a probe batch, averaged over batch and query positions (Scan&Snap
Fig. 10's definition); the attention composition of the last query position (mass per token id, top 5);
condensation: relative change ||W_t - W_0||_F / ||W_0||_F of attention (W_Q, W_K, W_V, W_O) and MLP
(W_in, W_out) weights per layer, and the reordered cosine matrix of MLP neurons' input weights.

Probe: an sslens run's own task (its fixed probe generator) when the series is a run store, else seeded
random token ids (document: random tokens probe the circuits, not language).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from sslens.analyses import rank  # noqa: E402
from sslens.analyses.condensation import plot_cosine, relative_change, reordered_cosine  # noqa: E402
from sslens.analyses.report import Report, attention_steps_view  # noqa: E402
from sslens.checkpoints import Series  # noqa: E402
from sslens.hooks.recorder import circuits, probe_patterns  # noqa: E402
from sslens.store import atomic_write_json  # noqa: E402

RANKS = ("effective_rank", "stable_rank", "top1_energy")


def attention_entropy(pattern: torch.Tensor) -> torch.Tensor:
    """-sum_j a_ij log(a_ij + 1e-8), mean over batch and query positions: [head]."""
    return -(pattern * torch.log(pattern + 1e-8)).sum(-1).mean(dim=(0, 2))


def probe_for(series: Series, model, n: int = 4, seed: int = 0) -> torch.Tensor:
    task = getattr(series, "task", None)
    g = torch.Generator().manual_seed(seed)
    if task is not None:
        return task.batch(n, g)[0][:, : model.cfg.n_ctx]
    return torch.randint(0, model.cfg.d_vocab, (n, min(model.cfg.n_ctx, 32)), generator=g)


def groups(model) -> dict[str, torch.Tensor]:
    out = {}
    for l, b in enumerate(model.blocks):
        out[f"blocks.{l}.attn"] = torch.cat([b.attn.W_Q.flatten(), b.attn.W_K.flatten(), b.attn.W_V.flatten(), b.attn.W_O.flatten()]).detach()
        if not model.cfg.attn_only:
            out[f"blocks.{l}.mlp"] = torch.cat([b.mlp.W_in.flatten(), b.mlp.W_out.flatten()]).detach()
    return out


def analyze_series(series: Series, probe: torch.Tensor | None = None, progress: bool = True) -> dict:
    steps = series.steps
    res: dict = {"name": series.name, "steps": steps, "ranks": {}, "entropy": {}, "rel_change": {}, "top_tokens": []}
    first_groups, neurons, patterns = None, {}, []
    for step in tqdm(steps, disable=not progress, desc=f"checkpoints {series.name}", unit="ckpt"):
        model = series.load(step)
        if probe is None:
            probe = probe_for(series, model)
        with torch.no_grad():
            circ = circuits(model, token_space=False)
            pats = probe_patterns(model, probe)
        for name, mat in circ.items():
            for m in RANKS:
                res["ranks"].setdefault(f"{name}.{m}", []).append(rank.METRICS[m](mat).tolist())
        for name, p in pats.items():
            res["entropy"].setdefault(name, []).append(attention_entropy(p).tolist())
        last = pats[f"blocks.{model.cfg.n_layers - 1}.pattern"][:, :, -1, :].mean(1)  # [probe, k]
        mass = torch.zeros(probe.shape[0], model.cfg.d_vocab).scatter_add(1, probe, last.float()).mean(0)
        top = torch.topk(mass, min(5, mass.numel()))
        res["top_tokens"].append({"ids": top.indices.tolist(), "mass": top.values.tolist()})
        g = groups(model)
        first_groups = first_groups or g
        for k, v in g.items():
            res["rel_change"].setdefault(k, []).append(relative_change(v, first_groups[k]))
        if not model.cfg.attn_only and step in (steps[0], steps[-1]):
            neurons[step] = model.blocks[0].mlp.W_in.detach().T.clone()
        patterns.append(pats["blocks.0.pattern"][0, 0])
    res["_neurons"], res["_patterns"], res["_probe"] = neurons, patterns, probe
    return res


def report(results: list[dict], out_dir: Path) -> dict:
    out_dir = Path(out_dir)
    metrics = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    atomic_write_json(out_dir / "metrics.json", {"series": metrics})
    rep = Report("Checkpoint series analysis")
    for r in results:
        rep.h2(f"{r['name']}: {len(r['steps'])} checkpoints, steps {r['steps'][0]}..{r['steps'][-1]}")
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.2), layout="constrained")
        for key, vals in r["ranks"].items():
            if key.endswith("effective_rank"):
                v = torch.tensor(vals)
                for h in range(v.shape[1]):
                    axes[0].plot(r["steps"], v[:, h], label=f"{key.rsplit('.', 1)[0]}[{h}]")
        axes[0].set_ylabel("effective rank")
        axes[0].legend(fontsize=6)
        for key, vals in r["entropy"].items():
            v = torch.tensor(vals)
            for h in range(v.shape[1]):
                axes[1].plot(r["steps"], v[:, h], label=f"{key}[{h}]")
        axes[1].set_ylabel("attention entropy (nats)")
        axes[1].legend(fontsize=6)
        for key, vals in r["rel_change"].items():
            axes[2].plot(r["steps"], vals, label=key)
        axes[2].set_ylabel("||W_t - W_0|| / ||W_0||")
        axes[2].legend(fontsize=6)
        for a in axes:
            a.set_xlabel("step")
        rep.figure(fig, "QK/OV effective rank per layer and head; probe attention entropy; relative change of attention vs MLP weights")
        if r["_neurons"]:
            fig, axes = plt.subplots(1, len(r["_neurons"]), figsize=(3.3 * len(r["_neurons"]), 3.2), squeeze=False, layout="constrained")
            for ax, (s, W) in zip(axes[0], r["_neurons"].items()):
                plot_cosine(reordered_cosine(W)[0], ax, f"layer 0 MLP neurons, step {s}")
            rep.figure(fig, "Condensation: cosine similarity of MLP neurons' input weights, reordered by the principal eigenvector")
        idx = sorted({0, len(r["steps"]) // 2, len(r["steps"]) - 1})
        rep.circuitsvis(attention_steps_view(torch.stack([r["_patterns"][i] for i in idx]), r["_probe"][0].tolist(),
                                             [r["steps"][i] for i in idx], max_tokens=32),
                        "Layer 0 head 0 attention on the first probe sequence at the first, middle and last checkpoint")
    rep.save(out_dir / "report.html")
    return {"series": metrics}
