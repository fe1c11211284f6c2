"""Sequence-class specs: the authors' layout, derived distinct/common tokens, validation, sampler."""

import pytest
import torch

from sslens.data import SequenceClass, SequenceClassSpec, preset, sample, syn_medium, syn_small
from sslens.errors import SslensError


def test_syn_small_layout():
    s = syn_small()
    assert (s.M, s.K, s.T) == (34, 2, 128)
    assert s.queries == [30, 31] and s.nexts == [32, 33]
    assert s.distinct == [list(range(10, 20)), list(range(20, 30))]
    assert s.common == [list(range(10)), list(range(10))]
    P = s.P()
    w = torch.linspace(0.1, 1, 10, dtype=torch.float64)
    assert torch.allclose(P[0, :10], torch.full((10,), 1 / 15.5, dtype=torch.float64))
    assert torch.allclose(P[0, 10:20], w / 15.5)
    assert torch.allclose(P.sum(1), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("num_last,M", [(1, 33), (3, 79), (5, 125), (10, 240)])
def test_syn_medium_sizes(num_last, M):
    s = syn_medium(num_last)
    assert s.M == M and s.K == 2 * num_last
    first_q = 10 + 10 * s.K
    assert s.queries == [first_q + k // 2 for k in range(s.K)]  # two next tokens per query
    assert all(len(d) == 10 for d in s.distinct)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(M=5, classes=(SequenceClass(3, 4, {0: -1.0, 1: 1.0}),)), "classes[0].probs[0]"),
        (dict(M=5, classes=(SequenceClass(3, 4, {0: 0.0, 1: 0.0}),)), "classes[0].probs"),
        (dict(M=5, classes=(SequenceClass(3, 4, {7: 1.0}),)), "classes[0].probs"),
        (dict(M=5, classes=(SequenceClass(9, 4, {0: 1.0}),)), "classes[0].m"),
        (dict(M=5, classes=(SequenceClass(3, 4, {0: 1.0}), SequenceClass(3, 4, {1: 1.0}))), "classes[1]"),
        (dict(M=5, classes=(SequenceClass(3, 4, {}),)), "classes[0].probs"),
        (dict(M=5, classes=(SequenceClass(3, 4, {0: 1.0}),), T=1), "T"),
        (dict(M=5, classes=()), "classes"),
    ],
)
def test_invalid_specs_name_the_field(kwargs, field):
    with pytest.raises(SslensError) as e:
        SequenceClassSpec(**kwargs)
    assert e.value.field == field
    assert "\n" not in str(e.value) and str(e.value).startswith(field)


def test_unknown_preset():
    with pytest.raises(SslensError, match="preset.*syn-small, syn-medium"):
        preset("syn-large")


def test_sampler_shapes_and_statistics():
    s = syn_small()
    g = torch.Generator().manual_seed(0)
    tokens, nxt, klass = sample(s, 4000, g)
    assert tokens.shape == (4000, 128) and nxt.shape == (4000,)
    assert torch.equal(tokens[:, -1], torch.tensor(s.queries)[klass])
    assert torch.equal(nxt, torch.tensor(s.nexts)[klass])
    # class frequencies: binomial(4000, 1/2), 5 sigma = 158
    assert abs((klass == 0).sum().item() - 2000) < 158
    # empirical token frequencies of class 0 match P(l|n) (n = 127 * #class0 draws)
    ctx = tokens[klass == 0, :-1].flatten()
    freq = torch.bincount(ctx, minlength=s.M).double() / ctx.numel()
    P = s.P()[0]
    sd = (P * (1 - P) / ctx.numel()).sqrt()
    assert torch.all((freq - P).abs() <= 5 * sd + 1e-12)
    # seeded: same generator state gives the same batch
    a = sample(s, 8, torch.Generator().manual_seed(3))[0]
    b = sample(s, 8, torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b)


def test_spec_roundtrip():
    s = syn_medium(3)
    assert SequenceClassSpec.from_dict(s.to_dict()) == s
