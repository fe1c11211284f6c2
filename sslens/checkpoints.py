"""Ordered series of TransformerLens model checkpoints from anywhere, loaded without executing anything.

Sources (``open_series(path, ...)``):
- an sslens run directory (``config.json`` + ``checkpoints/step_*.safetensors``);
- a directory of TransformerLens state dicts (``torch.load(weights_only=True)``; 3.x names, or 4.x
  ``TransformerBridge`` keys such as ``blocks.0.attn.q.weight``, read in 3.x names through sslens.compat) named ``step_N.pt``,
  ``checkpoint_N.pt``, ``ckpt_N.pt`` or ``N.pt`` (step N), or ``model_N.pt`` as ``transformer_lens.train`` writes
  them: it saves after optimizer step N+1 of an epoch and restarts N every epoch, so ``model_N.pt`` is read
  as step N+1 and a later epoch that overwrote the files is detected and reported (one note);
  the config from ``--config`` JSON or the directory's ``config.json``: HookedTransformerConfig or
  TransformerBridgeConfig fields (``cfg.to_dict()`` of either line, also ``json.dump(..., default=str)`` with dtype strings), or the form
  :func:`save_config` writes for an sslens model (its model config: the model is rebuilt with its
  variant hooks; such a directory is never loaded as a plain HookedTransformer);
- ``pretrained:NAME`` with ``checkpoints`` (a SPEC, :func:`sslens.pretrained.parse_checkpoints`) or
  ``checkpoint_indices`` (default: every revision cached): ``compat.from_pretrained(NAME, i)`` from the local
  Hugging Face cache only (offline; the revisions are checked first, a missing one names the present ones);
  steps are the checkpoint labels (training steps).
Models are built on the installed TransformerLens line (``compat.build_from_config``).
Every failure is one line naming what is wrong: missing config, shape mismatch, truncated file,
pickle-only file (refused by ``weights_only``).
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from sslens import compat
from sslens.errors import SslensError, require
from sslens.store import RunStore

_PT_RE = re.compile(r"^(model_|step_|checkpoint_|ckpt_)?(\d+)\.(?:pt|pth|bin)$")
_SSLENS_KEYS = ("sslens_model", "kind", "variants", "sslens_variants")
HookedTransformer = Any  # the installed line's model (sslens.compat.model_class()); annotations only


@dataclass
class Series:
    """``steps`` and a loader ``load(i) -> HookedTransformer`` (models are built on demand).

    ``load_into(i, model)`` loads checkpoint ``i`` into ``model`` (built once when ``None``) and returns it:
    the fast path for long series. ``notes``: one-line facts about the series (e.g. overwritten epochs).
    ``files``: step -> state-dict file, for a plain HookedTransformer rebuilt from a config (the batched analysis,
    ``sslens.analyses.batched``, reads them itself); None otherwise. ``tensors(i)``: checkpoint ``i``'s tensors as
    stored, without building a model (the content hash, :mod:`sslens.integrity`).
    """

    name: str
    steps: list[int]
    load: Callable[[int], HookedTransformer]
    load_into: Callable[[int, HookedTransformer | None], HookedTransformer] | None = None
    notes: list[str] = field(default_factory=list)
    files: dict[int, Path] | None = None
    tensors: Callable[[int], dict[str, torch.Tensor]] | None = None

    def __post_init__(self):
        if self.load_into is None:
            self.load_into = lambda i, model=None: self.load(i)


_INT_FIELDS = ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "d_vocab", "d_vocab_out", "n_ctx", "n_key_value_heads")


def _dtype(v):
    if isinstance(v, str):
        name = v.split(".")[-1]
        dt = getattr(torch, name, None)
        if not isinstance(dt, torch.dtype):
            raise SslensError("config", f"dtype {v!r} is not a torch dtype", "e.g. torch.float32, float32, bfloat16")
        return dt
    return v


def config_fields(fields: dict, where: str = "config") -> dict:
    """Config fields (on CPU) for ``compat.build_from_config`` from either line's ``cfg.to_dict()``-style fields,
    checked by building the installed line's config; dtype strings become dtypes."""
    named = [k for k in _SSLENS_KEYS if k in fields]
    if named:
        raise SslensError("config", f"{where} names sslens model settings ({', '.join(named)}); a plain "
                          "HookedTransformer rebuilt from it would lack their hooks, refused",
                          "the directory's own config.json written by sslens.checkpoints.save_config")
    fields = dict(fields)
    for k in _INT_FIELDS:  # JSON true is a Python int: n_layers=true would build a 1-layer model, then fail later
        v = fields.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not -1 <= v <= 2**31):
            raise SslensError("config", f"{where}: {k} = {json.dumps(v)[:40]}", f"{k}: an int in -1 .. 2**31 (-1: unset)")
    if "dtype" in fields:
        fields["dtype"] = _dtype(fields["dtype"])
    # rebuilt on one CPU: a config written on GPUs (device "cuda:0", n_devices 2) is read as such
    fields.update(device="cpu", n_devices=1)
    try:
        return compat.config_fields(fields)
    except (TypeError, ValueError, AssertionError) as e:
        raise SslensError("config", f"{where}: {(str(e).splitlines() or [type(e).__name__])[0]}",
                          "valid HookedTransformerConfig fields") from None


def _read_json(p: Path) -> dict:
    require(p.is_file(), "config", f"no such file {p}", "a JSON file of HookedTransformerConfig fields")
    try:
        fields = json.loads(p.read_text())
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError (bytes FF FE), nesting past the limit
        raise SslensError("config", f"{p} is not JSON ({getattr(e, 'msg', None) or type(e).__name__})",
                          "a JSON object of HookedTransformerConfig fields") from None
    require(isinstance(fields, dict), "config", f"{p} is not a JSON object", "a JSON object of HookedTransformerConfig fields")
    return fields


def save_config(model: HookedTransformer, directory: str | Path) -> Path:
    """Write ``config.json`` beside checkpoints so ``analyze-checkpoints`` rebuilds the same model.

    An sslens model (``model.sslens_config``) is saved as its sslens model config, so it is rebuilt with its
    variant hooks; any other HookedTransformer as ``cfg.to_dict()`` (dtype as a string).
    """
    from sslens.store import atomic_write_json

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    plain = json.loads(json.dumps(model.cfg.to_dict(), default=str))
    sslens_cfg = getattr(model, "sslens_config", None)
    obj = {"sslens_model": sslens_cfg, "hooked_transformer_config": plain} if sslens_cfg is not None else plain
    atomic_write_json(d / "config.json", obj)
    return d / "config.json"


def hooked_config(path: str | Path) -> dict:
    p = Path(path)
    return config_fields(_read_json(p), str(p.name))


def load_state_dict(path: Path) -> dict:
    """``torch.load(weights_only=True)``; a truncated or pickle-only file raises a one-line error."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0][:120]
        raise SslensError("checkpoint", f"{path.name} needs unpickling of arbitrary objects, refused ({first})",
                          "a state dict of tensors (torch.save(model.state_dict()))") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise SslensError("checkpoint", f"{path.name} is truncated or not a torch checkpoint ({first})",
                          "a complete torch.save file") from None
    require(isinstance(sd, dict) and all(torch.is_tensor(v) for v in sd.values()), "checkpoint",
            f"{path.name} is not a state dict of tensors", "torch.save(model.state_dict())")
    return sd


def _model_from(cfg: dict | Callable[[], HookedTransformer], sd: dict, name: str,
                model: HookedTransformer | None = None) -> HookedTransformer:
    """Load state dict ``sd`` (3.x names, or 4.x keys converted through sslens.compat) into ``model`` (built from
    ``cfg`` fields when None) after checking names and shapes in 3.x names and layouts."""
    if model is None:
        model = cfg() if callable(cfg) else compat.build_from_config(cfg)
    try:
        sd = compat.state_dict_to_3x(sd, model.cfg)
    except KeyError as e:
        raise SslensError("checkpoint", f"{name}: {e.args[0]}", "a state dict of a TransformerLens 3.x or 4.x model") from None
    except (RuntimeError, ValueError) as e:  # einops: a 4.x weight whose shape does not fit the config's heads
        raise SslensError("checkpoint", f"{name}: {(str(e).splitlines() or [type(e).__name__])[0][:160]}",
                          "a checkpoint matching the config") from None
    own = compat.params(model)
    for k, v in sd.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            raise SslensError("checkpoint", f"{name}: {k} has shape {tuple(v.shape)}, the config gives {tuple(own[k].shape)}",
                              "a checkpoint matching the config")
    missing = [k for k in own if k not in sd]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SslensError("checkpoint", f"{name}: missing {missing[0]}{more}", "a full state dict of this model")
    compat.load_state_dict_3x(model, sd, strict=False)
    return model


def state_dict_files(p: Path) -> tuple[dict[int, Path], bool]:
    """The state-dict files of a directory (or one file) by step; no TransformerLens import.

    Also whether they are ``transformer_lens.train``'s ``model_N.pt`` (read as step N+1).
    """
    found = [(m.group(1) or "", int(m.group(2)), f) for f in (p.iterdir() if p.is_dir() else [p]) if (m := _PT_RE.match(f.name))]
    require(bool(found), "path", f"{p} holds no model_<N>.pt / step_<N>.pt files", "a directory of torch.save state dicts")
    kinds = {k for k, _, _ in found}
    require(len(kinds) == 1, "path", f"{p} mixes checkpoint names ({', '.join(sorted(x or 'N' for x in kinds))}_N.pt)",
            "one naming per directory")
    tl_train = kinds == {"model_"}
    return {(n + 1 if tl_train else n): f for _, n, f in found}, tl_train


def open_series(path: str, config: str | None = None, checkpoint_indices: list[int] | None = None,
                checkpoints: str | None = None) -> Series:
    """Open one checkpoint series (see the module docstring); ``checkpoints``: a ``--checkpoints`` SPEC
    (:func:`sslens.pretrained.parse_checkpoints`; for state-dict and run series, indices into their steps)."""
    if path.startswith("pretrained:"):
        return _pretrained(path.split(":", 1)[1], checkpoint_indices, checkpoints)
    s = _open_local(path, config)
    if checkpoints is not None:
        from sslens.pretrained import parse_checkpoints

        keep = [s.steps[i] for i in parse_checkpoints(checkpoints, s.steps)]
        s.steps = keep
        if s.files is not None:
            s.files = {k: v for k, v in s.files.items() if k in keep}
    return s


def _open_local(path: str, config: str | None) -> Series:
    """A run directory or a directory of state dicts."""
    p = Path(path)
    require(p.exists(), "path", f"no such file or directory {p}", "an sslens run, a directory of .pt files, or pretrained:NAME")
    if (p / "config.json").exists() and (p / "checkpoints").is_dir():
        return _run_series(p)
    by_step, tl_train = state_dict_files(p)
    notes = _tl_train_notes(sorted(by_step.items())) if tl_train else []
    here = p if p.is_dir() else p.parent
    own = _read_json(here / "config.json") if (here / "config.json").exists() else None
    if config:
        if own is not None and any(k in own for k in _SSLENS_KEYS):
            raise SslensError("config", f"{here / 'config.json'} names an sslens model; --config {config} would rebuild it "
                              "as a plain HookedTransformer without its variant hooks, refused",
                              "drop --config to rebuild the sslens model")
        build = config_fields(_read_json(Path(config)), Path(config).name)
    elif own is not None and "sslens_model" in own:
        from sslens.models import build as sslens_build

        build = lambda: sslens_build(own["sslens_model"])  # noqa: E731 - rebuilt with its variant hooks
    elif own is not None:
        build = config_fields(own, "config.json")
    else:
        raise SslensError("config", f"no config.json (HookedTransformerConfig fields) next to {p}",
                          f"sslens.checkpoints.save_config(model, {str(here)!r}) or json.dump(model.cfg.to_dict(), f, "
                          "default=str) into its config.json, or --config FILE.json")

    def load_into(s: int, model: HookedTransformer | None = None) -> HookedTransformer:
        return _model_from(build, load_state_dict(by_step[s]), by_step[s].name, model)

    # the batched analysis reads the files in 3.x names: not for 4.x (bridge-keyed) state dicts, read through compat
    plain = isinstance(build, dict) and not compat.is_bridge_state_dict(load_state_dict(by_step[min(by_step)]))
    files = dict(sorted(by_step.items())) if plain else None
    return Series(p.name, sorted(by_step), lambda s: load_into(s), load_into, notes, files,
                  tensors=lambda s: load_state_dict(by_step[s]))


def _run_series(p: Path) -> Series:
    """An sslens run: ``checkpoints/step_*.safetensors`` loaded into one model built from ``config.json``."""
    from sslens.models import build
    from sslens.store import load_params

    store = RunStore(p)

    def load_into(s: int, model: HookedTransformer | None = None) -> HookedTransformer:
        tensors, _ = store.load_checkpoint(s)
        model = model if model is not None else build(store.read_config()["model"])
        load_params(model, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        return model

    def tensors(s: int) -> dict[str, torch.Tensor]:
        return {k: v for k, v in store.load_checkpoint(s)[0].items() if k.startswith("model.")}

    return Series(p.name, store.checkpoint_steps(), lambda s: load_into(s), load_into, tensors=tensors)


def _birth_time(path: Path) -> float:
    """File creation time where the filesystem keeps one (``stat -c %W``), else 0."""
    import subprocess

    try:
        out = subprocess.run(["stat", "-c", "%.9W", str(path)], capture_output=True, text=True, timeout=5)
        return float(out.stdout.strip() or 0)
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0.0


def _tl_train_notes(files: list[tuple[int, Path]]) -> list[str]:
    """``transformer_lens.train`` restarts its step count each epoch, so a later epoch overwrites the files: detected
    when the first file was (re)written after the last one was created (or, without creation times, after it
    was last written)."""
    notes = ["model_N.pt (transformer_lens.train) saved after optimizer step N+1 of an epoch: read as step N+1"]
    (_, first), (_, last) = files[0], files[-1]
    if len(files) > 1:
        created_last = _birth_time(last) or last.stat().st_mtime
        if first.stat().st_mtime > created_last:
            notes.append("a later epoch overwrote these files (transformer_lens.train restarts the count each epoch): "
                         "steps are within the last epoch; earlier epochs' checkpoints are lost")
            warnings.warn(notes[-1], stacklevel=2)
    return notes


def hf_cache_dir(repo: str) -> Path:
    """Where huggingface_hub keeps ``repo`` (``HF_HUB_CACHE/models--org--name``)."""
    from sslens.pretrained import cache_dir

    return cache_dir(repo)


def _pretrained(name: str, indices: list[int] | None, spec: str | None = None) -> Series:
    """Offline only: the name, the checkpoint list and the local cache's revisions are checked before any
    loading (no network, no retries); ``spec`` (``--checkpoints``) or ``indices``, default every cached revision."""
    from sslens import pretrained as pt

    allowed = "a model with checkpoints already downloaded to the Hugging Face cache"
    try:
        repo = compat.official_model_name(name)
    except ValueError:
        raise SslensError("pretrained", f"{name!r} is not a TransformerLens model name",
                          "a name of transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES") from None
    require(hf_cache_dir(repo).is_dir(), "pretrained", f"{repo} is not in the local cache {hf_cache_dir(repo).parent}", allowed)
    labels = pt.labels(repo)
    if spec is not None:
        indices = pt.parse_checkpoints(spec, labels)
    elif indices:
        bad = [i for i in indices if not -len(labels) <= i < len(labels)]
        require(not bad, "checkpoint_indices", f"{bad[0] if bad else 0} is out of range for {len(labels)} checkpoints",
                f"indices 0..{len(labels) - 1}")
        indices = sorted({i % len(labels) for i in indices})
    else:  # every revision the cache holds
        have = set(pt.cached_revisions(repo))
        indices = [i for i, v in enumerate(labels) if pt.revision(repo, v) in have]
        require(bool(indices), "--checkpoints", f"the local cache holds no checkpoint revision of {repo}", allowed)
    revs = {labels[i]: pt.revision(repo, labels[i]) for i in indices}
    pt.check_cached(repo, list(revs.values()))
    index = {labels[i]: i for i in indices}

    def load(step: int) -> HookedTransformer:
        import os

        from huggingface_hub import constants

        old_env, old_const = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
        os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True  # read at call time: no network retries
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return compat.from_pretrained(name, index[step], device="cpu")
        except Exception as e:  # noqa: BLE001 - any loader failure is reported in one line
            raise SslensError("pretrained", f"{name} checkpoint {index[step]} ({revs[step]}) could not be loaded from the "
                              f"local cache ({type(e).__name__}: {' '.join(str(e).split())[:120]})", allowed) from None
        finally:
            constants.HF_HUB_OFFLINE = old_const
            if old_env is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = old_env

    def tensors(step: int) -> dict[str, torch.Tensor]:
        return pt.read_tensors(pt.weights_file(repo, revs[step]))

    def load_into(step: int, model: HookedTransformer | None = None) -> HookedTransformer:
        """One checkpoint resident at a time: the previous model's tensors are released before the next loads
        (the caller still holds that model object while this one loads)."""
        if model is not None:
            with torch.no_grad():
                for t in [*model.parameters(), *model.buffers()]:
                    t.data = torch.empty(0, dtype=t.dtype)
        return load(step)

    # steps are the checkpoint labels (training steps), so reports and --steps speak steps
    return Series(name, sorted(index), load, load_into, tensors=tensors, notes=[f"{repo}: checkpoint indices {_ranges(indices)}"])


def _ranges(xs: list[int]) -> str:
    """``0-3, 7, 9-10`` for sorted ints."""
    out, start = [], None
    for i, x in enumerate(xs):
        start = x if start is None else start
        if i + 1 == len(xs) or xs[i + 1] != x + 1:
            out.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ", ".join(out)


def _text(p: Path) -> str:
    """A probe text file as UTF-8 (one line naming the first bad byte otherwise)."""
    try:
        return p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SslensError("probe", f"{p.name} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})",
                          "UTF-8 text: token ids, or text with --tokenizer DIR") from None


def load_probe(path: str | Path, tokenizer: str | Path | None = None) -> torch.Tensor:
    """Probe token ids ``[probe, pos]`` from a file: ``.npy``; ``.safetensors`` (key ``tokens``); ``.txt`` of
    whitespace-separated ids, one sequence per line; or any text file with ``tokenizer`` (a local Hugging Face
    tokenizer directory), one sequence per non-empty line. Sequences are cut to the shortest one."""
    p = Path(path)
    require(p.is_file(), "probe", f"no such file {p}", ".txt/.npy/.safetensors of token ids, or text with --tokenizer")
    if tokenizer is not None:
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
        except Exception as e:  # noqa: BLE001 - any loader failure is one line
            raise SslensError("tokenizer", f"cannot load a tokenizer from {tokenizer} ({type(e).__name__})",
                              "a local directory holding a Hugging Face tokenizer") from None
        rows = [tok(line, add_special_tokens=False)["input_ids"] for line in _text(p).splitlines() if line.strip()]
    elif p.suffix == ".npy":
        import numpy as np

        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise SslensError("probe", f"{p.name} is not a numeric .npy ({str(e)[:80]})", "an integer array [probe, pos]") from None
        require(arr.dtype.kind in "iu", "probe", f"{p.name} holds {arr.dtype}", "integer token ids")
        rows = torch.as_tensor(arr.astype("int64")).reshape(-1, arr.shape[-1]).tolist() if arr.ndim else []
    elif p.suffix == ".safetensors":
        from sslens.store import load_tensors

        try:
            tensors = load_tensors(p)[0]
        except Exception as e:  # noqa: BLE001
            raise SslensError("probe", f"{p.name} is not a safetensors file ({type(e).__name__})", "a safetensors file with key 'tokens'") from None
        require("tokens" in tensors, "probe", f"{p.name} has no key 'tokens' (has {', '.join(sorted(tensors)) or 'none'})", "key 'tokens'")
        t = tensors["tokens"]
        require(not t.is_floating_point(), "probe", f"{p.name}: tokens are {t.dtype}", "integer token ids")
        rows = t.reshape(-1, t.shape[-1]).tolist()
    else:
        rows = []
        for i, line in enumerate(_text(p).splitlines(), 1):
            if line.strip():
                try:
                    rows.append([int(x) for x in line.split()])
                except ValueError:
                    raise SslensError("probe", f"{p.name} line {i} is not token ids",
                                      "whitespace-separated ints per line, or text with --tokenizer DIR") from None
    require(bool(rows) and min(len(r) for r in rows) >= 2, "probe", f"{p.name} holds no sequence of >= 2 tokens",
            "one or more sequences of token ids")
    n = min(len(r) for r in rows)
    try:
        out = torch.tensor([r[:n] for r in rows], dtype=torch.long)
    except (OverflowError, ValueError, RuntimeError):  # an id beyond int64
        raise SslensError("probe", f"{p.name} has a token id beyond int64", "ids in [0, d_vocab)") from None
    require(int(out.min()) >= 0, "probe", f"{p.name} has negative token ids", "ids in [0, d_vocab)")
    return out
