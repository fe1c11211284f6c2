"""Figures and the report.html of :class:`sslens.analyses.series.SeriesResult` (small multiples over steps).

Every plot returns a :class:`sslens.analyses.figures.NotebookFigure` (a ``matplotlib.figure.Figure``: no backend
switching, no pyplot state), so it shows inline in a notebook and embeds in a :class:`sslens.analyses.report.Report`.
Readable at 1280 px: at most ``MAX_COLS`` panels a row, so the report embeds them unscaled at ``FIGURE_DPI`` with
titles of ``TITLE_PT`` (10 pt on screen and more); steps on a linear axis when evenly spaced, else log
(``report.step_axis``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from matplotlib.figure import Figure

from sslens.analyses.figures import NotebookFigure
from sslens.analyses.head_metrics import RANK_METRICS
from sslens.analyses.report import LABEL_PT, LEGEND_PT, TITLE_PT, legend, step_axis

WHAT = ("events", "rank", "attention", "scores", "composition", "rel_change", "key_mass", "condensation")
WEIGHT_PLOTS = ("rank", "composition", "rel_change", "condensation")  # plots of weight metrics only
FIGURE_DPI = 80  # the report's figures: text layout dominates render time


MAX_COLS = 3  # panels per row: a figure stays <= ~11 in wide, so the report shows it unscaled (readable text)
REL_CHANGE_TOP = 8  # the relative-change plot labels this many parameters (largest final change); the rest grey


def _panels(rows: int, cols: int, w: float, h: float, title: str):
    """A :class:`NotebookFigure` with ``rows x cols`` axes of ``w x h`` inches and a suptitle."""
    fig = NotebookFigure(figsize=(w * cols, h * rows + 0.5), layout="constrained")
    fig.suptitle(title, fontsize=TITLE_PT)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _style(ax, title: str, steps: Sequence[int] | None = None) -> None:
    ax.set_title(title, fontsize=TITLE_PT)
    ax.tick_params(labelsize=LABEL_PT)
    if steps is not None:
        step_axis(ax, steps)


def _grid(res, metrics: Sequence[str], title: str) -> Figure:
    """Per layer a block of panels (one per metric, at most ``MAX_COLS`` a row); one line per head."""
    L = max(res.n_layers, 1)
    cols = min(len(metrics), MAX_COLS)
    per_layer = -(-len(metrics) // cols)
    fig, axes = _panels(L * per_layer, cols, 3.6, 2.5, title)
    x = res.steps
    for l in range(L):
        for j, m in enumerate(metrics):
            ax = axes[l * per_layer + j // cols][j % cols]
            v = res.head[m][:, l] if m in res.head else torch.full((len(x), res.n_heads), float("nan"))
            for h in range(res.n_heads):
                ax.plot(x, v[:, h].numpy(), lw=1.2, label=f"H{res._H(h)}")
            _style(ax, f"L{res._L(l)} {m}", x)
        for j in range(len(metrics), per_layer * cols):
            axes[l * per_layer + j // cols][j % cols].set_visible(False)
    if res.n_heads <= 12:
        axes[0][-1].legend(fontsize=LEGEND_PT, ncol=2)  # the first row is always full
    return fig


def plot(res, what: str = "rank", metrics: Sequence[str] | None = None, step: int | None = None) -> Figure:
    """One Figure of ``res`` (see :data:`WHAT`)."""
    from sslens.errors import SslensError

    if what == "events":
        return events_timeline(res)
    if what == "rank":
        return _grid(res, metrics or [f"{c}.{m}" for c in ("QK", "OV") for m in RANK_METRICS],
                     f"{res.name}: QK and OV rank metrics per layer and head")
    if what == "attention":
        return _grid(res, metrics or ["entropy"], f"{res.name}: attention entropy on the probe (nats)")
    if what == "scores":
        return _grid(res, metrics or ["previous_token", "induction", "qk_eig", "ov_eig"],
                     f"{res.name}: previous-token, induction (prefix-matching), QK / OV eigenvalue scores")
    if what == "composition":
        modes = list(res.composition.items())
        fig, axes = _panels(1, max(len(modes), 1), 3.6, 3.0, f"{res.name}: head composition (top pairs at the end)")
        for ax, (mode, v) in zip(axes[0], modes):
            flat = v.reshape(len(res.steps), -1)
            top = torch.topk(torch.nan_to_num(flat[-1]), min(6, flat.shape[1])).indices.tolist()
            H, L = res.n_heads, res.n_layers
            for j in top:
                l1, h1, l2, h2 = j // (H * L * H), j // (L * H) % H, j // H % L, j % H
                ax.plot(res.steps, flat[:, j].numpy(), lw=1.2,
                        label=f"L{res._L(l1)}H{res._H(h1)}->L{res._L(l2)}H{res._H(h2)}")
            _style(ax, f"{mode}-composition", res.steps)
            ax.legend(fontsize=LEGEND_PT - 1)
        return fig
    if what == "rel_change":
        fig, axes = _panels(1, 1, 7.5, 3.6, f"{res.name}: relative change ||W_t - W_0||_F / ||W_0||_F")
        ax = axes[0][0]
        final = {k: float(torch.nan_to_num(v[-1], nan=-1.0)) for k, v in res.rel_change.items()}
        top = sorted(final, key=final.get, reverse=True)[:REL_CHANGE_TOP]
        for k, v in res.rel_change.items():  # the rest first, thin and grey, under the labelled ones
            if k not in top:
                ax.plot(res.steps, v.numpy(), lw=0.8, color="0.75")
        colors = [f"C{i}" for i in range(10) if i != 7]  # tab10 without its grey (C7)
        for k, c in zip(top, colors):
            ax.plot(res.steps, res.rel_change[k].numpy(), lw=1.5, label=k, color=c)
        rest = len(res.rel_change) - len(top)
        _style(ax, f"top {len(top)} parameters by final change" + (f" ({rest} more in grey)" if rest else ""), res.steps)
        if top:
            legend(ax, fontsize=LEGEND_PT)
        return fig
    if what == "key_mass":
        i = -1 if step is None else min(range(len(res.steps)), key=lambda j: abs(res.steps[j] - step))
        toks = res.top_key_tokens(12)
        L = max(res.n_layers, 1)
        cols = min(L, 2)
        fig, axes = _panels(-(-L // cols), cols, 1 + 0.42 * max(len(toks), 1), 0.3 * res.n_heads + 1.6,
                            f"{res.name}: attention mass by key token, step {res.steps[i]}")
        for ax in axes.flat[L:]:
            ax.set_visible(False)
        if res.key_mass is not None:
            idx = [res.key_tokens.index(t) for t in toks]
            for l, ax in zip(range(L), axes.flat):
                ax.imshow(res.key_mass[i, l][:, idx].numpy(), aspect="auto", cmap="viridis", vmin=0)
                ax.set_xticks(range(len(toks)), [str(t) for t in toks], fontsize=LABEL_PT - 1, rotation=90)
                ax.set_yticks(range(res.n_heads), [f"H{res._H(h)}" for h in range(res.n_heads)], fontsize=LABEL_PT - 1)
                ax.set_title(f"L{res._L(l)}", fontsize=TITLE_PT)
        return fig
    if what == "condensation":
        from sslens.analyses.condensation import MAX_NEURONS, plot_cosine, reordered_cosine

        pairs = [(l, s, W) for l, d in sorted(res.neurons.items()) for s, W in sorted(d.items())]
        cols = min(max(len(pairs), 1), MAX_COLS)
        fig, axes = _panels(-(-max(len(pairs), 1) // cols), cols, 3.4, 3.2, f"{res.name}: MLP condensation")
        for ax in axes.flat[len(pairs):]:
            ax.set_visible(False)
        for ax, (l, s, W) in zip(axes.flat, pairs):
            n = W.shape[0]
            plot_cosine(reordered_cosine(W, MAX_NEURONS)[0], ax,
                        f"L{l} MLP neurons, step {s}" + (f" ({MAX_NEURONS} of {n}, largest norm)" if n > MAX_NEURONS else ""))
            ax.title.set_fontsize(TITLE_PT)
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


def events_timeline(res, max_rows: int = 12) -> NotebookFigure:
    """The loss (model-level series) above one row per head with events: each event a bar from start to end."""
    fig = NotebookFigure(figsize=(12, 5))
    ax_l, ax_e = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1.4])
    x = res.steps
    for j, (k, v) in enumerate(res.scalars.items()):
        ax_l.plot(x, v.numpy(), lw=1.5, label=k, color=f"C{j}")
    for e in (e for e in res.events if e["layer"] is None):
        ax_l.axvspan(e["start"], e["end"], color="0.85", zorder=0)
    if res.scalars:
        ax_l.legend(fontsize=LEGEND_PT)
    ax_l.set_ylabel("loss", fontsize=LABEL_PT)
    rows: dict[str, list] = {}
    for e in res.events:
        if e["layer"] is not None and e["head"] is not None and "." not in e["metric"]:
            rows.setdefault(f"L{e['layer']}H{e['head']}", []).append(e)
    names = sorted(rows, key=lambda r: min(e["start"] for e in rows[r]))[:max_rows]
    kinds = sorted({e["metric"] for r in names for e in rows[r]})
    for i, r in enumerate(names):
        for e in rows[r]:
            c = f"C{kinds.index(e['metric']) % 10}"
            ax_e.plot([e["start"], e["end"]], [i, i], lw=5, color=c, solid_capstyle="butt", alpha=0.8)
            ax_e.annotate("↑" if e["after"] > e["before"] else "↓", ((e["start"] + e["end"]) / 2, i),
                          ha="center", va="center", fontsize=LABEL_PT)
    ax_e.set_yticks(range(len(names)), names, fontsize=LABEL_PT)
    ax_e.set_ylim(-0.7, max(len(names), 1) - 0.3)
    ax_e.invert_yaxis()
    for j, k in enumerate(kinds):
        ax_e.plot([], [], lw=5, color=f"C{j % 10}", label=k)
    if kinds:
        ax_e.legend(fontsize=LEGEND_PT, loc="center left", bbox_to_anchor=(1.0, 0.5))
    step_axis(ax_e, x)
    ax_e.tick_params(labelsize=LABEL_PT)
    ax_l.tick_params(labelsize=LABEL_PT)
    fig.suptitle(f"{res.name}: events next to the loss", fontsize=TITLE_PT)
    fig.subplots_adjust(left=0.08, right=0.8, hspace=0.15)
    return fig


def summary(results: list) -> dict:
    """metrics.json's top-level ``events``, ``heads``, ``composition_edges`` and ``checks`` (all results, in order)."""
    return {"events": [e for r in results for e in r.events], "heads": [h for r in results for h in r.labels],
            "composition_edges": [e for r in results for e in r.edges], "checks": [c for r in results for c in r.checks]}


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
        if r.events:
            fig(r, "events", "timeline of events: which heads changed when, next to the loss (change-point rule: "
                             "docs/analysis.md, Events)")
            big = sorted(r.events, key=lambda e: (e["layer"] is not None, -abs(e["after"] - e["before"])))[:20]
            rep.table([{k: (round(v, 4) if isinstance(v, float) else ("" if v is None else v)) for k, v in e.items()}
                       for e in sorted(big, key=lambda e: e["start"])],
                      f"the largest events ({len(r.events)} in all in metrics.json)")
        else:
            rep.note("No events: no series changed abruptly (docs/analysis.md, Events).")
        if r.labels:
            rep.table([{**h, "score": round(h["score"], 3), "baseline": round(h["baseline"], 3)} for h in r.labels],
                      "head labels: score at the last step above max(first step, uniform-attention null) + "
                      "1/4 of the way to 1 (docs/analysis.md, Head labels)")
        if r.checks:
            from sslens.analyses.checks import table_rows

            rep.table(table_rows(r.checks), "theory checks on this model, each with its measured assumption "
                                            "('outside' where it does not hold; docs/analysis.md, Theory checks)")
        if r.edges:
            rep.table([{**e, "score": round(e["score"], 3), "baseline": round(e["baseline"], 3)} for e in r.edges],
                      "composition edges above their random-weights baseline (mean + 3 sd)")
        rep.table([{"head": f"L{x.pop('layer')}H{x.pop('head')}", **x} for x in r.final()],
                  f"every head metric at step {r.steps[-1]} (layer L, head H)")
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
        got = metrics() if metrics is not None else {"series": [r.to_json() for r in results]}
        atomic_write_json(out / json_name, {**summary(results), **got})
        rep.save(out / html_name)
    finally:
        rep.stop_figures()
    return out / json_name, out / html_name
