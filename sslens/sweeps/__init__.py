"""Sweeps: a grid over training-config fields, one run store per point, resumable, batched by engine.

``expand(base, {"seed": [1, 2], "lr.unembed.W_U": [1, 10], "model.init": ["zero"]})`` gives one
TrainConfig per grid point (dotted names reach into nested dicts). ``run_sweep(points, out)`` trains
every point whose store is not complete: Y/Z-model SGD runs go through the exact count engine in
batches (runs with the same task, M, steps and batch share one batch); anything else goes through
``sslens.train.train``. Groups are spread over ``workers`` local processes.
"""

from __future__ import annotations

import copy
import itertools
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from sslens.errors import SslensError, require
from sslens.store import RunStore
from sslens.train import TrainConfig, train


def _set(d: dict, dotted: str, value) -> None:
    head, _, rest = dotted.partition(".")
    if not rest:
        d[head] = value
        return
    if head == "lr":  # parameter names contain dots: "lr.<full parameter name>"
        d["lr"] = {**d["lr"], rest: value}
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


def engine_ok(cfg: TrainConfig) -> bool:
    return (cfg.model.get("kind") == "scan_snap" and cfg.optimizer == "sgd" and cfg.lr_schedule == "constant"
            and cfg.grad_clip is None and set(cfg.lr) <= {"blocks.0.attn.W_Q", "unembed.W_U"})


def _group_key(cfg: TrainConfig):
    m = cfg.model
    return (repr(cfg.task), m.get("M"), m.get("n_ctx"), m.get("dtype"), cfg.steps, cfg.batch)


def _run_group(args) -> int:
    cfgs, outs, threads = args
    import torch

    from sslens.engine import train_many

    if threads:
        torch.set_num_threads(threads)
    train_many(cfgs, outs, progress=False)
    return len(cfgs)


def run_sweep(
    points: list[tuple[str, TrainConfig]], out: str | Path, workers: int = 1, progress: bool = True, max_batch: int = 80
) -> list[Path]:
    """Train every (name, config) into ``out/name`` unless that store is complete; returns the run dirs."""
    out = Path(out)
    names = [n for n, _ in points]
    require(len(set(names)) == len(names), "points", "duplicate run names", "unique names")
    todo = [(n, c) for n, c in points if not RunStore(out / n).complete]
    groups: dict = {}
    hooked = []
    for n, c in todo:
        if engine_ok(c):
            groups.setdefault(_group_key(c), []).append((n, c))
        else:
            hooked.append((n, c))
    jobs = []
    for members in groups.values():
        for i in range(0, len(members), max_batch):
            chunk = members[i : i + max_batch]
            jobs.append(([c for _, c in chunk], [out / n for n, _ in chunk]))
    # largest first (cost ~ runs x steps x M^2), so the workers finish together
    jobs.sort(key=lambda j: -len(j[0]) * j[0][0].steps * j[0][0].model.get("M", 1) ** 2)
    bar = tqdm(total=len(todo), disable=not progress, desc="sweep", unit="run", dynamic_ncols=True)
    bar.update(0)
    if workers > 1 and len(jobs) > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers) as ex:
            futures = [ex.submit(_run_group, (c, o, threads)) for c, o in jobs]
            for f in as_completed(futures):
                bar.update(f.result())
    else:
        for c, o in jobs:
            bar.update(_run_group((c, o, 0)))
    for n, c in hooked:
        train(c, out=out / n, resume=RunStore(out / n).exists(), progress=False)
        bar.update(1)
    bar.close()
    return [out / n for n in names]


__all__ = ["expand", "run_sweep", "engine_ok", "SslensError"]
