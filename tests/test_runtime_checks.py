"""The jaxtyping import hook (tests/conftest.py) really checks shapes and dtypes of theory/analysis code."""

import pytest
import torch

from sslens.analyses import rank
from sslens.theory import c_n


def test_hook_checks_theory_dtypes_and_shapes():
    p = torch.tensor([0.25, 0.25, 0.5])
    assert c_n.entropy(p).item() == pytest.approx(-(p * p.log()).sum().item())
    with pytest.raises(Exception, match="(?i)type|shape|dtype"):
        c_n.entropy(torch.tensor([1, 2, 3]))  # Int tensor where Float[Tensor, "... M"] is declared


def test_hook_checks_analyses():
    A = torch.randn(2, 3, 4, dtype=torch.float64)
    s = rank.singular_values(A)
    assert torch.allclose(s, torch.linalg.svdvals(A))
    with pytest.raises(Exception, match="(?i)type|shape|dtype"):
        rank.singular_values(torch.ones(3, dtype=torch.int64))  # needs "... m n": at least 2 dims, float
