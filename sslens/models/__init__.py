"""HookedTransformer builders. Every model is rebuilt from a plain dict (its sslens model config).

``build(model_cfg)`` looks ``model_cfg["kind"]`` up in the static table ``sslens.registry.MODELS``
(kind -> ``"module:builder"``) and validates the dict against the builder's signature
(:mod:`sslens.configs`). The dict is what ``config.json`` stores: never a pickled object.
"""

from __future__ import annotations

from sslens.configs import build_model as build
from sslens.configs import model_config
from sslens.models.scan_snap import scan_snap, scan_snap_config

__all__ = ["build", "model_config", "scan_snap", "scan_snap_config"]
