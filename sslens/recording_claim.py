"""Who records into a store: the model identity and run id in ``RUN/recordings/recorder.json``.

A store's recordings come from one model and one recording run, so ``Recording.get`` can stack them.
``claim`` (called by ``CircuitRecorder.attach`` while it holds the run lock) refuses, in one line:

- a second recorder attached to the same store in this process (the run lock is re-entrant in-process);
- ``mode="new"`` (the default) on a store that already holds recordings (a restarted loop);
- ``mode="resume"`` by a model whose identity (config hash) differs from the stored one.

``mode="resume"`` keeps the run id and removes the recordings after ``start_step`` (they are recorded again);
``mode="overwrite"`` removes every recording first. Temp files of a killed recorder are removed at every claim.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import weakref
from pathlib import Path
from typing import Any

from sslens.errors import SslensError, require
from sslens.store import RunStore, atomic_write_json

IDENTITY_NAME = "recorder.json"
MODES = ("new", "resume", "overwrite")
_CFG_FIELDS = ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "d_vocab", "d_vocab_out", "n_ctx", "attn_only",
               "n_key_value_heads", "dtype")
_ACTIVE: dict[Path, weakref.ref] = {}  # resolved store path -> the recorder attached to it in this process


def model_identity(model: Any, layers: list[int], heads: list[int]) -> dict:
    """The fields that make recordings stackable: the model's shape config, its sslens config, the selection."""
    cfg = model.cfg
    fields = {k: getattr(cfg, k, None) for k in _CFG_FIELDS}
    fields["dtype"] = str(fields["dtype"])
    ident = {"cfg": fields, "layers": list(layers), "heads": list(heads)}
    sslens_cfg = getattr(model, "sslens_config", None)
    if isinstance(sslens_cfg, dict):
        ident["sslens_config"] = sslens_cfg
    return json.loads(json.dumps(ident, default=str))


def config_hash(identity: dict) -> str:
    """First 16 hex digits of the SHA-256 of the identity as sorted JSON."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def read_identity(store: RunStore) -> dict | None:
    """``recordings/recorder.json`` (None when absent or unreadable: recordings of older sslens versions)."""
    p = store.path / "recordings" / IDENTITY_NAME
    try:
        data = json.loads(p.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def claim(store: RunStore, owner: object, identity: dict, mode: str, start_step: int, run_id: str | None) -> str:
    """Take ``store``'s recordings for ``owner``; returns the run id. Call while holding the run lock."""
    require(mode in MODES, "mode", f"got {mode!r}", ", ".join(MODES))
    key = store.path.resolve()
    held = _ACTIVE.get(key)
    other = held() if held is not None else None
    if other is not None and other is not owner and getattr(other, "_handle", None) is not None:
        raise SslensError("store", f"{store.path} is being recorded by another CircuitRecorder in this process",
                          "detach it first (recorder.detach()), or another directory")
    rec_dir = store.path / "recordings"
    for p in rec_dir.glob(".step_*.tmp") if rec_dir.is_dir() else ():
        p.unlink(missing_ok=True)  # a killed recorder's half-written step
    steps = store.recording_steps()
    saved = read_identity(store)
    h = config_hash(identity)
    continuing = saved is not None and run_id is not None and saved.get("run") == run_id
    if mode == "overwrite":
        for s in steps:
            (rec_dir / f"step_{s:08d}.safetensors").unlink(missing_ok=True)
        saved = None
    elif continuing or mode == "resume":
        if saved is not None and saved.get("model") != h:
            raise SslensError("store", f"{store.path} holds recordings of another model (config hash {saved.get('model')}, "
                              f"this model {h})", 'the same model, mode="overwrite" to replace them, or another directory')
        for s in steps:
            if s > start_step:
                (rec_dir / f"step_{s:08d}.safetensors").unlink(missing_ok=True)
    elif steps or saved is not None:
        who = f"run {saved.get('run')}, config hash {saved.get('model')}" if saved else "an older sslens"
        raise SslensError("store", f"{store.path} already holds {len(steps)} recorded steps ({who})",
                          'CircuitRecorder(..., mode="resume") to continue that run (same model), mode="overwrite" '
                          "to replace them, or another directory")
    run = (saved or {}).get("run") or run_id or uuid.uuid4().hex[:16]
    if saved is None or saved.get("run") != run or saved.get("model") != h:
        atomic_write_json(rec_dir / IDENTITY_NAME, {"model": h, "run": str(run), "identity": identity, "pid": os.getpid()})
    _ACTIVE[key] = weakref.ref(owner)
    return str(run)


def release(store: RunStore, owner: object) -> None:
    """Forget ``owner``'s claim in this process (at detach)."""
    key = store.path.resolve()
    held = _ACTIVE.get(key)
    if held is not None and held() in (owner, None):
        del _ACTIVE[key]


__all__ = ["claim", "release", "model_identity", "config_hash", "read_identity", "IDENTITY_NAME", "MODES"]
