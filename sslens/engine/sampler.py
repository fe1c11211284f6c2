"""Batches as counts on each class's support: from per-token samples, or drawn directly (exact).

A Scan&Snap batch enters the Y/Z model only through (query m, target n, counts n_l of the contextual
tokens) (docs/engine.md). Counts are kept compactly on the support S_k = {l : P(l | k) > 0} of each
sample's class k, padded to the largest support with count 0 (a padded slot has weight 0 everywhere).

Two sources, same distribution:
- ``from_tokens``: bincount of the very tokens ``sslens.data.sample`` draws (the stream ``sslens train``
  sees for the same seed);
- ``sample_counts``: class k ~ Uniform(K), then (n_l)_{l in S_k} ~ Multinomial(T-1, P(.|k)) drawn as a
  conditional-binomial chain n_j ~ Binomial(N - sum_{i<j} n_i, p_j / sum_{i>=j} p_i), which is the
  multinomial law exactly (chain rule of the multinomial), at cost O(|S_k|) instead of O(T).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sslens.data.sequence_classes import SequenceClassSpec

FIELDS = ("support", "counts", "query", "target", "klass")


@dataclass
class CountBatch:
    """One batch in count form; ``support``/``counts`` are ``[..., batch, s]`` (s = largest support)."""

    support: Int[Tensor, "*lead batch s"]  # token ids (padding: any id, with count 0)
    counts: Float[Tensor, "*lead batch s"]
    query: Int[Tensor, "*lead batch"]
    target: Int[Tensor, "*lead batch"]
    klass: Int[Tensor, "*lead batch"]  # each sample's class (row of the spec)

    def index(self, idx: Int[Tensor, "R"]) -> "CountBatch":
        """Rows ``idx`` of a stacked batch (runs sharing a data stream share its batch)."""
        return CountBatch(*(getattr(self, f)[idx] for f in FIELDS))

    @staticmethod
    def stack(batches: list["CountBatch"]) -> "CountBatch":
        return CountBatch(*(torch.stack([getattr(b, f) for b in batches]) for f in FIELDS))

    def dense(self, M: int) -> Float[Tensor, "*lead batch M"]:
        """Counts over all M tokens (zeros off the support)."""
        out = torch.zeros(*self.counts.shape[:-1], M, dtype=self.counts.dtype)
        return out.scatter_add_(-1, self.support, self.counts)


class Supports:
    """Per-class support tables of a spec: ``table [K, s]`` (padded with token 0), ``slot [K, M]``."""

    def __init__(self, spec: SequenceClassSpec):
        P = spec.P()
        self.spec = spec
        self.size = (P > 0).sum(1)  # [K]
        s = int(self.size.max())
        self.table = torch.zeros(spec.K, s, dtype=torch.long)
        self.probs = torch.zeros(spec.K, s, dtype=torch.float64)
        self.slot = torch.full((spec.K, spec.M), -1, dtype=torch.long)
        for k, c in enumerate(spec.classes):
            toks = list(c.probs)
            self.table[k, : len(toks)] = torch.tensor(toks)
            self.probs[k, : len(toks)] = P[k, toks]
            self.slot[k, toks] = torch.arange(len(toks))
        self.class_of = torch.full((spec.M, spec.M), -1, dtype=torch.long)  # (query, next) -> class
        for k, c in enumerate(spec.classes):
            self.class_of[c.m, c.n] = k
        self.queries = torch.tensor(spec.queries)
        self.nexts = torch.tensor(spec.nexts)
        # conditional probabilities of the binomial chain: p_j / sum_{i >= j} p_i (1 for the last slot)
        tail = self.probs.flip(1).cumsum(1).flip(1)
        self.cond = torch.where(tail > 0, self.probs / tail.clamp_min(1e-300), torch.zeros(()))
        for k in range(spec.K):
            self.cond[k, int(self.size[k]) - 1 :] = 1.0

    def from_tokens(self, tokens: Int[Tensor, "batch T"], target: Int[Tensor, "batch"], dtype=torch.float32) -> CountBatch:
        """Counts of the contextual tokens (all but the last position) on each sample's class support."""
        query = tokens[:, -1]
        klass = self.class_of[query, target]
        slots = self.slot[klass[:, None], tokens[:, :-1]]  # [batch, T-1]; -1 would be a token off the support
        if (slots < 0).any():
            raise ValueError("a contextual token lies off its class's support; tokens are not from this spec")
        counts = torch.zeros(tokens.shape[0], self.table.shape[1], dtype=dtype).scatter_add_(1, slots, torch.ones_like(slots, dtype=dtype))
        return CountBatch(self.table[klass], counts, query, target, klass)

    def sample_counts(self, batch: int, generator: torch.Generator, dtype=torch.float32) -> CountBatch:
        """Exact count sampler: class ~ Uniform(K), counts ~ Multinomial(T-1, P(.|class)) (binomial chain)."""
        klass = torch.randint(0, self.spec.K, (batch,), generator=generator)
        cond = self.cond[klass]  # [batch, s]
        left = torch.full((batch,), float(self.spec.T - 1), dtype=torch.float64)
        counts = torch.empty(batch, cond.shape[1], dtype=torch.float64)
        for j in range(cond.shape[1]):
            n_j = torch.binomial(left, cond[:, j], generator=generator)
            counts[:, j] = n_j
            left = left - n_j
        return CountBatch(self.table[klass], counts.to(dtype), self.queries[klass], self.nexts[klass], klass)


__all__ = ["CountBatch", "Supports"]
