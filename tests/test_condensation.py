"""Known answers for rank and condensation metrics, the stage-2 F, and stage-1 conservation laws."""

import math

import numpy as np
import pytest
import torch

from sslens.analyses import rank
from sslens.analyses.condensation import cosine_matrix, mean_abs_cos, reordered_cosine, relative_change, top_singular_stability
from sslens.analyses.rank_collapse import escape_step, loglog_slope
from sslens.theory import rank_collapse as th


@pytest.mark.parametrize("r", [1, 2, 5])
def test_matrix_of_rank_r(r, gen):
    A = torch.randn(12, r, generator=gen, dtype=torch.float64) @ torch.randn(r, 9, generator=gen, dtype=torch.float64)
    assert rank.numerical_rank(A).item() == r
    assert (rank.distance_to_rank1(A).item() < 1e-10) == (r == 1)


def test_effective_and_stable_rank_of_known_spectra():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    A = torch.diag(s)
    p = s / s.sum()
    assert rank.effective_rank(A).item() == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    assert rank.stable_rank(A).item() == pytest.approx(22 / 16)
    assert rank.top1_energy(A).item() == pytest.approx(16 / 22)
    assert rank.effective_rank(torch.eye(5)).item() == pytest.approx(5.0)
    assert rank.effective_rank(torch.zeros(3, 3)).item() == 0.0  # defined as 0, not NaN
    u, v = torch.tensor([1.0, 0, 0, 0]), torch.tensor([1.0, 0, 0, 0])
    assert rank.rank1_alignment(A, u, v).item() == pytest.approx(4 / math.sqrt(22))


def test_F_for_two_samples_by_hand():
    """Two sequences of length 2 in d = 2, W_V = W1 = I, W2 = (1, 0): w = W_V W1 W2 = e1."""
    X = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[2.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    y = torch.tensor([1.0, -1.0], dtype=torch.float64)
    I = torch.eye(2, dtype=torch.float64)
    W2 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    F = th.stage2_F(X, y, I, I, W2)
    # sample 1: Xbar = (.5,.5); L1 = exp(-1 * .5); x_s = (0,1); M = [[.5,-.5],[-.5,.5]]
    # sample 2: Xbar = (1,0);  L1 = exp(+1 * 1);  x_s = (0,0) -> contributes 0
    M1 = torch.tensor([[0.5, -0.5], [-0.5, 0.5]], dtype=torch.float64)
    left1 = torch.outer(torch.tensor([0.0, 1.0], dtype=torch.float64), W2)
    expected = (1 * math.exp(-0.5) * left1 @ M1) / (2 * 2 * math.sqrt(2))
    assert torch.allclose(F, expected)
    u1v1 = th.rank_one_target(F)
    assert torch.allclose(u1v1.abs(), (expected / expected.norm()).abs(), atol=1e-12)  # F itself has rank one


def test_target_direction_and_energy():
    X = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)
    y = torch.tensor([1.0, -1.0], dtype=torch.float64)
    v = th.target_direction(X, y)
    assert torch.allclose(v, torch.tensor([1.0, -1.0], dtype=torch.float64) / math.sqrt(2))
    I = torch.eye(2, dtype=torch.float64)
    assert th.energy(v, I, I, torch.tensor([1.0, 0.0], dtype=torch.float64)).item() == pytest.approx(1 / math.sqrt(2))


def test_conservation_laws_hold_under_small_step_gradient_ascent_on_E(gen):
    """Stage 1 dynamics = gradient ascent on E = (v W_V) W1 W2; the two conserved vectors stay put."""
    d = 6
    v = torch.randn(d, generator=gen, dtype=torch.float64)
    v = v / v.norm()
    # W_V enters E only through a = v W_V; the law is stated for a = v W_V, so evolve a, W1, W2.
    a = (0.2 * torch.randn(d, generator=gen, dtype=torch.float64)).requires_grad_()
    W1 = (0.2 * torch.randn(d, d, generator=gen, dtype=torch.float64)).requires_grad_()
    W2 = (0.2 * torch.randn(d, generator=gen, dtype=torch.float64)).requires_grad_()
    def laws():
        return torch.cat([a**2 - (W1**2).sum(1), W2**2 - (W1**2).sum(0)]).detach()
    c0 = laws()
    a_sq0 = (a.detach() ** 2).clone()
    E0 = (a @ W1 @ W2).item()
    lr = 1e-3
    for _ in range(3000):
        E = a @ W1 @ W2
        ga, g1, g2 = torch.autograd.grad(E, [a, W1, W2])
        with torch.no_grad():
            a += lr * ga
            W1 += lr * g1
            W2 += lr * g2
    moved = ((a.detach() ** 2) - a_sq0).abs().max().item()  # each term of the law moves ...
    drift = (laws() - c0).abs().max().item()  # ... but their difference does not
    assert abs((a @ W1 @ W2).item()) > 10 * abs(E0)
    assert drift < 1e-2 * moved, (drift, moved)


def test_condensation_metrics():
    W = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    C = cosine_matrix(W)
    assert torch.allclose(C, torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.float64))
    Cr, order = reordered_cosine(W)
    assert sorted(order.tolist()) == [0, 1, 2] and torch.allclose(Cr, C[order][:, order])
    assert set(order[:2].tolist()) == {0, 1} or set(order[1:].tolist()) == {0, 1}  # the condensed pair is adjacent
    assert mean_abs_cos(W, torch.tensor([1.0, 0.0])) == pytest.approx(2 / 3)
    assert relative_change(2 * W, W) == pytest.approx(1.0)
    R = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    assert top_singular_stability([torch.diag(torch.tensor([3.0, 1.0])), torch.diag(torch.tensor([1.0, 3.0]))]) == [0.0]
    assert top_singular_stability([torch.diag(torch.tensor([3.0, 1.0])), R @ R.T * 2 + torch.diag(torch.tensor([1.0, 0]))])[0] == pytest.approx(1.0)


def test_escape_and_slope():
    steps = list(range(10))
    assert escape_step(steps, [1.0, 0.99, 0.95, 0.89, 0.5] + [0.4] * 5) == 3
    eps = np.array([0.01, 0.02, 0.04, 0.08] * 2)
    t = 3.0 / eps * np.exp(np.random.default_rng(0).normal(0, 0.02, len(eps)))
    fit = loglog_slope(eps.tolist(), t.tolist())
    assert fit["slope"] == pytest.approx(-1, abs=0.05) and fit["ci95"][0] <= fit["slope"] <= fit["ci95"][1]
    assert fit["ci95"][1] - fit["ci95"][0] < 0.1 and fit["n"] == 8


def test_reordered_cosine_keeps_the_largest_norm_neurons():
    """max_neurons keeps the rows of largest norm; the order indexes W's rows and gives the same matrix."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(40, 5, generator=g, dtype=torch.float64)
    W[[3, 17, 31]] *= 100  # three condensed (large) neurons
    Cr, order = reordered_cosine(W, max_neurons=3)
    assert sorted(order.tolist()) == [3, 17, 31]
    assert torch.allclose(Cr, cosine_matrix(W)[order][:, order])
    assert reordered_cosine(W, max_neurons=40)[1].shape == (40,)
