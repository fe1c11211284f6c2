"""What the paper's 1-layer, 1-head, no-residual model can and cannot do on the anchor task (docs/rank_collapse.md
"Anchor task: representability")."""

import torch

from sslens.data.anchor import ANCHORS, AnchorTask
from sslens.models.rank_collapse import rank_collapse


def _last_query(model, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_attn_scores", "hook_pattern")))
    return cache["blocks.0.attn.hook_attn_scores"][:, 0, -1], cache["blocks.0.attn.hook_pattern"][:, 0, -1]


def test_last_query_cannot_point_at_the_anchors_successor(gen):
    """A key's score at the last query depends on its own token and position only: replacing the anchor
    by a key leaves every other position's score unchanged, the successor's included. So attention can
    favour anchors (or positions), never "the token after the anchor"; that token reaches the output
    only through the attention-weighted mixture of all keys, which the MLP would have to decode."""
    task = AnchorTask(variant="synonym")
    model = rank_collapse(d=32, d_vocab=201, head="vocab", n_ctx=10, gamma=None, eps=0.5, pos=True, dtype="float64",
                          generator=gen)
    x, _ = task.batch(64, gen)
    p = torch.stack([torch.nonzero(torch.isin(r, torch.tensor(ANCHORS)))[0, 0] for r in x])
    x2 = x.clone()
    x2[torch.arange(64), p] = 50  # the anchor replaced by a key token
    s1, _ = _last_query(model, x)
    s2, _ = _last_query(model, x2)
    other = torch.ones_like(s1, dtype=torch.bool)
    other[torch.arange(64), p] = False
    assert torch.allclose(s1[other], s2[other], atol=1e-12)  # successor p+1 included
    assert (s1[~other] - s2[~other]).abs().min() > 1e-6  # only the changed position's own score moves


def test_attention_can_single_out_the_anchor(gen):
    """What it can do: with W_Q W_K^T built to score anchor tokens high, the last query puts > 0.99 of its
    attention on the anchor, so the anchor's identity (and, through W_pos, its position) is representable."""
    task = AnchorTask(variant="synonym")
    d = 128  # >= 96 keys + 10 positions + 4 anchors: the linear conditions below are exactly solvable
    model = rank_collapse(d=d, d_vocab=201, head="vocab", n_ctx=10, gamma=None, eps=0.05, pos=True, dtype="float64",
                          generator=gen)
    E, P = model.W_E.detach(), model.W_pos.detach()
    keys, anchors = E[5:101], E[torch.tensor(ANCHORS)]
    one = lambda n: torch.ones(n, 1, dtype=torch.float64)  # noqa: E731
    zero = lambda n: torch.zeros(n, 1, dtype=torch.float64)  # noqa: E731
    # q: x_last . q = 1 for every last key (position 9); a: anchors . a = 1, keys . a = 0, positions . a = 0
    q = torch.linalg.lstsq(torch.cat([keys, P[9:10]]), torch.cat([one(96), zero(1)])).solution[:, 0]
    a = torch.linalg.lstsq(torch.cat([anchors, keys, P]), torch.cat([one(4), zero(96), zero(10)])).solution[:, 0]
    with torch.no_grad():
        model.blocks[0].attn.W_Q[0] = 20 * d**0.5 * torch.outer(q, torch.eye(d, dtype=torch.float64)[0])
        model.blocks[0].attn.W_K[0] = torch.outer(a, torch.eye(d, dtype=torch.float64)[0])
    x, _ = task.batch(64, gen)
    p = torch.stack([torch.nonzero(torch.isin(r, torch.tensor(ANCHORS)))[0, 0] for r in x])
    _, pat = _last_query(model, x)
    assert pat[torch.arange(64), p].min() > 0.99
