"""Which CPU wrote a fixture: float32 results are bitwise reproducible only with the same kernels (torch build,
CPU capability, CPU model); elsewhere the tests compare to a stated tolerance instead.

The fixture scripts (tests/data/make_tl_*.py) write ``<fixture>.machine.json`` with :func:`fingerprint` beside the
fixture (not inside it: a run or checkpoint directory holds only what sslens writes).
"""

import json
from pathlib import Path

import torch


def fingerprint() -> dict:
    """torch version, the CPU capability its kernels dispatch on, and the CPU model name."""
    from sslens.procs import cpu_name

    return {"torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu_name()}


def _path(directory: str | Path) -> Path:
    return Path(str(directory).rstrip("/") + ".machine.json")


def write_fingerprint(directory: str | Path) -> None:
    _path(directory).write_text(json.dumps(fingerprint(), indent=1) + "\n")


def wrote_here(directory: str | Path) -> bool:
    """Whether ``directory``'s fixture was written by a machine with this one's kernels (False when unrecorded)."""
    path = _path(directory)
    return path.is_file() and json.loads(path.read_text()) == fingerprint()
