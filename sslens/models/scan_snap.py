"""The Scan&Snap Y/Z model as a HookedTransformer (docs/theory.md §1.1).

One layer, one head, d_model = d_head = M, one-hot embeddings: W_E = W_K = W_V = W_O = I (frozen),
W_Q = Z (trainable, z_ml = logit of key l for query m), W_U = Y (trainable), W_pos = 0 and every
bias 0 (frozen), no attention scale. Permanent hooks: the query does not attend to itself, no
residual, the attention output is l2-normalised. Then

    b_t = softmax_t(z[m, x_t]) over t < T,   f = sum_t b_t e_{x_t},   logits = Y^T f / ||f||.

Loss: cross-entropy on the last position (``sslens.losses.last_token_ce``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from sslens import compat
from sslens.constants import INITS, Y_PARAM, Z_PARAM
from sslens.errors import choice, require

if TYPE_CHECKING:  # TransformerLens is imported only when a model is built (the count engine never builds one)
    from sslens.compat import HookedModel as HookedTransformer

DTYPES = {"float32": torch.float32, "float64": torch.float64}
SS_VARIANTS = ["no_self_attention", "no_residual", "l2_normalize_output"]
TRAINABLE = [Z_PARAM, Y_PARAM]


def scan_snap_config(M: int, n_ctx: int = 128, init: str = "zero", dtype: str = "float32") -> dict:
    """The sslens model config (a JSON-able dict) of the Y/Z model."""
    return {"kind": "scan_snap", "M": M, "n_ctx": n_ctx, "init": init, "dtype": dtype}


def hooked_config(M: int, n_ctx: int, dtype: torch.dtype) -> dict:
    """The HookedTransformerConfig fields: everything a config can say (built by :func:`sslens.compat.build_from_config`)."""
    return dict(
        n_layers=1,
        n_heads=1,
        d_model=M,
        d_head=M,
        d_vocab=M,
        d_vocab_out=M,
        n_ctx=n_ctx,
        attn_only=True,
        normalization_type=None,
        use_attn_scale=False,
        positional_embedding_type="standard",
        default_prepend_bos=False,
        act_fn=None,
        dtype=dtype,
        device="cpu",
        model_name="sslens-scan-snap",
    )


def init_Z_Y(M: int, init: str, generator: torch.Generator | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Z and Y at init: zeros (theory, Fig. 4) or nn.Linear's default U(-1/sqrt(M), 1/sqrt(M)) (Fig. 6)."""
    choice(init, "init", INITS)
    if init == "zero":
        return torch.zeros(M, M, dtype=dtype), torch.zeros(M, M, dtype=dtype)
    b = 1.0 / math.sqrt(M)
    Z = torch.empty(M, M, dtype=dtype).uniform_(-b, b, generator=generator)
    Y = torch.empty(M, M, dtype=dtype).uniform_(-b, b, generator=generator)
    return Z, Y


def frozen_params(M: int, n_ctx: int = 128, dtype: str = "float32") -> dict[str, Tensor]:
    """Every frozen parameter of :func:`scan_snap`'s model in 3.x names and layouts, without building it.

    W_E = W_K = W_V = W_O = I, W_pos and every bias 0 (the module docstring; equal to the built model's,
    tests/test_scan_snap_model.py). The count engine writes them into its checkpoints.
    """
    t = DTYPES[dtype]

    def eye():  # separate tensors: safetensors refuses shared storage
        return torch.eye(M, dtype=t)

    def zeros(*shape):
        return torch.zeros(*shape, dtype=t)

    return {"embed.W_E": eye(), "pos_embed.W_pos": zeros(n_ctx, M), "blocks.0.attn.W_K": eye()[None],
            "blocks.0.attn.W_V": eye()[None], "blocks.0.attn.W_O": eye()[None], "blocks.0.attn.b_Q": zeros(1, M),
            "blocks.0.attn.b_K": zeros(1, M), "blocks.0.attn.b_V": zeros(1, M), "blocks.0.attn.b_O": zeros(M),
            "unembed.b_U": zeros(M)}


def scan_snap(
    M: int,
    n_ctx: int = 128,
    init: str = "zero",
    dtype: str = "float32",
    generator: torch.Generator | None = None,
    Z: Float[Tensor, "M M"] | None = None,
    Y: Float[Tensor, "M M"] | None = None,
) -> HookedTransformer:
    """Build the Y/Z model; ``Z``/``Y`` override the init. ``model.sslens_config`` rebuilds it."""
    require(isinstance(M, int) and M >= 2, "M", f"got {M!r}", "an int >= 2")
    require(isinstance(n_ctx, int) and n_ctx >= 2, "n_ctx", f"got {n_ctx!r}", "an int >= 2")
    choice(dtype, "dtype", tuple(DTYPES))
    tdtype = DTYPES[dtype]
    model = compat.build_from_config(hooked_config(M, n_ctx, tdtype))
    Z0, Y0 = init_Z_Y(M, init, generator, tdtype)
    Z0 = Z0 if Z is None else Z.to(tdtype)
    Y0 = Y0 if Y is None else Y.to(tdtype)
    eye = torch.eye(M, dtype=tdtype)
    P = compat.params(model)  # 3.x names and layouts on both lines
    with torch.no_grad():
        for name, p in P.items():
            p.zero_()
        for name, p in compat.leaves(model).items():
            p.requires_grad_(name in TRAINABLE)
        P["embed.W_E"].copy_(eye)
        P["blocks.0.attn.W_K"][0].copy_(eye)
        P["blocks.0.attn.W_V"][0].copy_(eye)
        P["blocks.0.attn.W_O"][0].copy_(eye)
        P[Z_PARAM][0].copy_(Z0)
        P[Y_PARAM].copy_(Y0)
    from sslens.hooks.variants import apply_variants

    apply_variants(model, SS_VARIANTS)
    model.sslens_config = scan_snap_config(M, n_ctx, init, dtype)
    model.sslens_trainable = list(TRAINABLE)
    return model


def Z_of(model: HookedTransformer) -> Float[Tensor, "M M"]:
    """The attention pseudo-logits Z (= W_Q of head 0)."""
    return model.blocks[0].attn.W_Q[0]


def Y_of(model: HookedTransformer) -> Float[Tensor, "M M"]:
    """The decoder Y (= W_U)."""
    return model.unembed.W_U
