"""Typed, validated configs of model and task kinds (docs/design.md "Typed configs").

One definition per kind: the signature of its builder or factory in :mod:`sslens.registry` (e.g.
``scan_snap(M, n_ctx=128, init="zero", dtype="float32", generator=None)``). From it,
:func:`config_class` makes a frozen dataclass (fields, annotations and defaults of that signature)
whose ``from_dict`` names a missing or unknown field. ``config.json`` keeps plain dicts (with
``"kind"``); :class:`sslens.train.TrainConfig` validates its ``model`` and ``task`` dicts through these
classes, so old run directories load unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, ClassVar

from sslens.errors import SslensError
from sslens.registry import MODELS, TASKS, load, resolve

#: builder arguments that are not part of a saved config (runtime objects)
RUNTIME_ARGS = frozenset({"generator", "Z", "Y"})


@dataclasses.dataclass(frozen=True)
class KindConfig:
    """Base of the generated config classes: ``kind`` plus the factory's fields."""

    kind: ClassVar[str]
    section: ClassVar[str]  # "model" or "task": the prefix of error fields
    target: ClassVar[str]  # "module:attr" of the builder/factory

    @classmethod
    def from_dict(cls, d: dict) -> KindConfig:
        """Validate a config dict (with or without ``kind``); missing/unknown fields raise naming the field."""
        if not isinstance(d, dict):
            raise SslensError(cls.section, f"got {type(d).__name__}", "a dict with 'kind'")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names) - {"kind"})
        if unknown:
            raise SslensError(f"{cls.section}.{unknown[0]}", f"unknown field for kind {cls.kind!r}", ", ".join(names))
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in d]
        if missing:
            raise SslensError(f"{cls.section}.{missing[0]}", f"missing (kind {cls.kind!r})", f"required: {', '.join(required)}")
        return cls(**{k: v for k, v in d.items() if k != "kind"})

    def kwargs(self) -> dict[str, Any]:
        """The factory's keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able dict ``config.json`` stores (``kind`` first)."""
        return {"kind": self.kind, **self.kwargs()}

    def factory(self):
        """The builder/factory this config is for."""
        return load(self.target)


@functools.cache
def config_class(section: str, kind: str) -> type[KindConfig]:
    """The dataclass of a registered model or task kind, made from its factory's signature."""
    table = MODELS if section == "model" else TASKS
    fn = resolve(table, kind, f"{section}.kind")
    sig = inspect.signature(fn)
    fields = []
    for p in sig.parameters.values():
        if p.name in RUNTIME_ARGS or p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = p.annotation if p.annotation is not inspect.Parameter.empty else Any
        fields.append((p.name, ann) if p.default is inspect.Parameter.empty
                      else (p.name, ann, dataclasses.field(default=p.default)))
    name = "".join(w.capitalize() for w in kind.split("_")) + section.capitalize() + "Config"
    return dataclasses.make_dataclass(name, fields, bases=(KindConfig,), frozen=True,
                                      namespace={"kind": kind, "section": section, "target": table[kind]})


def model_config(d: dict) -> KindConfig:
    """The typed config of a model dict (``{"kind": ..., ...}``)."""
    kind = d.get("kind") if isinstance(d, dict) else None
    return config_class("model", _kind(d, kind, MODELS, "model")).from_dict(d)


def task_config(d: dict) -> KindConfig:
    """The typed config of a task dict (``{"kind": ..., ...}``)."""
    kind = d.get("kind") if isinstance(d, dict) else None
    return config_class("task", _kind(d, kind, TASKS, "task")).from_dict(d)


def _kind(d, kind, table, section) -> str:
    if kind not in table:
        raise SslensError(f"{section}.kind", f"unknown {section} kind {kind!r}", ", ".join(sorted(table)))
    return kind


def build_model(model_cfg: dict, generator=None):
    """A HookedTransformer from its sslens model config (validated), initialised from ``generator``."""
    cfg = model_config(model_cfg)
    return cfg.factory()(**cfg.kwargs(), generator=generator)


def build_task(task_cfg: dict):
    """A task object from its config dict (validated)."""
    cfg = task_config(task_cfg)
    return cfg.factory()(**cfg.kwargs())
