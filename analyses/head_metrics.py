"""Per-head metrics for the analyses: the definitions of :mod:`sslens.metrics` plus rank metrics of spectra.

Every per-head quantity (entropy, previous-token, duplicate-token and induction scores, eigenvalue scores,
composition, condensation, grouped-query repeat) is defined once, in :mod:`sslens.metrics` (a leaf below
``sslens.hooks``, so the recorder uses the same functions); this module re-exports them and adds the rank
metrics of singular values (``analyses/rank.py``, docs/theory.md §3).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from sslens.analyses import rank
from sslens.metrics import (  # noqa: F401 - re-exported: the one definition of each metric
    DETECTIONS,
    EIGEN_SCORES,
    HEAD_SCORES,
    OLD_NAMES,
    PATTERN_SCORES,
    attention_entropy,
    composition_scores,
    composition_scores_dense,
    condensation_index,
    cosine_matrix,
    detection_patterns,
    detection_scores,
    eigenvalue_score,
    factored_singular_values,
    key_token_mass,
    next_token_loss,
    ov_eig,
    pattern_scores,
    qk_eig,
    repeat_kv,
)

RANK_METRICS = ("effective_rank", "stable_rank", "top1_energy")


def rank_metrics(s: Float[Tensor, "... k"]) -> dict[str, Tensor]:
    """Effective rank (Roy & Vetterli), stable rank and top-1 energy from singular values ``s``.

    Reuses ``analyses/rank.py`` on diag(s) (whose singular values are s), so the definitions stay in one
    place (docs/theory.md §3).
    """
    D = torch.diag_embed(s.to(torch.float64).abs())
    return {m: rank.METRICS[m](D) for m in RANK_METRICS}
