"""The series analysis of a directory of state dicts, batched over checkpoints (docs/theory.md §3.1).

Same numbers as the per-checkpoint path (:func:`sslens.analyses.series.checkpoint_source` ->
:func:`~sslens.analyses.series.analyze_states`, which stays the reference), computed chunk by chunk on stacked
parameters ``[checkpoint, ...]`` with ONE model:

- state dicts are read through a template: the first file is ``torch.load(weights_only=True)``-ed and its
  layout checked; a later file whose pickle (``data.pkl``) is byte-identical has the same keys, shapes, dtypes
  and storage records, so its tensors are read straight from those records (no unpickling); any other file
  goes through ``torch.load(weights_only=True)``;
- QK/OV singular values (``FactoredMatrix`` small SVDs), QK/OV eigenvalue scores, MLP condensation and relative
  change run batched over checkpoints and heads, in the dtype the recorder uses (float32), then float64;
- probe patterns come from one vmapped forward (``torch.func.functional_call`` + ``torch.func.vmap``) of the
  model over the stacked parameters; entropy, detection scores and key-token mass from the same functions
  (:mod:`sslens.metrics`, whose ``...``-leading shapes take the checkpoint dim);
- composition scores (models with > 1 layer) run per checkpoint (``head_metrics.composition_scores``).

Handled only for plain HookedTransformers rebuilt from a config (``Series.files``) whose parameter names are
the state dict's; everything else (sslens runs, sslens models with variant hooks, pretrained series, a run's
task probe) takes the per-checkpoint path.

:func:`start_weights` (``sslens analyze-checkpoints``, before TransformerLens is imported) forks a helper that
computes the weight metrics (:class:`WeightMetrics`, no model needed), finds the non-finite states and renders the
report's weight plots; :func:`analyze_stacked` then runs only the probe forwards and takes the helper's result
when it read the files the same way (else computes it itself): docs/analysis.md, "Batched path".
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from sslens.analyses import head_metrics as hm
from sslens.analyses.series import (
    DETECTIONS,
    HEAD_METRICS,
    PATTERN_BUDGET,
    SeriesResult,
    Views,
    finish,
    is_repeated,
    repeated_random_tokens,
)
from sslens.progress import bar as progress_bar

CHUNK = 128  # checkpoints per batch at most; fewer when a checkpoint's parameters and patterns are large
CHUNK_BYTES = 2**30  # memory budget of one chunk (stacked parameters, probe patterns and their float64 copies)
BUFFERS = (".mask", ".IGNORE", ".rotary_sin", ".rotary_cos")  # HookedTransformer buffers in a state dict
WEIGHT_METRICS = [f"{c}.{m}" for c in ("QK", "OV") for m in hm.RANK_METRICS] + ["qk_eig", "ov_eig"]


def supported(series, probe: Tensor | None = None) -> bool:
    """True when ``series`` can take the batched path (see the module docstring)."""
    return bool(getattr(series, "files", None)) and getattr(series, "task", None) is None


class Unsupported(Exception):
    """The series cannot take the batched path (the caller uses the per-checkpoint path)."""


class _Done(Exception):
    pass


class StateDictReader:
    """Reads ``torch.save`` state dicts that share the first file's pickle without unpickling them again."""

    def __init__(self, first: Path, keys: list[str]):
        from sslens.checkpoints import load_state_dict

        sd = load_state_dict(first)
        self.keys = [k for k in keys if k in sd]
        self.template: bytes | None = None
        self.layout: dict[str, tuple] = {}
        try:
            reader = torch._C.PyTorchFileReader(str(first))
            order: dict[int, str] = {}
            for k, t in sd.items():  # torch.save names storages "0", "1", ... in order of first use
                order.setdefault(t.untyped_storage().data_ptr(), str(len(order)))
                self.layout[k] = (order[t.untyped_storage().data_ptr()], t.dtype, t.storage_offset(),
                                  tuple(t.shape), t.stride())
            self.template = reader.get_record("data.pkl")
            raw = self._raw(reader)
            if not all(torch.equal(raw[k], sd[k]) for k in self.keys):
                self.template = None
        except (RuntimeError, ValueError, KeyError, AttributeError):  # AttributeError: a torch without the reader
            self.template = None

    def _raw(self, reader) -> dict[str, Tensor]:
        out = {}
        for k in self.keys:
            key, dtype, offset, shape, stride = self.layout[k]
            if 0 in shape:
                out[k] = torch.empty(shape, dtype=dtype)
                continue
            buf = torch.frombuffer(bytearray(reader.get_record(f"data/{key}")), dtype=dtype)
            out[k] = buf.as_strided(shape, stride, offset)
        return out

    def read(self, path: Path) -> tuple[dict[str, Tensor], bool]:
        """(tensors of ``keys``, whether the file has the template's layout); else the full state dict."""
        from sslens.checkpoints import load_state_dict

        if self.template is not None:
            try:
                reader = torch._C.PyTorchFileReader(str(path))
                if reader.get_record("data.pkl") == self.template:
                    return self._raw(reader), True
            except (RuntimeError, AttributeError):
                pass  # truncated or not a zip: load_state_dict says which in one line
        return load_state_dict(path), False


def _check(sd: dict[str, Tensor], own: dict[str, tuple], name: str) -> None:
    """The per-checkpoint path's checks (``sslens.checkpoints._model_from``): names and shapes."""
    from sslens.errors import SslensError

    for k, v in sd.items():
        if k in own and own[k] != tuple(v.shape):
            raise SslensError("checkpoint", f"{name}: {k} has shape {tuple(v.shape)}, the config gives {own[k]}",
                              "a checkpoint matching the config")
    missing = [k for k in own if k not in sd and not k.endswith(("IGNORE", "mask"))]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SslensError("checkpoint", f"{name}: missing {missing[0]}{more}", "a full state dict of this model")


def _f32(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _kv(X: dict[str, Tensor], l: int, w: str, n_heads: int) -> Tensor:
    """``W_K``/``W_V`` ``[ckpt, head, d_model, d_head]``, grouped-query ``_W_K``/``_W_V`` repeated to query heads."""
    W = X[f"blocks.{l}.attn.{w}"] if f"blocks.{l}.attn.{w}" in X else X[f"blocks.{l}.attn._{w}"]
    return W if W.shape[1] == n_heads else torch.repeat_interleave(W, n_heads // W.shape[1], dim=1)


def patterns(model, params: dict[str, Tensor], tokens: Tensor) -> list[Tensor]:
    """``hook_pattern`` of every layer ``[ckpt, probe, head, q, k]`` for stacked ``params`` ``[ckpt, ...]``.

    One ``torch.func.vmap`` of ``torch.func.functional_call`` on ``model`` (its buffers are shared); parameters
    not in ``params`` are the model's. The last layer's values play no part in its pattern, so its ``W_V``/``b_V``
    are given zero width there (the forward computes no values for it).
    """
    from torch.func import functional_call, vmap

    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    tokens = tokens.to(model.cfg.device)
    last = model.blocks[-1].attn
    no_v = {f"blocks.{model.cfg.n_layers - 1}.attn.{n}": torch.zeros(*getattr(last, n).shape[:-1], 0,
                                                                   dtype=getattr(last, n).dtype)
            for n, _ in last.named_parameters() if n in ("W_V", "b_V", "_W_V", "_b_V")}

    def forward(p: dict[str, Tensor]) -> tuple[Tensor, ...]:
        got: dict[str, Tensor] = {}

        def grab(x: Tensor, hook) -> None:
            got[hook.name] = x
            if hook.name == names[-1]:
                raise _Done  # nothing after the last pattern is needed (last MLP, unembed)

        try:
            with model.hooks(fwd_hooks=[(n, grab) for n in names]):
                functional_call(model, {**p, **no_v}, (tokens,), {"return_type": None})
        except _Done:
            pass
        return tuple(got[n] for n in names)

    with torch.no_grad():
        return list(vmap(forward)(params))


def probe_loss(model, params: dict[str, Tensor], tokens: Tensor, period: int | None) -> dict[str, Tensor]:
    """The recorder's probe loss (``sslens.metrics.next_token_loss``) of each stacked state ``[ckpt]``.

    One full forward per checkpoint (its logits ``[probe, pos, vocab]`` only; a vmapped one would hold them all).
    """
    from torch.func import functional_call

    C = next(iter(params.values())).shape[0]
    out: dict[str, list] = {}
    with torch.no_grad():
        for j in range(C):
            logits = functional_call(model, {k: v[j] for k, v in params.items()}, (tokens.to(model.cfg.device),))
            for k, v in hm.next_token_loss(logits, tokens, period).items():
                out.setdefault(k, []).append(float(v))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}


def chunk_size(param_bytes: int, n_layers: int, n_heads: int, probe_shape: tuple[int, int], chunk: int = CHUNK) -> int:
    """Checkpoints per batch: at most ``chunk``, within :data:`CHUNK_BYTES`.

    The budget holds the stacked parameters twice, the probe patterns and what is computed from them.
    """
    per_ckpt = 2 * param_bytes + 6 * n_layers * probe_shape[0] * probe_shape[1] * n_heads * probe_shape[1] * 8
    return max(1, min(chunk, CHUNK_BYTES // per_ckpt))


def default_probe_shape(n_ctx: int) -> tuple[int, int]:
    """The shape of :func:`sslens.analyses.series.repeated_random_tokens` ``(d_vocab, n_ctx)``."""
    return 4, 2 * max(1, min(32, n_ctx // 2))


def _chunks(reader: StateDictReader, files: list[Path], names: list[str], dtypes: dict[str, torch.dtype], chunk: int,
            check=None, notes: list[str] | None = None, steps: list[int] | None = None):
    """``(indices, stacked parameters of the finite states [ckpt, ...], their rows)`` per chunk of ``files``.

    ``check(sd, name)`` checks a file read without the template; a state with a non-finite value is left out
    (its metrics stay NaN) and named in ``notes``.
    """
    S = len(files)
    for lo in range(0, S, chunk):
        idx = list(range(lo, min(S, lo + chunk)))
        sds = []
        for i in idx:
            sd, same = reader.read(files[i])
            if not same and check is not None:
                check(sd, files[i].name)
            sds.append(sd)
        X = {n: torch.stack([sd[n] for sd in sds]).to(dtypes[n]) for n in names}
        del sds
        finite = torch.ones(len(idx), dtype=torch.bool)
        for n, v in X.items():  # max and min are finite iff every entry is (NaN propagates); no [ckpt, ...] mask
            if v.is_floating_point() and v[0].numel():
                finite &= torch.isfinite(v.flatten(1).amax(1)) & torch.isfinite(v.flatten(1).amin(1))
        for j in (~finite).nonzero().flatten().tolist():  # a diverged state: its metrics stay NaN
            if notes is not None:
                bad = [n for n, v in X.items() if v.is_floating_point() and not bool(torch.isfinite(v[j]).all())]
                notes.append(f"step {steps[idx[j]]}: non-finite values in {', '.join(bad[:3])}"
                             f"{' ...' if len(bad) > 3 else ''}; its metrics are NaN")
            for v in X.values():
                v[j] = 0
        good = finite.nonzero().flatten()
        yield idx, {n: v[good] for n, v in X.items()}, torch.tensor(idx)[good]


class WeightMetrics:
    """The metrics of a series that need only its weights, filled chunk by chunk (no model, no TransformerLens).

    QK/OV rank metrics and eigenvalue scores ``head`` ``[ckpt, layer, head]``, MLP condensation ``cond``
    ``[ckpt, layer]``, the first and last state's neurons ``neurons[layer][row]``, composition ``comp``
    ``[ckpt, layer, head, layer, head]`` (more than one layer), relative change ``rel[param]`` ``[ckpt]``, and
    which rows were finite ``ok``.
    """

    def __init__(self, S: int, dims: tuple[int, int, int, bool, bool], W0: dict[str, Tensor]):
        self.S, self.dims = S, dims
        L, H, _, _, _ = dims
        self.head = {m: torch.full((S, L, H), float("nan"), dtype=torch.float64) for m in WEIGHT_METRICS}
        self.cond = torch.full((S, L), float("nan"), dtype=torch.float64)
        self.neurons: dict[int, dict[int, Tensor]] = {}
        self.comp = {m: torch.full((S, L, H, L, H), float("nan"), dtype=torch.float64) for m in "QKV"} if L > 1 else {}
        self.rel = {n: torch.full((S,), float("nan"), dtype=torch.float64) for n in W0}
        self.W0 = W0
        self.ok = torch.zeros(S, dtype=torch.bool)

    @torch.no_grad()
    def update(self, X: dict[str, Tensor], rows: Tensor) -> None:
        """The metrics of the finite states ``X`` (``[ckpt, ...]``) at ``rows``."""
        L, H, k, square, has_mlp = self.dims
        S = self.S
        self.ok[rows] = True
        if not len(rows):
            return
        W_E = _f32(X["embed.W_E"])
        G_E = W_E.transpose(-2, -1) @ W_E
        M_UE = _f32(X["unembed.W_U"]) @ W_E if square else None
        attn = []
        for l in range(L):
            W_Q, W_O = _f32(X[f"blocks.{l}.attn.W_Q"]), _f32(X[f"blocks.{l}.attn.W_O"])
            W_K, W_V = _f32(_kv(X, l, "W_K", H)), _f32(_kv(X, l, "W_V", H))
            attn.append((W_Q, W_K, W_V, W_O))
            for c, (A, B) in (("QK", (W_Q, W_K.transpose(-1, -2))), ("OV", (W_V, W_O))):
                for m, v in hm.rank_metrics(hm.factored_singular_values(A, B)[..., :k]).items():
                    self.head[f"{c}.{m}"][rows, l] = v
            # eigenvalues of W_E W_Q W_K^T W_E^T: those of W_K^T (W_E^T W_E) W_Q (d_head x d_head), as the recorder
            self.head["qk_eig"][rows, l] = hm.qk_eig(G_E, W_Q, W_K)
            if square:  # W_E W_V W_O W_U: those of W_O (W_U W_E) W_V
                self.head["ov_eig"][rows, l] = hm.ov_eig(M_UE, W_V, W_O)
            if has_mlp:
                W_in = X[f"blocks.{l}.mlp.W_in"]
                self.cond[rows, l] = hm.condensation_index(W_in.transpose(-2, -1))  # neurons: columns of W_in
                for j, i in enumerate(rows.tolist()):
                    if i in (0, S - 1):
                        self.neurons.setdefault(l, {})[i] = W_in[j].T.to(torch.float64).clone()
        for j, i in enumerate(rows.tolist()):
            if L > 1:
                got = hm.composition_scores(*[torch.stack([a[q][j] for a in attn]) for q in range(4)])
                for m, v in got.items():
                    self.comp[m][i] = v
        for n, v in X.items():  # the recorder's scores.rel_change: float32 norms
            d = (v.float() - self.W0[n]).flatten(1).norm(dim=1)
            n0 = self.W0[n].norm()
            self.rel[n][rows] = (d / n0).to(torch.float64) if n0 > 0 else float("nan")


def _dims(X: dict[str, Tensor], n_layers: int | None = None) -> tuple[int, int, int, bool, bool]:
    """(layers, heads, min(d_model, d_head), d_vocab_out == d_vocab, every layer has mlp.W_in) from parameters."""
    L = n_layers if n_layers is not None else sum(1 for n in X if n.endswith(".attn.W_Q"))
    W_Q = X["blocks.0.attn.W_Q"]
    return (L, W_Q.shape[-3], min(W_Q.shape[-2], W_Q.shape[-1]), X["unembed.W_U"].shape[-1] == X["embed.W_E"].shape[-2],
            all(f"blocks.{l}.mlp.W_in" in X for l in range(L)))


def weights_of_files(files: list[Path], steps: list[int], probe_shape: tuple[int, int] | None, n_ctx: int,
                     name: str | None = None, waiting=None) -> dict:
    """:class:`WeightMetrics` of ``files``, read and chunked as :func:`analyze_stacked` does.

    Also returns what :func:`analyze_stacked` checks before using them (names, dtypes, first parameters, chunk
    size) and the notes on non-finite states; runs in :class:`WeightsJob`'s child. With ``name`` (the series'),
    also the report's weight plots (``series_report.WEIGHT_PLOTS``) as PNG bytes, until ``waiting.value`` is set
    (the parent waits for this result: it renders the rest itself).
    """
    from sslens.checkpoints import load_state_dict

    sd = load_state_dict(files[0])
    names = [n for n in sd if not n.endswith(BUFFERS) and sd[n].is_floating_point()]
    reader = StateDictReader(files[0], names)
    dtypes = {n: sd[n].dtype for n in names}
    W0 = {n: sd[n].float().clone() for n in names}
    dims = _dims(W0)
    chunk = chunk_size(sum(sd[n].numel() * sd[n].element_size() for n in names), dims[0], dims[1],
                       probe_shape or default_probe_shape(n_ctx))
    w = WeightMetrics(len(files), dims, W0)
    notes: list[str] = []
    for _, X, rows in _chunks(reader, files, names, dtypes, chunk, notes=notes, steps=steps):
        w.update(X, rows)
    w.W0 = None  # the parent compares its own first parameters with these
    out = {"names": names, "dtypes": dtypes, "chunk": chunk, "W0": W0, "weights": w, "notes": notes, "rendered": {}}
    if name is not None:
        out["rendered"] = _weight_plots(w, name, steps, names, waiting)
    return out


def _weight_plots(w: WeightMetrics, name: str, steps: list[int], names: list[str], waiting=None) -> dict[str, bytes]:
    """PNG bytes of the report's weight plots of ``w`` (as ``write_report`` renders them), until ``waiting.value``."""
    from sslens.analyses.report import png_bytes
    from sslens.analyses.series_report import FIGURE_DPI, WEIGHT_PLOTS, plot

    L, H = w.dims[:2]
    res = SeriesResult(name=name, steps=list(steps), n_layers=L, n_heads=H, layer_ids=list(range(L)),
                       head_ids=list(range(H)), head=dict(w.head), composition=w.comp)
    res.rel_change = {n: w.rel[n] for n in names if not torch.isnan(w.rel[n]).all()}
    for l in sorted(w.neurons):
        for i in sorted(w.neurons[l]):
            res.neurons.setdefault(l, {})[steps[i]] = w.neurons[l][i]
    shown = {"rank": True, "composition": bool(res.composition), "rel_change": bool(res.rel_change),
             "condensation": bool(res.neurons)}
    out = {}
    for what in WEIGHT_PLOTS:
        if waiting is not None and waiting.value:
            break
        if shown[what]:
            out[what] = png_bytes(plot(res, what), FIGURE_DPI)
    return out


class WeightsJob:
    """:func:`weights_of_files` in a forked process (``sslens.procs.Forked``).

    Started before TransformerLens is imported (seconds), so the weight metrics run on the second core
    meanwhile; :func:`analyze_stacked` uses its result when it was computed from the same files in the same
    way, else computes them itself.
    """

    def __init__(self, files: list[Path], steps: list[int], probe_shape: tuple[int, int] | None, n_ctx: int,
                 name: str | None = None):
        import multiprocessing

        from sslens.procs import Forked

        self.files, self.steps, self.name = list(files), list(steps), name
        self.used = False
        self.waiting = multiprocessing.get_context("fork").Value("b", 0, lock=False)  # set: the parent waits
        self.proc = Forked(weights_of_files, self.files, self.steps, probe_shape, n_ctx, name, self.waiting)

    def result(self, timeout: float | None = None) -> dict | None:
        """The child's result (None when it failed or took over ``timeout`` s); it renders no more plots now."""
        self.waiting.value = 1
        return self.proc.result(timeout)

    def close(self) -> None:
        """Stop the child if it still runs."""
        self.proc.close()

    def __enter__(self) -> WeightsJob:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_weights(path: str, config: str | None = None, probe: Tensor | None = None) -> WeightsJob | None:
    """A :class:`WeightsJob` for a directory of state dicts of a plain HookedTransformer, else None.

    ``path`` needs a HookedTransformerConfig (``config.json`` or ``config``), a platform that forks and two
    cores (``sslens.procs.helpers_pay``). Reads
    no TransformerLens; any doubt (and any error, which :func:`sslens.checkpoints.open_series` reports)
    gives None.
    """
    import json

    from sslens.checkpoints import _SSLENS_KEYS, state_dict_files
    from sslens.errors import SslensError
    from sslens.procs import helpers_pay

    if not helpers_pay() or path.startswith("pretrained:"):
        return None
    p = Path(path)
    try:
        if not p.is_dir() or (p / "checkpoints").is_dir():
            return None
        own = json.loads((p / "config.json").read_text()) if (p / "config.json").is_file() else None
        fields = json.loads(Path(config).read_text()) if config else own
        if not isinstance(fields, dict) or (isinstance(own, dict) and any(k in own for k in _SSLENS_KEYS)) \
                or any(k in fields for k in _SSLENS_KEYS) or not isinstance(fields.get("n_ctx"), int):
            return None
        by_step, _ = state_dict_files(p)
    except (SslensError, OSError, ValueError, RecursionError):
        return None
    probe_shape = (probe.shape[0], min(probe.shape[1], fields["n_ctx"])) if probe is not None else None
    return WeightsJob([by_step[s] for s in sorted(by_step)], sorted(by_step), probe_shape, fields["n_ctx"], p.name)


def analyze_stacked(series, probe: Tensor | None = None, views: Views | None = None, progress: bool | None = None,
                    seed: int = 0, chunk: int = CHUNK, threads: int = 2, job: WeightsJob | None = None) -> SeriesResult:
    """Every generic analysis over a checkpoint series of state dicts, batched (see the module docstring).

    Runs with one intra-op thread: the batched small SVDs/QRs/eigendecompositions are LAPACK loops over the batch,
    and with more threads on a shared machine their OpenMP barriers spin (measured 10-40x slower at load 7 on
    2 cores). ``job`` (:func:`start_weights`, a forked process): the weight metrics come from it. Else
    ``threads=2`` (default) overlaps each chunk's weight metrics (one Python thread) with its probe forward (the
    calling thread); torch releases the GIL inside its kernels. ``threads=1``: one thread.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _analyze(series, probe, views, progress, seed, chunk, threads, job)
    finally:
        torch.set_num_threads(old)


def _analyze(series, probe, views, progress, seed, chunk, threads, job) -> SeriesResult:
    from sslens import compat
    from sslens.errors import require

    views = views or Views()
    steps = list(series.steps)
    S = len(steps)
    files = [series.files[s] for s in steps]
    model = series.load_into(steps[0], None)  # built once; also checks the first checkpoint
    cfg = model.cfg
    names = list(compat.leaves(model))
    params0 = dict(model.named_parameters())
    if names != list(params0):
        raise Unsupported("parameter names differ from the 3.x names")
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    meta = {"probe": "repeated random tokens" if probe is None else "given",
            "dims": {"d_model": cfg.d_model, "d_head": cfg.d_head}}
    if probe is None:
        probe = repeated_random_tokens(cfg.d_vocab, cfg.n_ctx, seed=seed)
    require(int(probe.max()) < cfg.d_vocab, "probe", f"token id {int(probe.max())} >= d_vocab {cfg.d_vocab}",
            f"ids in [0, {cfg.d_vocab})")
    probe = probe[:, : cfg.n_ctx]
    rep = None if is_repeated(probe) else repeated_random_tokens(cfg.d_vocab, cfg.n_ctx, seed=seed)
    L, H = cfg.n_layers, cfg.n_heads
    dims = (L, H, min(cfg.d_model, cfg.d_head), cfg.d_vocab == cfg.d_vocab_out,
            not cfg.attn_only and all(f"blocks.{l}.mlp.W_in" in params0 for l in range(L)))

    res = SeriesResult(name=series.name, steps=steps, notes=list(getattr(series, "notes", [])), meta=meta)
    res.n_layers, res.n_heads, res.layer_ids, res.head_ids = L, H, list(range(L)), list(range(H))
    views.check(res.layer_ids, res.head_ids, steps)
    res.head = {m: torch.full((S, L, H), float("nan"), dtype=torch.float64) for m in HEAD_METRICS}
    res.probe = probe.clone()
    vocab = torch.unique(res.probe)
    res.key_tokens = vocab.tolist()
    res.key_mass = torch.full((S, L, H, vocab.numel()), float("nan"), dtype=torch.float64)
    dets = hm.detection_patterns(res.probe)
    rep_dets = hm.detection_patterns(rep) if rep is not None else None
    keep = set(views.resolve_steps(steps))
    keep_all = views.steps is None and S * L * H * probe.shape[1] ** 2 * 4 <= PATTERN_BUDGET
    W0 = {n: p.detach().float().clone() for n, p in params0.items()}
    dtypes = {n: p.dtype for n, p in params0.items()}
    chunk = chunk_size(sum(p.numel() * p.element_size() for p in params0.values()), L, H, tuple(probe.shape), chunk)
    check = lambda sd, name: _check(sd, own, name)  # noqa: E731
    w = WeightMetrics(S, dims, W0)
    use_job = job is not None and job.files == files and job.steps == steps
    if job is not None and not use_job:
        job.close()
    # with the job, only what the probe forward reads (the job gives which states are finite, and their notes)
    # the probe loss as the recorder's default (a language model: the probe ids are outputs) needs every parameter
    loss_wanted = cfg.d_vocab_out >= cfg.d_vocab
    fwd = [n for n in names if not _after_last_pattern(n, L)] if use_job and not loss_wanted else names
    reader = StateDictReader(files[0], fwd if use_job else list(own))

    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1) if threads > 1 and not use_job else None
    bar = progress_bar(total=S, progress=progress, desc=f"analyze {series.name} (batched)", unit="step")
    ok = torch.zeros(S, dtype=torch.bool)
    scalars: dict[str, Tensor] = {}
    import time

    t_loop = time.monotonic()
    for idx, X, rows in _chunks(reader, files, fwd, dtypes, chunk, check, None if use_job else res.notes, steps):
        ok[rows] = True
        if not len(rows):
            bar.update(len(idx))
            continue
        fut = pool.submit(w.update, X, rows) if pool is not None else None
        if fut is None and not use_job:
            w.update(X, rows)
        with torch.no_grad():
            pats = patterns(model, X, probe)
            for l in range(L):
                res.head["entropy"][rows, l] = hm.attention_entropy(pats[l]).to(torch.float64)
                res.key_mass[rows, l] = hm.key_token_mass(pats[l], probe, vocab)
                if rep is None:
                    for name, v in hm.detection_scores(pats[l], dets).items():
                        res.head[name][rows, l] = v
                for j, i in enumerate(rows.tolist()):
                    if steps[i] in keep or keep_all:  # default views: around the events (finish)
                        res.patterns.setdefault(steps[i], {})[l] = pats[l][j, 0].float().clone()
            if loss_wanted:
                for k, v in probe_loss(model, X, probe, probe.shape[1] // 2 if rep is None else None).items():
                    scalars.setdefault(k, torch.full((S,), float("nan"), dtype=torch.float64))[rows] = v
            if rep is not None:  # detection scores on the repeated-tokens probe (as the reference path)
                rpats = patterns(model, X, rep)
                for l in range(L):
                    for name, v in hm.detection_scores(rpats[l], rep_dets).items():
                        res.head[name][rows, l] = v
        if fut is not None:
            fut.result()
        bar.update(len(idx))
    bar.close()
    if pool is not None:
        pool.shutdown()
    if use_job:
        # the helper does about what this loop did; far longer means it is stuck (e.g. a library's lock that a
        # fork copied held): then it is killed and its part computed here
        got = _job_result(job, names, dtypes, chunk, W0, dims, ok, timeout=60 + 4 * (time.monotonic() - t_loop))
        if got is None:  # the child failed or read the files differently: compute the weight metrics here
            notes: list[str] = []
            for _, X, rows in _chunks(StateDictReader(files[0], names), files, names, dtypes, chunk, notes=notes,
                                      steps=steps):
                w.update(X, rows)
        else:
            (w, notes, rendered), job.used = got, True
            res.rendered = rendered if job.name == series.name else {}
        res.notes += notes
        for i in (ok & ~w.ok).nonzero().flatten().tolist():  # non-finite in a parameter the forward does not read
            for m in ("entropy", *DETECTIONS):
                res.head[m][i] = float("nan")
            res.key_mass[i] = float("nan")
            res.patterns.pop(steps[i], None)
    res.head.update(w.head)  # NaN where not computed (ov_eig of a non-square model, diverged states)
    if dims[4]:
        w.cond[~w.ok] = float("nan")
        res.layer = {"mlp_condensation": w.cond}
    for l in sorted(w.neurons):
        for i in sorted(w.neurons[l]):
            res.neurons.setdefault(l, {})[steps[i]] = w.neurons[l][i]
    res.composition = w.comp
    res.rel_change = {n: w.rel[n] for n in names if not torch.isnan(w.rel[n]).all()}
    res.meta["eig_space"] = "recorded"
    res.scalars = scalars
    res.views = views
    return finish(res)


def _job_result(job: WeightsJob, names, dtypes, chunk, W0, dims, ok,
                timeout: float | None = None) -> tuple[WeightMetrics, list[str], dict] | None:
    """The job's :class:`WeightMetrics`, notes and plots, when the child read the parameters as this process does.

    Same names, dtypes, first parameters and chunks; the states it found finite are among those ``ok`` here
    (which read fewer parameters).
    """
    got = job.result(timeout)
    if not got or set(got["names"]) != set(names) or got["chunk"] != chunk or got["weights"].dims != dims \
            or any(got["dtypes"][n] != dtypes[n] for n in names) \
            or not all(torch.equal(got["W0"][n], W0[n]) for n in names) or bool((got["weights"].ok & ~ok).any()):
        return None
    rendered = dict(got["rendered"])
    if got["names"] != names:  # the relative-change plot lists the parameters in this process' order
        rendered.pop("rel_change", None)
    return got["weights"], got["notes"], rendered


def _after_last_pattern(name: str, n_layers: int) -> bool:
    """Whether parameter ``name`` plays no part in the last layer's ``hook_pattern``.

    Its values and output, its MLP, the final LayerNorm, the unembedding: the probe forward stops at that hook
    (:func:`patterns`) and takes any parameter it is not given from the model.
    """
    last = f"blocks.{n_layers - 1}."
    return name.startswith(("unembed.", "ln_final.", last + "mlp.", last + "ln2.")) or name in {
        last + "attn." + w for w in ("W_V", "_W_V", "b_V", "_b_V", "W_O", "b_O")}
