"""Permanent hooks that shape an architecture a HookedTransformerConfig cannot express.

Each variant is ``fn(model)`` acting at hook points (forward pre-hooks that set the value *entering* a
HookPoint, HookPoints that keep their final value, or the MLP's own ``act_fn``), so ``run_with_cache``,
``FactoredMatrix`` views and circuitsvis keep working and a user hook on any hook point (activation
patching) changes the downstream computation exactly as in a standard HookedTransformer. A saved sslens model config names its
variants; :func:`apply_variants` re-applies them when the model is rebuilt.
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint

from sslens.errors import SslensError


class FinalValueHookPoint(HookPoint):
    """A HookPoint that keeps its *final* output for a later hook point to consume.

    The output after every hook on it, user hooks included (any order,
    ``prepend=True`` too), is kept in ``self.sslens_stash[self.sslens_key]`` for a later hook point to consume.

    TransformerLens runs a HookPoint's hooks in registration order with the permanent ones first, so a
    permanent hook that stashes the value would see it *before* user hooks (patching silently ignored).
    """

    sslens_stash: dict
    sslens_key: str

    def __call__(self, *args, **kwargs):
        """Run the HookPoint (all its hooks) and stash the final value."""
        out = super().__call__(*args, **kwargs)
        self.sslens_stash[self.sslens_key] = out
        return out


def _keep_final(hp: HookPoint, stash: dict, key: str) -> None:
    if type(hp) is HookPoint:
        hp.__class__ = FinalValueHookPoint  # same module, same hooks and name; only __call__ differs
    hp.sslens_stash, hp.sslens_key = stash, key


def _replace_input(hp: HookPoint, fn: Callable[[Tensor], Tensor]) -> None:
    """Make ``fn(x)`` the value that enters ``hp``.

    A forward *pre*-hook runs before every forward hook
    (permanent or user, prepended or not), so every hook on ``hp`` sees -- and may patch -- the variant's value.
    """

    def pre(module, args):
        return (fn(args[0]),)

    hp.register_forward_pre_hook(pre)


def no_self_attention(model: HookedTransformer) -> None:
    """A query does not attend to its own position (Scan&Snap: b_t = softmax over t < T, docs/theory.md §1.1).

    Applied to the value entering ``hook_attn_scores`` (like TransformerLens's causal mask), so every hook there
    sees the masked scores and a patched value is used as given. Position 0 has no earlier key, so it keeps
    itself (its output is never used by a last-token loss); this keeps every softmax row finite.
    """

    def mask(scores: Float[Tensor, "batch head q k"]) -> Tensor:
        q, k = scores.shape[-2:]
        off = k - q  # key offset (kv cache); 0 in training
        eye = torch.zeros(q, k, dtype=torch.bool, device=scores.device)
        idx = torch.arange(1, q, device=scores.device)
        eye[idx, idx + off] = True
        return scores.masked_fill(eye, float("-inf"))

    for block in model.blocks:
        _replace_input(block.attn.hook_attn_scores, mask)


def no_residual(model: HookedTransformer) -> None:
    """Drop the skip connections: resid_mid = attn_out and resid_post = mlp_out (attn_out if attn-only).

    ``hook_attn_out`` / ``hook_mlp_out`` keep their final value (after user hooks), which becomes the input
    of ``hook_resid_mid`` / ``hook_resid_post``: patching any of these hook points propagates exactly.
    """
    for block in model.blocks:
        stash: dict[str, Tensor] = {}
        _keep_final(block.hook_attn_out, stash, "attn")
        if model.cfg.attn_only:
            _replace_input(block.hook_resid_post, lambda x, s=stash: s.pop("attn"))
        else:
            _replace_input(block.hook_resid_mid, lambda x, s=stash: s.pop("attn"))
            _keep_final(block.hook_mlp_out, stash, "mlp")
            _replace_input(block.hook_resid_post, lambda x, s=stash: s.pop("mlp"))


def l2_normalize_output(model: HookedTransformer) -> None:
    """Decoder input f / ||f||_2 (Scan&Snap, docs/theory.md §1.1).

    The value entering the last block's
    ``hook_resid_post`` is normalised (after ``no_residual``'s replacement when both are applied).
    """

    def normalize(x: Float[Tensor, "batch pos d_model"]) -> Tensor:
        return x / x.norm(dim=-1, keepdim=True)

    _replace_input(model.blocks[-1].hook_resid_post, normalize)


def tanh_mlp(model: HookedTransformer) -> None:
    """MLP activation tanh: ``hook_post = tanh(hook_pre)`` (condensation model, docs/theory.md §2.1).

    Sets the MLP's own ``act_fn`` (the function TransformerLens's ``MLP.forward`` applies between
    ``hook_pre`` and ``hook_post``), so a patched ``hook_pre`` flows through tanh as in any TL model.
    """
    if model.cfg.attn_only:
        raise SslensError("variants", "tanh_mlp needs an MLP", "attn_only=False")
    for block in model.blocks:
        block.mlp.act_fn = torch.tanh


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
