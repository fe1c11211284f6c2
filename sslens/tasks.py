"""Training tasks: what a batch is and which loss it goes with.

A task is rebuilt from ``config["task"]`` (a dict with ``kind``) through the static table
``sslens.registry.TASKS``; the dict is validated against the factory's signature (:mod:`sslens.configs`).
``task.batch(batch, generator)`` returns ``(tokens [batch, pos], target)``; ``task.loss`` names a loss
in :mod:`sslens.losses`.
"""

from __future__ import annotations

from typing import Protocol

import torch
from jaxtyping import Int
from torch import Tensor

from sslens.configs import build_task as _build_task
from sslens.data.sequence_classes import SequenceClassSpec, sample
from sslens.errors import SslensError


class Task(Protocol):
    """What the trainer needs of a task."""

    loss: str

    def batch(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(tokens [batch, pos], target)``."""

    def to_dict(self) -> dict:
        """The config dict that rebuilds it."""


class SequenceClassTask:
    """Scan&Snap sequence classes (docs/theory.md §1.2); loss: CE on the last position."""

    loss = "last_ce"

    def __init__(self, spec: SequenceClassSpec):
        self.spec = spec

    def batch(self, batch: int, generator: torch.Generator) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, " batch"]]:
        """Sequences (the query last) and their next tokens."""
        tokens, nxt, _ = sample(self.spec, batch, generator)
        return tokens, nxt

    def to_dict(self) -> dict:
        """``{"kind": "sequence_classes", "spec": {...}}``."""
        return {"kind": "sequence_classes", "spec": self.spec.to_dict()}


def sequence_class_task(spec: dict) -> SequenceClassTask:
    """Task kind ``sequence_classes``: the factory of ``{"kind": "sequence_classes", "spec": {...}}``."""
    return SequenceClassTask(SequenceClassSpec.from_dict(spec))


def build_task(d: dict) -> Task:
    """A task from its config dict (kinds: ``sslens.registry.TASKS``)."""
    return _build_task(d)


#: task kinds whose config names files to read (and a cache to write): never rebuilt from a run being analysed
READS_FILES = frozenset({"text"})


def analysis_task(d: dict) -> Task:
    """:func:`build_task` for analysing a run: a kind that reads files named in the (untrusted) config is refused.

    A run directory may come from anyone; its ``config.json`` must not make the analysis read a file (a text
    task's ``files``) or choose where to write (its ``cache_dir``).
    """
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind in READS_FILES:
        raise SslensError("task", f"the run's task of kind {kind!r} reads data files named in its config.json; analysing "
                          "a run never reads them", "--probe FILE (analyze-checkpoints), or build the task yourself")
    return _build_task(d)
