"""sslens: Scan&Snap and condensation/rank-collapse experiments on TransformerLens models.

``import sslens`` is light: ``sslens.models``, ``sslens.data`` and ``sslens.log_schedule`` load on
first use (PEP 562 module ``__getattr__``), so the CLI starts without torch.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from sslens.errors import SslensError

if "ipykernel" in sys.modules:  # in a notebook: tqdm.auto first, without its "IProgress not found" warning
    from sslens.progress import in_notebook, tqdm_auto

    if in_notebook():
        tqdm_auto()

__version__ = "0.1.0"

_LAZY = {"data": ("sslens.data", None), "models": ("sslens.models", None),
         "log_schedule": ("sslens.schedule", "log_schedule")}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sslens' has no attribute {name!r}")
    modname, attr = _LAZY[name]
    mod = importlib.import_module(modname)
    return mod if attr is None else getattr(mod, attr)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["data", "models", "log_schedule", "SslensError", "__version__"]
