"""The exact key-query gradient of any head whose scores are x W_Q W_K^T x^T (docs/theory.md §2.3).

For layer l, head h, with attention input x (``ln1`` output, else ``hook_resid_pre``) and scores
S = x W_Q W_K^T x^T / attn_scale, the force on the product A = W_Q W_K^T is

    G = -dL/dA = -(1/attn_scale) sum_{b,q,k} dL/dS[b,h,q,k] x[b,q]^T x[b,k],

with dL/dS by autograd on the user's batch: ``hook_attn_scores`` adds a zero probe whose gradient is
dL/dS (the graph through the scores stays intact, so a layer's G includes every path through later
layers' attention patterns; no parameter ``.grad`` is touched). On the [CR] model while the attention is
small, G equals the closed-form F of §2.3 (``sslens.theory.rank_collapse.stage2_F``): a test checks it.
Refused with one line: rotary/alibi/shortformer positions, nonzero b_Q/b_K, split or per-head inputs,
QK normalisation, grouped keys, score soft-capping.
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sslens import compat
from sslens.compat import HookedModel as HookedTransformer  # the installed line's model class
from sslens.errors import SslensError, require

POSITIONS = ("standard",)


def check_head_form(model: HookedTransformer) -> None:
    """Raise a one-line SslensError unless every head's scores are x W_Q W_K^T x^T / attn_scale."""
    cfg = model.cfg
    if cfg.positional_embedding_type not in POSITIONS:
        raise SslensError("positional_embedding_type", f"{cfg.positional_embedding_type!r} heads have no single W_Q W_K^T",
                          "standard (absolute or no positions)")
    for flag in ("use_split_qkv_input", "use_attn_in"):
        require(not getattr(cfg, flag, False), flag, "per-head attention inputs", "False")
    require(not getattr(cfg, "use_qk_norm", False), "use_qk_norm", "normalised queries/keys are not x W_Q W_K^T x^T",
            "False")
    kv = getattr(cfg, "n_key_value_heads", None)
    require(kv in (None, cfg.n_heads), "n_key_value_heads", f"grouped keys ({kv} for {cfg.n_heads} heads)",
            "None (one W_K per head)")
    require(not (getattr(cfg, "attn_scores_soft_cap", -1.0) or -1.0) > 0, "attn_scores_soft_cap", "soft-capped scores",
            "no soft cap")
    for l, block in enumerate(model.blocks):
        for b in ("b_Q", "b_K"):
            bias = getattr(block.attn, b, None)
            if bias is not None and bias.detach().abs().max().item() > 0:
                raise SslensError(f"blocks.{l}.attn.{b}", "nonzero query/key bias", "zero biases (fold them first)")


def _attn_input_name(model: HookedTransformer, layer: int) -> str:
    return f"blocks.{layer}.ln1.hook_normalized" if model.cfg.normalization_type is not None else f"blocks.{layer}.hook_resid_pre"


def qk_gradient(model: HookedTransformer, tokens: Int[Tensor, "batch pos"], targets: Tensor | None = None,
                loss_fn: Callable | None = None, layers: list[int] | None = None) -> Float[Tensor, "layer head d_model d_model"]:
    """G = -dL/d(W_Q W_K^T) per layer and head, by autograd on ``tokens`` (docs/theory.md §2.3, (2.3.4)).

    ``loss_fn(logits)`` or ``loss_fn(logits, targets)``; default next-token CE over every position.
    """
    check_head_form(model)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    n = model.cfg.n_layers
    require(all(0 <= l < n for l in layers), "layers", f"got {layers}", f"indices in 0..{n - 1}")
    leaves: dict[int, Tensor] = {}
    xs: dict[int, Tensor] = {}
    pats: dict[int, Tensor] = {}
    # a zero probe added where the hook sits: dL/dprobe = dL/dS on 3.x's hook_attn_scores; on 4.x (whose scores
    # hook discards edits) dL/dP on hook_pattern, and dL/dS = P * (dL/dP - sum_k P dL/dP) (the softmax's backward)
    at = "hook_attn_scores" if compat.SCORES_EDITABLE else "hook_pattern"

    def score_hook(layer):
        def hook(s: Tensor, hook) -> Tensor:
            leaves[layer] = torch.zeros_like(s, requires_grad=True)
            pats[layer] = s.detach()
            return s + leaves[layer]
        return hook

    def input_hook(layer):
        def hook(x: Tensor, hook) -> Tensor:
            xs[layer] = x.detach()
            return x
        return hook

    fwd = [(f"blocks.{l}.attn.{at}", score_hook(l)) for l in layers]
    fwd += [(_attn_input_name(model, l), input_hook(l)) for l in layers]
    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=fwd)
        if loss_fn is None:
            from sslens.losses import all_token_ce

            loss = all_token_ce(logits, tokens)
        else:
            loss = loss_fn(logits) if targets is None else loss_fn(logits, targets)
        grads = torch.autograd.grad(loss, [leaves[l] for l in layers], allow_unused=True)
    out = []
    for l, g in zip(layers, grads):
        x = xs[l].double()
        g = torch.zeros_like(leaves[l]) if g is None else g
        g = torch.nan_to_num(g.double(), nan=0.0)  # masked (future) positions
        if not compat.SCORES_EDITABLE:  # g is dL/dP: through the softmax (masked keys have P = 0)
            P = pats[l].double()
            g = P * (g - (P * g).sum(-1, keepdim=True))
        scale = compat.attn_scale(model, l)
        out.append(-torch.einsum("bhqk,bqd,bke->hde", g, x, x) / scale)
    return torch.stack(out)


def qk_product(model: HookedTransformer, layers: list[int] | None = None) -> Float[Tensor, "layer head d_model d_model"]:
    """W_Q W_K^T per layer and head (``model.QK``, TransformerLens's FactoredMatrix, multiplied out)."""
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    return torch.stack([model.QK[l].AB.detach().double() for l in layers])


def alignment(A: Float[Tensor, "... d d"], G: Float[Tensor, "... d d"]) -> Float[Tensor, "..."]:
    """cos(A, u1 v1^T of G) = u1^T A v1 / ||A||_F, signed (positive: A grows along G's top pair)."""
    U, S, Vh = torch.linalg.svd(G.double())
    u, v = U[..., :, 0], Vh[..., 0, :]
    return torch.einsum("...m,...mn,...n->...", u, A.double(), v) / torch.linalg.matrix_norm(A.double())


def alignment_series(series, tokens: Tensor, targets: Tensor | None = None, loss_fn: Callable | None = None,
                     layers: list[int] | None = None, progress: bool = False) -> dict:
    """cos(W_Q W_K^T, u1 v1^T of G) per checkpoint, layer and head.

    ``series``: a ``sslens.checkpoints.Series`` or any object with ``steps`` and ``load(step) -> HookedTransformer``.
    """
    from sslens.progress import bar as progress_bar

    rows = {"steps": [], "cos": [], "norm_QK": [], "sigma1_G": []}
    for s in progress_bar(series.steps, progress=progress, desc="QK gradient"):
        m = series.load(s)
        G = qk_gradient(m, tokens, targets, loss_fn, layers)
        A = qk_product(m, layers)
        rows["steps"].append(s)
        rows["cos"].append(alignment(A, G).tolist())
        rows["norm_QK"].append(torch.linalg.matrix_norm(A).tolist())
        rows["sigma1_G"].append(torch.linalg.matrix_norm(G, ord=2).tolist())
    return rows
