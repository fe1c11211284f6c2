"""Model kind "standard": a plain TransformerLens language model.

E.g. the 1-layer model of Scan&Snap's real-data experiments (docs/theory.md §1.4: the PyTorch tutorial
model). TransformerLens blocks are pre-LN; the tutorial model is post-LN: sslens uses pre-LN (documented
difference). ``pos=False`` zeroes and freezes W_pos (no positional encoding).
"""

from __future__ import annotations

import warnings

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sslens.errors import choice
from sslens.models.scan_snap import DTYPES


def standard_config(d_vocab: int, n_layers: int = 1, d_model: int = 64, n_heads: int = 1, d_mlp: int = 256,
                    n_ctx: int = 64, pos: bool = True, act_fn: str = "relu", normalization_type: str | None = "LN",
                    dtype: str = "float32") -> dict:
    """The model config dict of :func:`standard` (kind ``standard``)."""
    return {"kind": "standard", "d_vocab": d_vocab, "n_layers": n_layers, "d_model": d_model, "n_heads": n_heads,
            "d_mlp": d_mlp, "n_ctx": n_ctx, "pos": pos, "act_fn": act_fn, "normalization_type": normalization_type,
            "dtype": dtype}


def standard(d_vocab: int, n_layers: int = 1, d_model: int = 64, n_heads: int = 1, d_mlp: int = 256, n_ctx: int = 64,
             pos: bool = True, act_fn: str = "relu", normalization_type: str | None = "LN", dtype: str = "float32",
             generator: torch.Generator | None = None) -> HookedTransformer:
    """A plain pre-LN HookedTransformer; ``generator`` redraws TL's init reproducibly; ``pos=False``: no W_pos."""
    choice(dtype, "dtype", tuple(DTYPES))
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads, d_mlp=d_mlp, d_vocab=d_vocab,
        n_ctx=n_ctx, act_fn=act_fn, normalization_type=normalization_type, dtype=DTYPES[dtype], device="cpu",
        default_prepend_bos=False, model_name="sslens-standard",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg)
    if generator is not None:  # re-draw TL's default init from the run's generator (reproducible)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, cfg.initializer_range, generator=generator)
    if not pos:
        with torch.no_grad():
            model.pos_embed.W_pos.zero_()
        model.pos_embed.W_pos.requires_grad_(False)
    model.sslens_config = standard_config(d_vocab, n_layers, d_model, n_heads, d_mlp, n_ctx, pos, act_fn,
                                          normalization_type, dtype)
    model.sslens_trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    return model
