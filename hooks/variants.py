"""Permanent hooks that shape an architecture a HookedTransformerConfig cannot express.

Each variant is ``fn(model, **kwargs)`` registering ``add_perma_hook`` hooks, so ``run_with_cache``,
``FactoredMatrix`` views and circuitsvis keep working. A saved sslens model config names its
variants; :func:`apply_variants` re-applies them when the model is rebuilt.
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from sslens.compat import HookedModel as HookedTransformer  # the installed line's model class
from sslens.compat import mask_attention
from sslens.errors import SslensError


def no_self_attention(model: HookedTransformer) -> None:
    """A query does not attend to its own position (Scan&Snap: b_t = softmax over t < T, theory.md 1.1).

    Position 0 has no earlier key, so it keeps itself (its output is never used by a last-token loss);
    this keeps every softmax row finite.
    """

    def self_mask(q: int, k: int, device: torch.device) -> Tensor:
        off = k - q  # key offset (kv cache); 0 in training
        eye = torch.zeros(q, k, dtype=torch.bool, device=device)
        idx = torch.arange(1, q, device=device)
        eye[idx, idx + off] = True
        return eye

    mask_attention(model, self_mask)


def no_residual(model: HookedTransformer) -> None:
    """Drop the skip connections: resid_mid = attn_out and resid_post = mlp_out (attn_out if attn-only)."""
    for block in model.blocks:
        stash: dict[str, Tensor] = {}

        def keep(name):
            def hook(x: Tensor, hook: HookPoint) -> Tensor:
                stash[name] = x
                return x

            return hook

        def take(name):
            def hook(x: Tensor, hook: HookPoint) -> Tensor:
                return stash.pop(name)

            return hook

        block.hook_attn_out.add_perma_hook(keep("attn"))
        if model.cfg.attn_only:
            block.hook_resid_post.add_perma_hook(take("attn"))
        else:
            block.hook_resid_mid.add_perma_hook(take("attn"))
            block.hook_mlp_out.add_perma_hook(keep("mlp"))
            block.hook_resid_post.add_perma_hook(take("mlp"))


def l2_normalize_output(model: HookedTransformer) -> None:
    """Decoder input f / ||f||_2 (Scan&Snap, theory.md 1.1), on the last block's ``hook_resid_post``."""

    def hook(x: Float[Tensor, "batch pos d_model"], hook: HookPoint) -> Tensor:
        return x / x.norm(dim=-1, keepdim=True)

    model.blocks[-1].hook_resid_post.add_perma_hook(hook)


def tanh_mlp(model: HookedTransformer) -> None:
    """Replace the MLP activation by tanh: ``hook_post = tanh(hook_pre)`` (condensation model, theory.md 2.1)."""
    for block in model.blocks:
        if model.cfg.attn_only:
            raise SslensError("variants", "tanh_mlp needs an MLP", "attn_only=False")
        stash: dict[str, Tensor] = {}

        def keep(x: Tensor, hook: HookPoint) -> Tensor:
            stash["pre"] = x
            return x

        def act(x: Tensor, hook: HookPoint) -> Tensor:
            return torch.tanh(stash.pop("pre"))

        block.mlp.hook_pre.add_perma_hook(keep)
        block.mlp.hook_post.add_perma_hook(act)


VARIANTS: dict[str, Callable[[HookedTransformer], None]] = {
    "no_self_attention": no_self_attention,
    "no_residual": no_residual,
    "l2_normalize_output": l2_normalize_output,
    "tanh_mlp": tanh_mlp,
}


def apply_variants(model: HookedTransformer, names: list[str]) -> HookedTransformer:
    """Register the named variants in order (order matters: ``no_residual`` before ``l2_normalize_output``)."""
    for name in names:
        if name not in VARIANTS:
            raise SslensError("variants", f"unknown variant {name!r}", ", ".join(VARIANTS))
        VARIANTS[name](model)
    return model
