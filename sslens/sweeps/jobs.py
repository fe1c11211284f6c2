"""The unit of work of a sweep, run where a backend puts it (this process, a local worker, a Ray task).

A job is plain data (picklable): ``{"kind": "engine" | "train" | "fn", "dirs": [...], "configs": [...],
"fn": "module:attr" or a callable}``. :func:`execute` takes every run directory's lock
(:func:`sslens.lock.run_lock`; ``wait=True`` for a retried Ray task, whose killed predecessor's lock
the kernel has dropped), removes temp files of killed writers, skips finished runs and:

- ``engine``: resets each unfinished store and trains the group with the count engine (it keeps no
  optimizer state, so a killed group is rerun and its files rewritten -- never appended to);
- ``train``: ``sslens.train.train(..., resume=True)`` from the newest checkpoint (metrics truncated to it);
- ``fn``: the user's ``fn(config, out_dir)``; ``COMPLETE`` is written after it returns (with the
  numbers of a returned dict), unless ``fn`` wrote it.

A run that raises is marked ``FAILED`` (one line) and retried by the next resume; a diverged run gets
``diverged_at`` in its config.json (as the engine writes it) and counts as finished.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import shutil
from contextlib import ExitStack
from pathlib import Path

from sslens.errors import SslensError
from sslens.lock import run_lock
from sslens.store import RunStore, atomic_write_json

FAILED = "FAILED"
STATUSES = ("complete", "diverged", "failed", "missing")


def resolve_fn(ref):
    """``"module:attr"`` -> the callable (a callable is returned as is)."""
    if callable(ref):
        return ref
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise SslensError("fn", f"got {ref!r}", "'module:attr' naming an importable callable fn(config, out_dir)")
    mod, attr = ref.split(":")
    try:
        obj = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise SslensError("fn", f"cannot import {ref!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                          "'module:attr' naming an importable callable fn(config, out_dir) (the command does not import "
                          "from the current directory: PYTHONPATH=DIR names where your module is)") from None
    if not callable(obj):
        raise SslensError("fn", f"{ref!r} is not callable", "'module:attr' naming an importable callable fn(config, out_dir)")
    return obj


def clean_temp(run_dir: Path) -> int:
    """Remove ``.*.tmp`` files left by killed writers (call with the run's lock held); returns the count."""
    store = RunStore(run_dir)
    if hasattr(store, "clean_temp"):  # sslens.store's own, where present
        n = store.clean_temp()
        return len(n) if isinstance(n, (list, tuple)) else int(n or 0)
    n = 0
    for sub in (run_dir, run_dir / "checkpoints", run_dir / "recordings"):
        if sub.is_dir():
            for p in sub.glob(".*.tmp"):
                p.unlink(missing_ok=True)
                n += 1
    return n


def status_of(run_dir: str | Path) -> str:
    """complete, diverged (``DIVERGED`` or ``diverged_at`` in config.json), failed (``FAILED``) or missing."""
    store = RunStore(run_dir)
    if store.complete:
        return "complete"
    if (Path(run_dir) / "DIVERGED").exists():
        return "diverged"
    if store.exists():
        try:
            if "diverged_at" in store.read_config():
                return "diverged"
        except (OSError, ValueError):
            pass
    if (Path(run_dir) / FAILED).exists():
        return "failed"
    return "missing"


def finished(run_dir: str | Path) -> bool:
    return status_of(run_dir) in ("complete", "diverged")


def reset_store(run_dir: Path) -> None:
    """Everything but the lock file goes: a count-engine group is rewritten from scratch."""
    if not run_dir.is_dir():
        return
    for p in run_dir.iterdir():
        if p.name == ".lock":
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def _fail(run_dir: Path, err: BaseException) -> None:
    line = " ".join(str(err).split()) or type(err).__name__
    atomic_write_json(run_dir / FAILED, {"error": f"{type(err).__name__}: {line}"[:500]})


def _mark_diverged(run_dir: Path, err: BaseException) -> None:
    store = RunStore(run_dir)
    m = re.search(r"at step (\d+)", str(err))
    config = store.read_config()
    config["diverged_at"] = int(m.group(1)) if m else -1
    store.write_config(config)


def execute(job: dict, wait: bool = False, threads: int = 0) -> list[tuple[str, str]]:
    """Run one job; returns ``[(run_dir, status), ...]``. Never raises for a failing run (it is marked).

    ``wait=True`` waits for a run directory's lock as long as it takes (a retried Ray task); otherwise
    up to 10 s (a worker of a killed sweep that is still dying), then a one-line error naming the holder.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    dirs = [Path(d) for d in job["dirs"]]
    with ExitStack() as stack:
        for d in sorted(dirs):  # one global order: two jobs never wait on each other
            stack.enter_context(run_lock(d, wait=True, timeout=None if wait else 10.0))
        for d in dirs:
            clean_temp(d)
        todo = [i for i, d in enumerate(dirs) if not finished(d)]
        if todo:
            for i in todo:
                (dirs[i] / FAILED).unlink(missing_ok=True)
            try:
                _run(job, dirs, todo)
            except Exception as e:  # noqa: BLE001 -- one failing run must not stop the sweep
                for i in todo:
                    if not finished(dirs[i]):
                        _fail(dirs[i], e)
        return [(str(d), status_of(d)) for d in dirs]


def _run(job: dict, dirs: list[Path], todo: list[int]) -> None:
    from sslens.train import TrainConfig

    kind = job["kind"]
    if kind == "engine":
        from sslens.engine import train_many

        for i in todo:
            reset_store(dirs[i])
        train_many([TrainConfig.from_dict(job["configs"][i]) for i in todo], [dirs[i] for i in todo], progress=False)
    elif kind == "train":
        from sslens.train import TrainingDiverged, train

        (i,) = todo
        try:
            train(TrainConfig.from_dict(job["configs"][i]), out=dirs[i], resume=RunStore(dirs[i]).exists(), progress=False)
        except TrainingDiverged as e:
            _mark_diverged(dirs[i], e)
    elif kind == "fn":
        (i,) = todo
        fn = resolve_fn(job["fn"])
        result = fn(json.loads(json.dumps(job["configs"][i])), dirs[i])
        store = RunStore(dirs[i])
        if not store.complete and status_of(dirs[i]) != "diverged":
            info = {k: float(v) for k, v in (result or {}).items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)} \
                if isinstance(result, dict) else {}
            store.mark_complete({"fn": job["fn"] if isinstance(job["fn"], str) else getattr(job["fn"], "__qualname__", "fn"),
                                 "result": info})
    else:  # pragma: no cover -- jobs are built by sslens.sweeps.grid
        raise SslensError("job.kind", f"got {kind!r}", "engine, train, fn")


# ----- local worker processes -------------------------------------------------------------------
def worker_init(parent_pid: int, threads: int) -> None:
    """Pool initializer: die with the parent (SIGKILL, SIGTERM, Ctrl-C) within a second
    (:func:`sslens.procs.die_with_parent`); Ctrl-C is left to the parent, which kills its workers; large tensors
    from the heap (:func:`sslens.procs.keep_heap`)."""
    from sslens.procs import die_with_parent, keep_heap

    die_with_parent(parent_pid)
    keep_heap()
    if threads:
        import torch

        torch.set_num_threads(threads)


def ray_execute(job: dict) -> list[tuple[str, str]]:
    """A Ray task: one job; a retry (after its worker was killed) waits for the dead holder's lock."""
    from sslens.procs import keep_heap

    keep_heap()
    return execute(job, wait=True)


__all__ = ["execute", "status_of", "finished", "clean_temp", "reset_store", "resolve_fn", "worker_init", "STATUSES"]
