"""Training tasks: what a batch is and which loss it goes with.

A task is rebuilt from ``config["task"]`` (a dict with ``kind``). ``task.batch(batch, generator)``
returns ``(tokens [batch, pos], target)``; ``task.loss`` names a loss in :mod:`sslens.losses`;
``task.probe(n, generator)`` gives a fixed probe batch for the recorder.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor

from sslens.data.sequence_classes import SequenceClassSpec, sample
from sslens.errors import SslensError


class Task(Protocol):
    loss: str

    def batch(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]: ...

    def to_dict(self) -> dict: ...


class SequenceClassTask:
    """Scan&Snap sequence classes (theory.md 1.2); loss: CE on the last position."""

    loss = "last_ce"

    def __init__(self, spec: SequenceClassSpec):
        self.spec = spec

    def batch(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        tokens, nxt, _ = sample(self.spec, batch, generator)
        return tokens, nxt

    def to_dict(self) -> dict:
        return {"kind": "sequence_classes", "spec": self.spec.to_dict()}


TASKS: dict[str, Callable[[dict], Task]] = {
    "sequence_classes": lambda d: SequenceClassTask(SequenceClassSpec.from_dict(d["spec"])),
}


def register(kind: str, factory: Callable[[dict], Task]) -> None:
    TASKS[kind] = factory


def build_task(d: dict) -> Task:
    import importlib

    for mod in ("sslens.data.anchor", "sslens.data.text"):  # modules that register further kinds
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
    kind = d.get("kind")
    if kind not in TASKS:
        raise SslensError("task.kind", f"unknown task {kind!r}", ", ".join(sorted(TASKS)))
    return TASKS[kind](d)
