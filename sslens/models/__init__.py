"""HookedTransformer builders. Every model is rebuilt from a plain dict (its sslens model config).

``build(model_cfg)`` dispatches on ``model_cfg["kind"]``; builders register themselves in ``BUILDERS``.
The dict is what ``config.json`` stores: never a pickled object.
"""

from __future__ import annotations

from typing import Callable

import torch

from transformer_lens import HookedTransformer

from sslens.errors import SslensError
from sslens.models.scan_snap import scan_snap, scan_snap_config

Builder = Callable[[dict, "torch.Generator | None"], HookedTransformer]

BUILDERS: dict[str, Builder] = {
    "scan_snap": lambda cfg, generator=None: scan_snap(**{k: v for k, v in cfg.items() if k != "kind"}, generator=generator),
}


def register(kind: str, builder: Builder) -> None:
    """Add a model kind (used by the condensation and text modules)."""
    BUILDERS[kind] = builder


def build(model_cfg: dict, generator: torch.Generator | None = None) -> HookedTransformer:
    """Build a HookedTransformer from its sslens model config (initialised from ``generator``, hooks attached).

    Every builder sets ``model.sslens_config`` (this dict) and ``model.sslens_trainable`` (names of
    the trainable parameters; the others are frozen).
    """
    _load_optional_kinds()
    kind = model_cfg.get("kind")
    if kind not in BUILDERS:
        raise SslensError("model.kind", f"unknown model kind {kind!r}", ", ".join(sorted(BUILDERS)))
    return BUILDERS[kind](model_cfg, generator)


def _load_optional_kinds() -> None:
    """Import builder modules that register further kinds (kept lazy to avoid import cycles)."""
    import importlib

    for mod in ("sslens.models.rank_collapse", "sslens.models.standard"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # module not written yet
            if e.name != mod:
                raise


__all__ = ["build", "register", "scan_snap", "scan_snap_config", "BUILDERS"]
