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
