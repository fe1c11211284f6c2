"""The condensation / rank-collapse model of Chen & Luo (docs/theory.md §2.1) as a HookedTransformer.

    f(X) = tanh( softmax(X W_Q W_K^T X^T / sqrt(d)) X W_V W1 ) W2        (output at the last position)

Mapping: one layer, one head, d_head = d_model = d; W_Q, W_K, W_V trainable; W_O frozen identity (the
theory has none); the MLP is W_in = W1 [d, d_ff] with tanh (variant ``tanh_mlp``); no residual, no
LayerNorm, no biases (all frozen at 0), frozen embeddings.

- ``head="scalar"`` (binary task, exponential loss): d_ff = d, W_out frozen identity, W_U = W2 [d, 1]
  trainable: logits[..., 0] = f(X).
- ``head="vocab"`` (anchor task, next-token CE): W_out [d_ff, d] trainable (the outer weights), W_U a
  frozen random unembedding [d, d_vocab].

Frozen W_E ~ N(0, 1/d) (token vectors of norm ~1). ``pos=True`` adds a frozen positional embedding
~ N(0, 1/d) (the anchor task needs positions; the theory's f has none). Trainable weights start i.i.d.
N(0, eps^2) with eps = d^(-gamma) when ``gamma`` is given.

Kind "small_init_lm": the WikiText model of [CR] (2 layers, 1 head, GeLU MLP, residuals, no LayerNorm,
init std d^(-gamma), gamma = 1.2), a standard HookedTransformer with ``normalization_type=None``.
"""

from __future__ import annotations

import torch

from sslens import compat
from sslens.compat import HookedModel as HookedTransformer  # the installed line's model class
from sslens.errors import choice, require
from sslens.hooks.variants import apply_variants
from sslens.models.scan_snap import DTYPES

HEADS = ("scalar", "vocab")
ACTS = ("tanh", "none")
ATTN_PARAMS = ("blocks.0.attn.W_Q", "blocks.0.attn.W_K")


def _linear_mlp(model: HookedTransformer) -> None:
    """MLP without activation: ``hook_post = hook_pre`` (App. B.2 variant of the [CR] model)."""
    stash: dict = {}

    def keep(x, hook):
        stash["pre"] = x
        return x

    def ident(x, hook):
        return stash.pop("pre")

    model.blocks[0].mlp.hook_pre.add_perma_hook(keep)
    model.blocks[0].mlp.hook_post.add_perma_hook(ident)


def rank_collapse_config(d: int = 32, d_vocab: int = 201, head: str = "vocab", d_ff: int | None = None,
                         n_ctx: int = 10, gamma: float | None = 0.85, eps: float | None = None, pos: bool = True,
                         dtype: str = "float32", init_attn: float | None = None, init_outer: float | None = None,
                         act: str = "tanh") -> dict:
    return {"kind": "rank_collapse", "d": d, "d_vocab": d_vocab, "head": head, "d_ff": d_ff, "n_ctx": n_ctx,
            "gamma": gamma, "eps": eps, "pos": pos, "dtype": dtype, "init_attn": init_attn,
            "init_outer": init_outer, "act": act}


def init_std(d: int, gamma: float | None, eps: float | None) -> float:
    """eps if given, else d^(-gamma)."""
    require(eps is not None or gamma is not None, "eps", "neither eps nor gamma given", "eps > 0 or gamma > 0")
    return float(eps) if eps is not None else float(d) ** (-float(gamma))


def _draw(p: torch.Tensor, std: float, g: torch.Generator | None) -> None:
    """``p.normal_(0, std)`` drawn in the 3.x layout (the same numbers on both TransformerLens lines)."""
    p.copy_(torch.empty(p.shape, dtype=p.dtype).normal_(0.0, std, generator=g))


def rank_collapse(*, d: int = 32, d_vocab: int = 201, head: str = "vocab", d_ff: int | None = None, n_ctx: int = 10,
                  gamma: float | None = 0.85, eps: float | None = None, pos: bool = True, dtype: str = "float32",
                  init_attn: float | None = None, init_outer: float | None = None, act: str = "tanh",
                  generator: torch.Generator | None = None) -> HookedTransformer:
    """Build the model (see the module docstring); ``model.sslens_config`` rebuilds it.

    ``init_attn`` (W_Q, W_K) and ``init_outer`` (W_V, W1, W2) override the common std (eps or d^-gamma)
    for their group: the theory's stage 2 (docs/theory.md §2.3) needs the attention weights O(delta)
    small while the outer weights condense. ``act="none"`` drops the tanh (the paper's App. B.2 variant).
    """
    choice(head, "head", HEADS)
    choice(act, "act", ACTS)
    for name, val in (("init_attn", init_attn), ("init_outer", init_outer)):
        require(val is None or (isinstance(val, (int, float)) and 0 < val <= 10), name, f"got {val!r}",
                "None or a std in (0, 10]")
    choice(dtype, "dtype", tuple(DTYPES))
    require(isinstance(d, int) and d >= 2, "d", f"got {d!r}", "an int >= 2")
    d_ff = d_ff or (d if head == "scalar" else 2 * d)
    require(head != "scalar" or d_ff == d, "d_ff", f"got {d_ff} with head='scalar'", "d_ff = d (W_out is the identity)")
    std = init_std(d, gamma, eps) if (init_attn is None or init_outer is None) else 0.0
    std_of = {n: float(init_attn if init_attn is not None else std) for n in ATTN_PARAMS}
    tdtype = DTYPES[dtype]
    cfg = dict(
        n_layers=1, n_heads=1, d_model=d, d_head=d, d_mlp=d_ff, d_vocab=d_vocab,
        d_vocab_out=1 if head == "scalar" else d_vocab, n_ctx=n_ctx, act_fn="relu", normalization_type=None,
        positional_embedding_type="standard", default_prepend_bos=False, dtype=tdtype, device="cpu",
        model_name="sslens-rank-collapse",
    )
    model = compat.build_from_config(cfg)
    g = generator
    trainable = ["blocks.0.attn.W_Q", "blocks.0.attn.W_K", "blocks.0.attn.W_V", "blocks.0.mlp.W_in"]
    trainable += ["unembed.W_U"] if head == "scalar" else ["blocks.0.mlp.W_out"]
    P = compat.params(model)  # 3.x names and layouts, HookedTransformer's order, on both lines
    with torch.no_grad():
        for name, p in P.items():
            p.zero_()
        for name, p in compat.leaves(model).items():
            p.requires_grad_(name in trainable)
        _draw(P["embed.W_E"], d**-0.5, g)
        if pos:
            _draw(P["pos_embed.W_pos"], d**-0.5, g)
        P["blocks.0.attn.W_O"][0].copy_(torch.eye(d, dtype=tdtype))
        if head == "scalar":
            P["blocks.0.mlp.W_out"].copy_(torch.eye(d, dtype=tdtype))
        else:
            _draw(P["unembed.W_U"], d**-0.5, g)
        for name, p in P.items():
            if name in trainable:
                _draw(p, std_of.get(name, float(init_outer if init_outer is not None else std)), g)
    apply_variants(model, ["no_residual", "tanh_mlp"] if act == "tanh" else ["no_residual"])
    if act == "none":
        _linear_mlp(model)
    model.sslens_config = rank_collapse_config(d, d_vocab, head, d_ff, n_ctx, gamma, eps, pos, dtype, init_attn,
                                               init_outer, act)
    model.sslens_trainable = trainable
    return model


def small_init_lm_config(d_model: int = 64, d_ff: int = 800, n_layers: int = 2, d_vocab: int = 2000,
                         n_ctx: int = 64, gamma: float = 1.2, dtype: str = "float32") -> dict:
    return {"kind": "small_init_lm", "d_model": d_model, "d_ff": d_ff, "n_layers": n_layers, "d_vocab": d_vocab,
            "n_ctx": n_ctx, "gamma": gamma, "dtype": dtype}


def small_init_lm(*, d_model: int = 64, d_ff: int = 800, n_layers: int = 2, d_vocab: int = 2000, n_ctx: int = 64,
                  gamma: float = 1.2, dtype: str = "float32", generator: torch.Generator | None = None) -> HookedTransformer:
    """[CR] WikiText model: 1 head per layer, GeLU MLP, residuals, no LayerNorm, every weight ~ N(0, d^(-2 gamma))."""
    choice(dtype, "dtype", tuple(DTYPES))
    cfg = dict(
        n_layers=n_layers, n_heads=1, d_model=d_model, d_head=d_model, d_mlp=d_ff, d_vocab=d_vocab, n_ctx=n_ctx,
        act_fn="gelu", normalization_type=None, positional_embedding_type="standard", dtype=DTYPES[dtype],
        device="cpu", model_name="sslens-small-init-lm",
    )
    model = compat.build_from_config(cfg)
    std = float(d_model) ** (-gamma)
    with torch.no_grad():
        for name, p in compat.params(model).items():
            if name.split(".")[-1].startswith("b_"):
                p.zero_()
            else:
                _draw(p, std, generator)
    model.sslens_config = small_init_lm_config(d_model, d_ff, n_layers, d_vocab, n_ctx, gamma, dtype)
    model.sslens_trainable = list(compat.leaves(model))
    return model
