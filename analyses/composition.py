"""Head composition in TransformerLens's sense (Elhage et al. 2021; docs/theory.md §3.5).

Q-, K- and V-composition scores between every pair of heads, equal to
``HookedTransformer.all_composition_scores`` (``transformer_lens.utils.composition_scores`` on
FactoredMatrix circuits). The series analyses compute them at every recorded step
(:mod:`sslens.analyses.series`). Scan&Snap's c_n, which that paper calls "composition", is in
:mod:`sslens.analyses.c_n`.
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from sslens.analyses.head_metrics import composition_scores, composition_scores_dense


def of_model(model) -> dict[str, Float[Tensor, "layer head layer head"]]:
    """{"Q", "K", "V"} -> scores of a model's current weights (as it holds them: ``model.W_Q`` ... ``W_O``)."""
    return composition_scores(model.W_Q.detach(), model.W_K.detach(), model.W_V.detach(), model.W_O.detach())


__all__ = ["composition_scores", "composition_scores_dense", "of_model"]
