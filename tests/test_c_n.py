"""Composition: long-sequence c_n (theory.md 1.3) against hand-computed answers and against the
empirical attention of the HookedTransformer at T = 1024."""

import math

import torch

from sslens.analyses.c_n import c_n, c_n_of_model, empirical_composition, total_variation
from sslens.data import SequenceClass, SequenceClassSpec, sample, syn_small
from sslens.hooks.recorder import probe_patterns
from sslens.models import scan_snap
from sslens.theory.c_n import distinct_entropy, entropy, recall


def test_zero_init_gives_P_and_its_entropy():
    s = syn_small()
    c = c_n(torch.zeros(s.M, s.M), s)
    assert torch.allclose(c, s.P())
    H = [-sum(p * math.log(p) for p in cl.probs.values()) for cl in s.classes]
    assert torch.allclose(entropy(c), torch.tensor(H, dtype=torch.float64))
    # distinct tokens renormalised: weights linspace(0.1, 1, 10) / 5.5
    w = torch.linspace(0.1, 1, 10, dtype=torch.float64) / 5.5
    assert torch.allclose(distinct_entropy(c, s.distinct), entropy(w).repeat(2))


def test_hand_set_Z():
    spec = SequenceClassSpec(M=4, classes=(SequenceClass(3, 2, {0: 0.5, 1: 0.25, 2: 0.25}),), T=8)
    Z = torch.zeros(4, 4)
    Z[3] = torch.tensor([0.0, math.log(2), 0.0, 5.0])
    # weights P e^z = 0.5, 0.5, 0.25 -> c = 0.4, 0.4, 0.2, 0 (token 3 has P = 0)
    assert torch.allclose(c_n(Z, spec)[0], torch.tensor([0.4, 0.4, 0.2, 0.0], dtype=torch.float64))
    thr = torch.tensor([0.1, 0.3, 0.5])
    assert torch.allclose(recall(c_n(Z, spec), [[0, 1, 2]], thr), torch.tensor([1.0, 2 / 3, 0.0], dtype=torch.float64))


def test_long_sequence_limit_matches_model_attention_at_T1024():
    s = syn_small(T=1024)
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(s.M, s.M, generator=g, dtype=torch.float64)
    model = scan_snap(s.M, n_ctx=1024, dtype="float32", Z=Z)
    tokens, nxt, _ = sample(s, 64, g)
    pattern = probe_patterns(model, tokens)["blocks.0.pattern"]
    emp = empirical_composition(pattern, tokens, nxt, s)
    theory = c_n_of_model(model, s)  # Z read back from the model's token-space QK circuit
    assert torch.allclose(theory, c_n(Z, s), atol=1e-6)
    tv = total_variation(emp, theory)
    assert torch.all(tv < 0.02), tv
    # and it is not trivially close: the composition differs clearly from P(l|n)
    assert torch.all(total_variation(theory, s.P()) > 0.1)


def test_empirical_composition_counts_repeats_and_groups_by_class():
    spec = SequenceClassSpec(M=5, classes=(SequenceClass(3, 4, {0: 0.5, 1: 0.5}), SequenceClass(4, 3, {1: 0.5, 2: 0.5})), T=4)
    tokens = torch.tensor([[0, 0, 1, 3], [1, 2, 2, 4], [0, 1, 1, 3]])
    target = torch.tensor([4, 3, 4])
    pattern = torch.zeros(3, 1, 4, 4)
    pattern[0, 0, -1] = torch.tensor([0.25, 0.25, 0.5, 0.0])  # token 0 gets 0.5, token 1 gets 0.5
    pattern[1, 0, -1] = torch.tensor([0.2, 0.3, 0.5, 0.0])  # class 1: token 1 0.2, token 2 0.8
    pattern[2, 0, -1] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # token 0 gets 1
    emp = empirical_composition(pattern, tokens, target, spec)
    expected = torch.tensor([[0.75, 0.25, 0, 0, 0], [0, 0.2, 0.8, 0, 0]], dtype=torch.float64)
    assert torch.allclose(emp, expected)
