"""CircuitRecorder: QK/OV circuits and attention patterns of a HookedTransformer during training.

Attach it to any optimizer (``Optimizer.register_step_post_hook``): it counts steps and, at the
scheduled ones, records per layer and head

    QK[l, h]        = W_Q W_K^T                       [d_model, d_model]
    OV[l, h]        = W_V W_O                         [d_model, d_model]
    QK_tok[l, h]    = W_E W_Q W_K^T W_E^T / attn_scale [d_vocab, d_vocab]   (token space; Z in Scan&Snap)
    OV_tok[l, h]    = W_E W_V W_O W_U                 [d_vocab, d_vocab_out] (token space; Y when W_V W_O = I)
    pattern[l]      = hook_pattern on a fixed probe batch [probe, head, q, k]
    probe.tokens, probe.target  the probe batch itself (target: e.g. the next token / class label)

``attn_scale`` is the scale the model really divides by (sqrt(d_head) by default, 1 with
``use_attn_scale=False``), so QK_tok is exactly the pre-softmax score of a token pair without
positional terms. Token-space circuits are skipped when d_vocab > ``max_token_vocab`` (default 4096).
No change to the training loop is needed; step 0 is recorded on ``attach``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import einops
import torch
from jaxtyping import Int
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_post_hook

from sslens import compat
from sslens.compat import HookedModel as HookedTransformer  # the installed line's model class
from sslens.schedule import log_schedule
from sslens.store import RunStore


def circuits(model: HookedTransformer, token_space: bool = True) -> dict[str, Tensor]:
    """Weights-derived circuits of every layer, keyed ``blocks.{l}.QK`` etc., each ``[head, ., .]``."""
    out: dict[str, Tensor] = {}
    W_E = model.W_E
    for l, block in enumerate(model.blocks):
        a = block.attn
        W_Q, W_K, W_V, W_O = a.W_Q, a.W_K, a.W_V, a.W_O  # [head, d_model, d_head] / O: [head, d_head, d_model]
        if W_K.shape[0] != W_Q.shape[0]:  # grouped-query attention: share K/V across query heads
            rep = W_Q.shape[0] // W_K.shape[0]
            W_K = einops.repeat(W_K, "kv m d -> (kv r) m d", r=rep)
            W_V = einops.repeat(W_V, "kv m d -> (kv r) m d", r=rep)
        QK = einops.einsum(W_Q, W_K, "h m d, h n d -> h m n")
        OV = einops.einsum(W_V, W_O, "h m d, h d n -> h m n")
        out[f"blocks.{l}.QK"] = QK
        out[f"blocks.{l}.OV"] = OV
        if token_space:
            out[f"blocks.{l}.QK_tok"] = einops.einsum(W_E, QK, W_E, "s m, h m n, t n -> h s t") / compat.attn_scale(model, l)
            out[f"blocks.{l}.OV_tok"] = einops.einsum(W_E, OV, model.W_U, "s m, h m n, n v -> h s v")
    return out


def probe_patterns(model: HookedTransformer, tokens: Int[Tensor, "probe pos"]) -> dict[str, Tensor]:
    """Attention patterns ``[probe, head, q, k]`` of every layer from ``hook_pattern``."""
    got: dict[str, Tensor] = {}

    def grab(x: Tensor, hook) -> None:
        got[hook.name] = x.detach().clone()

    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    model.run_with_hooks(tokens, return_type=None, fwd_hooks=[(n, grab) for n in names])
    return {f"blocks.{l}.pattern": got[n] for l, n in enumerate(names)}


class CircuitRecorder:
    """Record circuits (and probe patterns) after scheduled optimizer steps.

    Args:
        model: any HookedTransformer.
        store: a run directory (path or :class:`RunStore`); ``None`` keeps recordings in memory
            (``recorder.records[step]``).
        schedule: steps to record (an iterable, or a ``step -> bool`` callable). Default:
            ``log_schedule(total_steps)`` when ``total_steps`` is given, else every power of two.
        probe_tokens: a fixed ``[probe, pos]`` batch whose ``hook_pattern`` is recorded.
        probe_target: its targets (recorded alongside, e.g. to group patterns by class).
        start_step: optimizer steps already taken (when resuming).
    """

    def __init__(
        self,
        model: HookedTransformer,
        store: str | Path | RunStore | None = None,
        schedule: Iterable[int] | Callable[[int], bool] | None = None,
        probe_tokens: Int[Tensor, "probe pos"] | None = None,
        probe_target: Tensor | None = None,
        total_steps: int | None = None,
        start_step: int = 0,
        max_token_vocab: int = 4096,
    ):
        self.model = model
        self.store = RunStore(store) if isinstance(store, (str, Path)) else store
        if schedule is None:
            schedule = log_schedule(total_steps) if total_steps is not None else (lambda s: s & (s - 1) == 0)
        self._schedule = schedule if callable(schedule) else set(int(s) for s in schedule)
        self.probe_tokens = probe_tokens
        self.probe_target = probe_target
        self.step = start_step
        self.token_space = model.cfg.d_vocab <= max_token_vocab and model.cfg.d_vocab_out <= max_token_vocab
        self.records: dict[int, dict[str, Tensor]] = {}
        self._handle = None

    def scheduled(self, step: int) -> bool:
        return self._schedule(step) if callable(self._schedule) else step in self._schedule

    @torch.no_grad()
    def record(self, step: int | None = None) -> dict[str, Tensor]:
        """Capture now (as ``step``, default the current count) and store it."""
        step = self.step if step is None else step
        rec = circuits(self.model, token_space=self.token_space)
        if self.probe_tokens is not None:
            rec.update(probe_patterns(self.model, self.probe_tokens))
            rec["probe.tokens"] = self.probe_tokens
            if self.probe_target is not None:
                rec["probe.target"] = self.probe_target
        rec = {k: v.detach().cpu().clone() for k, v in rec.items()}
        if self.store is not None:
            self.store.save_recording(step, rec)
        else:
            self.records[step] = rec
        return rec

    def _after_step(self, optimizer, args, kwargs) -> None:
        self.step += 1
        if self.scheduled(self.step):
            self.record()

    def attach(self, optimizer: torch.optim.Optimizer | None = None) -> "CircuitRecorder":
        """Record after every scheduled ``optimizer.step()``; records the current step now if scheduled.

        With no ``optimizer`` (a loop that builds its own, e.g. ``transformer_lens.train.train``), a
        global post-step hook counts the steps of any optimizer that holds this model's parameters.
        Use as a context manager to detach on exit.
        """
        if self.scheduled(self.step) and not self._have(self.step):
            self.record()
        if optimizer is not None:
            self._handle = optimizer.register_step_post_hook(self._after_step)
        else:
            mine = {id(p) for p in self.model.parameters()}

            def hook(opt, args, kwargs):
                if any(id(p) in mine for g in opt.param_groups for p in g["params"]):
                    self._after_step(opt, args, kwargs)

            self._handle = register_optimizer_step_post_hook(hook)
        return self

    def __enter__(self) -> "CircuitRecorder":
        if self._handle is None:
            self.attach()
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _have(self, step: int) -> bool:
        if self.store is not None:
            return step in self.store.recording_steps()
        return step in self.records


class Recording:
    """Read recordings back: ``Recording(run).get("blocks.0.QK")`` -> ``[n_steps, head, d, d]``."""

    def __init__(self, source: str | Path | RunStore | CircuitRecorder):
        if isinstance(source, CircuitRecorder) and source.store is None:
            self._mem = source.records
            self.steps = sorted(self._mem)
            self.store = None
        else:
            store = source.store if isinstance(source, CircuitRecorder) else source
            self.store = RunStore(store) if isinstance(store, (str, Path)) else store
            self.steps = self.store.recording_steps()
            self._mem = None

    def at(self, step: int) -> dict[str, Tensor]:
        return self._mem[step] if self._mem is not None else self.store.load_recording(step)

    def keys(self) -> list[str]:
        return sorted(self.at(self.steps[0])) if self.steps else []

    def get(self, name: str) -> Tensor:
        """Stack ``name`` over all recorded steps (dim 0 follows ``self.steps``)."""
        return torch.stack([self.at(s)[name] for s in self.steps])
