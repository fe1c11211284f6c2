"""sslens.analyses.composition keeps TransformerLens's meaning: head composition scores."""

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sslens.analyses import composition


@pytest.mark.parametrize("extra", [{}, {"positional_embedding_type": "rotary", "normalization_type": "RMS"}])
def test_of_model_equals_all_composition_scores(extra):
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=3, d_model=32, n_heads=4, d_head=8, n_ctx=16, d_vocab=20, attn_only=True,
                                  **extra)
    model = HookedTransformer(cfg)
    got = composition.of_model(model)
    for mode in "QKV":
        want = model.all_composition_scores(mode)
        assert torch.allclose(got[mode], want.double(), atol=1e-5), mode  # sslens computes in float64
        assert got[mode][2, :, 0, :].abs().max() == 0  # a later layer never composes into an earlier one
    assert got["K"][0, :, 1, :].abs().max() > 0


def test_composition_scores_equal_transformer_lens_factored_route_to_1e12():
    """The Gram-matrix formula equals TransformerLens's composition_scores on FactoredMatrix circuits (float64)."""
    import torch
    from transformer_lens import FactoredMatrix
    from transformer_lens import utilities as tl_utils

    from sslens.metrics import composition_scores

    g = torch.Generator().manual_seed(1)
    L, H, dm, dh = 3, 2, 10, 4
    W_Q, W_K, W_V = (torch.randn(L, H, dm, dh, generator=g, dtype=torch.float64) for _ in range(3))
    W_O = torch.randn(L, H, dh, dm, generator=g, dtype=torch.float64)
    got = composition_scores(W_Q, W_K, W_V, W_O)
    QK, OV = FactoredMatrix(W_Q, W_K.transpose(-2, -1)), FactoredMatrix(W_V, W_O)
    for mode, right in (("Q", QK), ("K", QK.T), ("V", OV)):
        want = tl_utils.composition_scores(OV, right, broadcast_dims=True)
        later = torch.arange(L)[:, None, None, None] < torch.arange(L)[None, None, :, None]
        assert torch.allclose(got[mode], torch.where(later, want, torch.zeros_like(want)), atol=1e-12, rtol=0), mode
