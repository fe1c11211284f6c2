"""TransformerLens's pretrained checkpoint series, read offline from the local Hugging Face cache.

TransformerLens names a training checkpoint by ``checkpoint_index`` into the model family's label list
(``get_checkpoint_labels``: Pythia's 154 steps, Stanford CRFM GPT-2's 609) or by ``checkpoint_value`` (the
step). Each is a revision of the hub repository: ``step{N}`` (EleutherAI/pythia-*), ``checkpoint-{N}``
(stanford-crfm/*). The hub cache (``HF_HUB_CACHE/models--ORG--NAME``) lists the revisions it holds in
``refs/``, each pointing to ``snapshots/<commit>/`` (``config.json``, ``model.safetensors``, tokenizer files).

- :func:`parse_checkpoints`: a ``--checkpoints`` SPEC (indices, ranges, ``every K``, ``stepN``) -> indices;
- :func:`cached_revisions` / :func:`check_cached`: which revisions are present (a missing one is a one-line
  error naming the present ones);
- :func:`weights_file` / :func:`read_tensors`: a revision's tensors as stored (for the content hash), no model.
"""

from __future__ import annotations

import re
from pathlib import Path

from sslens.errors import SslensError, require

SPEC_HELP = "comma-separated: N (index), A-B (indices A..B), 'every K' (every K-th index), stepN (the checkpoint at step N)"
_ITEM = re.compile(r"^(?:(?P<i>\d+)|(?P<a>\d+)-(?P<b>\d+)|every\s*(?P<k>\d+)|step(?P<s>\d+)|all)$")


def parse_checkpoints(spec: str, labels: list[int]) -> list[int]:
    """Checkpoint indices (into ``labels``, TransformerLens's ``checkpoint_index``) named by ``spec``, sorted.

    ``"0,5,10"``; ``"0-20"`` (inclusive); ``"every 10"`` (indices 0, 10, 20, ... and the last); ``"step1000"``
    (``checkpoint_value``); ``"all"``; items combine (``"0-10, every 20"``).
    """
    n = len(labels)
    out: set[int] = set()
    items = [x.strip() for x in spec.split(",") if x.strip()]
    require(bool(items), "--checkpoints", "empty", SPEC_HELP)
    require(n > 0, "--checkpoints", "the series has no checkpoints", "a series with at least one checkpoint")
    for item in items:
        m = _ITEM.match(item)
        require(m is not None, "--checkpoints", f"{item!r} is not a checkpoint item", SPEC_HELP)
        if m.group("i") is not None:
            idx = [int(m.group("i"))]
        elif m.group("a") is not None:
            a, b = int(m.group("a")), int(m.group("b"))
            require(a <= b, "--checkpoints", f"{item!r}: range runs backwards", "A-B with A <= B")
            require(b < n, "--checkpoints", f"{item!r}: index {b} >= {n} checkpoints", f"indices 0..{n - 1}")
            idx = list(range(a, b + 1))
        elif m.group("k") is not None:
            k = int(m.group("k"))
            require(k >= 1, "--checkpoints", f"{item!r}: K must be >= 1", "every K with K >= 1")
            idx = sorted(set(range(0, n, k)) | {n - 1})
        elif m.group("s") is not None:
            s = int(m.group("s"))
            require(s in labels, "--checkpoints", f"{item!r}: no checkpoint at step {s}",
                    f"steps {labels[0]}..{labels[-1]} of this model's checkpoint list")
            idx = [labels.index(s)]
        else:
            idx = list(range(n))
        bad = [i for i in idx if i >= n]
        require(not bad, "--checkpoints", f"{item!r}: index {bad[0] if bad else 0} >= {n} checkpoints", f"indices 0..{n - 1}")
        out.update(idx)
    return sorted(out)


def revision(repo: str, label: int) -> str:
    """The hub revision of checkpoint ``label`` (``step{N}``, or ``checkpoint-{N}`` for stanford-crfm)."""
    return f"checkpoint-{label}" if repo.startswith("stanford-crfm/") else f"step{label}"


def labels(repo: str) -> list[int]:
    """TransformerLens's checkpoint labels (steps) of ``repo``; only hub-revision series (Pythia, Stanford CRFM)."""
    from sslens import compat

    require(repo.startswith(("EleutherAI/pythia", "stanford-crfm/")), "pretrained",
            f"{repo} has no checkpoint series stored as hub revisions",
            "EleutherAI/pythia-* or stanford-crfm/* (TransformerLens's checkpointed families)")
    return list(compat.checkpoint_labels(repo))


def cache_dir(repo: str) -> Path:
    """Where huggingface_hub keeps ``repo`` (``HF_HUB_CACHE/models--org--name``), read at call time."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))


def cached_revisions(repo: str) -> list[str]:
    """The revisions ``refs/`` of the local cache holds for ``repo`` (sorted by step where they name one)."""
    refs = cache_dir(repo) / "refs"
    names = [p.name for p in refs.iterdir() if p.is_file()] if refs.is_dir() else []
    key = lambda r: (0, int(m.group(1))) if (m := re.search(r"(\d+)$", r)) else (1, 0)  # noqa: E731
    return sorted(names, key=key)


def check_cached(repo: str, revisions: list[str]) -> None:
    """One line naming the first missing revision and the present ones (nothing is fetched)."""
    have = set(cached_revisions(repo))
    missing = [r for r in revisions if r not in have or not snapshot(repo, r).is_dir()]
    if missing:
        present = [r for r in cached_revisions(repo) if r != "main"]
        shown = ", ".join(present[:12]) + (f" ... ({len(present)} in all)" if len(present) > 12 else "")
        more = f" (+{len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise SslensError("--checkpoints", f"{repo} revision {missing[0]} is not in the local cache{more}",
                          f"the cached revisions: {shown or 'none'}")


def snapshot(repo: str, rev: str) -> Path:
    """``snapshots/<commit>`` that ``refs/<rev>`` points to."""
    d = cache_dir(repo)
    return d / "snapshots" / (d / "refs" / rev).read_text().strip()


def weights_file(repo: str, rev: str) -> Path:
    """The revision's weights: ``model.safetensors`` or ``pytorch_model.bin`` (single-file checkpoints)."""
    snap = snapshot(repo, rev)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (snap / name).exists():
            return snap / name
    raise SslensError("pretrained", f"{repo} revision {rev} has no model.safetensors or pytorch_model.bin in {snap}",
                      "a single-file checkpoint in the local cache")


def read_tensors(path: Path) -> dict:
    """The tensors of a weights file as stored (``safetensors`` or ``torch.load(weights_only=True)``).

    A truncated or corrupt file (a broken download) is one line naming it.
    """
    import pickle

    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                return load_file(str(path))
            except SafetensorError as e:
                raise ValueError(str(e)) from None
        return torch.load(path, map_location="cpu", weights_only=True)
    except (ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise SslensError("checkpoint", f"{path} is not a readable weights file ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:120]})", "a complete download in the local cache") from None
