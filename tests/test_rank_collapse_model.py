"""The condensation model as a HookedTransformer equals f(X) = tanh(softmax(X W_Q W_K^T X^T/sqrt(d)) X W_V W1) W2."""

import math

import pytest
import torch

from sslens import compat
from sslens.errors import SslensError
from sslens.losses import last_token_ce, last_token_exp
from sslens.models import build
from sslens.models.rank_collapse import rank_collapse, rank_collapse_config, small_init_lm
from sslens.tasks import build_task


def f_formula(X, W_Q, W_K, W_V, W1, W2):
    """Independent implementation at the last position (attends to every position)."""
    d = X.shape[-1]
    s = X[:, -1:, :] @ W_Q @ W_K.T @ X.transpose(1, 2) / math.sqrt(d)  # [n, 1, s]
    a = torch.softmax(s, dim=-1)
    return (torch.tanh(a @ X @ W_V @ W1) @ W2)[:, 0]


@pytest.mark.parametrize("pos", [False, True])
def test_scalar_head_loss_and_gradients_equal_formula(pos, gen):
    d, V, s = 8, 20, 6
    model = rank_collapse(d=d, d_vocab=V, head="scalar", n_ctx=s, gamma=None, eps=0.7, pos=pos, dtype="float64", generator=gen)
    tokens = torch.randint(0, V, (12, s), generator=gen)
    y = (torch.randint(0, 2, (12,), generator=gen) * 2 - 1).double()
    loss = last_token_exp(model(tokens), y)
    loss.backward()

    a = model.blocks[0].attn
    leaves = {k: v.detach().clone().requires_grad_() for k, v in
              {"W_Q": a.W_Q[0], "W_K": a.W_K[0], "W_V": a.W_V[0], "W1": model.blocks[0].mlp.W_in, "W2": model.unembed.W_U}.items()}
    X = model.W_E.detach()[tokens] + (model.W_pos.detach()[:s] if pos else 0)
    ref = torch.exp(-y * f_formula(X, **leaves)[:, 0]).mean()
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-6
    g = compat.grads(model)  # 3.x names and layouts on both TransformerLens lines
    got = {"W_Q": g["blocks.0.attn.W_Q"][0], "W_K": g["blocks.0.attn.W_K"][0], "W_V": g["blocks.0.attn.W_V"][0],
           "W1": g["blocks.0.mlp.W_in"], "W2": g["unembed.W_U"]}
    for k in got:
        assert torch.allclose(got[k], leaves[k].grad, atol=1e-6), k
    assert {n for n, p in compat.leaves(model).items() if p.requires_grad} == {
        "blocks.0.attn.W_Q", "blocks.0.attn.W_K", "blocks.0.attn.W_V", "blocks.0.mlp.W_in", "unembed.W_U"}


def test_vocab_head_ce_equals_formula(gen):
    d, V, s = 6, 30, 5
    model = rank_collapse(d=d, d_vocab=V, head="vocab", n_ctx=s, gamma=None, eps=0.5, pos=True, dtype="float64", generator=gen)
    tokens = torch.randint(0, V, (7, s), generator=gen)
    target = torch.randint(0, V, (7,), generator=gen)
    a = model.blocks[0].attn
    X = model.W_E.detach()[tokens] + model.W_pos.detach()[:s]
    h = f_formula(X, a.W_Q[0].detach(), a.W_K[0].detach(), a.W_V[0].detach(), model.blocks[0].mlp.W_in.detach(),
                  model.blocks[0].mlp.W_out.detach())
    ref = torch.nn.functional.cross_entropy(h @ model.unembed.W_U.detach(), target)
    assert abs(last_token_ce(model(tokens), target).item() - ref.item()) < 1e-6


def test_init_scale_gamma_and_rebuild():
    m = build(rank_collapse_config(d=64, head="vocab", gamma=0.85), generator=torch.Generator().manual_seed(0))
    std = m.blocks[0].attn.W_Q.std().item()
    assert std == pytest.approx(64**-0.85, rel=0.05)
    assert m.sslens_config["gamma"] == 0.85
    lm = small_init_lm(d_model=16, d_ff=40, d_vocab=50, n_ctx=8, generator=torch.Generator().manual_seed(0))
    assert lm.cfg.normalization_type is None and lm.cfg.n_layers == 2 and lm.cfg.act_fn == "gelu"
    assert lm.blocks[1].mlp.W_in.std().item() == pytest.approx(16**-1.2, rel=0.1)


@pytest.mark.parametrize(
    "task,field",
    [({"kind": "anchor", "variant": "mod3"}, "variant"), ({"kind": "anchor", "seq_len": 2}, "seq_len"),
     ({"kind": "anchor", "d_vocab": 50}, "d_vocab"), ({"kind": "binary", "vocab": 7}, "vocab"),
     ({"kind": "binary", "signal": 0.0}, "signal"), ({"kind": "anchr"}, "task.kind")],
)
def test_invalid_task_params_name_the_field(task, field):
    with pytest.raises(SslensError) as e:
        build_task(task)
    assert e.value.field == field


def test_anchor_targets_follow_the_formula():
    g = torch.Generator().manual_seed(0)
    for variant, shift in (("base", lambda a: a), ("synonym", lambda a: a % 2)):
        x, t = build_task({"kind": "anchor", "variant": variant}).batch(500, g)
        is_anchor = x <= 4
        assert torch.all(is_anchor[:, :9].sum(1) == 1) and not is_anchor[:, 9].any()
        p = is_anchor.float().argmax(1)
        a = x[torch.arange(500), p]
        assert torch.equal(t, x[torch.arange(500), p + 1] + shift(a))
