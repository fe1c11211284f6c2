"""Model kind "standard": a plain TransformerLens language model.

E.g. the 1-layer model of Scan&Snap's real-data experiments (docs/theory.md §1.4: the PyTorch tutorial
model). TransformerLens blocks are pre-LN; the tutorial model is post-LN: sslens uses pre-LN (documented
difference). ``pos=False`` zeroes and freezes W_pos (no positional encoding).
"""

from __future__ import annotations

import torch

from sslens import compat
from sslens.compat import HookedModel as HookedTransformer  # the installed line's model class
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
    cfg = dict(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads, d_mlp=d_mlp, d_vocab=d_vocab,
        n_ctx=n_ctx, act_fn=act_fn, normalization_type=normalization_type, dtype=DTYPES[dtype], device="cpu",
        default_prepend_bos=False, model_name="sslens-standard",
    )
    model = compat.build_from_config(cfg)
    P = compat.params(model)  # 3.x names and layouts on both lines
    if generator is not None:  # re-draw TL's default init from the run's generator (reproducible)
        std = model.cfg.initializer_range
        with torch.no_grad():
            for name, p in P.items():
                if p.dim() >= 2:
                    p.copy_(torch.empty(p.shape, dtype=p.dtype).normal_(0.0, std, generator=generator))
    if not pos:
        with torch.no_grad():
            P["pos_embed.W_pos"].zero_()
        compat.leaves(model)["pos_embed.W_pos"].requires_grad_(False)
    model.sslens_config = standard_config(d_vocab, n_layers, d_model, n_heads, d_mlp, n_ctx, pos, act_fn,
                                          normalization_type, dtype)
    model.sslens_trainable = [n for n, p in compat.leaves(model).items() if p.requires_grad]
    return model
