"""Attention composition of Scan&Snap runs: c_n from the token-space QK circuit (long-sequence limit,
theory.md 1.3) and the empirical composition from recorded probe patterns, over time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sslens.data.sequence_classes import SequenceClassSpec
from sslens.hooks.recorder import Recording
from sslens.store import RunStore
from sslens.theory.composition import composition, distinct_entropy, entropy, recall


def spec_of(run: str | RunStore) -> SequenceClassSpec:
    store = run if isinstance(run, RunStore) else RunStore(run)
    return SequenceClassSpec.from_dict(store.read_config()["task"]["spec"])


def c_n(Z: Float[Tensor, "M M"], spec: SequenceClassSpec) -> Float[Tensor, "K M"]:
    """c_{l|m,n} for every class (rows) from Z (Z[m, l] = z_ml)."""
    return composition(Z.to(torch.float64), spec.P(), spec.queries)


def empirical_composition(
    pattern: Float[Tensor, "probe q k"] | Float[Tensor, "probe head q k"],
    tokens: Int[Tensor, "probe pos"],
    target: Int[Tensor, "probe"],
    spec: SequenceClassSpec,
) -> Float[Tensor, "K M"]:
    """Attention mass per token id of the last query row, averaged over the probe sequences of each class.

    A class with no probe sequence gets a row of NaN.
    """
    if pattern.dim() == 4:
        pattern = pattern[:, 0]
    row = pattern[:, -1, :].to(torch.float64)  # [probe, k]
    mass = torch.zeros(tokens.shape[0], spec.M, dtype=torch.float64).scatter_add(1, tokens, row)
    out = torch.full((spec.K, spec.M), float("nan"), dtype=torch.float64)
    for k, n in enumerate(spec.nexts):
        sel = target == n
        if sel.any():
            out[k] = mass[sel].mean(0)
    return out


def total_variation(p: Tensor, q: Tensor) -> Tensor:
    return 0.5 * (p - q).abs().sum(-1)


@dataclass
class CompositionTrajectory:
    """c_n over recorded steps: ``c[step_index, class, token]`` plus entropies."""

    steps: list[int]
    c: Float[Tensor, "steps K M"]
    z: Float[Tensor, "steps M M"]
    spec: SequenceClassSpec

    @property
    def entropy(self) -> Float[Tensor, "steps K"]:
        """Entropy (nats) of c_n over all tokens."""
        return entropy(self.c)

    @property
    def distinct_entropy(self) -> Float[Tensor, "steps K"]:
        """Fig. 6 metric: entropy of c_n on the class's distinct tokens, renormalised."""
        return distinct_entropy(self.c, self.spec.distinct)

    def recall(self, thresholds: Tensor) -> Tensor:
        """Figs. 11-12: fraction of distinct tokens with c above each threshold, per step."""
        return recall(self.c, self.spec.distinct, thresholds)

    def z_of_class(self, k: int) -> Float[Tensor, "steps M"]:
        """z_{m l}(t) for the query m of class k."""
        return self.z[:, self.spec.queries[k], :]


def trajectory(run: str | RunStore) -> CompositionTrajectory:
    """c_n(t) of a Scan&Snap run from its recorded token-space QK circuit (QK_tok of head 0 = Z)."""
    store = run if isinstance(run, RunStore) else RunStore(run)
    spec = spec_of(store)
    rec = Recording(store)
    Z = rec.get("blocks.0.QK_tok")[:, 0].to(torch.float64)
    return CompositionTrajectory(rec.steps, c_n(Z, spec), Z, spec)
