"""Explicit registries: a static table of names -> ``"module:attr"``, resolved lazily with importlib.

Nothing registers itself by being imported. Adding a model kind, task kind, analyzer or reproduction
is one line here. Resolving a name imports only the module that implements it, so ``sslens --help``
and ``import sslens`` never load torch or TransformerLens; and since the table holds strings, a low
layer (the run store) can rebuild a model without a static import of a higher one (docs/design.md).
"""

from __future__ import annotations

import importlib
from typing import Any

from sslens.errors import SslensError

#: model kind -> builder ``fn(**fields, generator=None) -> HookedTransformer``; its signature is the
#: kind's config (``sslens.configs.model_config_class``).
MODELS: dict[str, str] = {
    "scan_snap": "sslens.models.scan_snap:scan_snap",
    "standard": "sslens.models.standard:standard",
    "rank_collapse": "sslens.models.rank_collapse:rank_collapse",
    "small_init_lm": "sslens.models.rank_collapse:small_init_lm",
}

#: task kind -> factory ``fn(**fields) -> Task``; its signature is the kind's config.
TASKS: dict[str, str] = {
    "sequence_classes": "sslens.tasks:sequence_class_task",
    "anchor": "sslens.data.anchor:AnchorTask",
    "binary": "sslens.data.anchor:BinaryTask",
    "text": "sslens.data.text:TextTask",
}

#: CLI verb -> its module (``register(subparsers)`` adds the verb; the module imports nothing heavy).
VERBS: dict[str, str] = {
    "train": "sslens.commands.train",
    "analyze": "sslens.commands.analyze",
    "analyze-checkpoints": "sslens.commands.analyze_checkpoints",
    "reproduce": "sslens.commands.reproduce",
    "sweep": "sslens.commands.sweep",
}

#: ``sslens analyze``: model kind -> ``analyze(run_dir, out_dir=None) -> metrics``.
ANALYZERS: dict[str, str] = {
    "scan_snap": "sslens.analyses.scan_snap_report:analyze",
    "rank_collapse": "sslens.analyses.rank_collapse_report:analyze",
}


def load(target: str) -> Any:
    """Import ``"package.module:attr.sub"`` and return the attribute (or the module without ``:attr``)."""
    modname, _, attr = target.partition(":")
    obj: Any = importlib.import_module(modname)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def resolve(table: dict[str, str], name: Any, field: str) -> Any:
    """The object registered as ``name`` in ``table``; an unknown name raises naming ``field``."""
    if name not in table:
        raise SslensError(field, f"unknown {field.rsplit('.', 1)[-1]} {name!r}", ", ".join(sorted(table)))
    return load(table[name])
