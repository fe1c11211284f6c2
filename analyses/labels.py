"""Head labels and composition edges against stated baselines (docs/analysis.md "Head labels").

A head gets a label (``previous_token``, ``duplicate_token``, ``induction``: the TransformerLens ``head_detector``
kinds) when its score at the last recorded step clears the baseline by a quarter of the way to a perfect head:

    score >= baseline + CLEAR * (1 - baseline),   baseline = max(score at the first recorded step, null)

where the null is the score of a head attending uniformly to the keys it may see on the same probe (what random
weights at a small initialisation give: their attention logits are near zero). So a head whose score fell below
its initial value never gets a label, whatever its size. ``induction`` is never given in layer 0: an induction
head reads where the current token came before through a previous-token head of an earlier layer (K-composition);
a layer-0 head scoring high on the fixed-period probe attends by position alone. Composition edges (Q/K/V, ``transformer_lens``'s
composition scores) are reported against their random baseline: the mean + 3 standard deviations of the same
score between independent Gaussian weights of the same shapes (seeded, :data:`NULL_DRAWS` draws), with z raised
for the number of head pairs tested (:func:`composition_null`), and above the pair's score at the first step.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch
from jaxtyping import Int
from torch import Tensor

from sslens.metrics import DETECTIONS, composition_scores, detection_patterns, detection_scores

CLEAR = 0.25  # a label needs a quarter of the way from its baseline to a perfect head (score 1)
NULL_DRAWS = 16  # random-weight draws for the composition null
MAX_EDGES = 12


def uniform_null(tokens: Int[Tensor, "probe pos"]) -> dict[str, float]:
    """Detection scores of uniform causal attention on ``tokens`` (the small-init null of every head)."""
    P = tokens.shape[1]
    A = torch.tril(torch.ones(P, P, dtype=torch.float64))
    A = (A / A.sum(-1, keepdim=True)).expand(tokens.shape[0], 1, P, P)
    return {k: float(v[0]) for k, v in detection_scores(A, detection_patterns(tokens)).items()}


def head_labels(res) -> list[dict]:
    """``[{"layer", "head", "label", "score", "baseline"}]`` of a :class:`~sslens.analyses.series.SeriesResult`."""
    if res.probe is None or len(res.steps) < 2:
        return []
    null = uniform_null(res.probe)
    out = []
    for kind in DETECTIONS:
        v = res.head.get(kind)
        if v is None or torch.isnan(v).all():
            continue
        for li in range(res.n_layers):
            for hi in range(res.n_heads):
                col = v[:, li, hi]
                ok = ~torch.isnan(col)
                if ok.sum() < 2:
                    continue
                if kind == "induction" and res._L(li) == 0:
                    continue  # an induction head needs a previous-token head before it (K-composition)
                first, last = float(col[ok][0]), float(col[ok][-1])
                base = max(first, null[kind])
                if last >= base + CLEAR * (1 - base):
                    out.append({"layer": res._L(li), "head": res._H(hi), "label": kind, "score": last,
                                "baseline": base})
    return sorted(out, key=lambda r: (r["layer"], r["head"], -r["score"]))


def composition_null(n_layers: int, d_model: int, d_head: int, seed: int = 0, n_pairs: int = 1) -> dict[str, float]:
    """Mean + z std of Q/K/V composition between heads of independent Gaussian weights of these shapes.

    z = max(3, the normal quantile 1 - 0.01 / ``n_pairs``): over the ``n_pairs`` head pairs tested, about a 1 %
    chance of any random-level pair above it (a GPT-2-small-sized model has 9504 pairs per mode: z = 4.7).
    """
    z = max(3.0, NormalDist().inv_cdf(1 - 0.01 / max(n_pairs, 1)))
    g = torch.Generator().manual_seed(seed)
    vals = {m: [] for m in "QKV"}
    for _ in range(NULL_DRAWS):
        W = [torch.randn(2, 1, d_model, d_head, generator=g, dtype=torch.float64) for _ in range(3)]
        W_O = torch.randn(2, 1, d_head, d_model, generator=g, dtype=torch.float64)
        for m, s in composition_scores(*W, W_O).items():
            vals[m].append(float(s[0, 0, 1, 0]))
    return {m: (sum(v) / len(v)) + z * math.sqrt(sum((x - sum(v) / len(v)) ** 2 for x in v) / (len(v) - 1))
            for m, v in vals.items()}


def composition_edges(res) -> list[dict]:
    """``[{"mode", "from_layer", "from_head", "layer", "head", "score", "baseline"}]`` above the random baseline.

    At the last recorded step, strongest first (at most :data:`MAX_EDGES`).
    """
    d = res.meta.get("dims")
    if not res.composition or not d:
        return []
    L, H = res.n_layers, res.n_heads
    null = composition_null(2, d["d_model"], d["d_head"], n_pairs=H * H * L * (L - 1) // 2)
    out = []
    for mode, v in res.composition.items():
        last, first = v[-1], v[0]
        for l1 in range(res.n_layers):
            for h1 in range(res.n_heads):
                for l2 in range(l1 + 1, res.n_layers):
                    for h2 in range(res.n_heads):
                        s = float(last[l1, h1, l2, h2])
                        if s > null[mode] and (len(v) == 1 or s > float(first[l1, h1, l2, h2])):  # and it grew
                            out.append({"mode": mode, "from_layer": res._L(l1), "from_head": res._H(h1),
                                        "layer": res._L(l2), "head": res._H(h2), "score": s, "baseline": null[mode]})
    return sorted(out, key=lambda r: -r["score"])[:MAX_EDGES]
