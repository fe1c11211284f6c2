"""Condensation and rank-collapse quantities of Chen & Luo (docs/theory.md §2.2-2.3): pure functions.

Shapes: X [n, s, d] token embeddings of n sequences of length s; y [n] labels +-1; W_V, W1 [d, d];
W2 [d] (the scalar head). Row-vector convention as in the paper (x W).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor


def target_direction(X: Float[Tensor, "n s d"], y: Float[Tensor, "n"]) -> Float[Tensor, "d"]:
    """v = sum_i y_i sum_j X_ij / ||.|| (stage 1 target direction)."""
    v = torch.einsum("n,nsd->d", y.to(X.dtype), X)
    return v / v.norm()


def energy(v: Tensor, W_V: Tensor, W1: Tensor, W2: Tensor) -> Tensor:
    """E = (v W_V) W1 W2 (stage 1 effective energy; gradient ascent on E)."""
    return v @ W_V @ W1 @ W2


def conservation(v: Tensor, W_V: Tensor, W1: Tensor, W2: Tensor) -> tuple[Tensor, Tensor]:
    """The two conserved vectors of stage 1, for each k:
    (v W_V)_k^2 - sum_k' W1[k, k']^2   and   W2_k^2 - sum_k' W1[k', k]^2."""
    a = v @ W_V
    return a**2 - (W1**2).sum(1), W2**2 - (W1**2).sum(0)


def sign_conditions(v: Tensor, W_V: Tensor, W1: Tensor, W2: Tensor) -> tuple[float, float]:
    """A1/A2 satisfaction rates (our reading; the paper's conditions are not in docs/theory.md):
    A1: fraction of hidden units k with sign((v W_V)_k) = sign((W1 W2)_k) — the unit's input from v and
        its route to the output agree, so E grows through it;
    A2: fraction of units k with sign(W2_k) = sign(((v W_V) W1)_k) — the output weight agrees with the
        signal reaching it."""
    a = v @ W_V
    A1 = (torch.sign(a) == torch.sign(W1 @ W2)).double().mean().item()
    A2 = (torch.sign(W2) == torch.sign(a @ W1)).double().mean().item()
    return A1, A2


def stage2_F(X: Float[Tensor, "n s d"], y: Float[Tensor, "n"], W_V: Tensor, W1: Tensor, W2: Tensor) -> Float[Tensor, "d d"]:
    """F = (1/(n s sqrt(d))) sum_i y_i L1_i X_{i,s}^T (W_V W1 W2)^T M_i  (docs/theory.md §2.3), with
    L1_i = exp(-y_i (1/s) sum_j X_ij W_V W1 W2) and M_i = sum_j (X_ij - Xbar_i)^T (X_ij - Xbar_i)."""
    n, s, d = X.shape
    w = W_V @ W1 @ W2  # [d]
    yy = y.to(X.dtype)
    L1 = torch.exp(-yy * (X.mean(1) @ w))  # [n]
    Xc = X - X.mean(1, keepdim=True)
    # X_{i,s}^T w^T M_i = X_{i,s}^T (M_i w)^T (M_i symmetric), M_i w = Xc_i^T (Xc_i w): O(n s d), no [n, d, d]
    Mw = torch.einsum("nsd,ns->nd", Xc, Xc @ w)  # [n, d]
    return torch.einsum("n,nd,ne->de", yy * L1, X[:, -1, :], Mw) / (n * s * math.sqrt(d))


def rank_one_target(F: Tensor) -> Tensor:
    """u1 v1^T of F (the limit of W_Q W_K^T / ||W_Q W_K^T||_F, Thm 3 as derived in docs/theory.md §2.3)."""
    U, S, Vh = torch.linalg.svd(F.double())
    return torch.outer(U[:, 0], Vh[0])
