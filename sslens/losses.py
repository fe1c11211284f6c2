"""Losses on the last position: cross-entropy (Scan&Snap, CR anchor task) and exponential (CR binary)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from sslens.errors import SslensError


def last_token_ce(logits: Float[Tensor, "batch pos vocab"], target: Int[Tensor, " batch"]) -> Tensor:
    """Cross-entropy of the last position's logits against the next token."""
    return F.cross_entropy(logits[:, -1].float() if logits.dtype == torch.float16 else logits[:, -1], target)


def last_token_exp(logits: Float[Tensor, "batch pos out"], target: Float[Tensor, " batch"]) -> Tensor:
    """Exponential loss mean_i exp(-y_i f(X_i)_s) on the first output of the last position (docs/theory.md §2.1)."""
    return torch.exp(-target.to(logits.dtype) * logits[:, -1, 0]).mean()


def all_token_ce(logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"]) -> Tensor:
    """Standard next-token cross-entropy over every position (text language models)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


LOSSES = {"last_ce": last_token_ce, "last_exp": last_token_exp, "all_ce": all_token_ce}


def get_loss(name: str):
    """The loss function registered as ``name`` (``last_ce``, ``last_exp``, ``all_ce``)."""
    if name not in LOSSES:
        raise SslensError("loss", f"unknown loss {name!r}", ", ".join(LOSSES))
    return LOSSES[name]
