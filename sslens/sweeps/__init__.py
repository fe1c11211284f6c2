"""Sweeps: a grid over training-config fields, one run store per point, resumable, batched by engine.

``expand(base, {"seed": [1, 2], "lr.unembed.W_U": [1, 10], "model.init": ["zero"]})`` gives one
TrainConfig per grid point (dotted names reach into nested dicts). ``run_grid(SPEC, out)`` (the
``sslens sweep grid`` command, :mod:`sslens.sweeps.grid`) trains every unfinished point -- Y/Z-model runs
through the exact count engine in batches (``sslens.engine.runner.group_key``), anything else through
``sslens.train.train`` or a user's ``fn(config, out_dir)`` -- on local processes or Ray, and writes
results.csv and summary.png. docs/sweeps.md.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

from sslens.errors import SslensError, require
from sslens.progress import bar as progress_bar
from sslens.sweeps.jobs import finished
from sslens.train import TrainConfig


def _set(d: dict, dotted: str, value) -> None:
    head, _, rest = dotted.partition(".")
    if not rest:
        d[head] = value
        return
    if head == "lr":  # parameter names contain dots: "lr.<full parameter name>"
        d["lr"] = {**(d["lr"] if isinstance(d.get("lr"), dict) else {}), rest: value}
        return
    require(isinstance(d.get(head), dict), dotted, "not a nested field", "a TrainConfig field, model.*, task.* or lr.<param>")
    d[head] = copy.deepcopy(d[head])
    _set(d[head], rest, value)


def expand(base: TrainConfig, axes: dict[str, list]) -> list[tuple[dict, TrainConfig]]:
    """The grid: every combination of ``axes`` values applied to ``base``."""
    names = list(axes)
    points = []
    for values in itertools.product(*(axes[n] for n in names)):
        d = base.to_dict()
        for n, v in zip(names, values):
            _set(d, n, v)
        points.append((dict(zip(names, values)), TrainConfig.from_dict(d)))
    return points


def run_sweep(
    points: list[tuple[str, TrainConfig]], out: str | Path, workers: int = 1, progress: bool | None = None, max_batch: int = 80
) -> list[Path]:
    """Train every (name, config) into ``out/name`` unless that store is finished; returns the run dirs.

    The older entry point (runs directly under ``out``); :func:`run_grid` / :func:`run_points` are the
    general ones (``out/runs/NAME``, results.csv, summary.png, Ray).
    """
    from sslens.sweeps.grid import make_jobs, run_local

    out = Path(out)
    names = [n for n, _ in points]
    require(len(set(names)) == len(names), "points", "duplicate run names", "unique names")
    todo = [(n, c.to_dict()) for n, c in points if not finished(out / n)]
    bar = progress_bar(total=len(todo), progress=progress, desc="sweep", unit="run", dynamic_ncols=True)
    run_local(make_jobs(todo, out, max_batch=max_batch), workers, lambda res: bar.update(len(res)))
    bar.close()
    return [out / n for n in names]


def __getattr__(name: str):  # run_grid & co. without importing them (and matplotlib) up front
    if name in ("run_grid", "run_points", "load_spec", "grid_points", "summary_figure", "results"):
        from sslens.sweeps import grid

        return getattr(grid, name)
    raise AttributeError(name)


__all__ = ["expand", "run_sweep", "run_grid", "run_points", "load_spec", "SslensError"]
