"""Loss and exact gradients of the Y/Z model from counts, batched over R runs, without autograd.

Per sample (query m, counts n on the class support S, target n*), as in ``counts.loss_from_counts``:

    w_s = n_s e^{z[m, S_s]},  b = w / sum w,  f = b / ||b||,  logits = Y^T f,  loss = -log softmax(logits)[n*].

Backward (mean over the batch; G = (softmax(logits) - e_{n*}) / B):

    dY = f G^T (f scattered to its support),   g_f = (Y G)[S],   g_b = (g_f - f (f . g_f)) / ||b||,
    dz[m, S_s] = b_s (g_b,s - b . g_b).

Only the logits step touches all M tokens; every other step lives on the support (20 tokens per
class in the authors' data), which is why this is several times faster than autograd on dense counts.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sslens.engine.sampler import CountBatch


def support_forward(Z: Float[Tensor, "R q M"], batch: CountBatch, rows: Int[Tensor, "R batch"] | None = None) -> tuple:
    """The support-level forward: ``(zidx, b, ||b||, f)`` (flat index of z[m, S_s], attention mass, its norm, f).

    ``Z`` holds the rows of Z that ``rows`` index (each sample's query row; default: all of Z, rows = the query)."""
    R, q, M = Z.shape
    counts = batch.counts.to(Z.dtype)
    rows = batch.query if rows is None else rows
    zidx = (rows[..., None] * M + batch.support).reshape(R, -1)  # flat index of z[m, S_s]
    zs = Z.reshape(R, q * M).gather(1, zidx).view_as(counts)
    zs = zs.masked_fill(counts == 0, float("-inf"))
    w = counts * torch.exp(zs - zs.amax(-1, keepdim=True))
    b = w / w.sum(-1, keepdim=True)
    nb = b.norm(dim=-1, keepdim=True)
    return zidx, b, nb, b / nb


def support_backward(gf: Float[Tensor, "R batch s"], zidx, b, nb, f, q: int, M: int) -> Float[Tensor, "R q M"]:
    """dZ (on the ``q`` rows of :func:`support_forward`) from the gradient in f: through f = b / ||b|| and the
    softmax b (module docstring)."""
    R = gf.shape[0]
    gb = (gf - f * (f * gf).sum(-1, keepdim=True)) / nb
    gz = b * (gb - (b * gb).sum(-1, keepdim=True))
    return torch.zeros(R, q * M, dtype=gf.dtype).scatter_add_(1, zidx, gz.reshape(R, -1)).view(R, q, M)


def target_log_prob(G: Float[Tensor, "R n M"], logits: Float[Tensor, "R n M"], tgt: Int[Tensor, "R n 1"]) -> Float[Tensor, "R n 1"]:
    """log softmax(logits) at the target from the softmax ``G`` already computed for the gradient (one pass fewer
    than log_softmax + exp); where that probability nears underflow, log_softmax's value (logit - logsumexp)."""
    logp = G.gather(2, tgt).log_()
    tiny = logp < math.log(torch.finfo(G.dtype).tiny) + 8
    if bool(tiny.any()):
        logp = torch.where(tiny, logits.gather(2, tgt) - torch.logsumexp(logits, -1, keepdim=True), logp)
    return logp


def loss_and_grads(
    Z: Float[Tensor, "R q M"], Y: Float[Tensor, "R M M"], batch: CountBatch, rows: Int[Tensor, "R batch"] | None = None
) -> tuple[Float[Tensor, "R"], Float[Tensor, "R q M"], Float[Tensor, "R M M"]]:
    """Mean cross-entropy of each run over its batch and its gradients in Z and Y (batch is ``[R, B, s]``);
    ``Z``/``rows`` as in :func:`support_forward` (Z's other rows have no gradient)."""
    R, q, M = Z.shape
    B = batch.counts.shape[1]
    support = batch.support
    zidx, b, nb, f = support_forward(Z, batch, rows)
    fd = torch.zeros(R, B, M, dtype=Z.dtype).scatter_add_(2, support, f)  # f on all M tokens
    logits = torch.bmm(fd, Y)
    G = torch.softmax(logits, dim=-1)
    tgt = batch.target[..., None]
    loss = -target_log_prob(G, logits, tgt).squeeze(-1).mean(1)

    G.scatter_add_(2, tgt, torch.full_like(tgt, -1, dtype=Z.dtype)).div_(B)
    gY = torch.bmm(fd.transpose(1, 2), G)
    gf = torch.bmm(G, Y.transpose(1, 2)).gather(2, support)
    return loss, support_backward(gf, zidx, b, nb, f, q, M), gY


__all__ = ["loss_and_grads", "support_forward", "support_backward", "target_log_prob"]
