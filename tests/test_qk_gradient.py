"""The exact QK gradient G = -dL/d(W_Q W_K^T) (docs/theory.md §2.3, (2.3.4)) on real models of the installed
TransformerLens line (HookedTransformer / TransformerBridge; `make test4`)."""

import pytest
import torch

from sslens import compat
from sslens.analyses.qk_gradient import alignment, alignment_series, qk_gradient, qk_product
from sslens.errors import SslensError
from sslens.losses import all_token_ce, last_token_exp
from sslens.models.rank_collapse import rank_collapse
from sslens.theory.rank_collapse import stage2_F

pytestmark = pytest.mark.tl4


def _tiny(**kw):
    cfg = dict(n_layers=2, d_model=12, n_heads=2, d_head=6, d_mlp=24, d_vocab=17, n_ctx=7, act_fn="gelu",
               normalization_type="LN", dtype=torch.float64, seed=0)
    cfg.update(kw)
    return compat.build_from_config(cfg)  # HookedTransformer on 3.x, TransformerBridge.boot_native on 4.x


def test_G_is_minus_dL_dA_by_the_chain_rule(gen):
    """dL/dW_Q = -G W_K and dL/dW_K = -G^T W_Q for every layer and head (LayerNorm model, CE loss)."""
    model = _tiny()
    tokens = torch.randint(0, 17, (5, 7), generator=gen)
    G = qk_gradient(model, tokens)
    assert G.shape == (2, 2, 12, 12)
    loss = all_token_ce(model(tokens), tokens)
    names = [f"blocks.{l}.attn.{w}" for l in range(2) for w in ("W_Q", "W_K")]
    leaves = compat.leaves(model)  # the real parameters (4.x: nn.Linear weights), gradients viewed in 3.x layouts
    grads = [compat.layout_3x(model, n, g) for n, g in zip(names, torch.autograd.grad(loss, [leaves[n] for n in names]))]
    for l in range(2):
        W_Q, W_K = model.blocks[l].attn.W_Q.detach(), model.blocks[l].attn.W_K.detach()
        gQ = -torch.einsum("hde,hek->hdk", G[l], W_K)
        gK = -torch.einsum("hde,hdk->hek", G[l], W_Q)
        assert torch.allclose(grads[2 * l], gQ, atol=1e-12, rtol=1e-8)
        assert torch.allclose(grads[2 * l + 1], gK, atol=1e-12, rtol=1e-8)


@pytest.mark.parametrize("act, tol", [("none", 0.999), ("tanh", 0.99)])
def test_G_equals_closed_form_F_while_attention_small(gen, act, tol):
    """On the [CR] model with W_Q, W_K at 1e-5, G (autograd, exponential loss) is F of (2.3.2): same
    direction (cos >= 0.99; >= 0.999 without the tanh, where F drops nothing but O(attention)) and size."""
    model = rank_collapse(d=16, d_vocab=32, head="scalar", n_ctx=8, gamma=None, init_attn=1e-5, init_outer=0.3,
                          pos=False, act=act, dtype="float64", generator=gen)
    tokens = torch.randint(0, 32, (256, 8), generator=gen)
    y = (torch.randint(0, 2, (256,), generator=gen) * 2 - 1).double()
    G = qk_gradient(model, tokens, y, last_token_exp)[0, 0]
    X = model.W_E.detach()[tokens]
    F = stage2_F(X, y, model.W_V[0, 0].detach(), model.blocks[0].mlp.W_in.detach(), model.W_U[:, 0].detach())
    cos = (G * F).sum() / (G.norm() * F.norm())
    assert cos >= tol
    assert G.norm() / F.norm() == pytest.approx(1.0, abs=1 - tol + 0.05 * (act == "tanh"))
    # a model whose W_Q W_K^T is G's own top pair is aligned with G; the second pair is orthogonal to it
    U, S, Vh = torch.linalg.svd(G)
    assert alignment(torch.outer(U[:, 0], Vh[0]), G).item() == pytest.approx(1.0, abs=1e-12)
    assert alignment(torch.outer(U[:, 1], Vh[1]), G).item() == pytest.approx(0.0, abs=1e-12)


def test_alignment_series_over_checkpoints(gen):
    """Over a series (any object with steps and load): cos(W_Q W_K^T, u1 v1^T of G) per step/layer/head."""
    from sslens.checkpoints import Series

    models = {0: _tiny(seed=1), 5: _tiny(seed=2)}
    tokens = torch.randint(0, 17, (3, 7), generator=gen)
    out = alignment_series(Series("tiny", [0, 5], models.__getitem__), tokens)
    assert out["steps"] == [0, 5]
    for i, s in enumerate(out["steps"]):
        m = models[s]
        want = alignment(qk_product(m), qk_gradient(m, tokens))
        assert torch.allclose(torch.tensor(out["cos"][i], dtype=torch.float64), want)
        assert len(out["cos"][i]) == 2 and len(out["cos"][i][0]) == 2


def test_heads_not_of_the_form_are_refused_in_one_line():
    with pytest.raises(SslensError) as e:
        qk_gradient(_tiny(positional_embedding_type="rotary", rotary_dim=6), torch.zeros(1, 3, dtype=torch.long))
    assert e.value.field == "positional_embedding_type" and "\n" not in str(e.value)
    m = _tiny()
    with torch.no_grad():
        m.blocks[1].attn.b_K[0, 0] = 0.5
    with pytest.raises(SslensError) as e:
        qk_gradient(m, torch.zeros(1, 3, dtype=torch.long))
    assert e.value.field == "blocks.1.attn.b_K"
    with pytest.raises(SslensError) as e:
        qk_gradient(_tiny(), torch.zeros(1, 3, dtype=torch.long), layers=[2])
    assert e.value.field == "layers"
