"""The Y/Z model's loss from token counts (exact; docs/theory.md §1.1, design.md "exact fast engine").

With no positional encoding, the query excluded from its own key, and the loss on the last position,
a sequence enters only through the counts n_l of its contextual tokens and its query m:

    b_l = n_l e^{z_ml} / sum_l' n_l' e^{z_ml'},   f = b / ||b||,   logits = Y^T f,   loss = CE(logits, n).

(attention mass b_t = e^{z[m, x_t]} / sum_t' e^{z[m, x_t']} summed over the positions holding token l).
Batched over R runs: Z, Y are ``[R, M, M]``; every tensor has a leading run dimension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor


def counts_of(tokens: Int[Tensor, "batch T"], M: int, dtype=torch.float32) -> Float[Tensor, "batch M"]:
    """Counts of the contextual tokens (every position but the last, the query)."""
    ctx = tokens[:, :-1]
    return torch.zeros(tokens.shape[0], M, dtype=dtype).scatter_add_(1, ctx, torch.ones_like(ctx, dtype=dtype))


def loss_from_counts(
    Z: Float[Tensor, "R M M"],
    Y: Float[Tensor, "R M M"],
    counts: Float[Tensor, "R batch M"],
    query: Int[Tensor, "R batch"],
    target: Int[Tensor, "R batch"],
) -> Float[Tensor, "R"]:
    """Mean cross-entropy of each run over its batch; differentiable in Z and Y."""
    R, B, M = counts.shape
    zq = torch.gather(Z, 1, query[..., None].expand(R, B, M))  # [R, B, M]: row m of each sample's run
    logw = zq + torch.log(counts)  # -inf where n_l = 0
    b = torch.softmax(logw, dim=-1)
    f = b / b.norm(dim=-1, keepdim=True)
    logits = torch.bmm(f, Y)  # [R, B, M]: (Y^T f)^T
    return F.cross_entropy(logits.reshape(R * B, M), target.reshape(R * B), reduction="none").view(R, B).mean(1)


def support_of(spec) -> tuple[Int[Tensor, "K S"], Float[Tensor, "K S"]]:
    """Each class's contextual tokens (P(l|n) > 0), padded to the largest support; mask 1 = real entry."""
    P = spec.P()
    sup = [torch.nonzero(P[k] > 0).flatten() for k in range(spec.K)]
    S = max(len(s) for s in sup)
    idx = torch.stack([torch.cat([s, s[:1].expand(S - len(s))]) for s in sup])
    mask = torch.stack([torch.arange(S) < len(s) for s in sup]).float()
    return idx, mask


def support_counts(tokens: Int[Tensor, "batch T"], sup: Int[Tensor, "batch S"], mask: Float[Tensor, "batch S"],
                   dtype=torch.float32) -> Float[Tensor, "batch S"]:
    """Counts of each support token among the contextual tokens (0 on padding)."""
    ctx = tokens[:, :-1]
    return (ctx[:, :, None] == sup[:, None, :]).sum(1).to(dtype) * mask.to(dtype)


def loss_from_support(
    Z: Float[Tensor, "R M M"],
    Y: Float[Tensor, "R M M"],
    counts: Float[Tensor, "R batch S"],
    sup: Int[Tensor, "R batch S"],
    query: Int[Tensor, "R batch"],
    target: Int[Tensor, "R batch"],
) -> Float[Tensor, "R"]:
    """:func:`loss_from_counts` restricted to each sample's class support (S tokens instead of M): the same
    numbers, since tokens outside the support have n_l = 0. Only the decoder product stays M-wide."""
    R, B, S = counts.shape
    M = Z.shape[-1]
    flat = (query[..., None] * M + sup).reshape(R, B * S)
    zs = torch.gather(Z.reshape(R, M * M), 1, flat).view(R, B, S)
    b = torch.softmax(zs + torch.log(counts), dim=-1)
    f = b / b.norm(dim=-1, keepdim=True)
    f_dense = torch.zeros(R, B, M, dtype=f.dtype).scatter_add(2, sup, f)  # padding carries f = 0
    logits = torch.bmm(f_dense, Y)
    return F.cross_entropy(logits.reshape(R * B, M), target.reshape(R * B), reduction="none").view(R, B).mean(1)
