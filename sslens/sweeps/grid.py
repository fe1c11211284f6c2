"""Generic grid sweeps: a SPEC (``base`` config + ``grid`` of dotted names -> lists), one run store per
point under ``OUT/runs/``, on local processes or Ray; ``OUT/results.csv`` and ``OUT/summary.png``.

Y/Z-model runs (``sslens.engine.engine_ok``) are batched through the exact count engine, grouped by
``sslens.engine.runner.group_key`` (docs/engine.md); every other kind through ``sslens.train.train``;
a user's ``fn(config, out_dir)`` (SPEC ``fn = "module:attr"`` or ``run_grid(..., fn=callable)``) is the
unit for custom loops. Resumable: finished runs are skipped, a killed run resumes from its checkpoint
(see :mod:`sslens.sweeps.jobs`). docs/sweeps.md has the SPEC format and the Ray set-up.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from sslens.errors import SslensError, require
from sslens.lock import run_lock
from sslens.store import RunStore, atomic_write_json, atomic_write_text, check_out_path
from sslens.sweeps.jobs import STATUSES, clean_temp, finished, resolve_fn, status_of

SPEC_FIELDS = ("base", "grid", "fn")
BACKENDS = ("local", "ray")
NESTED = ("model", "task", "lr")
RESULT_FIELDS = ("status", "steps", "final_loss", "min_loss", "diverged_at")


# ----- SPEC -------------------------------------------------------------------------------------
def _flatten(d: dict, prefix: str = "") -> dict:
    """TOML writes ``model.init = [...]`` as a nested table: back to dotted names."""
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def _read_file(path: Path, field: str) -> dict:
    require(path.is_file(), field, f"no such file {path}", "a .json or .toml file")
    text = path.read_bytes()
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10: the same parser as the tomli package
                import tomli as tomllib

            obj = tomllib.loads(text.decode())
        else:
            obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise SslensError(field, f"{path} is not valid {kind} ({str(e).splitlines()[0]})", f"a {kind} object") from None
    require(isinstance(obj, dict), field, f"{path} holds a {type(obj).__name__}", "a JSON/TOML object")
    return obj


def load_spec(spec: str | Path | dict, fn: str | Callable | None = None, base_dir: Path | None = None) -> dict:
    """Read and check a SPEC (path to .json/.toml, or a dict); returns ``{"base", "grid", "fn"}``.

    ``base``: a run's config.json (inline, as a path to it or to its run directory) or a TrainConfig
    dict; ``grid``: dotted names -> non-empty lists; ``fn``: optional "module:attr". Each bad field is
    one :class:`SslensError` naming it and what is allowed.
    """
    if not isinstance(spec, dict):
        path = Path(spec)
        spec = _read_file(path, "SPEC")
        base_dir = path.parent
    unknown = sorted(set(spec) - set(SPEC_FIELDS))
    require(not unknown, unknown[0] if unknown else "", "unknown SPEC field", ", ".join(SPEC_FIELDS))
    require("base" in spec, "base", "missing", "a run's config.json (inline table or a path)")
    base = spec["base"]
    if isinstance(base, str):
        p = Path(base)
        if not p.is_absolute() and base_dir is not None and (base_dir / p).exists():
            p = base_dir / p
        if p.is_dir():
            p = p / "config.json"
        base = _read_file(p, "base")
    require(isinstance(base, dict), "base", f"got {type(base).__name__}", "a run's config.json (inline table or a path)")
    if "train" in base and isinstance(base["train"], dict):  # a config.json written by sslens.train / the engine
        base = base["train"]
    grid = spec.get("grid", {})
    require(isinstance(grid, dict), "grid", f"got {type(grid).__name__}", "a table of dotted names -> lists")
    grid = _flatten(grid)
    for k, v in grid.items():
        require(isinstance(v, list) and len(v) > 0, f"grid.{k}", f"got {v!r}", "a non-empty list of values")
        keys = [json.dumps(x, sort_keys=True) for x in v]
        require(len(set(keys)) == len(keys), f"grid.{k}", "duplicate values", "distinct values")
    fn = fn if fn is not None else spec.get("fn")
    if fn is not None:
        resolve_fn(fn)
    _check_names(base, grid, fn is not None)
    return {"base": base, "grid": grid, "fn": fn}


def _train_fields() -> list[str]:
    from sslens.train import TrainConfig

    return [f.name for f in fields(TrainConfig)]


def _check_names(base: dict, grid: dict, custom: bool) -> None:
    if custom and not ({"model", "task"} <= set(base)):
        return  # a user's own config: any dotted name into it
    names = _train_fields()
    allowed = ", ".join(names) + ", model.<key>, task.<key>, lr.<param>"
    for k in grid:
        head, _, rest = k.partition(".")
        if head == "lr" and rest:
            continue
        if head in ("model", "task") and rest:
            sub = base.get(head, {})
            require(isinstance(sub, dict) and rest.split(".")[0] in sub, f"grid.{k}", f"not a key of base.{head}",
                    ", ".join(f"{head}.{x}" for x in sub) if isinstance(sub, dict) else allowed)
            continue
        require(head in names and not rest, f"grid.{k}", "unknown field", allowed)


def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-")


def point_names(points: list[dict]) -> list[str]:
    """A readable, stable directory name per grid point (``seed=1_lr.unembed.W_U=10``), hashed if long."""
    if len(points) == 1 and not points[0]:
        return ["run"]
    names = []
    for p in points:
        name = _sanitize("_".join(f"{k}={json.dumps(v) if not isinstance(v, (int, float, str)) else v}" for k, v in p.items()))
        if len(name) > 120 or not name:
            name = "p-" + hashlib.sha1(json.dumps(p, sort_keys=True).encode()).hexdigest()[:16]
        names.append(name)
    if len(set(names)) != len(names):
        names = ["p-" + hashlib.sha1(json.dumps(p, sort_keys=True).encode()).hexdigest()[:16] for p in points]
    return names


def grid_points(spec: dict) -> list[tuple[str, dict, dict]]:
    """``(name, point, config dict)`` for every grid point of a checked SPEC."""
    import itertools

    from sslens.sweeps import _set

    base, grid = spec["base"], spec["grid"]
    axes = list(grid)
    points, configs = [], []
    typed = not _custom(spec)
    for values in itertools.product(*(grid[a] for a in axes)):
        d = json.loads(json.dumps(base))
        for a, v in zip(axes, values):
            try:
                _set(d, a, v)
            except SslensError as e:
                raise SslensError(f"grid.{a}", e.problem, e.allowed) from None
        if typed:
            d = _typed(d, axes)
        points.append(dict(zip(axes, values)))
        configs.append(d)
    return [(n, p, c) for n, p, c in zip(point_names(points), points, configs)]


def _typed(d: dict, axes: list[str]) -> dict:
    """Check a TrainConfig dict (a bad value names its grid axis or base field)."""
    from sslens.train import TrainConfig

    try:
        cfg = TrainConfig.from_dict(d)
    except SslensError as e:
        field = e.field.split("[")[0]
        hit = next((a for a in axes if a == field or a.startswith(field + ".")), None)
        raise SslensError(f"grid.{hit}" if hit else f"base.{e.field}", e.problem, e.allowed) from None
    except TypeError as e:
        raise SslensError("base", f"not a training config ({e})", "a run's config.json or TrainConfig fields") from None
    return cfg.to_dict()


def _check_kinds(configs: list[dict], axes: list[str]) -> None:
    """Every model and task dict is one sslens builds (kind known; with typed configs every field)."""
    seen = set()
    for c in configs:
        for section in ("model", "task"):
            d = c.get(section)
            key = (section, json.dumps(d, sort_keys=True))
            if key in seen:
                continue
            seen.add(key)
            try:
                _check_one(section, d)
            except SslensError as e:
                f = e.field if e.field.startswith(section) else f"{section}.{e.field}"
                hit = next((a for a in axes if f == a or f.startswith(a + ".") or a.startswith(f + ".")), None)
                raise SslensError(f"grid.{hit}" if hit else f"base.{f}", e.problem, e.allowed) from None


def _check_one(section: str, d) -> None:
    require(isinstance(d, dict) and "kind" in d, f"{section}.kind", "missing", f"a {section} config dict with a kind")
    try:  # typed configs (sslens.configs), where present: kind and every field against the builder's signature
        from sslens.configs import model_config, task_config
    except ImportError:
        model_config = task_config = None
    if model_config is not None:
        (model_config if section == "model" else task_config)(d)
        return
    import importlib

    if section == "task":
        from sslens.tasks import TASKS

        for mod in ("sslens.data.anchor", "sslens.data.text"):
            try:
                importlib.import_module(mod)
            except ModuleNotFoundError:
                pass
        require(d["kind"] in TASKS, "task.kind", f"unknown task {d['kind']!r}", ", ".join(sorted(TASKS)))
    elif d["kind"] != "scan_snap":
        from sslens.models import BUILDERS, _load_optional_kinds

        _load_optional_kinds()
        require(d["kind"] in BUILDERS, "model.kind", f"unknown model kind {d['kind']!r}", ", ".join(sorted(BUILDERS)))


# ----- jobs -------------------------------------------------------------------------------------
def make_jobs(runs: list[tuple[str, dict]], runs_dir: Path, fn=None, max_batch: int = 80) -> list[dict]:
    """Engine groups (largest first, so that workers finish together), then one job per other run."""
    from sslens.engine.runner import engine_ok, group_key
    from sslens.train import TrainConfig

    groups: dict = {}
    singles = []
    for name, cfg in runs:
        if fn is not None:
            singles.append({"kind": "fn", "dirs": [str(runs_dir / name)], "configs": [cfg], "fn": fn})
            continue
        tc = TrainConfig.from_dict(cfg)
        if engine_ok(tc):
            groups.setdefault(group_key(tc), []).append((name, cfg))
        else:
            singles.append({"kind": "train", "dirs": [str(runs_dir / name)], "configs": [cfg],
                            "cost": cfg["steps"] * cfg["batch"]})
    jobs = []
    for members in groups.values():
        # runs sharing a data stream (seed, init) in one chunk: each stream is then sampled once
        members.sort(key=lambda m: (m[1].get("seed", 0), str(m[1].get("model", {}).get("init", "zero"))))
        for i in range(0, len(members), max_batch):
            chunk = members[i : i + max_batch]
            c0 = chunk[0][1]
            jobs.append({"kind": "engine", "dirs": [str(runs_dir / n) for n, _ in chunk], "configs": [c for _, c in chunk],
                         "cost": len(chunk) * c0["steps"] * c0["model"].get("M", 1) ** 2})
    jobs.sort(key=lambda j: -j["cost"])
    singles.sort(key=lambda j: -j.get("cost", 0))
    return jobs + singles


def run_local(jobs: list[dict], workers: int, on_done: Callable[[list], None]) -> None:
    """Jobs on ``workers`` local processes (in this process for one worker); workers die with us."""
    if workers <= 1 or len(jobs) <= 1:
        from sslens.sweeps.jobs import execute

        for job in jobs:
            on_done(execute(job))
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from sslens.sweeps.jobs import execute, worker_init

    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    ex = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=worker_init,
                             initargs=(os.getpid(), threads))
    try:
        pending = {ex.submit(execute, job) for job in jobs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                on_done(f.result())
        ex.shutdown(wait=True)
    except BaseException:  # Ctrl-C or an error: no worker outlives this call
        procs = list((getattr(ex, "_processes", None) or {}).values())
        ex.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            p.join(timeout=2)
        raise


RAY_CONNECT_TIMEOUT_S = 30.0  # --address: a cluster that does not answer within this is given up (one line)
RAY_ADDRESS_ALLOWED = "the address printed by `ray start --head`, e.g. 10.0.0.1:6379, or none for a local Ray"


def _connect_ray(ray, address: str, kw: dict, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """``ray.init(address=...)`` that gives up after ``timeout`` seconds (ray.init itself retries for minutes).

    A ``host:port`` (or ``ray://host:port``) is first probed with one TCP connect, so a closed port fails at once.
    """
    import socket
    import threading

    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if sep and port.isdigit():
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=min(10.0, timeout)).close()
        except OSError as e:
            raise SslensError("address", f"cannot connect to Ray at {address!r} ({e.strerror or type(e).__name__})",
                              RAY_ADDRESS_ALLOWED) from None
    box: dict = {}

    def connect() -> None:
        try:
            ray.init(address=address, **kw)
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            box["error"] = e

    t = threading.Thread(target=connect, name="sslens-ray-init", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise SslensError("address", f"no Ray cluster answered at {address!r} within {timeout:g} s", RAY_ADDRESS_ALLOWED)
    if "error" in box:
        raise box["error"]


def run_ray(jobs: list[dict], workers: int, address: str | None, max_retries: int,
            on_done: Callable[[list], None]) -> None:
    """One Ray task per job (``max_retries`` on worker death; a retry resumes from the checkpoint).

    Every task writes its run stores itself, so ``--out`` must be on a filesystem all nodes share.
    Without ``address`` a local Ray is started with ``num_cpus=workers`` and shut down at the end.
    """
    try:
        import ray
    except ImportError:
        raise SslensError("backend", "ray is not installed", "local, or ray after `pip install 'sslens[ray]'`") from None
    from sslens.sweeps.jobs import ray_execute

    started = False
    if not ray.is_initialized():
        kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            if address:
                _connect_ray(ray, address, kw)
            else:
                ray.init(num_cpus=workers, **kw)
        except SslensError:
            raise
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise SslensError("address", f"cannot connect to Ray at {address!r} ({str(e).splitlines()[0]})",
                              RAY_ADDRESS_ALLOWED) from None
        started = True
    try:
        task = ray.remote(num_cpus=1, max_retries=max_retries)(ray_execute)
        refs = {task.remote(job): job for job in jobs}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for r in done:
                try:
                    res = ray.get(r)
                except ray.exceptions.RayError as e:  # retries exhausted: the runs stay unfinished
                    line = " ".join(str(e).split())[:300]
                    res = [(d, "failed") for d in refs[r]["dirs"]]
                    for d in refs[r]["dirs"]:
                        if not finished(d):
                            atomic_write_json(Path(d) / "FAILED", {"error": f"ray: {line}"})
                on_done(res)
    finally:
        if started:
            ray.shutdown()


# ----- the sweep --------------------------------------------------------------------------------
def _check_same(out: Path, runs: list[tuple[str, dict, dict]], fn) -> None:
    """A resumed sweep must ask for the same configs under the same names (new names are fine)."""
    path = out / "sweep.json"
    saved = {}
    if path.exists():
        try:
            saved = json.loads(path.read_text()).get("runs", {})
        except (OSError, ValueError):
            saved = {}
    for name, point, cfg in runs:
        old = saved.get(name)
        if old is not None and old.get("config") != cfg:
            diff = sorted(k for k in set(cfg) | set(old.get("config", {})) if cfg.get(k) != old.get("config", {}).get(k))
            raise SslensError("out", f"{out / 'runs' / name} was run with a different config ({', '.join(diff)})",
                              "the same SPEC to resume, or a new --out")
    saved.update({n: {"point": p, "config": c} for n, p, c in runs})
    atomic_write_json(path, {"fn": fn if isinstance(fn, str) or fn is None else getattr(fn, "__qualname__", "fn"),
                             "runs": saved})


def run_points(
    runs: list[tuple[str, dict, dict]],
    out: str | Path,
    fn: str | Callable | None = None,
    backend: str = "local",
    workers: int = 1,
    address: str | None = None,
    max_retries: int = 3,
    progress: bool | None = None,
    max_batch: int = 80,
    summary: bool = True,
    after_runs: Callable[[], Any] | None = None,
) -> list[dict]:
    """Train ``(name, point, config)`` runs into ``out/runs/NAME`` (unfinished ones only); write
    ``out/results.csv`` (and ``out/summary.png``); return the result rows. ``after_runs()`` is called once every
    run has finished, before the results are read (e.g. to start a helper on the finished run stores)."""
    from sslens.progress import bar as progress_bar

    require(backend in BACKENDS, "backend", f"got {backend!r}", ", ".join(BACKENDS))
    require(isinstance(workers, int) and workers >= 1, "workers", f"got {workers!r}", "an int >= 1")
    require(isinstance(max_retries, int) and max_retries >= 0, "max_retries", f"got {max_retries!r}", "an int >= 0")
    names = [n for n, _, _ in runs]
    require(len(set(names)) == len(names), "points", "duplicate run names", "unique names")
    out = check_out_path(out, kind="sweep")
    runs_dir = out / "runs"
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SslensError("out", f"cannot create {runs_dir} ({e.strerror})", "a writable directory path") from None
    # one sweep per output directory (a few seconds' grace: workers of a killed sweep share its lock until they die)
    with run_lock(out, wait=True, timeout=5.0):
        for p in out.glob(".*.tmp"):
            p.unlink(missing_ok=True)
        _check_same(out, runs, fn)
        todo = [(n, c) for n, _, c in runs if not finished(runs_dir / n)]
        for n, _, _ in runs:  # temp files of killed writers in finished runs too (no writer can hold them now)
            if (runs_dir / n).is_dir() and finished(runs_dir / n):
                clean_temp(runs_dir / n)
        jobs = make_jobs(todo, runs_dir, fn=fn, max_batch=max_batch)
        bar = progress_bar(total=len(todo), progress=progress, desc="sweep", unit="run", dynamic_ncols=True)

        def on_done(result: list) -> None:
            bar.update(len(result))

        try:
            if backend == "ray":
                run_ray(jobs, workers, address, max_retries, on_done)
            else:
                run_local(jobs, workers, on_done)
        finally:
            bar.close()
        if after_runs is not None:
            after_runs()
        rows = results(runs, runs_dir)
        write_results(out / "results.csv", rows, [a for a in _axes(runs)])
        if summary:
            fig = summary_figure(rows, _axes(runs))
            fig.savefig(out / "summary.png", dpi=100, bbox_inches="tight")
    return rows


def run_grid(
    spec: str | Path | dict,
    out: str | Path,
    fn: str | Callable | None = None,
    backend: str = "local",
    workers: int = 1,
    address: str | None = None,
    max_retries: int = 3,
    progress: bool | None = None,
) -> list[dict]:
    """``sslens sweep grid SPEC --out DIR`` in Python; ``fn`` (a callable or "module:attr") overrides SPEC's."""
    spec = load_spec(spec, fn=fn)
    runs = grid_points(spec)
    if not _custom(spec):
        _check_kinds([c for _, _, c in runs], list(spec["grid"]))
    return run_points(runs, out, fn=spec.get("fn"), backend=backend, workers=workers, address=address,
                      max_retries=max_retries, progress=progress)


def _custom(spec: dict) -> bool:
    """A user fn with its own config shape (not a training config): no TrainConfig checks."""
    return spec.get("fn") is not None and not ({"model", "task"} <= set(spec["base"]))


# ----- results ----------------------------------------------------------------------------------
def _axes(runs: list[tuple[str, dict, dict]]) -> list[str]:
    axes: list[str] = []
    for _, p, _ in runs:
        axes += [k for k in p if k not in axes]
    return axes


def run_result(run_dir: Path) -> dict:
    """Status, steps, final and min loss, diverged_at and key metrics of one run store.

    Key metrics: a user fn's returned numbers; for the Y/Z model on sequence classes the distinct-token
    entropy of the final c_n (docs/theory.md §1.4, the Fig. 6 metric) from the last checkpoint.
    """
    store = RunStore(run_dir)
    row: dict = {"status": status_of(run_dir)}
    metrics = [r for r in store.read_metrics() if isinstance(r.get("loss"), (int, float))]
    row["steps"] = metrics[-1]["step"] if metrics else 0
    row["final_loss"] = float(metrics[-1]["loss"]) if metrics else float("nan")
    finite = [float(r["loss"]) for r in metrics if math.isfinite(r["loss"])]
    row["min_loss"] = min(finite) if finite else float("nan")
    config = {}
    if store.exists():
        try:
            config = store.read_config()
        except (OSError, ValueError):
            config = {}
    row["diverged_at"] = config.get("diverged_at", "")
    if store.complete:
        try:
            info = json.loads((run_dir / "COMPLETE").read_text())
        except (OSError, ValueError):
            info = {}
        for k, v in (info.get("result") or {}).items():
            row[k] = v
    if "entropy_distinct" not in row and row["status"] in ("complete", "diverged") \
            and config.get("model", {}).get("kind") == "scan_snap" \
            and config.get("task", {}).get("kind") == "sequence_classes" and store.checkpoint_steps():
        from sslens.data.sequence_classes import spec_from_dict
        from sslens.theory.c_n import composition, distinct_entropy

        spec = spec_from_dict(config["task"]["spec"])
        Z = store.load_checkpoint(keys=["model.blocks.0.attn.W_Q"])[0]["model.blocks.0.attn.W_Q"][0].double()
        row["entropy_distinct"] = distinct_entropy(composition(Z, spec.P(), spec.queries), spec.distinct).mean().item()
    if row["status"] == "failed":
        try:
            row["error"] = json.loads((run_dir / "FAILED").read_text()).get("error", "")
        except (OSError, ValueError):
            row["error"] = ""
    return row


def results(runs: list[tuple[str, dict, dict]], runs_dir: Path) -> list[dict]:
    return [{"name": n, **p, **run_result(runs_dir / n)} for n, p, _ in runs]


def write_results(path: Path, rows: list[dict], axes: list[str]) -> None:
    """results.csv: name, grid values, status, steps, final_loss, min_loss, diverged_at, key metrics."""
    cols = ["name", *axes, *RESULT_FIELDS]
    extra = sorted({k for r in rows for k in r} - set(cols) - {"error"})
    cols += extra + (["error"] if any("error" in r for r in rows) else [])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, restval="", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def _key(v) -> str:
    return json.dumps(v, sort_keys=True)


def _label(v) -> str:
    if isinstance(v, dict) and "kind" in v:
        return str(v["kind"])
    text = v if isinstance(v, str) else json.dumps(v)
    return text if len(text) <= 16 else text[:15] + "…"


def summary_figure(rows: list[dict], axes: list[str]):
    """Final loss of every run against each grid axis (a panel per axis; x marks diverged/failed runs)."""
    from matplotlib.figure import Figure

    axes = axes or ["name"]
    fig = Figure(figsize=(3.4 * len(axes), 3.0))
    panels = fig.subplots(1, len(axes), squeeze=False, sharey=True)[0]
    for ax, a in zip(panels, axes):
        keys, labels = [], []
        for r in rows:
            k = _key(r.get(a))
            if k not in keys:
                keys.append(k)
                labels.append(_label(r.get(a)))
        values = [json.loads(k) for k in keys]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        pos = {k: (v if numeric else i) for i, (k, v) in enumerate(zip(keys, values))}

        def x(r):
            return pos[_key(r.get(a))]

        ok = [r for r in rows if r["status"] == "complete" and math.isfinite(r["final_loss"])]
        bad = [r for r in rows if r["status"] != "complete"]
        ax.scatter([x(r) for r in ok], [r["final_loss"] for r in ok], s=10, alpha=0.6, label="complete")
        if ok:
            xs = sorted({x(r) for r in ok})
            ax.plot(xs, [sum(r["final_loss"] for r in ok if x(r) == v) / sum(1 for r in ok if x(r) == v) for v in xs],
                    "k-", lw=1, label="mean")
        if bad:
            top = max([r["final_loss"] for r in ok] or [1.0])
            ax.scatter([x(r) for r in bad], [top] * len(bad), marker="x", color="red", label="diverged/failed")
        if numeric and len(values) > 2 and min(values) > 0 and max(values) / min(values) >= 20:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(values)), labels, rotation=30, fontsize=7)
        ax.set_xlabel(a)
    panels[0].set_ylabel("final loss")
    panels[-1].legend(fontsize=7)
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    fig.suptitle(f"{len(rows)} runs: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v), fontsize=9)
    return fig


__all__ = ["load_spec", "grid_points", "run_grid", "run_points", "results", "run_result", "summary_figure",
           "write_results", "BACKENDS"]
