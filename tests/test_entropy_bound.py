"""Attention-entropy lower bound of Zhai et al. 2023, Thm 3.1 (docs/theory.md §3.4): hand-built cases."""

import math

import pytest
import torch

from sslens import compat
from sslens.analyses.entropy_bound import entropy, entropy_lower_bound, entropy_series, extremal_logits, head_entropy_bounds
from sslens.errors import SslensError

pytestmark = pytest.mark.tl4


def test_bound_is_formula_3_4_2_and_tight_at_the_extremal_logits():
    for T in (2, 3, 7, 11):
        assert entropy_lower_bound(0.0, T).item() == pytest.approx(math.log(T), abs=1e-12)
        for S in (0.1, 1.0, 4.0, 20.0):
            beta = math.exp(-S * math.sqrt(T / (T - 1)))  # (3.4.1)
            paper = math.log(1 + (T - 1) * beta) + S * math.sqrt(T * (T - 1)) * beta / (1 + (T - 1) * beta)  # (3.4.2)
            assert entropy_lower_bound(S, T).item() == pytest.approx(paper, rel=1e-12, abs=1e-300)
            z = extremal_logits(S, T)
            assert z.sum().item() == pytest.approx(0.0, abs=1e-12) and z.norm().item() == pytest.approx(S, rel=1e-12)
            assert entropy(torch.softmax(z, -1)).item() == pytest.approx(paper, rel=1e-10)  # tight
    assert entropy_lower_bound(3.0, 1).item() == 0.0


def test_bound_below_entropy_of_random_logits(gen):
    """Random and near-extremal centred logits of norm S never have entropy below h_T(S)."""
    for T in (2, 4, 9):
        z = torch.randn(4000, T, generator=gen, dtype=torch.float64)
        z[:2000, 0] += 6 * torch.rand(2000, generator=gen, dtype=torch.float64)  # one dominant logit
        z[:1000, 1:] *= 0.01  # close to the extremal shape
        S = (z - z.mean(-1, keepdim=True)).norm(dim=-1)
        slack = entropy(torch.softmax(z, -1)) - entropy_lower_bound(S, T)
        assert slack.min().item() >= -1e-12
        assert slack[:1000].min().item() < 0.05 * math.log(T)  # the near-extremal rows come close


def _model(**kw):
    cfg = dict(n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=16, d_vocab=11, n_ctx=6, act_fn="relu",
               normalization_type="LN", dtype=torch.float64, seed=3)
    cfg.update(kw)
    return compat.build_from_config(cfg)  # HookedTransformer on 3.x, TransformerBridge.boot_native on 4.x


def test_head_bounds_hold_on_a_model_and_the_paper_form_is_looser(gen):
    m = _model()
    with torch.no_grad():  # sharpen the heads so the bound is not trivially near log T
        for b in m.blocks:
            b.attn.W_Q.mul_(6.0)
    tokens = torch.randint(0, 11, (6, 6), generator=gen)
    r = head_entropy_bounds(m, tokens)
    assert r["entropy"].shape == (2, 6, 2, 6)
    assert (r["bound"] <= r["entropy"] + 1e-10).all()
    assert (r["bound_paper"] <= r["bound"] + 1e-12).all()
    assert r["entropy"][..., 0].abs().max() < 1e-12 and r["bound"][..., 0].abs().max() == 0  # one visible key
    assert (r["entropy"][..., 1:] - r["bound"][..., 1:]).min() < 0.5  # not vacuous
    out = entropy_series(type("S", (), {"steps": [0], "load": staticmethod(lambda s: m)})(), tokens)
    assert out["min_slack"][0][0][0] == pytest.approx((r["entropy"][0, :, 0] - r["bound"][0, :, 0]).min().item())


def test_tight_case_in_a_hand_built_head():
    """W_Q W_K^T = c u v^T, query x1 = u, key x0 = u - 2b v: at query 1 (T = 2 keys) every inequality of the
    bound is an equality, so the measured entropy equals the bound."""
    m = _model(n_layers=1, normalization_type=None, attn_only=True, n_heads=1, d_head=8, d_vocab=2, n_ctx=2)
    u, v = torch.eye(8, dtype=torch.float64)[0], torch.eye(8, dtype=torch.float64)[1]
    c, b = 5.0, 0.7
    with torch.no_grad():
        m.W_pos.zero_()
        m.W_E[0] = u - 2 * b * v
        m.W_E[1] = u
        m.blocks[0].attn.W_Q[0] = c * torch.outer(u, torch.eye(8, dtype=torch.float64)[0])
        m.blocks[0].attn.W_K[0] = torch.outer(v, torch.eye(8, dtype=torch.float64)[0])
    r = head_entropy_bounds(m, torch.tensor([[0, 1]]))
    assert r["entropy"][0, 0, 0, 1].item() == pytest.approx(r["bound"][0, 0, 0, 1].item(), rel=1e-10)
    assert r["sigma"][0, 0, 0, 1].item() == pytest.approx(c * b * math.sqrt(2) / math.sqrt(8), rel=1e-12)


def test_refuses_heads_the_bound_does_not_cover():
    with pytest.raises(SslensError) as e:
        head_entropy_bounds(_model(positional_embedding_type="rotary", rotary_dim=4), torch.zeros(1, 3, dtype=torch.long))
    assert e.value.field == "positional_embedding_type"
