"""Figures and the report.html of :class:`sslens.analyses.series.SeriesResult` (small multiples, log step axis).

Every plot returns a ``matplotlib.figure.Figure`` (no backend switching, no pyplot state), so it shows
inline in a notebook and embeds in a :class:`sslens.analyses.report.Report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from matplotlib.figure import Figure

from sslens.analyses.figures import NotebookFigure
from sslens.analyses.head_metrics import RANK_METRICS

WHAT = ("rank", "attention", "scores", "composition", "rel_change", "key_mass", "condensation")
WEIGHT_PLOTS = ("rank", "composition", "rel_change", "condensation")  # plots of weight metrics only
FIGURE_DPI = 80  # the report's figures: text layout dominates render time


def _log_x(ax, steps: Sequence[int]) -> None:
    from matplotlib.ticker import NullLocator

    ax.set_xscale("symlog", linthresh=1) if steps and min(steps) <= 0 else ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())  # minor log ticks cost seconds per figure and say little
    ax.set_xlabel("step", fontsize=7)


def _grid(res, metrics: Sequence[str], title: str) -> Figure:
    """Rows: layers; columns: metrics; one line per head."""
    L = max(res.n_layers, 1)
    fig = NotebookFigure(figsize=(2.9 * len(metrics), 2.1 * L + 0.4))
    axes = fig.subplots(L, len(metrics), squeeze=False)
    x = res.steps
    for l in range(L):
        for j, m in enumerate(metrics):
            ax = axes[l][j]
            v = res.head[m][:, l] if m in res.head else torch.full((len(x), res.n_heads), float("nan"))
            for h in range(res.n_heads):
                ax.plot(x, v[:, h].numpy(), lw=1, label=f"H{res._H(h)}")
            _log_x(ax, x)
            ax.set_title(f"L{res._L(l)} {m}", fontsize=8)
            ax.tick_params(labelsize=7)
    if res.n_heads <= 12:
        axes[0][-1].legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(hspace=0.6, wspace=0.35)
    return fig


def plot(res, what: str = "rank", metrics: Sequence[str] | None = None, step: int | None = None) -> Figure:
    """One Figure of ``res`` (see :data:`WHAT`)."""
    from sslens.errors import SslensError

    if what == "rank":
        return _grid(res, metrics or [f"{c}.{m}" for c in ("QK", "OV") for m in RANK_METRICS],
                     f"{res.name}: QK and OV rank metrics per layer (rows) and head (lines)")
    if what == "attention":
        return _grid(res, metrics or ["entropy"], f"{res.name}: attention entropy on the probe (nats)")
    if what == "scores":
        return _grid(res, metrics or ["previous_token", "induction", "qk_eig", "ov_eig"],
                     f"{res.name}: previous-token / prefix-matching scores and QK / OV eigenvalue scores")
    if what == "composition":
        fig = NotebookFigure(figsize=(3.2 * max(len(res.composition), 1), 2.6))
        axes = fig.subplots(1, max(len(res.composition), 1), squeeze=False)[0]
        for ax, (mode, v) in zip(axes, res.composition.items()):
            flat = v.reshape(len(res.steps), -1)
            top = torch.topk(torch.nan_to_num(flat[-1]), min(6, flat.shape[1])).indices.tolist()
            H, L = res.n_heads, res.n_layers
            for j in top:
                l1, h1, l2, h2 = j // (H * L * H), j // (L * H) % H, j // H % L, j % H
                ax.plot(res.steps, flat[:, j].numpy(), lw=1,
                        label=f"L{res._L(l1)}H{res._H(h1)}->L{res._L(l2)}H{res._H(h2)}")
            _log_x(ax, res.steps)
            ax.set_title(f"{mode}-composition (top pairs at the end)", fontsize=8)
            ax.legend(fontsize=6)
        return fig
    if what == "rel_change":
        fig = NotebookFigure(figsize=(5, 3))
        ax = fig.subplots()
        for k, v in res.rel_change.items():
            ax.plot(res.steps, v.numpy(), lw=1, label=k)
        _log_x(ax, res.steps)
        ax.set_ylabel("||W_t - W_0||_F / ||W_0||_F")
        if len(res.rel_change) <= 16:
            ax.legend(fontsize=6)
        return fig
    if what == "key_mass":
        i = -1 if step is None else min(range(len(res.steps)), key=lambda j: abs(res.steps[j] - step))
        toks = res.top_key_tokens(12)
        fig = NotebookFigure(figsize=(1 + 0.45 * max(len(toks), 1) * max(res.n_layers, 1), 2.8))
        axes = fig.subplots(1, max(res.n_layers, 1), squeeze=False)[0]
        if res.key_mass is not None:
            idx = [res.key_tokens.index(t) for t in toks]
            for l, ax in enumerate(axes):
                ax.imshow(res.key_mass[i, l][:, idx].numpy(), aspect="auto", cmap="viridis", vmin=0)
                ax.set_xticks(range(len(toks)), [str(t) for t in toks], fontsize=6, rotation=90)
                ax.set_yticks(range(res.n_heads), [f"H{res._H(h)}" for h in range(res.n_heads)], fontsize=6)
                ax.set_title(f"L{res._L(l)} attention mass by key token, step {res.steps[i]}", fontsize=8)
        return fig
    if what == "condensation":
        from sslens.analyses.condensation import plot_cosine, reordered_cosine

        pairs = [(l, s, W) for l, d in sorted(res.neurons.items()) for s, W in sorted(d.items())]
        fig = NotebookFigure(figsize=(2.8 * max(len(pairs), 1), 2.8))
        axes = fig.subplots(1, max(len(pairs), 1), squeeze=False)[0]
        for ax, (l, s, W) in zip(axes, pairs):
            plot_cosine(reordered_cosine(W)[0], ax, f"L{l} MLP neurons, step {s}")
        return fig
    raise SslensError("plot", f"unknown plot {what!r}", ", ".join(WHAT))


def pattern_view(res, layers: Sequence[int] | None = None, heads: Sequence[int] | None = None, max_panels: int = 48,
                 max_tokens: int = 48):
    """One circuitsvis ``attention_heads`` view: a panel per (layer, head, step) kept in ``res.patterns``."""
    import circuitsvis as cv

    if not res.patterns or res.probe is None:
        return None
    ids = res.layer_ids or list(range(res.n_layers))
    hids = res.head_ids or list(range(res.n_heads))
    layers = list(layers) if layers is not None else ids[:4]
    heads = list(heads) if heads is not None else hids[:8]
    panels, names = [], []
    for l in layers:
        for h in heads:
            for s in sorted(res.patterns):
                if l in res.patterns[s] and h in hids:
                    panels.append(res.patterns[s][l][hids.index(h)])
                    names.append(f"L{l}H{h} step {s}")
    if not panels:
        return None
    panels, names = panels[:max_panels], names[:max_panels]
    n = min(res.probe.shape[1], max_tokens)
    att = torch.stack(panels)[:, -n:, -n:].float()
    return cv.attention.attention_heads(attention=att, tokens=[str(t) for t in res.probe[0, -n:].tolist()],
                                        attention_head_names=names)


def write_report(results: list, out_dir: str | Path, title: str = "Series analysis", layers=None, heads=None,
                 json_name: str = "metrics.json", html_name: str = "report.html",
                 metrics: Callable[[], dict] | None = None, workers: int = 2) -> tuple[Path, Path]:
    """``metrics.json`` (every result's :meth:`to_json`, or ``metrics()``) and a self-contained ``report.html``.

    The figures are rendered on ``workers`` processes (``sslens.analyses.report.PngRenderer``), the forked one
    starting before metrics.json is written.
    """
    from sslens.analyses.report import Report
    from sslens.store import atomic_write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(title)

    def fig(r, what: str, caption: str) -> None:
        if what in r.rendered:  # already rendered from this result's data (the batched analysis' helper)
            rep.image(r.rendered[what], caption)
        else:
            panels = {"rank": 6, "scores": 4, "composition": 3}.get(what, 1) * max(r.n_layers, 1)
            rep.figure_later(lambda: plot(r, what), caption, dpi=FIGURE_DPI, cost=panels)

    for r in results:  # identical checkpoints first (sslens.integrity): a series may hold mislabelled copies
        for g in r.meta.get("duplicates", []):
            rep.note(f"DUPLICATES in {r.name}: steps {', '.join(map(str, g))} hold identical tensors")
    rep.note("Weights are analysed as the model holds them (no LayerNorm folding), cast to float64.")
    for r in results:
        rep.h2(f"{r.name}: {len(r.steps)} states, steps {r.steps[0]}..{r.steps[-1]}, "
               f"{r.n_layers} layers x {r.n_heads} heads")
        for n in r.notes:
            rep.note(n)
        rep.table(r.final(), f"every head metric at step {r.steps[-1]}")
        fig(r, "rank", "QK = W_Q W_K^T and OV = W_V W_O: effective rank (Roy & Vetterli), stable rank, "
                                    "top-1 energy per layer and head (docs/theory.md §3)")
        if not torch.isnan(r.head["entropy"]).all():
            fig(r, "attention", "attention entropy -sum a log(a + 1e-8) on the probe, per head")
            fig(r, "key_mass", "attention mass by key token on the probe (top tokens)")
        fig(r, "scores", "previous-token and prefix-matching (induction) scores (TransformerLens "
                                      f"head_detector patterns), QK/OV eigenvalue scores ({r.meta.get('eig_space', '-')} space)")
        if r.composition:
            fig(r, "composition", "Q/K/V composition scores (transformer_lens.utils.composition_scores)")
        if r.rel_change:
            fig(r, "rel_change", "relative change per parameter")
        if r.neurons:
            fig(r, "condensation", "MLP neurons' input-weight cosine matrix, reordered by the principal "
                                                "eigenvector (condensation, docs/theory.md §3)")
        v = pattern_view(r, layers, heads)
        if v is not None:
            rep.circuitsvis(v, "attention patterns on the first probe sequence (layer, head, step per panel)")
    rep.start_figures(workers)
    try:
        atomic_write_json(out / json_name, metrics() if metrics is not None else {"series": [r.to_json() for r in results]})
        rep.save(out / html_name)
    finally:
        rep.stop_figures()
    return out / json_name, out / html_name
