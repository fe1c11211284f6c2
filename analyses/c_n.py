"""Scan&Snap's c_n: the attention a class's query pays to each contextual token (docs/theory.md §1.3).

Called "composition" in the paper; sslens keeps that word for TransformerLens's head composition
(:mod:`sslens.analyses.composition`).

Two views of "which contextual tokens does the query of class n attend to":

- **c_n** in the long-sequence limit, from the token-space QK circuit Z = W_E W_Q W_K^T W_E^T / scale
  (``blocks.{l}.QK_tok``): c_{l|m,n} = P(l|n) e^{z_ml} / sum_l' P(l'|n) e^{z_ml'}. Works on a
  recording (every recorded step), a checkpoint, or any HookedTransformer whose token-space QK is Z.
- the **empirical composition** from recorded probe patterns (``blocks.{l}.pattern``): attention mass
  of the last query row summed per token id, averaged over the probe sequences of each class.

The entropies (all tokens; distinct tokens renormalised = the Fig. 6 metric) and recall (Figs. 11-12)
are the shared ones in :mod:`sslens.theory.c_n`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sslens.compat import HookedModel as HookedTransformer  # the installed line's model class
from sslens.data.sequence_classes import SequenceClassSpec
from sslens.errors import SslensError
from sslens.hooks.recorder import Recording, circuits
from sslens.store import RunStore
from sslens.theory.c_n import composition, distinct_entropy, entropy, recall


def _store(run: str | Path | RunStore) -> RunStore:
    return run if isinstance(run, RunStore) else RunStore(run)


def spec_of(run: str | Path | RunStore) -> SequenceClassSpec:
    """The sequence-class spec of a run (``config.json`` task.spec)."""
    task = _store(run).read_config().get("task", {})
    if "spec" not in task:
        raise SslensError("task", f"run has no sequence-class spec (task kind {task.get('kind')!r})", "a sequence_classes task")
    return SequenceClassSpec.from_dict(task["spec"])


def c_n(Z: Float[Tensor, "*steps M M"], spec: SequenceClassSpec) -> Float[Tensor, "*steps K M"]:
    """c_{l|m,n} for every class (rows) from Z (Z[m, l] = z_ml); batched over leading dims."""
    return composition(Z.to(torch.float64), spec.P(), spec.queries)


def Z_of_model(model: HookedTransformer, layer: int = 0, head: int = 0) -> Float[Tensor, "M M"]:
    """Token-space QK circuit of one head (= Z for the Y/Z model), as the recorder computes it."""
    if not 0 <= layer < model.cfg.n_layers or not 0 <= head < model.cfg.n_heads:
        raise SslensError("layer/head", f"got {layer}/{head}", f"layer < {model.cfg.n_layers}, head < {model.cfg.n_heads}")
    with torch.no_grad():
        return circuits(model)[f"blocks.{layer}.QK_tok"][head].to(torch.float64)


def c_n_of_model(model: HookedTransformer, spec: SequenceClassSpec, layer: int = 0, head: int = 0) -> Float[Tensor, "K M"]:
    """c_n of any HookedTransformer whose vocabulary is the spec's tokens (long-sequence limit)."""
    if model.cfg.d_vocab != spec.M:
        raise SslensError("model.d_vocab", f"{model.cfg.d_vocab} tokens but the spec has M = {spec.M}", f"{spec.M}")
    return c_n(Z_of_model(model, layer, head), spec)


def c_n_at_checkpoint(run: str | Path | RunStore, step: int | None = None) -> Float[Tensor, "K M"]:
    """c_n of a run's checkpoint (default: the last), rebuilt from the safetensors file."""
    store = _store(run)
    return c_n_of_model(store.load_model(step), spec_of(store))


def empirical_composition(
    pattern: Float[Tensor, "probe q k"] | Float[Tensor, "probe head q k"],
    tokens: Int[Tensor, "probe pos"],
    target: Int[Tensor, " probe"],
    spec: SequenceClassSpec,
    head: int = 0,
) -> Float[Tensor, "K M"]:
    """Attention mass per token id of the last query row, averaged over the probe sequences of each class.

    A class is identified by its next token (``target``); a class with no probe sequence gets NaN.
    """
    if pattern.dim() == 4:
        pattern = pattern[:, head]
    row = pattern[:, -1, :].to(torch.float64)  # [probe, k]
    mass = torch.zeros(tokens.shape[0], spec.M, dtype=torch.float64).scatter_add(1, tokens.long(), row)
    out = torch.full((spec.K, spec.M), float("nan"), dtype=torch.float64)
    for k, n in enumerate(spec.nexts):
        sel = target == n
        if sel.any():
            out[k] = mass[sel].mean(0)
    return out


def total_variation(p: Float[Tensor, "... M"], q: Float[Tensor, "... M"]) -> Float[Tensor, "..."]:
    """TV distance 1/2 sum |p - q| along the last axis."""
    return 0.5 * (p - q).abs().sum(-1)


@dataclass
class CompositionTrajectory:
    """c_n over recorded steps: ``c[step_index, class, token]``, the Z it came from, and the spec."""

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

    def recall(self, thresholds: Float[Tensor, " n_thr"]) -> Float[Tensor, "steps n_thr"]:
        """Figs. 11-12: fraction of all distinct tokens with c above each threshold, per step."""
        return recall(self.c, self.spec.distinct, thresholds)

    def z_of_class(self, k: int) -> Float[Tensor, "steps M"]:
        """z_{m l}(t) for the query m of class k."""
        return self.z[:, self.spec.queries[k], :]


def trajectory(run: str | Path | RunStore, layer: int = 0, head: int = 0) -> CompositionTrajectory:
    """c_n(t) of a run from its recorded token-space QK circuit (``blocks.{layer}.QK_tok``, one head)."""
    store = _store(run)
    spec = spec_of(store)
    rec = Recording(store)
    key = f"blocks.{layer}.QK_tok"
    if key not in rec.keys():
        raise SslensError("recording", f"no {key} recorded", "a run recorded with token-space circuits (d_vocab <= 4096)")
    Z = rec.get(key)[:, head].to(torch.float64)
    return CompositionTrajectory(rec.steps, c_n(Z, spec), Z, spec)


def empirical_trajectory(
    run: str | Path | RunStore, layer: int = 0, head: int = 0
) -> tuple[list[int], Float[Tensor, "steps K M"]]:
    """Empirical composition (probe patterns, last query row) at every recorded step."""
    store = _store(run)
    spec = spec_of(store)
    rec = Recording(store)
    key = f"blocks.{layer}.pattern"
    if key not in rec.keys() or "probe.target" not in rec.keys():
        raise SslensError("recording", f"no {key} / probe.target recorded", "a run recorded with a probe batch")
    out = []
    for s in rec.steps:
        r = rec.at(s)
        out.append(empirical_composition(r[key], r["probe.tokens"], r["probe.target"], spec, head))
    return rec.steps, torch.stack(out)
