"""The run directory: config, checkpoints, recordings, metrics, completion marker.

Layout::

    RUN/config.json                          everything needed to rebuild model, data, optimizer
    RUN/checkpoints/step_00000100.safetensors model parameters + optimizer + RNG state (+ JSON metadata)
    RUN/recordings/step_00000100.safetensors  what the CircuitRecorder captured at that step
    RUN/metrics.jsonl                        one JSON object per line ({"step", "loss", ...})
    RUN/COMPLETE                             written last

Every file is written to a temp file in the same directory and ``os.replace``d into place, so a
killed process never leaves a half-written file under a real name. Loading never unpickles:
safetensors and JSON only.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from sslens.errors import SslensError

FILE_MODE = 0o644  # mkstemp creates 0600; run files are meant to be shared and read
_STEP_RE = re.compile(r"step_(\d{8})\.safetensors$")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file + fsync + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_tensors(
    path: Path, tensors: dict[str, Tensor], metadata: dict[str, Any] | None = None, fsync: bool = True
) -> None:
    """safetensors file written atomically; ``metadata`` is stored as one JSON string.

    ``fsync=False`` keeps the temp-file + rename atomicity (a killed process never leaves a torn file)
    but skips flushing to disk, which only matters on power loss (used for recordings, a hot path).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, FILE_MODE)
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(tensors, tmp, metadata={"sslens": json.dumps(metadata or {})})
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load a safetensors file and its sslens JSON metadata (no unpickling)."""
    path = Path(path)
    if not path.exists():
        raise SslensError("checkpoint", f"no such file {path}", "an existing .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("sslens", "{}"))
        return load_file(str(path)), meta
    except (OSError, ValueError, RuntimeError, SafetensorError, json.JSONDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SslensError("checkpoint", f"{path} is not a readable safetensors file ({first})", "a complete .safetensors file") from None


def step_file(step: int) -> str:
    return f"step_{step:08d}.safetensors"


class RunStore:
    """One run directory. ``RunStore(path)`` does not create anything until something is written."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # -- config ---------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    def exists(self) -> bool:
        return self.config_path.exists()

    def write_config(self, config: dict) -> None:
        atomic_write_json(self.config_path, config)

    def read_config(self) -> dict:
        if not self.config_path.exists():
            raise SslensError("run", f"{self.path} has no config.json", "an sslens run directory")
        return json.loads(self.config_path.read_text())

    # -- checkpoints ----------------------------------------------------------------------
    def _steps(self, sub: str) -> list[int]:
        d = self.path / sub
        if not d.is_dir():
            return []
        return sorted(int(m.group(1)) for p in d.iterdir() if (m := _STEP_RE.match(p.name)))

    def checkpoint_steps(self) -> list[int]:
        return self._steps("checkpoints")

    def checkpoint_path(self, step: int) -> Path:
        return self.path / "checkpoints" / step_file(step)

    def save_checkpoint(self, step: int, tensors: dict[str, Tensor], metadata: dict) -> None:
        atomic_save_tensors(self.checkpoint_path(step), tensors, {"step": step, **metadata})

    def load_checkpoint(self, step: int | None = None) -> tuple[dict[str, Tensor], dict]:
        """Tensors and metadata of checkpoint ``step`` (default: the latest)."""
        steps = self.checkpoint_steps()
        if not steps:
            raise SslensError("run", f"{self.path} has no checkpoints", "a run with checkpoints/step_*.safetensors")
        if step is None:
            step = steps[-1]
        if step not in steps:
            raise SslensError("step", f"no checkpoint at step {step}", ", ".join(map(str, steps)))
        return load_tensors(self.checkpoint_path(step))

    def load_model(self, step: int | None = None):
        """The HookedTransformer of this run at a checkpoint, rebuilt from config.json."""
        from sslens.configs import build_model as build

        tensors, _ = self.load_checkpoint(step)
        model = build(self.read_config()["model"])
        load_params(model, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        return model

    # -- recordings -----------------------------------------------------------------------
    def recording_steps(self) -> list[int]:
        return self._steps("recordings")

    def save_recording(self, step: int, tensors: dict[str, Tensor], metadata: dict | None = None) -> None:
        atomic_save_tensors(
            self.path / "recordings" / step_file(step), tensors, {"step": step, **(metadata or {})}, fsync=False
        )

    def load_recording(self, step: int) -> dict[str, Tensor]:
        return load_tensors(self.path / "recordings" / step_file(step))[0]

    # -- metrics --------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def append_metrics(self, rows: Iterable[dict]) -> None:
        """Append JSON lines (flushed and fsynced; a torn last line is ignored on read)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # torn tail of a killed run
        return out

    def truncate_metrics(self, after_step: int) -> None:
        """Keep rows with step <= after_step (used on resume), rewritten atomically."""
        rows = [r for r in self.read_metrics() if r.get("step", 0) <= after_step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    # -- completion -----------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return (self.path / "COMPLETE").exists()

    def mark_complete(self, info: dict | None = None) -> None:
        atomic_write_json(self.path / "COMPLETE", info or {})


def load_params(model: torch.nn.Module, params: dict[str, Tensor]) -> None:
    """Copy named parameters into ``model``; a missing or mis-shaped one raises naming it."""
    own = dict(model.named_parameters())
    for name, p in own.items():
        if name not in params:
            raise SslensError("checkpoint", f"parameter {name} missing", "a checkpoint of the same model config")
        if tuple(params[name].shape) != tuple(p.shape):
            raise SslensError(
                "checkpoint", f"parameter {name} has shape {tuple(params[name].shape)}, model expects {tuple(p.shape)}",
                "a checkpoint of the same model config",
            )
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(params[name].to(p.dtype))
