"""Live telemetry: each recorded step's scalars to TensorBoard and Weights & Biases while the model trains.

``CircuitRecorder(model, ..., tensorboard=DIR, wandb=RUN)`` calls :meth:`Sink.write` with every dict it records.
The scalars are exactly the rows ``Recording(...).to_pandas()`` reads back (``step, layer, head, metric, value``:
one definition, :func:`scalars` builds them with it), tagged

- ``sslens/{metric}/L{layer}H{head}`` for a per-head metric (``entropy``, ``QK.sv1``, detection and eigenvalue
  scores ...), ``sslens/{metric}/L{layer}`` for a per-layer one, ``sslens/{metric}`` for a model-level one
  (``sslens/loss`` where the recorder records the probe loss, the user's ``log`` scalars).

TensorBoard: ``torch.utils.tensorboard.SummaryWriter(DIR).add_scalar(tag, value, step)``, flushed every step.
W&B: ``run.log({tag: value, "sslens/step": step})`` with ``sslens/*`` plotted against ``sslens/step``
(``define_metric``), so the user's own ``run.log`` calls and step counter are left alone. Without the package a
one-line error names the extra (``pip install 'sslens[tensorboard]'`` / ``'sslens[wandb]'``).
Events found so far (:class:`Events`: the change-point rule of ``sslens.analyses.events`` over each tag's values up
to the current step) are logged once each as text ``sslens/events`` (TensorBoard's text tab; a W&B string).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import Tensor

from sslens.errors import SslensError

PREFIX = "sslens"


def tag(metric: str, layer: Any = None, head: Any = None) -> str:
    """``sslens/{metric}/L{layer}H{head}``, ``sslens/{metric}/L{layer}`` or ``sslens/{metric}``."""
    missing = lambda x: x is None or (isinstance(x, float) and math.isnan(x)) or str(x) == "<NA>"  # noqa: E731
    if missing(layer):
        return f"{PREFIX}/{metric}"
    return f"{PREFIX}/{metric}/L{int(layer)}" + ("" if missing(head) else f"H{int(head)}")


def scalars(step: int, rec: dict[str, Tensor]) -> dict[str, float]:
    """Tag -> value of one recorded dict: the rows ``Recording({step: rec}).to_pandas()`` gives."""
    from sslens.hooks.recorder import Recording

    df = Recording({step: rec}).to_pandas()
    return {tag(m, layer, head): float(v) for layer, head, m, v in
            zip(df["layer"].tolist(), df["head"].tolist(), df["metric"].tolist(), df["value"].tolist())}


def _need(module: str, extra: str, field: str):
    import importlib

    try:
        importlib.import_module("pandas")  # Recording.to_pandas builds the rows
        return importlib.import_module(module)
    except ImportError as e:
        raise SslensError(field, f"{e.name or module} is not installed", f"pip install 'sslens[{extra}]'") from None


class Sink:
    """Where a recorder's scalars go at each recorded step."""

    def write(self, step: int, values: dict[str, float]) -> None:  # noqa: D102 - see the class
        raise NotImplementedError

    def text(self, step: int, name: str, text: str) -> None:
        """A text marker at ``step`` (events), where the tool supports it."""

    def close(self) -> None:
        """Flush and release."""


class TensorBoardSink(Sink):
    """``SummaryWriter(log_dir)``: one scalar per tag and step, flushed after each step."""

    def __init__(self, log_dir: str | Path):
        _need("tensorboard", "tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, step: int, values: dict[str, float]) -> None:  # noqa: D102
        for k, v in values.items():
            self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def text(self, step: int, name: str, text: str) -> None:  # noqa: D102
        self.writer.add_text(f"{PREFIX}/{name}", text, global_step=step)
        self.writer.flush()

    def close(self) -> None:  # noqa: D102
        self.writer.close()


class WandbSink(Sink):
    """A W&B run (``wandb.init(...)``'s object): ``sslens/*`` logged against ``sslens/step``."""

    def __init__(self, run: Any):
        wandb = _need("wandb", "wandb", "wandb")
        if isinstance(run, str):  # a project name: a run of its own
            run = wandb.init(project=run)
        if not hasattr(run, "log") or not hasattr(run, "define_metric"):
            raise SslensError("wandb", f"got {type(run).__name__}", "a run from wandb.init(...) or a project name")
        self.run = run
        run.define_metric(f"{PREFIX}/step")
        run.define_metric(f"{PREFIX}/*", step_metric=f"{PREFIX}/step")

    def write(self, step: int, values: dict[str, float]) -> None:  # noqa: D102
        self.run.log({f"{PREFIX}/step": step, **values})

    def text(self, step: int, name: str, text: str) -> None:  # noqa: D102
        self.run.log({f"{PREFIX}/step": step, f"{PREFIX}/{name}": text})


class Events:
    """Events found so far (``sslens.analyses.events.change_points`` on each tag's values up to now), each once.

    The change-point rule lives with the analyses (a layer above this one); it is called by name
    (``sslens.registry.load``), as the run store rebuilds models (docs/design.md "Layers").
    """

    def __init__(self):
        from sslens.registry import load

        self.change_points = load("sslens.analyses.events:change_points")
        self.history: dict[str, tuple[list[int], list[float]]] = {}
        self.seen: set[tuple[str, int]] = set()

    def update(self, step: int, values: dict[str, float]) -> list[str]:
        """Add ``values`` at ``step``; one line per event not reported before (tag and start step)."""
        lines = []
        for k, v in values.items():
            steps, ys = self.history.setdefault(k, ([], []))
            if steps and steps[-1] == step:
                ys[-1] = v
            else:
                steps.append(step)
                ys.append(v)
            if len(steps) < 4:
                continue
            for e in self.change_points(steps, ys):
                if (k, e["start"]) not in self.seen:
                    self.seen.add((k, e["start"]))
                    lines.append(f"{k}: {e['before']:.4g} -> {e['after']:.4g} between steps {e['start']} and {e['end']}")
        return lines


class Telemetry:
    """The recorder's telemetry: its sinks and the events found so far (logged as text where the tool has it)."""

    def __init__(self, tensorboard: str | Path | None = None, wandb: Any = None):
        self.sinks = sinks(tensorboard, wandb)
        self.events = Events()

    def write(self, step: int, values: dict[str, float]) -> list[str]:
        """Every sink gets ``values`` at ``step``, then a text line per new event; the new events."""
        for sink in self.sinks:
            sink.write(step, values)
        new = self.events.update(step, values)
        if new:
            for sink in self.sinks:
                sink.text(step, "events", "\n\n".join(new))
        return new

    def record(self, step: int, rec: dict[str, Tensor]) -> list[str]:
        """A recorded step (:func:`scalars` of ``rec``)."""
        return self.write(step, scalars(step, rec))


def sinks(tensorboard: str | Path | None = None, wandb: Any = None) -> list[Sink]:
    """The sinks a recorder was given (checked now: a missing package is a one-line error at construction)."""
    out: list[Sink] = []
    if tensorboard is not None:
        out.append(TensorBoardSink(tensorboard))
    if wandb is not None:
        out.append(WandbSink(wandb))
    return out
