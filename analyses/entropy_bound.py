"""Attention-entropy lower bound of Zhai et al. 2023, Thm 3.1 (docs/theory.md §3.4), and measured entropy per head.

Zhai et al. (ICML 2023), "Stabilizing Transformer Training by Preventing Attention Entropy Collapse".

Thm 3.1 (as we apply it): for logits z in R^T whose spread ||z - mean(z)||_2 is at most sigma,

    Ent(softmax(z)) >= h_T(sigma) = log(1 + (T-1) e^{-beta}) + (T-1) beta e^{-beta} / (1 + (T-1) e^{-beta}),
    beta = sigma sqrt(T / (T-1)),

tight at z = one logit sigma sqrt((T-1)/T) above the mean and the other T-1 equal (that softmax has
entropy exactly h_T(sigma)). For a head with scores x_q W_Q W_K^T x_k^T / attn_scale over the T keys
visible to query q, z - mean(z) = X_c W_K W_Q^T x_q / attn_scale with X_c the centred key inputs, so

    sigma <= ||W_Q W_K^T||_2 ||x_q||_2 ||X_c||_2 / attn_scale        ("sigma times the input norms"),

and h_T is decreasing, so h_T of that product bounds the measured entropy of every query (``bound``).
docs/theory.md (3.4.1)-(3.4.2) state it with S = ||W_K W_Q^T||_2 ||X X^T||_2 (all T tokens, unmasked;
transcribed there from a secondary summary of the paper): since ||x_q|| ||X_c||_2 <= ||X||_2^2 that S is
larger and its bound (``bound_paper``, over the keys visible to each causal query) is looser; both are
reported. Same function h: (3.4.2) is h_T(S) written with (T-1) beta = S sqrt(T (T-1)).
Heads are refused as in ``qk_gradient.check_head_form`` (rotary, biases, split inputs).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sslens import compat
from sslens.analyses.qk_gradient import _attn_input_name, check_head_form, qk_product
from sslens.compat import HookedModel as HookedTransformer  # the installed line's model class
from sslens.errors import require


def entropy_lower_bound(sigma: Float[Tensor, "..."] | float, T: Int[Tensor, "..."] | int) -> Tensor:
    """h_T(sigma) of Thm 3.1 (module docstring); log T at sigma = 0, 0 for T = 1."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    T = torch.as_tensor(T, dtype=torch.float64)
    Tm1 = (T - 1).clamp_min(0)
    beta = sigma * torch.sqrt(T / Tm1.clamp_min(1e-300))
    e = torch.exp(-beta)
    den = 1 + Tm1 * e
    h = torch.log(den) + Tm1 * beta * e / den
    return torch.where(T <= 1, torch.zeros_like(h), h)


def extremal_logits(sigma: float, T: int) -> Float[Tensor, " T"]:
    """The tight case: centred logits of norm sigma with one entry high and T-1 equal."""
    z = torch.full((T,), -sigma / math.sqrt(T * (T - 1)), dtype=torch.float64)
    z[0] = sigma * math.sqrt((T - 1) / T)
    return z


def entropy(p: Float[Tensor, "... k"]) -> Float[Tensor, "..."]:
    """-sum p log p (0 log 0 = 0)."""
    p = p.double()
    return -(torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))).sum(-1)


def head_entropy_bounds(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]) -> dict:
    """Measured attention entropy and the Thm 3.1 bound for every layer, head, sequence and query.

    Returns ``{"entropy", "bound", "sigma", "bound_paper"}``, each [layer, batch, head, query] (float64):
    ``bound`` uses the per-query spread bound of the module docstring, ``bound_paper`` the paper's
    S = ||W_Q W_K^T||_2 ||X X^T||_2 / attn_scale over the visible keys (looser: bound_paper <= bound).
    """
    check_head_form(model)
    cfg = model.cfg
    require(not getattr(cfg, "use_attention_sinks", False), "use_attention_sinks", "rows sum to less than 1", "False")
    require("local" not in (getattr(cfg, "attn_types", None) or []), "attn_types", "local attention windows",
            "global attention")
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    names += [_attn_input_name(model, l) for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    QK = qk_product(model)  # [layer, head, d, d]
    qk_norm = torch.linalg.matrix_norm(QK, ord=2)  # [layer, head]
    ent, bnd, sig, pap = [], [], [], []
    n = tokens.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool)
    if cfg.attention_dir == "causal":
        causal = torch.tril(causal)
    T = causal.sum(-1)  # keys visible to each query
    for l in range(model.cfg.n_layers):
        pat = cache[f"blocks.{l}.attn.hook_pattern"].double()  # [b, h, q, k]
        x = cache[_attn_input_name(model, l)].double()  # [b, k, d]
        # centred key inputs visible to each query: [b, q, k, d]
        xm = x[:, None, :, :] * causal[None, :, :, None]
        mean = xm.sum(2, keepdim=True) / T[None, :, None, None]
        xc = (x[:, None, :, :] - mean) * causal[None, :, :, None]
        xc_norm = torch.linalg.matrix_norm(xc, ord=2)  # [b, q]
        xq = x.norm(dim=-1)  # [b, q]
        scale = compat.attn_scale(model, l)
        s = qk_norm[l][None, :, None] * (xq * xc_norm)[:, None, :] / scale
        sig.append(s)
        bnd.append(entropy_lower_bound(s, T[None, None, :]))
        # the paper's S = sigma ||X X^T||_2 over the visible keys (docs/theory.md (3.4.1)); >= our s
        xv_norm2 = torch.linalg.matrix_norm(xm, ord=2) ** 2  # [b, q]
        pap.append(entropy_lower_bound(qk_norm[l][None, :, None] * xv_norm2[:, None, :] / scale, T[None, None, :]))
        ent.append(entropy(pat))
    return {"entropy": torch.stack(ent), "bound": torch.stack(bnd), "sigma": torch.stack(sig),
            "bound_paper": torch.stack(pap)}


def entropy_series(series, tokens: Tensor, progress: bool = False) -> dict:
    """Per checkpoint of a ``Series``: mean measured entropy, mean bound and min slack per layer and head."""
    from sslens.progress import bar as progress_bar

    out = {"steps": [], "entropy": [], "bound": [], "min_slack": []}
    for s in progress_bar(series.steps, progress=progress, desc="entropy bound"):
        r = head_entropy_bounds(series.load(s), tokens)
        out["steps"].append(s)
        out["entropy"].append(r["entropy"].mean((1, 3)).tolist())
        out["bound"].append(r["bound"].mean((1, 3)).tolist())
        out["min_slack"].append((r["entropy"] - r["bound"]).amin((1, 3)).tolist())
    return out
