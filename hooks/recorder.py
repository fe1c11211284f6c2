"""CircuitRecorder: attention weights, spectra, probe patterns and scores recorded during training.

The attention weights, their spectra, probe patterns and record-time scores of a
HookedTransformer during training, stored so that a GPT-2-small-sized model stays small.

Attach it to any optimizer (``Optimizer.register_step_post_hook``): it counts steps and, at the scheduled
ones, records for the selected layers ``l`` and heads (``layers=``, ``heads=``; default all):

    blocks.{l}.attn.W_Q/W_K/W_V   [head, d_model, d_head]   weights as the model holds them (no folding of
    blocks.{l}.attn.W_O           [head, d_head, d_model]   LayerNorm, no centering), in the model's dtype
    blocks.{l}.attn.b_Q/b_K/b_V   [head, d_head];  blocks.{l}.attn.b_O [d_model]
    blocks.{l}.QK.sv, OV.sv       [head, k]   singular values of W_Q W_K^T and W_V W_O, k = min(d_model, d_head)
    blocks.{l}.pattern            [probe, head, q, k]   hook_pattern on the probe batch
    probe.tokens, probe.target, probe.period            the probe (period: default repeated-random probe)
    scores.blocks.{l}.qk_eig/ov_eig [head]   eigenvalue positivity of the token-space circuits
    scores.blocks.{l}.entropy/previous_token/duplicate_token/induction [head]   probe-pattern scores
    scores.loss, scores.loss_in_context                 next-token loss on the probe (language models)
    scores.rel_change.{param}, scores.delta.{param}    ||W_t - W_0||_F / ||W_0||_F and ||W_t - W_0||_F
    meta.heads                    [head]   the recorded head indices

Grouped-query attention: TransformerLens 3.9's ``attn.W_K`` / ``attn.W_V`` (and ``b_K``/``b_V``) return the
key/value weights already expanded to one per *query* head (``repeat_interleave`` of ``_W_K``), and that is
what is stored, so every per-head tensor has the query-head count.

``Recording(run).get("blocks.0.QK")`` materialises the dense ``[n_steps, head, d_model, d_model]`` circuit
``W_Q W_K^T`` (``OV``: ``W_V W_O``) on request; ``Recording.factored(name, step)`` gives a
transformer_lens ``FactoredMatrix``. Recordings of older sslens versions (dense ``blocks.{l}.QK``) still load.

On request only: token-space circuits (``token_space=True`` or ``token_subset=``)
``QK_tok = W_E W_Q W_K^T W_E^T / attn_scale`` and ``OV_tok = W_E W_V W_O W_U`` (Scan&Snap's Z and Y,
docs/theory.md §1.1), and MLP weights or condensation scalars (``mlp=``, docs/theory.md §2.2, Part 3).
``spectra_only=True`` keeps just the spectra and the scores. Step 0 is recorded on ``attach``.
"""

from __future__ import annotations

import html
import re
import sys
import warnings
import weakref
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformer_lens import FactoredMatrix

from sslens import compat, recording_claim
from sslens import metrics as M
from sslens.compat import HookedModel as HookedTransformer  # the installed line's model class
from sslens.errors import SslensError, require
from sslens.lock import RunLock, run_lock
from sslens.recording_claim import MODES, model_identity
from sslens.schedule import log_schedule
from sslens.store import RunStore, atomic_write_json, step_file

FORMAT = 2  # 1: dense QK/OV per step; 2: factored weights + spectra + scores
LOG_FILE = "recordings/scalars.json"  # rec.log(step, **scalars): {step: {name: value}}
MLP_WEIGHTS_MAX = 2**20  # mlp=True stores W_in/W_out when d_model * d_mlp <= this, else condensation scalars
PROBE_SEQS, PROBE_PERIOD, PROBE_SEED = 4, 32, 0


# ----- kept for analyses that compute dense circuits from a live model ----------------------------------
def circuits(model: HookedTransformer, token_space: bool = True) -> dict[str, Tensor]:
    """Dense circuits of every layer, keyed ``blocks.{l}.QK`` / ``OV`` (and ``QK_tok`` / ``OV_tok``), ``[head, ., .]``."""
    out: dict[str, Tensor] = {}
    for l, block in enumerate(model.blocks):
        a = block.attn
        W_Q, W_K, W_V, W_O = a.W_Q, _expand_kv(a.W_K, a.W_Q.shape[0]), _expand_kv(a.W_V, a.W_Q.shape[0]), a.W_O
        QK = einops.einsum(W_Q, W_K, "h m d, h n d -> h m n")
        OV = einops.einsum(W_V, W_O, "h m d, h d n -> h m n")
        out[f"blocks.{l}.QK"] = QK
        out[f"blocks.{l}.OV"] = OV
        if token_space:
            QK_tok = einops.einsum(model.W_E, QK, model.W_E, "s m, h m n, t n -> h s t")
            out[f"blocks.{l}.QK_tok"] = QK_tok / compat.attn_scale(model, l)
            out[f"blocks.{l}.OV_tok"] = einops.einsum(model.W_E, OV, model.W_U, "s m, h m n, n v -> h s v")
    return out


def probe_patterns(model: HookedTransformer, tokens: Int[Tensor, "probe pos"],
                   layers: Sequence[int] | None = None, logits: bool = False) -> dict[str, Tensor]:
    """Attention patterns ``[probe, head, q, k]`` of the given layers (default all) from ``hook_pattern``.

    ``logits=True``: the whole forward runs and its logits are returned too (key ``logits``).
    """
    got: dict[str, Tensor] = {}
    layers = range(model.cfg.n_layers) if layers is None else layers

    def grab(x: Tensor, hook) -> None:
        got[hook.name] = x.detach().clone()

    names = [f"blocks.{l}.attn.hook_pattern" for l in layers]
    last = max(layers) + 1 if len(layers) else 0
    stop = last if last < model.cfg.n_layers and not logits else None
    out = model.run_with_hooks(tokens.to(model.cfg.device), return_type="logits" if logits else None,
                               stop_at_layer=stop, fwd_hooks=[(n, grab) for n in names])
    pats = {f"blocks.{l}.pattern": got[n] for l, n in zip(layers, names)}
    return {**pats, "logits": out.detach()} if logits else pats


# ----- pieces of a recording -----------------------------------------------------------------------------
_expand_kv = M.repeat_kv  # key/value heads -> query heads (grouped-query attention, TL's order)


def default_probe(cfg, n_seqs: int = PROBE_SEQS, period: int = PROBE_PERIOD, seed: int = PROBE_SEED) -> tuple[Tensor, int]:
    """Repeated random tokens ``[n_seqs, 2 * period]`` (seeded; period capped at ``n_ctx // 2``).

    The probe on which induction (attend to the token after the earlier copy) and previous-token heads show.
    """
    period = max(1, min(period, cfg.n_ctx // 2))
    g = torch.Generator().manual_seed(seed)
    half = torch.randint(0, cfg.d_vocab, (n_seqs, period), generator=g)
    return torch.cat([half, half], dim=1), period


def condensation_scalars(W: Float[Tensor, "neuron d"]) -> dict[str, Tensor]:
    """Condensation scalars of neuron vectors (rows of W).

    ``sv``: singular values of W; ``cos_top1`` = lambda_max(C) / n of the neurons' cosine matrix C
    (1 when all neuron vectors are parallel or antiparallel: full condensation, docs/theory.md §2.2, Part 3).
    """
    W = W.detach().to(torch.float64)
    small = (lambda X: X.T @ X) if W.shape[1] <= W.shape[0] else (lambda X: X @ X.T)  # the smaller Gram matrix
    sv = torch.linalg.eigvalsh(small(W)).clamp_min(0).sqrt().flip(0)
    return {"sv": sv.float(), "cos_top1": M.condensation_index(W).float()}


def _factored_parts(a, heads: Tensor) -> dict[str, Tensor]:
    n = a.W_Q.shape[0]
    return {"W_Q": a.W_Q[heads], "W_K": _expand_kv(a.W_K, n)[heads], "W_V": _expand_kv(a.W_V, n)[heads],
            "W_O": a.W_O[heads], "b_Q": a.b_Q[heads], "b_K": _expand_kv(a.b_K, n)[heads],
            "b_V": _expand_kv(a.b_V, n)[heads], "b_O": a.b_O}


def _or_nan(fn: Callable, shape: tuple | None, *inputs: Tensor):
    """``fn()``, or NaNs of ``shape`` (``None`` when shape is None) when an input is not finite.

    A diverged run has inf/NaN weights, on which SVD and eigendecomposition fail to converge: the recording
    then shows NaN (and the trainer reports the divergence) instead of crashing in the recorder.
    """
    if all(bool(torch.isfinite(t).all()) for t in inputs):
        return fn()
    return None if shape is None else torch.full(shape, float("nan"))


def _f32(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


class CircuitRecorder:
    """Record attention weights, spectra, probe patterns and scores after scheduled optimizer steps.

    Args:
        model: any HookedTransformer.
        store: a run directory (path or :class:`RunStore`); ``None`` keeps recordings in memory
            (``recorder.records[step]``). A store is locked (:class:`sslens.lock.RunLock`) from attach to detach.
        schedule: steps to record (an iterable, or a ``step -> bool`` callable). Default:
            ``log_schedule(total_steps)`` when ``total_steps`` is given, else every power of two.
        probe_tokens: a fixed ``[probe, pos]`` batch whose ``hook_pattern`` is recorded. Default: 4 seeded
            random sequences repeated twice (2 x 32 tokens; ``probe.period`` = 32), for induction scores.
        probe_target: its targets (recorded alongside, e.g. to group patterns by class).
        start_step: optimizer steps already taken (when resuming).
        layers, heads: record only these layers / head indices (default all).
        token_space: also record ``QK_tok``/``OV_tok`` ``[head, d_vocab, d_vocab]``. Default: only for sslens's
            Scan&Snap model (whose token space is its Z and Y). Refused above ``max_token_vocab``.
        token_subset: token ids: token-space circuits restricted to them (``[head, n, n]``).
        spectra_only: record only spectra and scores (no weights, no patterns; token-space circuits only when
            explicitly requested).
        patterns: record the probe patterns (their scalar scores are kept either way).
        mlp: ``True``: MLP weights when ``d_model * d_mlp <= 2**20``, else condensation scalars; or
            ``"weights"`` / ``"scalars"``.
        reference: weights W_0 for ``scores.rel_change`` (name -> tensor). Default: the trainable parameters at
            ``attach`` (a CPU copy). A recorder never attached and given no reference records no rel_change.
        loss: record the next-token loss on the probe at each recorded step (``scores.loss``; on the default
            repeated-tokens probe also ``scores.loss_in_context``, the loss on the repeated half). Default: for
            language models (no ``probe_target``, ``d_vocab_out >= d_vocab``, not one of sslens's task models,
            whose loss is the task's).
        verbose: print the estimated bytes per recorded step at attach.
        tensorboard: a log directory: every recorded step's scalars as TensorBoard scalars
            ``sslens/{metric}/L{layer}H{head}`` (``sslens.hooks.telemetry``; needs ``sslens[tensorboard]``).
        wandb: a W&B run (``wandb.init(...)``) or project name: the same keys, against ``sslens/step``
            (needs ``sslens[wandb]``).
        mode: a store that already holds recordings: ``"new"`` (default) refuses it, ``"resume"`` continues its
            run (same model; recordings after ``start_step`` are dropped), ``"overwrite"`` deletes them first
            (``sslens.recording_claim``).

    ``rec.log(step, **scalars)`` adds the user's own scalars (``Recording.to_pandas()`` rows with layer/head empty).
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
        *,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        token_space: bool | None = None,
        token_subset: Int[Tensor, " n"] | None = None,
        spectra_only: bool = False,
        patterns: bool = True,
        mlp: bool | str = False,
        probe_period: int | None = None,
        reference: dict[str, Tensor] | None = None,
        loss: bool | None = None,
        verbose: bool = True,
        mode: str = "new",
        tensorboard: str | Path | None = None,
        wandb: Any = None,
    ):
        require(mode in MODES, "mode", f"got {mode!r}", ", ".join(MODES))
        from sslens.hooks.telemetry import Telemetry

        # live telemetry (sslens.hooks.telemetry), checked now
        self._telemetry = Telemetry(tensorboard, wandb) if tensorboard is not None or wandb is not None else None
        self.mode = mode
        self.run_id: str | None = None
        cfg = model.cfg
        self.model = model
        self.store = RunStore(store) if isinstance(store, (str, Path)) else store
        self.total_steps = total_steps
        self._powers_of_two = schedule is None and total_steps is None  # the default open-ended schedule
        if schedule is None:
            schedule = log_schedule(total_steps) if total_steps is not None else (lambda s: s & (s - 1) == 0)
        self._schedule = schedule if callable(schedule) else set(int(s) for s in schedule)
        self.layers = self._select(layers, cfg.n_layers, "layers")
        self.heads = self._select(heads, cfg.n_heads, "heads")
        self._head_idx = torch.tensor(self.heads, dtype=torch.long)
        if probe_tokens is None:
            probe_tokens, probe_period = default_probe(cfg)
            self.default_probe = True
        else:
            self.default_probe = False
        self.probe_tokens = probe_tokens
        self.probe_target = probe_target
        self.probe_period = probe_period
        self._dets = M.detection_patterns(probe_tokens)
        if loss is None:
            loss = (probe_target is None and not hasattr(model, "sslens_config")
                    and cfg.d_vocab_out >= cfg.d_vocab)  # next-token targets are the probe's own ids
        self.loss = bool(loss)
        self.logged: dict[int, dict[str, float]] = {}
        self.step = start_step
        if token_space is None:
            token_space = (getattr(model, "sslens_config", {}).get("kind") == "scan_snap" and token_subset is None
                           and not spectra_only)
        if token_space and token_subset is None:
            big = max(cfg.d_vocab, cfg.d_vocab_out)
            require(big <= max_token_vocab, "token_space", f"d_vocab {big} > max_token_vocab {max_token_vocab}",
                    "token_subset=<token ids>, a larger max_token_vocab, or token_space=False")
        self.token_space = bool(token_space)
        self.token_subset = None if token_subset is None else torch.as_tensor(token_subset, dtype=torch.long)
        self.spectra_only = spectra_only
        self.patterns = patterns and not spectra_only
        mlp_mode = None
        if mlp and not cfg.attn_only:
            mlp_mode = mlp if isinstance(mlp, str) else (
                "weights" if cfg.d_model * (cfg.d_mlp or 0) <= MLP_WEIGHTS_MAX else "scalars")
            require(mlp_mode in ("weights", "scalars"), "mlp", f"got {mlp!r}", "False, True, 'weights', 'scalars'")
            if spectra_only:
                mlp_mode = "scalars"
        self.mlp = mlp_mode
        self.reference = None if reference is None else {k: v.detach().cpu().clone() for k, v in reference.items()}
        self.verbose = verbose
        self.records: dict[int, dict[str, Tensor]] = {}
        self._handle = None
        self._lock: RunLock | None = None

    @staticmethod
    def _select(sel, n: int, field: str) -> list[int]:
        if sel is None:
            return list(range(n))
        sel = [int(i) for i in sel]
        require(len(sel) > 0 and all(0 <= i < n for i in sel) and len(set(sel)) == len(sel), field,
                f"got {sel}", f"distinct indices in 0..{n - 1}")
        return sel

    def scheduled(self, step: int) -> bool:
        return self._schedule(step) if callable(self._schedule) else step in self._schedule

    # ----- capture -------------------------------------------------------------------------------------
    @torch.no_grad()
    def capture(self) -> dict[str, Tensor]:
        """Everything a recorded step holds, computed from the live model now (tensors on CPU)."""
        model, cfg = self.model, self.model.cfg
        rec: dict[str, Tensor] = {"meta.heads": self._head_idx.clone()}
        k = min(cfg.d_model, cfg.d_head)
        W_E = _f32(model.W_E)
        G_E = W_E.T @ W_E  # [d_model, d_model]: W_E^T W_E, shared by every head's token-space QK
        square = cfg.d_vocab == cfg.d_vocab_out  # eigenvalues need a square token-space OV
        M_UE = _f32(model.W_U) @ W_E if square else None  # [d_model, d_model]: W_U W_E
        for l in self.layers:
            a = model.blocks[l].attn
            parts = _factored_parts(a, self._head_idx.to(a.W_Q.device))
            if not self.spectra_only:
                for name, t in parts.items():
                    rec[f"blocks.{l}.attn.{name}"] = t
            W_Q, W_K, W_V, W_O = (_f32(parts[n]) for n in ("W_Q", "W_K", "W_V", "W_O"))
            H = W_Q.shape[0]
            rec[f"blocks.{l}.QK.sv"] = _or_nan(lambda: FactoredMatrix(W_Q, W_K.transpose(-1, -2)).S[..., :k], (H, k), W_Q, W_K)
            rec[f"blocks.{l}.OV.sv"] = _or_nan(lambda: FactoredMatrix(W_V, W_O).S[..., :k], (H, k), W_V, W_O)
            # eigenvalues of W_E W_Q W_K^T W_E^T = those of the d_head x d_head matrix W_K^T (W_E^T W_E) W_Q
            rec[f"scores.blocks.{l}.qk_eig"] = _or_nan(lambda: M.qk_eig(G_E, W_Q, W_K), (H,), W_Q, W_K, G_E)
            if square:  # W_E W_V W_O W_U: same nonzero eigenvalues as W_O (W_U W_E) W_V
                rec[f"scores.blocks.{l}.ov_eig"] = _or_nan(
                    lambda: M.ov_eig(M_UE, W_V, W_O), (H,), W_V, W_O, M_UE)
            if self.token_space or self.token_subset is not None:
                rec.update(self._token_space(l, W_Q, W_K, W_V, W_O, compat.attn_scale(model, l)))
            if self.mlp is not None:
                rec.update(self._mlp(l))
        if self.probe_tokens is not None:
            pats = probe_patterns(model, self.probe_tokens, self.layers, logits=self.loss)
            if self.loss:
                for name, v in M.next_token_loss(pats["logits"], self.probe_tokens, self.probe_period).items():
                    rec[f"scores.{name}"] = v
            for l in self.layers:
                p = pats[f"blocks.{l}.pattern"][:, self._head_idx.to(pats[f"blocks.{l}.pattern"].device)]
                for name, v in M.pattern_scores(p, self._dets).items():
                    rec[f"scores.blocks.{l}.{name}"] = v
                if self.patterns:
                    rec[f"blocks.{l}.pattern"] = p
            rec["probe.tokens"] = self.probe_tokens
            if self.probe_target is not None:
                rec["probe.target"] = self.probe_target
            if self.probe_period is not None:
                rec["probe.period"] = torch.tensor(self.probe_period, dtype=torch.long)
        if self.reference is not None:
            for name, p in compat.leaves(model).items():  # 3.x names on both lines
                if name in self.reference:
                    W0 = self.reference[name].to(p.device, torch.float32)
                    d = (p.detach().float() - W0).norm()
                    n0 = W0.norm()
                    rec[f"scores.delta.{name}"] = d
                    rec[f"scores.rel_change.{name}"] = d / n0 if n0 > 0 else torch.tensor(float("nan"))
        for key, v in rec.items():
            if key.startswith("scores.") or key.endswith(".sv"):
                v = v.float()
            rec[key] = v.detach().to("cpu").clone().contiguous()
        return rec

    def _token_space(self, l, W_Q, W_K, W_V, W_O, attn_scale) -> dict[str, Tensor]:
        W_E, W_U = _f32(self.model.W_E), _f32(self.model.W_U)
        dt = self.model.W_E.dtype
        if self.token_subset is not None:
            sub = self.token_subset.to(W_E.device)
            E_in = W_E[sub]
            U_out = W_U[:, sub] if self.model.cfg.d_vocab_out == self.model.cfg.d_vocab else W_U
        else:
            E_in, U_out = W_E, W_U
        EQ, EK = E_in @ W_Q, E_in @ W_K  # [head, n, d_head]
        QK_tok = EQ @ EK.transpose(-1, -2) / attn_scale
        OV_tok = (E_in @ W_V) @ (W_O @ U_out)
        out = {f"blocks.{l}.QK_tok": QK_tok.to(dt), f"blocks.{l}.OV_tok": OV_tok.to(dt)}
        if self.token_subset is not None:
            out["token_subset"] = self.token_subset
        return out

    def _mlp(self, l: int) -> dict[str, Tensor]:
        m = self.model.blocks[l].mlp
        mats = {n: getattr(m, n) for n in ("W_in", "W_gate", "W_out") if isinstance(getattr(m, n, None), Tensor)}
        if self.mlp == "weights":
            return {f"blocks.{l}.mlp.{n}": W for n, W in mats.items()}
        out = {}
        for n, W in mats.items():  # neuron vectors: columns of W_in/W_gate, rows of W_out
            V = W.T if n != "W_out" else W
            k = min(V.shape)
            got = _or_nan(lambda: condensation_scalars(V), None, V)
            if got is None:
                got = {"sv": torch.full((k,), float("nan")), "cos_top1": torch.tensor(float("nan"))}
            for s, v in got.items():
                out[f"scores.blocks.{l}.mlp.{n}.{s}"] = v
        return out

    # ----- record / attach -----------------------------------------------------------------------------
    def record(self, step: int | None = None) -> dict[str, Tensor]:
        """Capture now (as ``step``, default the current count), store it, and return the dict."""
        step = self.step if step is None else step
        rec = self.capture()
        if self.store is not None:
            meta = {"recorder": {"format": FORMAT, "layers": self.layers, "heads": self.heads, "run": self.run_id,
                                 "spectra_only": self.spectra_only, "dtype": str(self.model.cfg.dtype)}}
            with run_lock(self.store.path):
                self.store.save_recording(step, rec, meta)
        else:
            self.records[step] = rec
        if self._telemetry is not None:
            self._telemetry.record(step, rec)
        return rec

    def log(self, step: int | None = None, **scalars: float) -> None:
        """Record the user's own scalars at ``step`` (default the current step), e.g. ``rec.log(step, train_loss=l)``.

        Kept in ``self.logged`` and, with a store, written (atomically) to ``recordings/scalars.json``;
        ``Recording.to_pandas()`` gives them as rows with layer and head empty.
        """
        step = self.step if step is None else int(step)
        row = self.logged.setdefault(step, {})
        for k, v in scalars.items():
            require(isinstance(k, str) and re.fullmatch(r"[A-Za-z_][\w.]*", k) is not None, "log", f"name {k!r}",
                    "identifiers (letters, digits, _ and .)")
            row[k] = float(v.item() if isinstance(v, Tensor) else v)
        if self.store is not None:
            self.store.path.joinpath("recordings").mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.store.path / LOG_FILE, {str(k): v for k, v in sorted(self.logged.items())})
        if self._telemetry is not None:
            from sslens.hooks.telemetry import tag

            self._telemetry.write(step, {tag(k): row[k] for k in scalars})

    def _after_step(self, optimizer, args, kwargs) -> None:
        self.step += 1
        if self.scheduled(self.step):
            self.record()

    def planned_steps(self) -> int | None:
        """How many steps will be recorded from ``start_step`` (None: open-ended schedule)."""
        if not callable(self._schedule):
            return sum(1 for s in self._schedule if s >= self.step)
        if self.total_steps is not None:
            return sum(1 for s in range(self.step, self.total_steps + 1) if self._schedule(s))
        return None

    def estimate_bytes(self) -> int:
        """Bytes of one recorded step (tensor data; the safetensors header adds ~100 bytes per key)."""
        cfg = self.model.cfg
        H, dm, dh = len(self.heads), cfg.d_model, cfg.d_head
        e = torch.empty(0, dtype=self.model.W_Q.dtype).element_size()
        k = min(dm, dh)
        per_layer = 2 * H * k * 4 + H * 4 * (1 + (cfg.d_vocab == cfg.d_vocab_out))
        if not self.spectra_only:
            per_layer += (4 * H * dm * dh + 3 * H * dh + dm) * e
        if self.token_space or self.token_subset is not None:
            n = cfg.d_vocab if self.token_subset is None else len(self.token_subset)
            n_out = cfg.d_vocab_out if self.token_subset is None or cfg.d_vocab_out != cfg.d_vocab else n
            per_layer += H * (n * n + n * n_out) * torch.empty(0, dtype=self.model.W_E.dtype).element_size()
        if self.mlp is not None:
            m = self.model.blocks[self.layers[0]].mlp
            mats = [getattr(m, n) for n in ("W_in", "W_gate", "W_out") if isinstance(getattr(m, n, None), Tensor)]
            if self.mlp == "weights":
                per_layer += sum(_nbytes(W) for W in mats)
            else:
                per_layer += sum(4 * (min(W.shape) + 1) for W in mats)
        total = 8 * H + per_layer * len(self.layers)
        n_probe, pos = self.probe_tokens.shape
        total += len(self.layers) * H * 4 * len(M.PATTERN_SCORES) + _nbytes(self.probe_tokens)
        if self.loss:  # scores.loss (and loss_in_context on a repeated probe)
            total += 4 * (1 + (self.probe_period is not None and 2 * self.probe_period <= pos))
        if self.patterns:
            total += len(self.layers) * n_probe * H * pos * pos * e
        if self.probe_target is not None:
            total += _nbytes(torch.as_tensor(self.probe_target))
        if self.probe_period is not None:
            total += 8
        if self.token_subset is not None:
            total += _nbytes(self.token_subset)
        if self.reference is not None:
            names = set(compat.leaves(self.model))
            total += 8 * sum(1 for n in self.reference if n in names)
        return total

    def attach(self, optimizer: torch.optim.Optimizer | None = None) -> "CircuitRecorder":
        """Record after every scheduled ``optimizer.step()``; records the current step now if scheduled.

        With no ``optimizer`` (a loop that builds its own, e.g. ``transformer_lens.train.train``), a
        global post-step hook counts the steps of any optimizer that holds this model's parameters.
        A recorder already attached to this model is detached first (with a warning): re-running a
        notebook cell never doubles the writes. Use as a context manager to detach on exit.
        """
        prev_ref = getattr(self.model, "_sslens_recorder", None)
        prev = prev_ref() if prev_ref is not None else None
        handoff = False
        if prev is not None and prev is not self and prev._handle is not None:
            warnings.warn("CircuitRecorder: this model already had an attached recorder; it is detached and "
                          "replaced by the new one", stacklevel=2)
            prev.detach()
            if prev.store is not None and self.store is not None and prev.store.path.resolve() == self.store.path.resolve():
                self.run_id = self.run_id or prev.run_id  # the same live model goes on recording the same run
                self.step = max(self.step, prev.step)  # ... from the step it reached: nothing recorded is dropped
                self.logged = {**prev.logged, **self.logged}
                handoff = True
        if self._handle is not None:
            self.detach()
        if self.store is not None:
            self._lock = RunLock(self.store.path)
            try:
                self.run_id = recording_claim.claim(self.store, self, model_identity(self.model, self.layers, self.heads),
                                                    self.mode, self.step, self.run_id)
            except BaseException:
                self._lock.release()
                self._lock = None
                raise
            log = self.store.path / LOG_FILE
            if handoff:
                pass  # self.logged already holds the run's scalars
            elif log.is_file() and self.mode == "resume":  # the run's earlier scalars (CircuitRecorder.log)
                import json

                old = {int(k): v for k, v in json.loads(log.read_text()).items()}
                self.logged = {**{k: v for k, v in old.items() if k <= self.step}, **self.logged}
            elif log.is_file():
                log.unlink()
        if self.reference is None:
            self.reference = {n: p.detach().to("cpu", copy=True) for n, p in compat.leaves(self.model).items()
                              if p.requires_grad}
        if self.verbose:
            n = self.planned_steps()
            mb = self.estimate_bytes() / 2**20
            where = str(self.store.path) if self.store is not None else "memory"
            steps = (f"{n} recorded steps" if n is not None else "an open-ended schedule (every power of two)"
                     if self._powers_of_two else "a custom schedule (its number of steps is not known)")
            msg = f"CircuitRecorder: ~{mb:.2f} MB per recorded step, {steps}"
            msg += f" (~{mb * n:.1f} MB) -> {where}" if n is not None else f" -> {where}"
            print(msg, file=sys.stderr)
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
        self.model._sslens_recorder = weakref.ref(self)
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
        if self._lock is not None:
            recording_claim.release(self.store, self)
            self._lock.release()
            self._lock = None
        ref = getattr(self.model, "_sslens_recorder", None)
        if ref is not None and ref() is self:
            self.model._sslens_recorder = None

    def _have(self, step: int) -> bool:
        if self.store is not None:
            return step in self.store.recording_steps()
        return step in self.records


# ----- reading back -----------------------------------------------------------------------------------
_CIRCUIT = re.compile(r"^blocks\.(\d+)\.(QK|OV)$")
_OLD_SCORE = re.compile(r"^(scores\.blocks\.\d+\.)(" + "|".join(M.OLD_NAMES) + r")$")


def _new_name(key: str) -> str:
    """A stored key in today's names (recordings written before the metrics module: ``prev_token`` ...)."""
    m = _OLD_SCORE.match(key)
    return m.group(1) + M.OLD_NAMES[m.group(2)] if m else key
_LAYER = re.compile(r"blocks\.(\d+)\.")


class Recording:
    """Read recordings back: ``Recording(run).get("blocks.0.QK")`` -> ``[n_steps, head, d, d]``.

    ``source``: a run directory, a :class:`RunStore`, a :class:`CircuitRecorder`, or ``{step: dict}``.
    Files are read lazily (one tensor of one step at a time).
    """

    def __init__(self, source: str | Path | RunStore | CircuitRecorder | dict):
        self._source = source
        if isinstance(source, dict):
            self._mem, self.store = source, None
        elif isinstance(source, CircuitRecorder) and source.store is None:
            self._mem, self.store = source.records, None
        else:
            store = source.store if isinstance(source, CircuitRecorder) else source
            self.store = RunStore(store) if isinstance(store, (str, Path)) else store
            self._mem = None
        self._keys: list[str] | None = None
        self._file_key: dict[str, str] = {}  # today's name -> the name stored in the file, where they differ

    @property
    def steps(self) -> list[int]:
        return sorted(self._mem) if self._mem is not None else self.store.readable_recording_steps()

    def _path(self, step: int) -> Path:
        return self.store.path / "recordings" / step_file(step)

    def _check_step(self, step: int) -> None:
        if step not in self.steps:
            raise SslensError("step", f"no recording at step {step}", ", ".join(map(str, self.steps)) or "none")

    def at(self, step: int) -> dict[str, Tensor]:
        """Every stored tensor of one step."""
        self._check_step(step)
        got = self._mem[step] if self._mem is not None else self.store.load_recording(step)
        return {_new_name(k): v for k, v in got.items()}

    def _stored_keys(self) -> list[str]:
        if self._keys is None:
            steps = self.steps
            if not steps:
                return []
            if self._mem is not None:
                self._keys = sorted(self._mem[steps[0]])
            else:
                from safetensors import safe_open

                with safe_open(str(self._path(steps[0])), framework="pt") as f:
                    self._keys = sorted(f.keys())
            self._file_key = {_new_name(k): k for k in self._keys if _new_name(k) != k}
            self._keys = sorted(_new_name(k) for k in self._keys)
        return self._keys

    def keys(self) -> list[str]:
        """Stored keys plus ``blocks.{l}.QK`` / ``OV`` materialised on request from the factored weights."""
        ks = set(self._stored_keys())
        for k in list(ks):
            m = re.match(r"^blocks\.(\d+)\.attn\.W_(Q|V)$", k)
            if m:
                l, which = m.groups()
                other = "W_K" if which == "Q" else "W_O"
                if f"blocks.{l}.attn.{other}" in ks:
                    ks.add(f"blocks.{l}.{'QK' if which == 'Q' else 'OV'}")
        return sorted(ks)

    def _tensor(self, step: int, name: str) -> Tensor:
        self._stored_keys()
        name = self._file_key.get(name, name)
        if self._mem is not None:
            return self._mem[step][name]
        from safetensors import safe_open

        with safe_open(str(self._path(step)), framework="pt") as f:
            return f.get_tensor(name)

    def _tensors(self, step: int, names: list[str]) -> dict[str, Tensor]:
        """Several tensors of one step, the file opened once."""
        self._stored_keys()
        fk = self._file_key
        if self._mem is not None:
            return {n: self._mem[step][fk.get(n, n)] for n in names}
        from safetensors import safe_open

        with safe_open(str(self._path(step)), framework="pt") as f:
            return {n: f.get_tensor(fk.get(n, n)) for n in names}

    def logged(self) -> dict[int, dict[str, float]]:
        """The user's scalars (``CircuitRecorder.log``): ``{step: {name: value}}``."""
        if isinstance(self._source, CircuitRecorder):
            return self._source.logged
        if self.store is not None and (self.store.path / LOG_FILE).is_file():
            import json

            return {int(k): v for k, v in json.loads((self.store.path / LOG_FILE).read_text()).items()}
        return {}

    def _bad_key(self, name: str) -> SslensError:
        return SslensError("key", f"no {name!r} in this recording", ", ".join(self.keys()) or "none (no steps)")

    def factored(self, name: str, step: int) -> FactoredMatrix:
        """``blocks.{l}.QK`` (W_Q W_K^T) or ``blocks.{l}.OV`` (W_V W_O) at ``step`` as a FactoredMatrix.

        Shape ``[head, d_model, d_model]`` (a dense old-format circuit is wrapped as ``A @ I``).
        """
        m = _CIRCUIT.match(name)
        if m is None or name not in self.keys():
            raise self._bad_key(name)
        self._check_step(step)
        l, which = m.groups()
        if name in self._stored_keys():
            D = self._tensor(step, name)
            return FactoredMatrix(D, torch.eye(D.shape[-1], dtype=D.dtype).expand(D.shape[0], -1, -1))
        if which == "QK":
            A, B = self._tensor(step, f"blocks.{l}.attn.W_Q"), self._tensor(step, f"blocks.{l}.attn.W_K")
            B = _expand_kv(B, A.shape[0]).transpose(-1, -2)
        else:
            A, B = self._tensor(step, f"blocks.{l}.attn.W_V"), self._tensor(step, f"blocks.{l}.attn.W_O")
            A = _expand_kv(A, B.shape[0])
        return FactoredMatrix(_f32(A), _f32(B))

    def get(self, name: str) -> Tensor:
        """Stack ``name`` over all recorded steps (dim 0 follows ``self.steps``).

        ``blocks.{l}.QK``/``OV`` are materialised dense from the factored weights when not stored.
        """
        if name in self._stored_keys():
            return torch.stack([self._tensor(s, name) for s in self.steps])
        if _CIRCUIT.match(name) and name in self.keys():
            return torch.stack([self.factored(name, s).AB for s in self.steps])
        raise self._bad_key(name)

    # ----- notebook -------------------------------------------------------------------------------------
    def bytes_per_step(self) -> int:
        steps = self.steps
        if not steps:
            return 0
        if self._mem is not None:
            return sum(_nbytes(t) for t in self._mem[steps[-1]].values())
        return self._path(steps[-1]).stat().st_size

    def key_groups(self) -> dict[str, int]:
        """Keys grouped with layer numbers and parameter names folded: ``{"blocks.*.attn.W_Q": 12, ...}``."""
        def group(k: str) -> str:
            k = re.sub(r"^scores\.(rel_change|delta)\..*$", r"scores.\1.*", k)
            return _LAYER.sub("blocks.*.", k)

        return dict(sorted(Counter(group(k) for k in self.keys()).items()))

    def _where(self) -> str:
        return str(self.store.path) if self.store is not None else "memory"

    def __repr__(self) -> str:
        steps = self.steps
        span = f"{len(steps)} steps {steps[0]}..{steps[-1]}" if steps else "0 steps"
        groups = self.key_groups()
        shown = ", ".join(f"{g}" + (f" x{n}" if n > 1 else "") for g, n in list(groups.items())[:8])
        more = f", ... ({len(groups) - 8} more groups)" if len(groups) > 8 else ""
        return (f"Recording({self._where()}: {span}, {len(self.keys())} keys, "
                f"{self.bytes_per_step() / 2**20:.2f} MB/step; {shown}{more})")

    def _repr_html_(self) -> str:
        steps = self.steps
        rows = "".join(f"<tr><td><code>{html.escape(g)}</code></td><td>{n}</td></tr>" for g, n in self.key_groups().items())
        span = f"{len(steps)} steps ({steps[0]} … {steps[-1]})" if steps else "no steps"
        return (f"<div><b>Recording</b> <code>{html.escape(self._where())}</code>: {span}, "
                f"{self.bytes_per_step() / 2**20:.2f} MB per step"
                f"<table><tr><th>keys</th><th>count</th></tr>{rows}</table></div>")

    def to_pandas(self):
        """Tidy DataFrame (step, layer, head, metric, value) of the scalar per-head quantities.

        Top-1 singular value of QK and OV (``QK.sv1``, ``OV.sv1``), every ``scores.blocks.{l}.*`` per head (metric
        names of :mod:`sslens.metrics`, as the analysis' ``to_pandas``), MLP condensation scalars (head empty),
        ``rel_change.{param}`` (layer from the name, head empty), and with layer and head empty: ``loss`` and
        ``loss_in_context`` (the probe loss) and the user's scalars (``CircuitRecorder.log``).
        """
        import pandas as pd

        wanted = [k for k in self._stored_keys() if k == "meta.heads" or re.match(r"^blocks\.\d+\.(QK|OV)\.sv$", k)
                  or k.startswith("scores.blocks.") or k.startswith("scores.rel_change.")
                  or re.match(r"^scores\.[^.]+$", k)]
        rows = []
        for s in self.steps:
            t = self._tensors(s, wanted)
            heads = t["meta.heads"].tolist() if "meta.heads" in t else None
            for k, v in t.items():
                m = re.match(r"^blocks\.(\d+)\.(QK|OV)\.sv$", k)
                sc = re.match(r"^scores\.blocks\.(\d+)\.(.+)$", k)
                rc = re.match(r"^scores\.rel_change\.(.+)$", k)
                top = re.match(r"^scores\.([^.]+)$", k)
                if top:
                    layer, metric, vals = None, top.group(1), v
                elif m:
                    layer, metric, vals = int(m.group(1)), f"{m.group(2)}.sv1", v[:, 0]
                elif sc and v.dim() == 1 and not sc.group(2).endswith(".sv"):
                    layer, metric, vals = int(sc.group(1)), sc.group(2), v
                elif sc and v.dim() == 0:
                    layer, metric, vals = int(sc.group(1)), sc.group(2), v
                elif rc:
                    param = rc.group(1)
                    lm = re.match(r"^blocks\.(\d+)\.(.+)$", param)
                    layer = int(lm.group(1)) if lm else None
                    metric, vals = "rel_change." + (lm.group(2) if lm else param), v
                else:
                    continue
                if vals.dim() == 0:
                    rows.append((s, layer, None, metric, float(vals)))
                else:
                    for i, x in enumerate(vals.tolist()):
                        rows.append((s, layer, heads[i] if heads else i, metric, float(x)))
        rows += [(s, None, None, k, float(v)) for s, row in sorted(self.logged().items()) for k, v in row.items()]
        df = pd.DataFrame(rows, columns=["step", "layer", "head", "metric", "value"])
        return df.astype({"layer": "Int64", "head": "Int64"})


__all__ = ["CircuitRecorder", "Recording", "circuits", "probe_patterns", "default_probe", "condensation_scalars",
           "log_schedule"]
