"""Content hashes of checkpoints: over tensor bytes, independent of how the file was written.

A series can silently hold copies: Pythia's tracker (EleutherAI/pythia #205) reports step branches that
serve another checkpoint's files. :func:`state_hash` hashes a state dict's tensors (name, dtype, shape and the
bytes of the values, keys in sorted order), so a byte copy and a re-saved copy (``torch.save`` again, another
pickle layout or safetensors) hash equal, while one changed value changes it. Buffers TransformerLens rebuilds
(``.mask``, ``.IGNORE``, rotary tables) are left out.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterable

import torch
from torch import Tensor

BUFFERS = (".mask", ".IGNORE", ".rotary_sin", ".rotary_cos", ".masked_bias", ".attn.bias", "rotary_emb.inv_freq")


def state_hash(tensors: dict[str, Tensor]) -> str:
    """SHA-256 (hex) over ``name, dtype, shape, value bytes`` of every tensor but rebuilt buffers, sorted by name."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        if k.endswith(BUFFERS):
            continue
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def series_hashes(steps: Iterable[int], tensors: Callable[[int], dict[str, Tensor]]) -> dict[int, str]:
    """Step -> :func:`state_hash` of ``tensors(step)``, one checkpoint read at a time."""
    out = {}
    for s in steps:
        sd = tensors(s)
        out[s] = state_hash(sd)
        del sd
    return out


def duplicate_groups(hashes: dict[int, str]) -> list[list[int]]:
    """Groups (sorted, >= 2 steps) of steps with equal hashes, ordered by their first step."""
    by: dict[str, list[int]] = {}
    for s in sorted(hashes):
        by.setdefault(hashes[s], []).append(s)
    return sorted((g for g in by.values() if len(g) > 1), key=lambda g: g[0])


def distinct_steps(hashes: dict[int, str]) -> list[int]:
    """The first step of each distinct state (``--dedupe``), in step order."""
    seen, out = set(), []
    for s in sorted(hashes):
        if hashes[s] not in seen:
            seen.add(hashes[s])
            out.append(s)
    return out
