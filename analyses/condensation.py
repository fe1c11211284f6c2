"""Condensation metrics for any HookedTransformer checkpoint series (docs/theory.md Part 3).

- cosine-similarity matrix of neuron weight vectors (rows), reordered by the principal eigenvector;
- mean |cos(row, target)| against a data-derived direction;
- relative change ||W_t - W_0||_F / ||W_0||_F per parameter group (our reading of the paper's
  undefined "relative change");
- adjacent-step singular-vector stability |cos(u1_t, u1_{t+1})|.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from sslens.metrics import cosine_matrix  # noqa: F401 - the one definition (sslens.metrics)


def principal_order(C: Float[Tensor, "n n"]) -> Tensor:
    """Permutation sorting rows by their entry in C's principal eigenvector (the condensation picture)."""
    evals, evecs = torch.linalg.eigh(C.to(torch.float64))
    u = evecs[:, -1]
    return torch.argsort(u * torch.sign(u.sum() + 1e-300))


MAX_NEURONS = 512  # a report panel is ~300 px wide: more rows than this only cost an n^3 eigendecomposition


def reordered_cosine(W: Float[Tensor, "n d"], max_neurons: int | None = None) -> tuple[Tensor, Tensor]:
    """(cosine matrix reordered by the principal eigenvector, the order: indices into W's rows).

    With ``max_neurons`` and more rows than that, only the ``max_neurons`` rows of largest norm enter (the
    condensed neurons grow; GPT-2's 3072 neurons cost 7 s of eigh per panel, 512 cost 0.05 s).
    """
    idx = torch.arange(W.shape[0])
    if max_neurons is not None and W.shape[0] > max_neurons:
        idx = torch.sort(torch.topk(W.to(torch.float64).norm(dim=1), max_neurons).indices).values
        W = W[idx]
    C = cosine_matrix(W)
    o = principal_order(C)
    return C[o][:, o], idx[o]


def mean_abs_cos(W: Float[Tensor, "n d"], target: Float[Tensor, "d"]) -> float:
    """mean_i |cos(W_i, target)|."""
    W = W.to(torch.float64)
    t = target.to(torch.float64)
    c = (W @ t) / (W.norm(dim=1).clamp_min(1e-300) * t.norm())
    return c.abs().mean().item()


def relative_change(W_t: Tensor, W_0: Tensor) -> float:
    """||W_t - W_0||_F / ||W_0||_F."""
    return ((W_t - W_0).norm() / W_0.norm()).item()


def top_singular_stability(Ws: list[Tensor]) -> list[float]:
    """|cos(u1_t, u1_{t+1})| of the top left singular vectors of consecutive matrices."""
    us = [torch.linalg.svd(W.to(torch.float64))[0][:, 0] for W in Ws]
    return [abs(torch.dot(a, b).item()) for a, b in zip(us[:-1], us[1:])]


def plot_cosine(C: Tensor, ax, title: str = ""):
    im = ax.imshow(C.numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return im
