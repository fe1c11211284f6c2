"""The Y/Z model as a HookedTransformer equals the plain formula of theory.md 1.1 (loss and gradients)."""

import pytest
import torch
import torch.nn.functional as F

from sslens import compat
from sslens.losses import last_token_ce
from sslens.models import build, scan_snap, scan_snap_config
from sslens.models.scan_snap import Y_of, Z_of


def formula_loss(Z, Y, tokens, nxt):
    """Independent implementation: b_t = softmax_t z[m, x_t] over t < T; f = sum b_t e_{x_t}; logits = Y^T f/||f||."""
    B, T = tokens.shape
    M = Z.shape[0]
    ctx, m = tokens[:, :-1], tokens[:, -1]
    z = Z[m[:, None], ctx]
    b = torch.softmax(z, dim=-1)
    f = torch.zeros(B, M, dtype=Z.dtype).scatter_add(1, ctx, b)
    f = f / f.norm(dim=-1, keepdim=True)
    return F.cross_entropy(f @ Y, nxt)


@pytest.mark.parametrize("M,T", [(7, 5), (34, 128), (20, 2)])
def test_loss_and_gradients_equal_formula(M, T, gen):
    Z = torch.randn(M, M, dtype=torch.float64, generator=gen) * 2
    Y = torch.randn(M, M, dtype=torch.float64, generator=gen)
    tokens = torch.randint(0, M, (16, T), generator=gen)
    nxt = torch.randint(0, M, (16,), generator=gen)

    model = scan_snap(M, n_ctx=T, dtype="float64", Z=Z, Y=Y)
    loss = last_token_ce(model(tokens), nxt)
    loss.backward()

    Zr, Yr = Z.clone().requires_grad_(), Y.clone().requires_grad_()
    ref = formula_loss(Zr, Yr, tokens, nxt)
    ref.backward()

    assert abs(loss.item() - ref.item()) < 1e-6
    grads = compat.grads(model)  # 3.x names and layouts on both TransformerLens lines
    assert torch.allclose(grads["blocks.0.attn.W_Q"][0], Zr.grad, atol=1e-6)
    assert torch.allclose(grads["unembed.W_U"], Yr.grad, atol=1e-6)
    # nothing else trains
    trainable = {n for n, p in compat.leaves(model).items() if p.requires_grad}
    assert trainable == {"blocks.0.attn.W_Q", "unembed.W_U"}


def test_query_excluded_and_zero_init_uniform(gen):
    M, T = 10, 9
    model = scan_snap(M, n_ctx=T)
    tokens = torch.randint(0, M, (3, T), generator=gen)
    _, cache = model.run_with_cache(tokens)
    pat = cache["pattern", 0][:, 0, -1]  # last query row
    assert torch.all(pat[:, -1] == 0)  # query does not attend to itself
    assert torch.allclose(pat[:, :-1], torch.full((3, T - 1), 1 / (T - 1)))  # zero init: uniform
    # output is l2-normalised and residual-free: resid_post = normalised attention output
    resid = cache["blocks.0.hook_resid_post"][:, -1]
    assert torch.allclose(resid.norm(dim=-1), torch.ones(3))
    counts = torch.zeros(3, M).scatter_add(1, tokens[:, :-1], torch.ones(3, T - 1))
    assert torch.allclose(resid, counts / counts.norm(dim=-1, keepdim=True), atol=1e-6)


def test_factored_circuits_are_Z_and_identity(gen):
    M = 12
    Z = torch.randn(M, M, generator=gen)
    model = scan_snap(M, n_ctx=8, Z=Z)
    assert torch.allclose(model.QK.AB[0, 0], Z)
    assert torch.allclose(model.OV.AB[0, 0], torch.eye(M))
    assert torch.allclose(Y_of(model), torch.zeros(M, M))


def test_random_init_bounds_and_rebuild(gen):
    M = 33
    model = build(scan_snap_config(M, init="random"), generator=gen)
    Z = Z_of(model)
    assert Z.abs().max() <= 1 / M**0.5 and Z.abs().max() > 0.5 / M**0.5
    assert model.sslens_config == scan_snap_config(M, init="random")
    # the same generator seed gives the same init; a different one does not
    a = build(scan_snap_config(M, init="random"), generator=torch.Generator().manual_seed(5))
    b = build(scan_snap_config(M, init="random"), generator=torch.Generator().manual_seed(5))
    c = build(scan_snap_config(M, init="random"), generator=torch.Generator().manual_seed(6))
    assert torch.equal(Z_of(a), Z_of(b)) and not torch.equal(Z_of(a), Z_of(c))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_frozen_params_equal_the_built_models(dtype):
    """The count engine writes ``frozen_params`` into its checkpoints without building a model: the same names
    (3.x), shapes, dtypes and values as every frozen parameter of the built model, on either TransformerLens line."""
    from sslens.models.scan_snap import TRAINABLE, frozen_params

    built = {n: p for n, p in compat.params(scan_snap(6, n_ctx=9, dtype=dtype)).items() if n not in TRAINABLE}
    formula = frozen_params(6, n_ctx=9, dtype=dtype)
    assert sorted(formula) == sorted(built)
    for n, p in built.items():
        assert formula[n].dtype == p.dtype and formula[n].shape == p.shape, n
        assert torch.equal(formula[n], p.detach()), n
