"""Progress bars: ``tqdm.auto``, shown in a terminal and quiet by default in a notebook.

``progress=None`` (every sslens entry point's default) means: a bar in a terminal or log, none in a Jupyter kernel
(without ipywidgets ``tqdm.auto`` falls back to text bars there, ~100 stderr lines per analysis).
``progress=True`` / ``False`` force it. ``tqdm.auto`` is imported with its "IProgress not found" warning silenced,
and ``import sslens`` does that first inside a kernel, so no library imported after it (``huggingface_hub``, pulled in
by TransformerLens, imports ``tqdm.auto`` too) prints that warning.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Iterable

_IPROGRESS = "IProgress not found"  # tqdm.autonotebook's warning when ipywidgets is missing


def in_notebook() -> bool:
    """True inside a Jupyter kernel (an IPython shell started by ipykernel's ``IPKernelApp``)."""
    if "ipykernel" not in sys.modules or "IPython" not in sys.modules:
        return False
    ip = sys.modules["IPython"].get_ipython()
    return ip is not None and "IPKernelApp" in ip.config


def tqdm_auto() -> type:
    """``tqdm.auto.tqdm`` (the notebook widget where ipywidgets is installed), imported without its warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_IPROGRESS)
        from tqdm.auto import tqdm
    return tqdm


def shown(progress: bool | None) -> bool:
    """Whether a bar is shown: ``progress`` when given, else not in a notebook."""
    return (not in_notebook()) if progress is None else bool(progress)


def bar(iterable: Iterable | None = None, progress: bool | None = None, **kwargs: Any):
    """A ``tqdm.auto`` bar over ``iterable`` (or ``total=``), disabled unless :func:`shown`."""
    return tqdm_auto()(iterable, disable=not shown(progress), **kwargs)
