"""Analyses over a checkpoint series of any HookedTransformer (``sslens analyze-checkpoints``).

A thin layer over the one generic path (``sslens.analyses.series``): each checkpoint is loaded into one model,
``CircuitRecorder.record`` gives the dict a recording holds, and :func:`~sslens.analyses.series.analyze_states`
computes every metric (rank, entropy, detection and eigenvalue scores, composition, relative change,
condensation). Probe: the ``--probe`` tokens, an sslens run's own task, or repeated random token ids (random
tokens probe the circuits, not language); induction scores always use a repeated-random-tokens probe.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sslens.analyses.head_metrics import attention_entropy  # noqa: F401 - the repo's one entropy, re-exported
from sslens.analyses.series import SeriesResult, Views, analyze_states, checkpoint_source
from sslens.checkpoints import Series


def analyze_series(series: Series, probe: torch.Tensor | None = None, progress: bool | None = None,
                   views: Views | None = None, batched: bool = True, job=None, theory: bool = True) -> SeriesResult:
    """Every generic analysis over ``series`` (see :mod:`sslens.analyses.series`).

    A directory of state dicts of a plain HookedTransformer goes through the batched path
    (:func:`sslens.analyses.batched.analyze_stacked`, the same numbers); everything else, or ``batched=False``,
    one model load per checkpoint. ``job``: a :func:`sslens.analyses.batched.start_weights` process computing the
    weight metrics (started before TransformerLens is imported); closed here when unused. ``theory``: add the
    theory checks that need the model (:func:`sslens.analyses.own_checks.model_checks`).
    """
    res = None
    if batched:
        from sslens.analyses import batched as b

        if b.supported(series, probe):
            try:
                res = b.analyze_stacked(series, probe, views=views, progress=progress, job=job)
            except b.Unsupported:
                pass
    if res is None:
        if job is not None:
            job.close()
        res = analyze_states(checkpoint_source(series, probe), views=views, progress=progress)
    return add_model_checks(res, series) if theory else res


def add_model_checks(res: SeriesResult, series: Series) -> SeriesResult:
    """``res`` with the theory checks that need the model (docs/analysis.md, Theory checks), whichever path ran it."""
    if res.probe is not None:
        from sslens.analyses.own_checks import model_checks
        from sslens.analyses.series import own_threads

        res.checks += own_threads(model_checks)(series, res.probe)
    return res


def report(results: list[SeriesResult], out_dir: Path, layers=None, heads=None, workers: int = 2) -> dict:
    """``metrics.json`` and ``report.html`` in ``out_dir``; returns the metrics (figures on ``workers`` processes)."""
    from sslens.analyses.series_report import write_report

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # its 512 x 512 eigh (condensation view) spins for seconds with 2 threads on a busy machine
    metrics = {}

    def to_json() -> dict:  # while a forked helper renders the figures
        metrics["series"] = [r.to_json() for r in results]
        # groups of steps with identical tensors (sslens.integrity), over every series in order
        metrics["duplicates"] = [g for r in results for g in r.meta.get("duplicates", [])]
        return metrics

    try:
        write_report(results, out_dir, "Checkpoint series analysis", layers=layers, heads=heads, metrics=to_json,
                     workers=workers)
    finally:
        torch.set_num_threads(threads)
    return metrics
