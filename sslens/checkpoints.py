"""Ordered series of HookedTransformer checkpoints from anywhere, loaded without executing anything.

Sources (``open_series(path, ...)``):
- an sslens run directory (``config.json`` + ``checkpoints/step_*.safetensors``);
- a directory of TransformerLens state dicts such as ``transformer_lens.train``'s ``model_{step}.pt``
  (``torch.load(weights_only=True)``; the HookedTransformerConfig from ``--config`` JSON, or a
  ``config.json`` in the directory holding HookedTransformerConfig fields);
- ``pretrained:NAME`` with ``checkpoint_indices``: ``HookedTransformer.from_pretrained(NAME,
  checkpoint_index=i)`` from the local Hugging Face cache only (offline).
Every failure is one line naming what is wrong: missing config, shape mismatch, truncated file,
pickle-only file (refused by ``weights_only``).
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sslens.errors import SslensError, require
from sslens.store import RunStore

_PT_RE = re.compile(r"(?:model_|step_|checkpoint_|ckpt_)?(\d+)\.(?:pt|pth|bin)$")


@dataclass
class Series:
    """``steps`` and a loader ``load(i) -> HookedTransformer`` (models are built on demand)."""

    name: str
    steps: list[int]
    load: Callable[[int], HookedTransformer]


def hooked_config(path: str | Path) -> HookedTransformerConfig:
    p = Path(path)
    require(p.is_file(), "config", f"no such file {p}", "a JSON file of HookedTransformerConfig fields")
    try:
        fields = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise SslensError("config", f"{p} is not JSON ({e.msg})", "a JSON object of HookedTransformerConfig fields") from None
    fields = {k: v for k, v in fields.items() if k in HookedTransformerConfig.__dataclass_fields__}
    try:
        return HookedTransformerConfig(**{**fields, "device": "cpu"})
    except (TypeError, ValueError, AssertionError) as e:
        raise SslensError("config", f"{p}: {str(e).splitlines()[0]}", "valid HookedTransformerConfig fields") from None


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


def _model_from(cfg: HookedTransformerConfig, sd: dict, name: str) -> HookedTransformer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg)
    own = model.state_dict()
    for k, v in sd.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            raise SslensError("checkpoint", f"{name}: {k} has shape {tuple(v.shape)}, the config gives {tuple(own[k].shape)}",
                              "a checkpoint matching the config")
    missing = [k for k in own if k not in sd and not k.endswith(("IGNORE", "mask"))]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SslensError("checkpoint", f"{name}: missing {missing[0]}{more}", "a full state dict of this model")
    model.load_state_dict(sd, strict=False)
    return model


def open_series(path: str, config: str | None = None, checkpoint_indices: list[int] | None = None) -> Series:
    """Open one checkpoint series (see the module docstring)."""
    if path.startswith("pretrained:"):
        return _pretrained(path.split(":", 1)[1], checkpoint_indices or [])
    p = Path(path)
    require(p.exists(), "path", f"no such file or directory {p}", "an sslens run, a directory of .pt files, or pretrained:NAME")
    if (p / "config.json").exists() and (p / "checkpoints").is_dir():
        store = RunStore(p)
        return Series(p.name, store.checkpoint_steps(), lambda s: store.load_model(s))
    files = sorted((int(m.group(1)), f) for f in (p.iterdir() if p.is_dir() else [p]) if (m := _PT_RE.search(f.name)))
    require(bool(files), "path", f"{p} holds no model_<step>.pt files", "model_{step}.pt state dicts")
    cfg_path = Path(config) if config else p / "config.json" if p.is_dir() else None
    require(cfg_path is not None and cfg_path.exists(), "config", f"no HookedTransformerConfig for {p}",
            "--config FILE.json or a config.json next to the checkpoints")
    cfg = hooked_config(cfg_path)
    by_step = dict(files)
    return Series(p.name, sorted(by_step), lambda s: _model_from(cfg, load_state_dict(by_step[s]), by_step[s].name))


def hf_cache_dir(repo: str) -> Path:
    """Where huggingface_hub keeps ``repo`` (``HF_HUB_CACHE/models--org--name``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))


def _pretrained(name: str, indices: list[int]) -> Series:
    """Offline only: the name and the local cache are checked before any loading (no network, no retries)."""
    require(bool(indices), "checkpoint_indices", "none given for a pretrained series", "one or more ints")
    from transformer_lens.loading_from_pretrained import get_official_model_name

    allowed = "a model with checkpoints already downloaded to the Hugging Face cache"
    try:
        repo = get_official_model_name(name)
    except ValueError:
        raise SslensError("pretrained", f"{name!r} is not a TransformerLens model name",
                          "a name of transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES") from None
    require(hf_cache_dir(repo).is_dir(), "pretrained", f"{repo} is not in the local cache {hf_cache_dir(repo).parent}", allowed)

    def load(i: int) -> HookedTransformer:
        import os

        from huggingface_hub import constants

        old_env, old_const = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
        os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True  # read at call time: no network retries
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return HookedTransformer.from_pretrained(name, checkpoint_index=i, device="cpu")
        except Exception as e:  # noqa: BLE001 - any loader failure is reported in one line
            raise SslensError("pretrained", f"{name} checkpoint {i} is not in the local cache ({type(e).__name__})",
                              allowed) from None
        finally:
            constants.HF_HUB_OFFLINE = old_const
            if old_env is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = old_env

    return Series(name, list(indices), load)
