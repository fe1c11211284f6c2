"""The decoder products on the class blocks of the supports: the same loss and gradients as ``grad.loss_and_grads``
with about B (c + d) M multiply-adds per product instead of B M^2 (docs/engine.md, "Block products").

In the authors' sequence classes (Syn-Small, Syn-Medium) every class's support is c common tokens C shared by all
classes plus d distinct tokens D_k of its own, the D_k disjoint. So f = b / ||b|| has c + d nonzeros and

    logits = Y^T f = Y[C]^T f_C + Y[D_k]^T f_{D_k}.

The engine keeps Y's rows permuted to (C, D_0, ..., D_{K-1}, rest) and split in three tensors ``Y_C [R, c, M]``,
``Y_D [R, K d, M]``, ``Y_rest`` (rows of tokens that are never contextual: no gradient, only the optimizer's
decay). Samples are placed in a padded grid of K classes x n_max slots (``pos``), so the distinct product is one
batched matmul over (run, class) of ``[n_max, d] x [d, M]``; padded slots carry f = 0 and a zero loss weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from sslens.engine.grad import support_backward, support_forward, target_log_prob
from sslens.engine.sampler import CountBatch, Supports


@dataclass
class ClassBlocks:
    """Common tokens ``C`` (c), per-class distinct blocks ``D_k`` (d each), and Y's row order ``order``."""

    c: int
    d: int
    K: int
    order: Int[Tensor, "M"]  # new row i of Y = token order[i]
    inverse: Int[Tensor, "M"]
    cslot: Int[Tensor, "K c"]  # slot of C[i] in class k's support row
    dslot: Int[Tensor, "K d"]  # slot of D_k[j] in class k's support row

    @staticmethod
    def of(supports: Supports) -> "ClassBlocks | None":
        """The block layout of a spec's supports, or None when they are not common + disjoint equal-sized blocks."""
        spec = supports.spec
        rows = [supports.table[k, : int(supports.size[k])].tolist() for k in range(spec.K)]
        common = set(rows[0]).intersection(*map(set, rows[1:]))
        distinct = [[t for t in r if t not in common] for r in rows]
        d = len(distinct[0])
        flat = [t for D in distinct for t in D]
        if d == 0 or any(len(D) != d for D in distinct) or len(set(flat)) != len(flat):
            return None
        C = sorted(common)
        rest = sorted(set(range(spec.M)) - common - set(flat))
        order = torch.tensor(C + flat + rest)
        slot = [{t: i for i, t in enumerate(r)} for r in rows]
        cslot = torch.tensor([[slot[k][t] for t in C] for k in range(spec.K)], dtype=torch.long).view(spec.K, len(C))
        dslot = torch.tensor([[slot[k][t] for t in distinct[k]] for k in range(spec.K)], dtype=torch.long)
        return ClassBlocks(len(C), d, spec.K, order, torch.argsort(order), cslot, dslot)

    def worth_it(self, M: int, batch: int) -> bool:
        """Whether the block products are faster than the dense ones: their multiply-adds (with the expected padding
        n_max ~ batch / K + 3 sqrt(batch / K)) under a quarter of the dense ones -- their small matrices and padded
        softmax cost about 4x per multiply-add (measured: 1.9x faster at M = 240, 1.2x at 125, none at 79)."""
        n_max = batch / self.K + 3 * (batch / self.K) ** 0.5
        return 4 * (batch * self.c + self.K * n_max * self.d) < batch * M

    def split(self, Y: Float[Tensor, "R M M"]) -> list[Tensor]:
        """``[Y_C, Y_D, Y_rest]``: Y's rows in block order (contiguous copies)."""
        Yp = Y[:, self.order]
        c, kd = self.c, self.K * self.d
        return [Yp[:, :c].contiguous(), Yp[:, c : c + kd].contiguous(), Yp[:, c + kd :].contiguous()]

    def join(self, pieces: list[Tensor]) -> Float[Tensor, "R M M"]:
        """Y in token order from its three pieces."""
        return torch.cat(pieces, dim=1)[:, self.inverse]


def loss_and_grads_blocks(
    Z: Float[Tensor, "R q M"], Y: list[Tensor], batch: CountBatch, blocks: ClassBlocks,
    rows: Int[Tensor, "R batch"] | None = None,
) -> tuple[Float[Tensor, "R"], Float[Tensor, "R q M"], list[Tensor]]:
    """``grad.loss_and_grads`` with Y given as its ``[Y_C, Y_D]`` pieces (``ClassBlocks.split``); the gradient in Y
    comes as those two pieces (Y_rest has none)."""
    Y_C, Y_D = Y
    R, q, M = Z.shape
    B, s = batch.counts.shape[1:]
    c, d, K = blocks.c, blocks.d, blocks.K
    zidx, b, nb, f = support_forward(Z, batch, rows)

    klass = batch.klass
    onehot = F.one_hot(klass, K)  # [R, B, K]
    n_max = int(onehot.sum(1).max())
    rank = onehot.cumsum(1).gather(2, klass[..., None]).squeeze(-1) - 1  # order of each sample within its class
    pos = klass * n_max + rank  # [R, B]: slot in the padded grid of K x n_max
    P = K * n_max
    cslot, dslot = blocks.cslot[klass], blocks.dslot[klass]  # [R, B, c], [R, B, d]
    F_C = torch.zeros(R, P, c, dtype=Z.dtype).scatter_(1, pos[..., None].expand(R, B, c), f.gather(2, cslot))
    F_D = torch.zeros(R, P, d, dtype=Z.dtype).scatter_(1, pos[..., None].expand(R, B, d), f.gather(2, dslot))
    F_D3 = F_D.view(R * K, n_max, d)
    Y_D3 = Y_D.view(R * K, d, M)

    logits = torch.bmm(F_C, Y_C)  # [R, P, M]
    logits.view(R * K, n_max, M).baddbmm_(F_D3, Y_D3)
    G = torch.softmax(logits, dim=-1)
    tgt = torch.zeros(R, P, dtype=torch.long).scatter_(1, pos, batch.target)[..., None]
    weight = torch.zeros(R, P, dtype=Z.dtype).scatter_(1, pos, torch.full_like(pos, 1.0 / B, dtype=Z.dtype))[..., None]
    loss = -(target_log_prob(G, logits, tgt) * weight).sum((1, 2))

    # softmax - e_target, not yet / B: a padded row's G is never read (its f is 0 in F_C, F_D, and its g_f is not
    # gathered), so no pass over [R, P, M] zeroes it; the mean's 1 / B scales the small products instead
    G.scatter_add_(2, tgt, torch.full_like(tgt, -1, dtype=Z.dtype))
    G3 = G.view(R * K, n_max, M)
    gY_C = torch.bmm(F_C.transpose(1, 2), G).div_(B)
    gY_D = torch.bmm(F_D3.transpose(1, 2), G3).view(R, K * d, M).div_(B)
    gf_C = torch.bmm(G, Y_C.transpose(1, 2)).gather(1, pos[..., None].expand(R, B, c))
    gf_D = torch.bmm(G3, Y_D3.transpose(1, 2)).view(R, P, d).gather(1, pos[..., None].expand(R, B, d))
    gf = torch.zeros(R, B, s, dtype=Z.dtype).scatter_(2, cslot, gf_C).scatter_(2, dslot, gf_D).div_(B)
    return loss, support_backward(gf, zidx, b, nb, f, q, M), [gY_C, gY_D]


__all__ = ["ClassBlocks", "loss_and_grads_blocks"]
