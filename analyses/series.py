"""One analysis path for any series of model states: a CircuitRecorder directory or a checkpoint series.

Both sources yield ``(step, state)`` where ``state`` is the very dict a recording holds
(``CircuitRecorder.record``): dense or factored circuits (``blocks.{l}.QK`` / ``blocks.{l}.attn.W_Q`` ...),
probe patterns ``blocks.{l}.pattern`` [probe, head, q, k] with ``probe.tokens``, and optionally precomputed
``blocks.{l}.QK.sv`` singular values, ``scores.*`` (eigenvalue, relative-change, detection scores) and MLP
weights. :func:`analyze_states` uses whichever keys are present (singular values if recorded, else the
factored weights, else the dense circuit; scores if recorded, else computed from the weights held) and
returns a :class:`SeriesResult`. Weights are analysed as the model holds them (no LayerNorm folding),
cast to float64 (bf16/fp16 recordings included).

Metrics per layer and head over steps (docs/theory.md §3 for the rank metrics):
QK/OV effective rank, stable rank, top-1 energy; attention entropy; previous-token, duplicate-token and
induction (prefix-matching) scores; QK/OV eigenvalue scores; attention mass by key token; Q/K/V
composition scores between heads of different layers; relative change per parameter; MLP condensation.
Model-level series (``scalars``): the recorder's probe ``loss`` / ``loss_in_context`` and the user's logged scalars.
Every per-head quantity is defined once in :mod:`sslens.metrics` (names there, shared with the recorder).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from sslens import compat
from sslens.analyses import head_metrics as hm
from sslens.progress import bar as progress_bar

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
HEAD_METRICS = [f"{c}.{m}" for c in ("QK", "OV") for m in hm.RANK_METRICS] + list(hm.HEAD_SCORES)
PATTERN_BUDGET = 2**28  # bytes of first-probe patterns kept for every step, to pick the views around the events
_WEIGHT = re.compile(r"^blocks\.\d+\.(attn\.W_[QKVO]|mlp\.W_(in|out|gate))$")
DETECTIONS = hm.DETECTIONS
# the recorder's record-time scores (sslens.metrics.pattern_scores), used when no patterns are stored
RECORDED_SCALARS = hm.PATTERN_SCORES


@dataclass
class StateSource:
    """A named series of states: ``steps`` and ``states()`` yielding ``(step, dict)`` in step order."""

    name: str
    steps: list[int]
    states: Callable[[], Iterator[tuple[int, dict[str, Tensor]]]]
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    #: model-level series the source holds beside the states, ``{name: {step: value}}`` (``CircuitRecorder.log``)
    logged: dict[str, dict[int, float]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ sources
def recording_source(path: str | Path) -> StateSource:
    """Every step a CircuitRecorder wrote under ``path`` (``recordings/step_*.safetensors``); no config needed."""
    from sslens.errors import SslensError
    from sslens.hooks.recorder import Recording

    p = Path(path)
    if not p.is_dir():
        raise SslensError("run_dir", f"no such directory {p}", "a directory a CircuitRecorder wrote")
    rec = Recording(p)
    if not rec.steps:
        raise SslensError("run_dir", f"{p} holds no recordings/step_*.safetensors",
                          "a directory a CircuitRecorder(model, store=DIR) wrote")

    def states():
        for s in rec.steps:
            yield s, rec.at(s)

    logged: dict[str, dict[int, float]] = {}
    for step, row in rec.logged().items():
        for k, v in row.items():
            logged.setdefault(k, {})[step] = v
    return StateSource(p.name, list(rec.steps), states, logged=logged)


def model_state(model, rec: dict[str, Tensor], first: dict[str, Tensor] | None,
                rep_probe: Tensor | None = None) -> dict[str, Tensor]:
    """Add to a recorder's dict what a recording may hold and this model can give, where absent.

    Factored attention weights, MLP weights, eigenvalue scores (token space), relative change per parameter against
    ``first`` (the first state's parameters) and detection scores on ``rep_probe`` (a repeated-random-tokens
    probe, when the recorded probe is not one; keys ``detect.blocks.{l}.{previous_token,duplicate_token,induction}``).
    """
    from transformer_lens import FactoredMatrix

    out = dict(rec)
    cfg = model.cfg
    with torch.no_grad():
        for l, b in enumerate(model.blocks):
            for w in ("W_Q", "W_K", "W_V", "W_O"):
                out.setdefault(f"blocks.{l}.attn.{w}", getattr(b.attn, w).detach())
            if not cfg.attn_only:
                out.setdefault(f"blocks.{l}.mlp.W_in", b.mlp.W_in.detach())
                out.setdefault(f"blocks.{l}.mlp.W_out", b.mlp.W_out.detach())
            if f"scores.blocks.{l}.qk_eig" not in out:
                W_E = model.W_E.detach().to(torch.float64)
                Q, K = b.attn.W_Q.detach().to(torch.float64), b.attn.W_K.detach().to(torch.float64)
                V, O = b.attn.W_V.detach().to(torch.float64), b.attn.W_O.detach().to(torch.float64)
                out[f"scores.blocks.{l}.qk_eig"] = hm.eigenvalue_score(
                    FactoredMatrix(W_E @ Q, K.transpose(-2, -1) @ W_E.T).eigenvalues)
                right = O @ model.W_U.detach().to(torch.float64) if cfg.d_vocab_out == cfg.d_vocab else O
                left = W_E @ V if cfg.d_vocab_out == cfg.d_vocab else V
                out[f"scores.blocks.{l}.ov_eig"] = hm.eigenvalue_score(FactoredMatrix(left, right).eigenvalues)
        params = {k: v.detach() for k, v in compat.leaves(model).items()}  # 3.x names on both lines
        if not any(k.startswith("scores.rel_change.") for k in out) and first is not None:
            for k, v in params.items():
                if v.ndim >= 2:
                    out[f"scores.rel_change.{k}"] = torch.tensor(
                        ((v.double() - first[k].double()).norm() / first[k].double().norm().clamp_min(1e-300)).item())
        if rep_probe is not None and not any(k.startswith("detect.") for k in out):
            from sslens.hooks.recorder import probe_patterns

            pats = probe_patterns(model, rep_probe)
            dets = hm.detection_patterns(rep_probe)
            for l in range(cfg.n_layers):
                for name, v in hm.detection_scores(pats[f"blocks.{l}.pattern"], dets).items():
                    out[f"detect.blocks.{l}.{name}"] = v
    return out


def repeated_random_tokens(d_vocab: int, n_ctx: int, n: int = 4, period: int | None = None, seed: int = 0) -> Tensor:
    """``n`` sequences of ``period`` random token ids repeated twice (the induction-heads probe).

    With the defaults it is the recorder's default probe (``sslens.hooks.recorder.default_probe``).
    """
    period = period or max(1, min(32, n_ctx // 2))
    g = torch.Generator().manual_seed(seed)
    half = torch.randint(0, d_vocab, (n, period), generator=g)
    return torch.cat([half, half], dim=1)


def is_repeated(tokens: Tensor) -> bool:
    """True when every probe sequence is its first half repeated (the induction-heads probe)."""
    n = tokens.shape[-1]
    return n % 2 == 0 and n >= 4 and bool((tokens[:, : n // 2] == tokens[:, n // 2:]).all())


def checkpoint_source(series, probe: Tensor | None = None, seed: int = 0) -> StateSource:
    """States of a checkpoint series (``sslens.checkpoints.Series``), docs/theory.md §3.1.

    Per checkpoint the model is loaded and ``CircuitRecorder(model, store=None, probe_tokens=probe,
    schedule=[]).record(step)`` gives the same dict a recording holds; :func:`model_state` adds what only a
    model can give. Default probe: repeated random tokens (so entropy and induction scores come from one probe).
    """
    from sslens.hooks import CircuitRecorder

    notes = list(getattr(series, "notes", []))
    meta = {"probe": "repeated random tokens" if probe is None else "given"}

    def states():
        nonlocal probe
        model, first, rep = None, None, None
        for step in series.steps:
            model = series.load_into(step, model) if hasattr(series, "load_into") else series.load(step)
            if probe is None:
                task = getattr(series, "task", None)
                if task is not None:
                    probe = task.batch(4, torch.Generator().manual_seed(seed))[0][:, : model.cfg.n_ctx]
                    meta["probe"] = "the run's task"
                else:
                    probe = repeated_random_tokens(model.cfg.d_vocab, model.cfg.n_ctx, seed=seed)
            if first is None:
                from sslens.errors import require

                require(int(probe.max()) < model.cfg.d_vocab, "probe", f"token id {int(probe.max())} >= d_vocab "
                        f"{model.cfg.d_vocab}", f"ids in [0, {model.cfg.d_vocab})")
                probe = probe[:, : model.cfg.n_ctx]
            if rep is None and not is_repeated(probe):
                rep = repeated_random_tokens(model.cfg.d_vocab, model.cfg.n_ctx, seed=seed)
            period = probe.shape[1] // 2 if is_repeated(probe) else None
            if first is None:  # W_0 of scores.rel_change: the first checkpoint's parameters
                first = {k: v.detach().clone() for k, v in compat.leaves(model).items()}
            rec = CircuitRecorder(model, store=None, probe_tokens=probe, schedule=[], probe_period=period,
                                  reference=first, verbose=False).record(step)
            yield step, model_state(model, rec, first, rep)

    return StateSource(series.name, list(series.steps), states, notes, meta)


# ------------------------------------------------------------------------------------------------ analysis
def _layers(state: dict) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := _BLOCK.match(k))})


def _attn(state: dict, l: int, n_heads: int) -> tuple[Tensor, ...] | None:
    ks = [f"blocks.{l}.attn.{w}" for w in ("W_Q", "W_K", "W_V", "W_O")]
    if not all(k in state for k in ks):
        return None
    Q, K, V, O = (state[k].to(torch.float64) for k in ks)
    return Q, hm.repeat_kv(K, Q.shape[0]), hm.repeat_kv(V, Q.shape[0]), O


def _circuit_sv(state: dict, l: int, c: str, attn) -> Tensor | None:
    if f"blocks.{l}.{c}.sv" in state:
        return state[f"blocks.{l}.{c}.sv"].to(torch.float64)
    if attn is not None:
        Q, K, V, O = attn
        return hm.factored_singular_values(Q, K.transpose(-2, -1)) if c == "QK" else hm.factored_singular_values(V, O)
    if f"blocks.{l}.{c}" in state:  # dense: drop singular values under the rounding floor of its dtype
        A = state[f"blocks.{l}.{c}"]
        s = torch.linalg.svdvals(A.to(torch.float64))
        tol = s[..., :1] * torch.finfo(A.dtype).eps * max(A.shape[-2:]) ** 0.5
        return torch.where(s > tol, s, torch.zeros_like(s))
    return None


def _eig_scores(state: dict, l: int, attn) -> tuple[dict[str, Tensor], str | None]:
    out, space = {}, None
    for c, key in (("QK", "qk_eig"), ("OV", "ov_eig")):
        if f"scores.blocks.{l}.{key}" in state:
            out[key], space = state[f"scores.blocks.{l}.{key}"].to(torch.float64), "recorded"
        elif f"blocks.{l}.{c}_tok" in state and state[f"blocks.{l}.{c}_tok"].shape[-1] <= 1024 \
                and state[f"blocks.{l}.{c}_tok"].shape[-1] == state[f"blocks.{l}.{c}_tok"].shape[-2]:
            out[key], space = hm.eigenvalue_score(torch.linalg.eigvals(state[f"blocks.{l}.{c}_tok"].to(torch.float64))), "token"
        elif attn is not None:
            from transformer_lens import FactoredMatrix

            Q, K, V, O = attn
            fm = FactoredMatrix(Q, K.transpose(-2, -1)) if c == "QK" else FactoredMatrix(V, O)
            out[key], space = hm.eigenvalue_score(fm.eigenvalues), "residual"
        elif f"blocks.{l}.{c}" in state and state[f"blocks.{l}.{c}"].shape[-1] <= 1024:
            out[key], space = hm.eigenvalue_score(torch.linalg.eigvals(state[f"blocks.{l}.{c}"].to(torch.float64))), "residual"
    return out, space


@dataclass
class Views:
    """Which attention patterns to keep for circuitsvis views: layers, heads, steps (None: defaults)."""

    layers: Sequence[int] | None = None
    heads: Sequence[int] | None = None
    steps: Sequence[int] | None = None

    def resolve_steps(self, steps: list[int], events: list[dict] | None = None) -> list[int]:
        """The recorded steps nearest to the requested ones.

        Default: the steps around the events (:func:`event_steps`), else first, middle, last.
        """
        if not steps:
            return []
        if self.steps is None:
            around = event_steps(events or [], steps)
            return around or sorted({steps[0], steps[len(steps) // 2], steps[-1]})
        return sorted({min(steps, key=lambda s: abs(s - t)) for t in self.steps})

    def check(self, layer_ids: Sequence[int], head_ids: Sequence[int], steps: Sequence[int]) -> None:
        """One line naming the valid values for a requested layer, head or step the series does not have."""
        from sslens.errors import require

        def valid(ids: Sequence[int]) -> str:
            ids = list(ids)
            contiguous = bool(ids) and ids == list(range(ids[0], ids[-1] + 1))
            return f"{ids[0]} .. {ids[-1]}" if contiguous else (", ".join(map(str, ids)) or "none")

        for flag, want, have in (("--layers", self.layers, layer_ids), ("--heads", self.heads, head_ids)):
            bad = [v for v in (want or []) if v not in have]
            require(not bad, flag, f"got {bad[0] if bad else ''}", f"recorded {flag[2:]} {valid(have)}")
        bad = [t for t in (self.steps or []) if not steps or not steps[0] <= t <= steps[-1]]
        require(not bad, "--steps", f"got {bad[0] if bad else ''}",
                f"steps {steps[0]} .. {steps[-1]} (the nearest recorded step is shown)" if steps else "none recorded")


def event_steps(events: list[dict], steps: list[int], k: int = 2) -> list[int]:
    """Recorded steps around the ``k`` largest events: each one's start, the step in between and its end.

    Model-level events (the loss) first, then the head events with the largest relative change; plus the last step.
    """
    if not events:
        return []

    def size(e):
        return abs(e["after"] - e["before"]) / max(abs(e["before"]), abs(e["after"]), 1e-12)

    ranked = sorted(events, key=lambda e: (e["layer"] is not None, -size(e)))
    out = {steps[-1]}
    for e in ranked[:k]:
        inside = [s for s in steps if e["start"] <= s <= e["end"]]
        out |= {e["start"], inside[len(inside) // 2], e["end"]}
    return sorted(out)


ANALYSIS_THREADS = 1  # torch intra-op threads while analysing (benchmarks/bench_analyze_threads.py, docs/benchmarks.md)


def own_threads(fn: Callable) -> Callable:
    """Run ``fn`` with ``ANALYSIS_THREADS`` torch threads, restored after.

    The analysis is many small SVDs and eigendecompositions: LAPACK calls whose OpenMP barriers spin when a core is
    busy elsewhere (docs/benchmarks.md, "Threads").
    """
    import functools

    @functools.wraps(fn)
    def run(*args, **kwargs):
        old = torch.get_num_threads()
        torch.set_num_threads(ANALYSIS_THREADS)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(old)

    return run


@own_threads
def analyze_states(source: StateSource, views: Views | None = None, progress: bool | None = None) -> "SeriesResult":
    """Run every generic analysis over ``source`` (see the module docstring); one pass, streaming."""
    views = views or Views()
    steps = source.steps
    keep_steps = set(views.resolve_steps(steps))
    keep_all = views.steps is None  # the default views are the steps around the events: chosen at the end
    S = len(steps)
    res = SeriesResult(name=source.name, steps=list(steps), notes=list(source.notes), meta=dict(source.meta))
    n_layers = n_heads = None
    vocab = None
    comp_rows: dict[str, list] = {}
    layer_rows: dict[str, list] = {}
    rel: dict[str, list] = {}
    scalars: dict[str, list] = {}
    first_w: dict[str, Tensor] = {}
    it = progress_bar(source.states(), total=S, progress=progress, desc=f"analyze {source.name}", unit="step")
    for i, (step, st) in enumerate(it):
        if n_layers is None:
            layers = _layers(st)
            n_layers = len(layers)
            n_heads = _n_heads(st, layers)
            res.n_layers, res.n_heads = n_layers, n_heads
            res.layer_ids = list(layers)
            res.head_ids = st["meta.heads"].tolist() if "meta.heads" in st else list(range(n_heads))
            views.check(res.layer_ids, res.head_ids, steps)
            res.head = {m: torch.full((S, n_layers, n_heads), float("nan"), dtype=torch.float64) for m in HEAD_METRICS}
            if "probe.tokens" in st:  # every step's first-probe patterns only within a memory budget
                keep_all = keep_all and S * n_layers * n_heads * st["probe.tokens"].shape[1] ** 2 * 4 <= PATTERN_BUDGET
                res.probe = st["probe.tokens"].clone()
                vocab = torch.unique(res.probe)
                res.key_tokens = vocab.tolist()
                res.key_mass = torch.full((S, n_layers, n_heads, vocab.numel()), float("nan"), dtype=torch.float64)
                dets = hm.detection_patterns(res.probe)
        bad = sorted(k for k, v in st.items()  # scores may be NaN by definition (rel_change of W_0 = 0)
                     if not k.startswith("scores.") and v.is_floating_point() and not bool(torch.isfinite(v).all()))
        if bad:  # a diverged state: its metrics stay NaN
            res.notes.append(f"step {step}: non-finite values in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}; "
                             "its metrics are NaN")
            continue
        attn_all = []
        for li, l in enumerate(layers):
            attn = _attn(st, l, n_heads)
            attn_all.append(attn)
            if attn is not None:
                res.meta.setdefault("dims", {"d_model": attn[0].shape[-2], "d_head": attn[0].shape[-1]})
            for c in ("QK", "OV"):
                s = _circuit_sv(st, l, c, attn)
                if s is not None:
                    for m, v in hm.rank_metrics(s).items():
                        res.head[f"{c}.{m}"][i, li] = v
            eig, space = _eig_scores(st, l, attn)
            for k, v in eig.items():
                res.head[k][i, li] = v
            if space:
                res.meta["eig_space"] = space
            pat = st.get(f"blocks.{l}.pattern")
            if pat is not None:
                res.head["entropy"][i, li] = hm.attention_entropy(pat).to(torch.float64)
                if vocab is not None:
                    res.key_mass[i, li] = hm.key_token_mass(pat, st["probe.tokens"], vocab)
                    for name, v in hm.detection_scores(pat, dets).items():
                        res.head[name][i, li] = v
                if step in keep_steps or keep_all:
                    res.patterns.setdefault(step, {})[l] = pat[0].float().clone()
            else:  # no patterns stored: the recorder's record-time scalars (docs/theory.md §3.3, §3.6)
                for name in RECORDED_SCALARS:
                    if f"scores.blocks.{l}.{name}" in st:
                        res.head[name][i, li] = st[f"scores.blocks.{l}.{name}"].to(torch.float64)
                        res.meta["pattern_scores"] = "recorder scalars (no patterns stored)"
            for name in DETECTIONS:  # scores on a separate repeated-tokens probe take precedence
                if f"detect.blocks.{l}.{name}" in st:
                    res.head[name][i, li] = st[f"detect.blocks.{l}.{name}"].to(torch.float64)
            rows = None
            if f"blocks.{l}.mlp.W_in" in st:
                W_in = st[f"blocks.{l}.mlp.W_in"]
                rows = layer_rows.setdefault("mlp_condensation", [[float("nan")] * n_layers for _ in range(S)])
                rows[i][li] = hm.condensation_index(W_in.transpose(-2, -1)).item()  # neurons: columns of W_in
                if i == 0 or i == S - 1:
                    res.neurons.setdefault(l, {})[step] = W_in.T.to(torch.float64).clone()
            elif f"scores.blocks.{l}.mlp.W_in.cos_top1" in st:  # the recorder's scalar (mlp="scalars")
                rows = layer_rows.setdefault("mlp_condensation", [[float("nan")] * n_layers for _ in range(S)])
                rows[i][li] = float(st[f"scores.blocks.{l}.mlp.W_in.cos_top1"])
        if n_layers > 1:
            comp = None
            if all(a is not None for a in attn_all):
                comp = hm.composition_scores(*[torch.stack([a[j] for a in attn_all]) for j in range(4)])
            elif all(f"blocks.{l}.QK" in st and f"blocks.{l}.OV" in st for l in layers):
                comp = hm.composition_scores_dense(torch.stack([st[f"blocks.{l}.QK"] for l in layers]),
                                                   torch.stack([st[f"blocks.{l}.OV"] for l in layers]))
            for mode, v in (comp or {}).items():
                comp_rows.setdefault(mode, [None] * S)[i] = v
        recorded = {k[len("scores.rel_change."):]: float(v) for k, v in st.items() if k.startswith("scores.rel_change.")}
        if not recorded:  # relative change of the recorded weights against the first state
            for k, v in st.items():
                if _WEIGHT.match(k):
                    w0 = first_w.setdefault(k, v.to(torch.float64).clone())
                    recorded[k] = ((v.to(torch.float64) - w0).norm() / w0.norm().clamp_min(1e-300)).item()
        for k, v in recorded.items():
            rel.setdefault(k, [float("nan")] * S)[i] = v
        for k, v in st.items():  # model-level scalars: the recorder's probe loss (scores.loss, ...)
            if k.startswith("scores.") and "." not in k[len("scores."):] and v.dim() == 0:
                scalars.setdefault(k[len("scores."):], [float("nan")] * S)[i] = float(v)
    if n_layers is None:
        from sslens.errors import SslensError

        raise SslensError("series", f"{source.name} holds no states", "a recording or checkpoint series with steps")
    res.composition = {m: torch.stack([x if x is not None else torch.full_like(next(y for y in v if y is not None),
                                                                             float("nan")) for x in v])
                       for m, v in comp_rows.items()}
    res.layer = {m: torch.tensor(v, dtype=torch.float64) for m, v in layer_rows.items()}
    res.rel_change = {k: t for k, v in rel.items()  # all-NaN: W_0 = 0 (e.g. zero-initialised biases)
                      if not torch.isnan(t := torch.tensor(v, dtype=torch.float64)).all()}
    for k, row in source.logged.items():  # the user's scalars (CircuitRecorder.log) at recorded steps
        for i, step in enumerate(steps):
            if step in row:
                scalars.setdefault(k, [float("nan")] * S)[i] = row[step]
    res.scalars = {k: torch.tensor(v, dtype=torch.float64) for k, v in scalars.items()}
    res.views = views
    return finish(res)


def finish(res: "SeriesResult") -> "SeriesResult":
    """Events, head labels and composition edges of a result; its attention views around the events."""
    from sslens.analyses import events, labels, own_checks

    res.events = events.detect(res)
    row = own_checks.qk_rank_check(res)
    res.checks = [row] if row is not None else []
    res.labels = labels.head_labels(res)
    res.edges = labels.composition_edges(res)
    if res.views is not None and res.views.steps is None and res.patterns:
        keep = set(res.views.resolve_steps(res.steps, res.events)) & set(res.patterns)  # all kept when in budget
        keep = keep or set(res.views.resolve_steps(res.steps)) & set(res.patterns)
        res.patterns = {s: p for s, p in res.patterns.items() if s in keep}
    return res


def _n_heads(st: dict, layers: list[int]) -> int:
    l = layers[0] if layers else 0
    for k in (f"blocks.{l}.attn.W_Q", f"blocks.{l}.QK.sv", f"blocks.{l}.QK", f"blocks.{l}.pattern"):
        if k in st:
            return st[k].shape[1] if k.endswith("pattern") else st[k].shape[0]
    return 1


# ------------------------------------------------------------------------------------------------ results
@dataclass
class SeriesResult:
    """Generic analyses of one series.

    ``head[metric]`` is ``[step, layer, head]``; ``composition[mode]`` is
    ``[step, layer, head, layer, head]`` (left head, right head); ``layer[metric]`` ``[step, layer]``;
    ``rel_change[param]`` ``[step]``; ``scalars[name]`` ``[step]`` (model level: ``loss``, ``loss_in_context``, logged);
    ``key_mass`` ``[step, layer, head, token]`` over ``key_tokens``.
    Axis positions map to model indices through ``layer_ids`` / ``head_ids`` (a recorder with ``layers=`` /
    ``heads=`` records a subset); exports (``to_pandas``, ``to_json``, ``final``) use the model indices.
    """

    name: str
    steps: list[int]
    n_layers: int = 0
    n_heads: int = 0
    layer_ids: list[int] = field(default_factory=list)
    head_ids: list[int] = field(default_factory=list)
    head: dict[str, Tensor] = field(default_factory=dict)
    composition: dict[str, Tensor] = field(default_factory=dict)
    layer: dict[str, Tensor] = field(default_factory=dict)
    rel_change: dict[str, Tensor] = field(default_factory=dict)
    scalars: dict[str, Tensor] = field(default_factory=dict)
    #: abrupt changes (``sslens.analyses.events``), head labels and composition edges (``sslens.analyses.labels``)
    events: list[dict] = field(default_factory=list)
    labels: list[dict] = field(default_factory=list)
    edges: list[dict] = field(default_factory=list)
    #: theory checks on this model (``sslens.analyses.own_checks``), rows of ``sslens.analyses.checks``
    checks: list[dict] = field(default_factory=list)
    key_tokens: list[int] = field(default_factory=list)
    key_mass: Tensor | None = None
    probe: Tensor | None = None
    patterns: dict[int, dict[int, Tensor]] = field(default_factory=dict)
    neurons: dict[int, dict[int, Tensor]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    views: Views | None = None
    #: PNG bytes of ``plot(what)`` already rendered from this result's data at the report's dpi (the batched
    #: analysis renders its weight plots in its helper process); ``write_report`` embeds them as they are
    rendered: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    # -- export ---------------------------------------------------------------------------------------------
    def _L(self, li: int) -> int:
        return self.layer_ids[li] if li < len(self.layer_ids) else li

    def _H(self, hi: int) -> int:
        return self.head_ids[hi] if hi < len(self.head_ids) else hi

    def rows(self, key_mass_top: int = 5) -> Iterator[tuple[int, int, int, str, float]]:
        """Tidy rows (step, layer, head, metric, value); layer/head None where the metric has none."""
        for m, v in self.head.items():
            if torch.isnan(v).all():
                continue
            for i, s in enumerate(self.steps):
                for l in range(self.n_layers):
                    for h in range(self.n_heads):
                        yield s, self._L(l), self._H(h), m, float(v[i, l, h])
        for mode, v in self.composition.items():
            for i, s in enumerate(self.steps):
                for l1 in range(self.n_layers):
                    for h1 in range(self.n_heads):
                        for l2 in range(l1 + 1, self.n_layers):
                            for h2 in range(self.n_heads):
                                yield (s, self._L(l2), self._H(h2), f"{mode}_comp.L{self._L(l1)}H{self._H(h1)}",
                                       float(v[i, l1, h1, l2, h2]))
        for m, v in self.layer.items():
            for i, s in enumerate(self.steps):
                for l in range(self.n_layers):
                    yield s, self._L(l), None, m, float(v[i, l])
        for k, v in self.rel_change.items():
            mm = _BLOCK.match(k)
            for i, s in enumerate(self.steps):
                yield s, int(mm.group(1)) if mm else None, None, f"rel_change.{_BLOCK.sub('', k)}", float(v[i])
        for k, v in self.scalars.items():
            for i, s in enumerate(self.steps):
                if not math.isnan(float(v[i])):
                    yield s, None, None, k, float(v[i])
        if self.key_mass is not None and key_mass_top:
            for t in self.top_key_tokens(key_mass_top):
                j = self.key_tokens.index(t)
                for i, s in enumerate(self.steps):
                    for l in range(self.n_layers):
                        for h in range(self.n_heads):
                            yield s, self._L(l), self._H(h), f"key_mass.{t}", float(self.key_mass[i, l, h, j])

    def top_key_tokens(self, k: int = 5) -> list[int]:
        """Token ids with the most attention mass at the last step (summed over layers and heads)."""
        if self.key_mass is None:
            return []
        tot = torch.nan_to_num(self.key_mass[-1]).sum((0, 1))
        return [self.key_tokens[j] for j in torch.topk(tot, min(k, tot.numel())).indices.tolist()]

    def to_pandas(self, key_mass_top: int = 5):
        """Tidy DataFrame: columns step, layer, head, metric, value (layer/head empty where a metric has none).

        The metric names and values of :meth:`sslens.hooks.Recording.to_pandas` for the same (step, layer, head).
        """
        import pandas as pd

        df = pd.DataFrame(list(self.rows(key_mass_top)), columns=["step", "layer", "head", "metric", "value"])
        return df.astype({"layer": "Int64", "head": "Int64"})

    def to_json(self) -> dict:
        """Plain JSON-able dict (NaN -> None)."""

        def clean(x):
            if isinstance(x, list):
                return [clean(y) for y in x]
            return None if isinstance(x, float) and math.isnan(x) else x

        def listed(v: Tensor) -> list:
            return clean(v.tolist()) if v.is_floating_point() and bool(torch.isnan(v).any()) else v.tolist()

        return {
            "name": self.name, "steps": self.steps, "n_layers": self.n_layers, "n_heads": self.n_heads,
            "layer_ids": self.layer_ids, "head_ids": self.head_ids,
            "notes": self.notes, "meta": self.meta,
            "head": {m: listed(v) for m, v in self.head.items() if not torch.isnan(v).all()},
            "composition": {m: listed(v) for m, v in self.composition.items()},
            "layer": {m: listed(v) for m, v in self.layer.items()},
            "rel_change": {k: listed(v) for k, v in self.rel_change.items()},
            "scalars": {k: listed(v) for k, v in self.scalars.items()},
            "events": self.events, "heads": self.labels, "composition_edges": self.edges, "checks": self.checks,
            "key_mass_top": {str(t): listed(self.key_mass[:, :, :, self.key_tokens.index(t)])
                             for t in self.top_key_tokens()},
        }

    def final(self) -> list[dict]:
        """One row per (layer, head) with each head metric at the last step."""
        out = []
        for l in range(self.n_layers):
            for h in range(self.n_heads):
                r = {"layer": self._L(l), "head": self._H(h)}
                for m, v in self.head.items():
                    if not torch.isnan(v[-1, l, h]):
                        r[m] = float(v[-1, l, h])
                out.append(r)
        return out

    def __repr__(self) -> str:
        s = self.steps
        span = f"steps {s[0]}..{s[-1]}" if s else "no steps"
        ms = [m for m, v in self.head.items() if not torch.isnan(v).all()]
        return (f"SeriesResult({self.name!r}: {len(s)} states, {span}, {self.n_layers} layers x {self.n_heads} heads; "
                f"metrics: {', '.join(ms)}; composition: {', '.join(self.composition) or '-'}; "
                f"rel_change: {len(self.rel_change)} params; layer: {', '.join(self.layer) or '-'})")

    def _repr_html_(self) -> str:
        import html

        rows = self.final()
        cols = list(dict.fromkeys(k for r in rows for k in r))
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(
            f"<td>{r[c]:.3g}</td>" if isinstance(r.get(c), float) else f"<td>{r.get(c, '')}</td>" for c in cols) + "</tr>"
            for r in rows[:32])
        more = f"<p>(+{len(rows) - 32} heads)</p>" if len(rows) > 32 else ""
        return (f"<div><b>{html.escape(repr(self))}</b><br><small>at step {self.steps[-1] if self.steps else '-'}:</small>"
                f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}</div>")

    # -- plots ------------------------------------------------------------------------------------------------
    def plot(self, what: str = "rank", show: bool | None = None, **kw):
        """A matplotlib Figure: ``what`` in rank, attention, scores, composition, rel_change, key_mass, condensation.

        In a notebook it is displayed at once (also mid-cell) and once (``show=False``: not now;
        :mod:`sslens.analyses.figures`).
        """
        from sslens.analyses import figures, series_report

        return figures.show(series_report.plot(self, what, **kw), show)


def analyze_recording(path: str | Path, views: Views | None = None, progress: bool | None = None) -> SeriesResult:
    """:func:`analyze_states` over a CircuitRecorder directory."""
    return analyze_states(recording_source(path), views=views, progress=progress)
