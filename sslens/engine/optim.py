"""SGD (momentum, weight decay), Adam and AdamW batched over R runs, step for step as torch.optim.

Follows the single-tensor code paths of torch.optim (torch 2.x):
- SGD: g += wd p; buf = g at the first step, then buf = mu buf + g; p -= lr buf.
- Adam: g += wd p; m = lerp(m, g, 1 - beta1); v = beta2 v + (1 - beta2) g^2;
  p -= (lr / (1 - beta1^t)) m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
- AdamW: p *= 1 - lr wd, then Adam without the wd term.
Every hyperparameter is a per-run tensor ``[R, 1, 1]``; a run that is not ``alive`` is left untouched.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float
from torch import Tensor

EPS = 1e-8  # torch.optim.Adam's default


class BatchedOptimizer:
    """One optimizer over parameters ``[R, ...]`` with per-run ``lr`` (and shared kind/betas per run)."""

    def __init__(self, kind: str, params: list[Tensor], lrs: list[Tensor], momentum: Tensor, weight_decay: Tensor,
                 betas: tuple[Tensor, Tensor]):
        self.kind, self.lrs, self.mu, self.wd = kind, lrs, momentum, weight_decay
        self.beta1, self.beta2 = betas
        self.t = 0
        self.state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]

    def step(self, params: list[Tensor], grads: list[Tensor], alive: Bool[Tensor, "R"], factor: float = 1.0) -> list[Tensor]:
        """New parameters after one step (``factor`` scales every rate: the lr schedule)."""
        self.t += 1
        if self.kind == "sgd":
            return self._sgd(params, grads, alive, factor)
        a = alive.view(-1, 1, 1)
        out = []
        for i, (p, g, lr) in enumerate(zip(params, grads, self.lrs)):
            lr = lr * factor
            s1, s2 = self.state[i]
            if self.kind == "adamw":
                p = p * (1 - lr * self.wd)
            else:
                g = g + self.wd * p
            m = torch.where(a, torch.lerp(s1, g, 1 - self.beta1), s1)
            v = torch.where(a, self.beta2 * s2 + (1 - self.beta2) * g * g, s2)
            self.state[i] = (m, v)
            bc1 = 1 - self.beta1**self.t
            bc2_sqrt = torch.sqrt(1 - self.beta2**self.t)
            new = p - (lr / bc1) * (m / (v.sqrt() / bc2_sqrt + EPS))
            out.append(torch.where(a, new, params[i]))
        return out

    def _sgd(self, params: list[Tensor], grads: list[Tensor], alive: Bool[Tensor, "R"], factor: float) -> list[Tensor]:
        """SGD: ``buf = mu buf + g`` (s1 = 0 at t = 1, so buf = g exactly), ``p -= lr buf``; the weight-decay term only
        when some run has one. All runs alive: in place, three passes. Otherwise a run that is not alive keeps its
        buffer and parameters bitwise (masked, out of place: a diverged run's buffer may hold inf, and 0 * inf is nan).
        """
        wd = bool((self.wd != 0).any())
        everyone = bool(alive.all())
        a = alive.view(-1, 1, 1)
        out = []
        for i, (p, g, lr) in enumerate(zip(params, grads, self.lrs)):
            s1, s2 = self.state[i]
            if wd:
                g = g + self.wd * p
            if everyone:
                buf = s1.mul_(self.mu).add_(g)
                new = p.addcmul_(buf, lr * factor, value=-1)  # p - lr buf in one pass, in place (the engine owns p)
            else:
                buf = torch.where(a, self.mu * s1 + g, s1)
                new = torch.where(a, p - lr * factor * buf, p)
            self.state[i] = (buf, s2)
            out.append(new)
        return out


def per_run(values: list[float], dtype) -> Float[Tensor, "R 1 1"]:
    return torch.tensor(values, dtype=dtype).view(-1, 1, 1)


__all__ = ["BatchedOptimizer", "per_run", "math"]
