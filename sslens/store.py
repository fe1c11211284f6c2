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
import sys
import tempfile
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from sslens.errors import SslensError, require
from sslens.lock import run_lock

FILE_MODE = 0o644  # mkstemp creates 0600; run files are meant to be shared and read
_STEP_RE = re.compile(r"step_(\d{8})\.safetensors$")
_FSYNC: ContextVar[bool] = ContextVar("sslens_fsync", default=True)
_HEADER_OK: dict[tuple, str | None] = {}  # (recording file, size, mtime) -> None (readable) or why not


@contextmanager
def deferred_fsync() -> Iterator[None]:
    """Atomic writes inside skip their per-file fsync; one ``os.sync()`` on leaving flushes them all.

    Still temp file + rename (a killed process never leaves a torn file); only power loss inside the block
    can lose a file, so write completion markers (``COMPLETE``) after the block: a run whose files were not
    flushed then has no marker and is redone. Used by the count engine, which writes hundreds of small run
    stores at once (one fsync each was a fifth of the Fig. 6 sweep, docs/engine.md).
    """
    token = _FSYNC.set(False)
    try:
        yield
    finally:
        _FSYNC.reset(token)
        os.sync()


def atomic_write_bytes(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Write ``data`` to ``path`` via a temp file + fsync + ``os.replace`` (permission bits ``mode``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if _FSYNC.get():
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    """``obj`` as sorted, indented JSON (an object over 2 KiB compact -- a run's config.json -- one line per
    top-level key, through json's C encoder: the pure-Python indenting encoder made config.json writes a tenth of
    a sweep)."""
    compact = json.dumps(obj, sort_keys=True)
    if len(compact) <= 2048 or not isinstance(obj, dict):
        text = json.dumps(obj, indent=2, sort_keys=True)
    else:
        text = "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(obj.items())) + "\n}"
    atomic_write_text(path, text + "\n")


def atomic_save_tensors(
    path: Path, tensors: dict[str, Tensor], metadata: dict[str, Any] | None = None, fsync: bool = True,
    mode: int = FILE_MODE,
) -> None:
    """safetensors file written atomically; ``metadata`` is stored as one JSON string.

    ``fsync=False`` keeps the temp-file + rename atomicity (a killed process never leaves a torn file)
    but skips flushing to disk, which only matters on power loss (used for recordings, a hot path).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, mode)
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        try:
            save_file(tensors, tmp, metadata={"sslens": json.dumps(metadata or {})})
        except SafetensorError as e:  # ENOSPC / EFBIG come back as SafetensorError: one line, earlier files kept
            why = re.search(r'message: "([^"]+)"', str(e))
            raise SslensError("disk", f"cannot write {path} ({why.group(1) if why else str(e).splitlines()[0][:120]})",
                              "free space on its disk (the files written before it are kept)") from None
        os.chmod(tmp, mode)  # save_file re-creates the file with the umask's mode (0600 under umask 077)
        if fsync and _FSYNC.get():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_tensors(path: Path, keys: Iterable[str] | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load a safetensors file (only ``keys``, if given) and its sslens JSON metadata (no unpickling)."""
    path = Path(path)
    if not path.exists():
        raise SslensError("checkpoint", f"no such file {path}", "an existing .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("sslens", "{}"))
            if keys is not None:
                names = set(f.keys())
                missing = [k for k in keys if k not in names]
                if missing:
                    raise SslensError("checkpoint", f"{path} has no tensor {missing[0]!r}", "a key of the file")
                return {k: f.get_tensor(k) for k in keys}, meta
        return load_file(str(path)), meta
    except (OSError, ValueError, RuntimeError, SafetensorError, RecursionError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SslensError("checkpoint", f"{path} is not a readable safetensors file ({first})", "a complete .safetensors file") from None


def step_file(step: int) -> str:
    return f"step_{step:08d}.safetensors"


RUN_ENTRIES = frozenset({".lock", "config.json", "checkpoints", "recordings", "metrics.jsonl", "COMPLETE", "DIVERGED",
                         "FAILED",
                         # what `sslens analyze RUN` writes into it
                         "metrics.json", "report.html", "series.json", "series.html"})
# what a run directory holds (besides .*.tmp files of killed writers)
SWEEP_MARKERS = frozenset({"runs", "sweep.json", "results.csv", ".lock"})  # one of them in every sweep output directory


def _foreign(p: Path, kind: str) -> str | None:
    """The first entry of the existing directory ``p`` showing it is not an sslens ``kind`` ("run"/"sweep")."""
    names = []
    for entry in p.iterdir():
        names.append(entry.name)
        if kind == "run" and entry.name not in RUN_ENTRIES and not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            return entry.name
        if len(names) > 10_000:
            break
    if kind == "sweep" and names and not SWEEP_MARKERS & set(names):
        return sorted(names)[0]
    return None


def check_out_path(path: str | os.PathLike, field: str = "out", kind: str | None = None) -> Path:
    """``path`` as an output directory, checked before anything is written (one-line errors).

    Refuses ``''`` (it would mean the current directory), an existing file, a path under a file,
    and a path whose nearest existing ancestor is not writable. ``kind="run"`` / ``"sweep"``: an existing
    non-empty directory must be an sslens run (only :data:`RUN_ENTRIES`) / sweep (one of :data:`SWEEP_MARKERS`),
    so ``--out /`` or ``--out ~`` is never filled.
    """
    s = os.fspath(path)
    allowed = "a directory path (new, or an existing directory) in a writable location"
    require(isinstance(s, str) and s.strip() != "", field, "empty path", allowed)
    require("\x00" not in s, field, "path contains a NUL byte", allowed)
    p = Path(s)
    try:
        if p.exists():
            require(p.is_dir(), field, f"{p} is a file, not a directory", allowed)
            if kind is not None:
                bad = _foreign(p, kind)
                require(bad is None, field, f"{p} is a non-empty directory that is not an sslens {kind} (it holds {bad!r})",
                        f"a new or empty directory, or an existing sslens {kind}")
            require(os.access(p, os.W_OK | os.X_OK), field, f"{p} is not writable", allowed)
            return p
        for parent in p.parents:
            if parent.exists():
                require(parent.is_dir(), field, f"{p} is under the file {parent}", allowed)
                require(os.access(parent, os.W_OK | os.X_OK), field, f"{parent} is not writable", allowed)
                break
    except OSError as e:  # e.g. ENAMETOOLONG
        raise SslensError(field, f"{p!s:.200}: {e.strerror}", allowed) from None
    return p


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
        """config.json as a dict; a missing, unreadable, non-JSON or non-object file is a one-line error."""
        allowed = "an sslens run directory (config.json holding a JSON object)"
        if not self.config_path.is_file():
            raise SslensError("run", f"{self.path} has no config.json", allowed)
        try:
            cfg = json.loads(self.config_path.read_text())
        except OSError as e:
            raise SslensError("run", f"{self.config_path} is unreadable ({e.strerror})", allowed) from None
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            msg = getattr(e, "msg", None) or type(e).__name__
            raise SslensError("run", f"{self.config_path} is not valid JSON ({msg})", allowed) from None
        require(isinstance(cfg, dict), "run", f"{self.config_path} holds a JSON {type(cfg).__name__}, not an object", allowed)
        return cfg

    # -- writing: the lock, temp files of killed writers -------------------------------------
    @contextmanager
    def writing(self, wait: bool = False, timeout: float | None = None) -> Iterator["RunStore"]:
        """Hold the run directory's lock (``sslens.lock``) and clean temp files left by killed writers.

        Every writer of a run directory (train, resume, the count engine, sweeps) writes inside this block.
        """
        with run_lock(self.path, wait=wait, timeout=timeout):
            self.clean_temp()
            yield self

    def clean_temp(self) -> list[Path]:
        """Remove ``.*.tmp`` files (atomic writes of killed processes); call only while holding the lock."""
        removed = []
        for d in (self.path, self.path / "checkpoints", self.path / "recordings"):
            if not d.is_dir():
                continue
            for p in d.glob(".*.tmp"):
                try:
                    p.unlink()
                    removed.append(p)
                except FileNotFoundError:
                    pass
        return removed

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

    def load_checkpoint(self, step: int | None = None, keys: Iterable[str] | None = None) -> tuple[dict[str, Tensor], dict]:
        """Tensors (only ``keys``, if given) and metadata of checkpoint ``step`` (default: the latest)."""
        steps = self.checkpoint_steps()
        if not steps:
            raise SslensError("run", f"{self.path} has no checkpoints", "a run with checkpoints/step_*.safetensors")
        if step is None:
            step = steps[-1]
        if step not in steps:
            raise SslensError("step", f"no checkpoint at step {step}", ", ".join(map(str, steps)))
        return load_tensors(self.checkpoint_path(step), keys)

    def load_latest_readable(self) -> tuple[dict[str, Tensor], dict, list[tuple[int, str]]]:
        """The newest checkpoint that loads, and ``[(step, reason)]`` of the newer ones that did not.

        Unreadable checkpoints (torn by a crash, corrupted on disk) are renamed ``*.corrupt`` so that the
        run's checkpoint list stays consistent with what is resumed from.
        """
        skipped = []
        for step in reversed(self.checkpoint_steps()):
            try:
                tensors, meta = load_tensors(self.checkpoint_path(step))
                if meta.get("step") != step:
                    raise SslensError("checkpoint", f"metadata step {meta.get('step')!r} != {step}")
            except SslensError as e:
                skipped.append((step, e.problem))
                p = self.checkpoint_path(step)
                if p.exists():
                    os.replace(p, p.with_name(p.name + ".corrupt"))
                continue
            return tensors, meta, skipped
        raise SslensError("run", f"{self.path} has no readable checkpoint ({len(skipped)} unreadable)",
                          "a run with at least one complete checkpoints/step_*.safetensors")

    def load_model(self, step: int | None = None):
        """The HookedTransformer of this run at a checkpoint, rebuilt from config.json."""
        from sslens.configs import build_model as build
        from sslens.memory import check_memory

        cfg = self.read_config()
        require(isinstance(cfg.get("model"), dict), "config.model", f"missing or not an object in {self.config_path}",
                "a config.json written by sslens")
        check_memory(cfg["model"], 1, field="config.model")
        tensors, _ = self.load_checkpoint(step)
        try:
            model = build(cfg["model"])
        except SslensError:
            raise
        except (KeyError, TypeError, ValueError, AssertionError, AttributeError, RuntimeError, OverflowError) as e:
            raise SslensError("config.model", f"{self.config_path}: cannot build the model ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:120]})", "a config.json written by sslens") from None
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

    def readable_recording_steps(self) -> list[int]:
        """``recording_steps`` whose safetensors header parses (offsets within the file); each unreadable one is
        skipped with a one-line note on stderr (once per file and process), as ``--resume`` skips a bad checkpoint."""
        out = []
        for step in self.recording_steps():
            p = self.path / "recordings" / step_file(step)
            try:
                st = p.stat()
                key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
            except OSError:
                continue
            why = _HEADER_OK.get(key, "")
            if why == "":
                try:
                    with safe_open(str(p), framework="pt") as f:
                        json.loads((f.metadata() or {}).get("sslens", "{}"))
                    why = None
                except (OSError, ValueError, RuntimeError, SafetensorError) as e:
                    why = (str(e).splitlines() or [type(e).__name__])[0][:120]
                    print(f"sslens: recording at step {step} is unreadable ({why}); skipped: {p}", file=sys.stderr)
                _HEADER_OK[key] = why
            if why is None:
                out.append(step)
        return out

    # -- metrics --------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def append_metrics(self, rows: Iterable[dict]) -> None:
        """Append JSON lines (flushed and fsynced; a torn last line is ignored on read)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            for r in rows:
                f.write(json.dumps(r) + "\n")
            f.flush()
            if _FSYNC.get():
                os.fsync(f.fileno())

    def write_metrics(self, rows: Iterable[dict]) -> None:
        """Replace metrics.jsonl with ``rows`` atomically (idempotent: a re-run never appends twice)."""
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        lines = self.metrics_path.read_text(errors="replace").splitlines()
        try:  # one parse for the whole file (a sweep's results read thousands of these)
            rows = json.loads("[" + ",".join(lines) + "]")
            if all(isinstance(r, dict) for r in rows):
                return rows
        except (json.JSONDecodeError, RecursionError):
            pass
        out = []
        for line in lines:
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                break  # torn tail of a killed run (or a line nested past Python's recursion limit)
            if not isinstance(row, dict):
                break
            out.append(row)
        return out

    def truncate_metrics(self, after_step: int) -> None:
        """Keep rows with step <= after_step (used on resume), rewritten atomically."""
        self.write_metrics(r for r in self.read_metrics() if r.get("step", 0) <= after_step)

    # -- completion -----------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return (self.path / "COMPLETE").exists()

    def mark_complete(self, info: dict | None = None) -> None:
        atomic_write_json(self.path / "COMPLETE", info or {})

    # -- divergence -----------------------------------------------------------------------
    def mark_diverged(self, step: int, message: str) -> None:
        """``RUN/DIVERGED``: the step whose loss was non-finite (the run stops there, without COMPLETE)."""
        atomic_write_json(self.path / "DIVERGED", {"step": int(step), "message": message})

    @property
    def diverged_at(self) -> int | None:
        """The diverged step (``DIVERGED`` of sslens.train, or ``diverged_at`` in an engine run's config)."""
        p = self.path / "DIVERGED"
        try:
            if p.is_file():
                return int(json.loads(p.read_text())["step"])
            cfg = json.loads(self.config_path.read_text()) if self.config_path.is_file() else {}
            step = cfg.get("diverged_at") if isinstance(cfg, dict) else None
            return int(step) if step is not None else None
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return None

    def status(self) -> dict:
        """``{"state": "complete" | "diverged" | "incomplete", "diverged_at", "last_checkpoint", "last_metric_step", "steps"}``."""
        try:
            steps = self.read_config().get("train", {}).get("steps")
        except SslensError:
            steps = None
        ck = self.checkpoint_steps()
        rows = self.read_metrics()
        div = self.diverged_at
        state = "diverged" if div is not None else "complete" if self.complete else "incomplete"
        return {"state": state, "diverged_at": div, "steps": steps, "last_checkpoint": ck[-1] if ck else None,
                "last_metric_step": rows[-1].get("step") if rows else None}


def load_params(model: torch.nn.Module, params: dict[str, Tensor]) -> None:
    """Copy named parameters into ``model``; a missing or mis-shaped one raises naming it."""
    from sslens import compat

    own = compat.params(model)  # 3.x names and layouts on both TransformerLens lines
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
