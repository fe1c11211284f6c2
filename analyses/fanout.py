"""``analyze-checkpoints --backend ray``: the per-checkpoint states computed on a Ray cluster, analysed in order here.

The series' steps are cut into chunks; one Ray task per chunk opens the series itself (:class:`Opener`: the same
arguments ``open_series`` got) and runs :func:`sslens.analyses.series.checkpoint_source` over the series' first
step followed by the chunk, so each state is computed by the very code of the local path, with the same first
state (``scores.rel_change`` reference) and the same probe; the first state is dropped unless the chunk holds it.
Tasks are pure (they write nothing): a task whose worker dies is run again (``max_retries``) and the driver
keeps exactly one state per step, so nothing is lost or counted twice. States stream back in step order into
:func:`~sslens.analyses.series.analyze_states` with at most ``2 x workers`` chunks in flight. Each task runs one
thread (``num_cpus=1``): the numbers are the local per-checkpoint path's run with one thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from sslens.analyses.series import StateSource, checkpoint_source


@dataclass(frozen=True)
class Opener:
    """How a worker opens the series.

    ``open_series(path, config, checkpoint_indices, checkpoints)`` and the run's task config (the probe of an
    sslens run without ``--probe``).
    """

    path: str
    config: str | None = None
    checkpoint_indices: tuple[int, ...] | None = None
    checkpoints: str | None = None
    task: dict | None = None


def chunk_states(opener: Opener, first: int, steps: list[int], probe: Tensor | None,
                 seed: int = 0) -> tuple[list[tuple[int, dict[str, Tensor]]], dict]:
    """The states of ``steps`` (and the source's meta) as the local path computes them after state ``first``."""
    import torch

    from sslens.checkpoints import open_series

    torch.set_num_threads(1)
    s = open_series(opener.path, config=opener.config, checkpoints=opener.checkpoints,
                    checkpoint_indices=list(opener.checkpoint_indices) if opener.checkpoint_indices else None)
    if opener.task is not None:
        from sslens.tasks import build_task

        s.task = build_task(opener.task)
    s.steps = [first] + [x for x in steps if x != first]
    s.files = None
    src = checkpoint_source(s, probe, seed=seed)
    out = [(step, {k: v.clone() for k, v in st.items()}) for step, st in src.states() if step in steps]
    return out, src.meta


def _init(workers: int, address: str | None) -> bool:
    """Connect to (``address``) or start a local Ray; whether it was started here."""
    from sslens.errors import SslensError

    try:
        import ray
    except ImportError:
        raise SslensError("--backend", "ray is not installed", "local, or ray after `pip install 'sslens[ray]'`") from None
    if ray.is_initialized():
        return False
    kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        if address:  # a dead address fails within RAY_CONNECT_TIMEOUT_S, in one line (as sweep grid)
            from sslens.sweeps.grid import _connect_ray

            _connect_ray(ray, address, kw)
        else:
            ray.init(num_cpus=workers, **kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise SslensError("--address", f"cannot connect to Ray at {address!r} ({str(e).splitlines()[0]})",
                          "the address printed by `ray start --head`, e.g. 10.0.0.1:6379, or none for a local Ray") from None
    return True


def ray_source(series: Any, opener: Opener, probe: Tensor | None = None, workers: int = 2, address: str | None = None,
               max_retries: int = 3, chunk: int | None = None) -> StateSource:
    """A :class:`~sslens.analyses.series.StateSource` of ``series`` whose states are computed by Ray tasks."""
    steps = list(series.steps)
    size = chunk or max(1, min(8, math.ceil(len(steps) / (4 * max(workers, 1)))))
    chunks = [steps[i:i + size] for i in range(0, len(steps), size)]
    meta: dict = {"probe": "repeated random tokens" if probe is None else "given"}  # as checkpoint_source's

    def states():
        import ray

        from sslens.errors import SslensError

        started = _init(workers, address)
        try:
            task = ray.remote(num_cpus=1, max_retries=max_retries)(chunk_states)
            window = 2 * max(workers, 1)
            refs = [task.remote(opener, steps[0], c, probe) for c in chunks[:window]]
            for i, c in enumerate(chunks):
                if i + window < len(chunks):
                    refs.append(task.remote(opener, steps[0], chunks[i + window], probe))
                try:
                    got, _ = ray.get(refs[i])
                except ray.exceptions.RayError as e:  # retries exhausted
                    why = " ".join(str(e).split())[:160]
                    raise SslensError("--backend", f"ray: steps {c[0]}..{c[-1]} failed after {max_retries} retries ({why})",
                                      "a reachable Ray cluster; or --backend local") from None
                refs[i] = None  # released: one chunk's states held here at a time
                assert [s for s, _ in got] == c, f"ray returned steps {[s for s, _ in got]} for {c}"
                yield from got
        finally:
            if started:
                ray.shutdown()

    return StateSource(series.name, steps, states, list(getattr(series, "notes", [])), meta)
