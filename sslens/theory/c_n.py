"""Scan&Snap's c_n in the long-sequence limit (docs/theory.md §1.3; the paper's "composition", a word sslens keeps
for TransformerLens's head composition).

    c_{l|m,n} = P(l|m,n) e^{z_ml} / sum_l' P(l'|m,n) e^{z_ml'},   f_n = c_n / ||c_n||.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


def composition(
    Z: Float[Tensor, "*runs M M"], P: Float[Tensor, "K M"], queries: Int[Tensor, "K"] | list[int]
) -> Float[Tensor, "*runs K M"]:
    """c_n for every class n (rows of P) from token-space pseudo-logits Z (z_ml = Z[m, l]).

    Computed as a softmax of z_ml + log P(l|n) over the tokens with P > 0 (zero elsewhere), which is
    the formula above without overflow. Batched over any leading run dimensions of Z.
    """
    q = torch.as_tensor(queries, dtype=torch.long, device=Z.device)
    z = Z[..., q, :]  # [*runs, K, M]: row m = psi(n) of Z for each class
    P = P.to(Z.dtype).to(Z.device)
    logits = z + torch.log(P)  # -inf where P = 0
    return torch.softmax(logits, dim=-1)


def entropy(p: Float[Tensor, "... M"], dim: int = -1) -> Float[Tensor, "..."]:
    """Shannon entropy in nats, with 0 log 0 = 0."""
    return -torch.xlogy(p, p).sum(dim)


def distinct_entropy(c: Float[Tensor, "*runs K M"], distinct: list[list[int]]) -> Float[Tensor, "*runs K"]:
    """Fig. 6 metric per class: entropy (nats) of c_n restricted to the class's distinct tokens, renormalised."""
    out = []
    for k, toks in enumerate(distinct):
        sub = c[..., k, toks]
        sub = sub / sub.sum(-1, keepdim=True)
        out.append(entropy(sub))
    return torch.stack(out, dim=-1)


def recall(
    c: Float[Tensor, "*runs K M"], distinct: list[list[int]], thresholds: Float[Tensor, "n_thr"]
) -> Float[Tensor, "*runs n_thr"]:
    """Figs. 11-12: fraction of all classes' distinct tokens whose attention c_{l|n} exceeds each threshold."""
    vals = torch.cat([c[..., k, toks] for k, toks in enumerate(distinct)], dim=-1)  # [*runs, n_distinct]
    thr = thresholds.to(vals.dtype)
    return (vals[..., None, :] > thr[:, None]).to(vals.dtype).mean(-1)
