"""Memory estimate of a training run, checked before anything is written (a one-line refusal).

A low layer: the run store, the CLI and training all call it, and it imports nothing of sslens but errors.
"""

from __future__ import annotations

import math
import os

from sslens.errors import SslensError


def available_memory() -> int:
    """Bytes this machine can still give (``MemAvailable``; physical memory where that is unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def estimate_bytes(model: dict, batch: int) -> int:
    """A generous estimate of the peak memory of training ``model`` (a config dict) on ``batch`` sequences.

    Parameters x 4 (weights, grads, two optimizer states) plus activations of every layer for the
    backward pass: residual/q/k/v/z/MLP per position, the T x T pattern, and the logits.
    """
    def g(*keys, default=0):
        vals = [model.get(k) for k in keys]
        ok = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        return max(int(ok[0]), 0) if ok else default

    width = g("M", "d_model", "d", default=64)
    vocab = g("M", "d_vocab", default=width)
    d_ff = g("d_mlp", "d_ff", default=0)
    layers = g("n_layers", default=1)
    T = g("n_ctx", default=128)
    elt = 8 if model.get("dtype") == "float64" else 4
    params = layers * (4 * width * width + 2 * width * d_ff) + 2 * vocab * width
    acts = batch * T * (layers * (8 * width + 2 * T + 2 * d_ff) + 2 * vocab) + batch * T * 2  # + int64 tokens
    return elt * (4 * params + 3 * acts)


def check_memory(model: dict, batch: int, field: str = "batch") -> None:
    """Refuse (one line, before anything is written) a run whose estimate exceeds the available memory."""
    need, have = estimate_bytes(model, batch), available_memory()
    if need > have:
        raise SslensError(field, f"needs about {need / 2**30:.3g} GiB, the machine has {have / 2**30:.3g} GiB available",
                          "a smaller batch / model (estimate: sslens.memory.estimate_bytes)")
