"""Build a Hugging Face hub cache by hand (tests only): tiny random models saved as checkpoint revisions.

The layout huggingface_hub writes (``HF_HUB_CACHE/models--ORG--NAME/``): ``refs/<revision>`` holds a commit hash,
``snapshots/<commit>/<file>`` are symlinks to ``blobs/<sha256 of the content>`` (files shared between revisions
share a blob). Nothing is downloaded: the models are random, with configs small enough for the test suite.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

VOCAB = [f"t{i}" for i in range(60)] + ["<unk>", "<|endoftext|>", "<pad>", "<bos>"]


def tokenizer_files(out: Path) -> None:
    """A word-level tokenizer over ``VOCAB`` (``tokenizer.json`` + ``tokenizer_config.json``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", pad_token="<pad>")
    fast.save_pretrained(out)


def hf_model(kind: str, seed: int, **gpt2: int):
    """A tiny random ``GPTNeoXForCausalLM`` (``kind="neox"``) or ``GPT2LMHeadModel`` (``kind="gpt2"``; ``gpt2``
    overrides its config, e.g. GPT-2 small's shape for the benchmark)."""
    import transformers

    torch.manual_seed(seed)
    if kind == "neox":
        cfg = transformers.GPTNeoXConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, max_position_embeddings=32, rotary_pct=0.25,
                                         use_parallel_residual=True, tie_word_embeddings=False,
                                         bos_token_id=61, eos_token_id=61)
        return transformers.GPTNeoXForCausalLM(cfg)
    fields = dict(vocab_size=len(VOCAB), n_embd=32, n_layer=2, n_head=4, n_positions=32, n_ctx=32, bos_token_id=61,
                  eos_token_id=61)
    cfg = transformers.GPT2Config(**{**fields, **gpt2})
    return transformers.GPT2LMHeadModel(cfg)


def _put(repo_dir: Path, commit: str, files: dict[str, bytes]) -> None:
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (repo_dir / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        link = snap / name
        if not link.exists():
            os.symlink(os.path.relpath(blob, snap), link)


def add_revision(cache: Path, repo: str, revision: str, model, tmp: Path, also_main: bool = False) -> str:
    """Save ``model`` (and the tokenizer) as ``revision`` of ``repo`` in hub cache ``cache``; its commit hash."""
    src = tmp / f"save-{repo.replace('/', '--')}-{revision}"
    model.save_pretrained(src, safe_serialization=True)
    tokenizer_files(src)
    files = {f.name: f.read_bytes() for f in sorted(src.iterdir()) if f.is_file()}
    commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    _put(repo_dir, commit, files)
    (repo_dir / "refs").mkdir(exist_ok=True)
    for ref in [revision] + (["main"] if also_main else []):
        (repo_dir / "refs" / ref).write_text(commit)
    return commit
