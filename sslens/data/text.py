"""WikiText (or any word-level text) through ``datasets``: vocabulary, tokenisation cached on disk, chunks.

``load_text({"train": path, "valid": path})`` uses ``datasets.load_dataset("text", data_files=...)`` on
local files (offline); a hub name (e.g. ``"wikitext"`` with ``config="wikitext-2-v1"``) works where the
network allows. Tokenisation follows the PyTorch word-language-model tutorial: ``line.split() + ["<eos>"]``
for every non-empty line. The vocabulary keeps ``<unk>`` (WikiText's own unknown token) and ``<eos>``;
with ``max_vocab`` only the most frequent words are kept (ties broken by first appearance), the rest map
to ``<unk>``. Token ids of a split are cached as safetensors under ``cache_dir``, keyed by a hash of the
file contents and the vocabulary settings; writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

from sslens.errors import SslensError, require
from sslens.store import atomic_save_tensors, atomic_write_bytes, load_tensors

SPECIALS = ("<unk>", "<eos>")


def default_wikitext_dir() -> Path | None:
    """``$SSLENS_WIKITEXT_DIR`` when it holds ``valid.txt``, else None (no other place is searched)."""
    env = os.environ.get("SSLENS_WIKITEXT_DIR")
    return Path(env) if env and (Path(env) / "valid.txt").is_file() else None


def load_text(data_files: dict[str, str | Path] | None = None, hub: str | None = None, config: str | None = None):
    """A ``datasets.DatasetDict`` of text lines (column ``text``) from local files or a hub name."""
    import datasets

    if hub is not None:
        return datasets.load_dataset(hub, config)
    require(bool(data_files), "data_files", "no files given", "{split: path to a text file}")
    for split, p in data_files.items():
        require(Path(p).is_file(), f"data_files.{split}", f"no such file {p}", "an existing text file")
        require(Path(p).stat().st_size > 0, f"data_files.{split}", f"{p} is empty", "a non-empty text file")
    ds = datasets.load_dataset("text", data_files={k: str(v) for k, v in data_files.items()})
    for split in ds:
        if not any(line.strip() for line in ds[split]["text"]):
            raise SslensError(f"data_files.{split}", "the split has no non-empty line", "a text file with words")
    return ds


def words(lines) -> list[str]:
    """The tutorial's tokenisation: ``line.split() + ["<eos>"]`` for every non-empty line."""
    out = []
    for line in lines:
        toks = line.split()
        if toks:
            out.extend(toks + ["<eos>"])
    return out


class Vocab:
    """Word <-> id. ``Vocab.build(words, max_vocab)``; ids of the specials come first."""

    def __init__(self, itos: list[str]):
        self.itos = itos
        self.stoi = {w: i for i, w in enumerate(itos)}

    @classmethod
    def build(cls, ws: list[str], max_vocab: int | None = None) -> Vocab:
        """The specials, then words by falling frequency (ties: first appearance), at most ``max_vocab`` in all."""
        require(max_vocab is None or max_vocab > len(SPECIALS), "max_vocab", f"got {max_vocab!r}",
                f"None or an int > {len(SPECIALS)}")
        counts = Counter(w for w in ws if w not in SPECIALS)
        order = sorted(counts, key=lambda w: -counts[w])  # stable: ties keep first appearance
        if max_vocab is not None:
            order = order[: max_vocab - len(SPECIALS)]
        return cls(list(SPECIALS) + order)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, ws: list[str]) -> Int[Tensor, " n"]:
        """Ids of words (unknown words -> ``<unk>``)."""
        unk = self.stoi["<unk>"]
        return torch.tensor([self.stoi.get(w, unk) for w in ws], dtype=torch.long)

    def decode(self, ids) -> list[str]:
        """Words of ids."""
        return [self.itos[int(i)] for i in ids]


def _digest(files: dict, max_vocab) -> str:
    h = hashlib.sha256(json.dumps({"max_vocab": max_vocab, "v": 1}).encode())
    for split in sorted(files):
        h.update(split.encode())
        h.update(Path(files[split]).read_bytes())
    return h.hexdigest()[:16]


def tokenize(data_files: dict[str, str | Path], vocab_split: str, max_vocab: int | None = None,
             cache_dir: str | Path | None = None) -> tuple[Vocab, dict[str, Tensor]]:
    """Vocabulary from ``vocab_split`` and the id stream of every split, cached on disk."""
    require(vocab_split in data_files, "vocab_split", f"{vocab_split!r} not among the files", ", ".join(data_files))
    cache = Path(cache_dir or os.environ.get("SSLENS_CACHE", Path.home() / ".cache" / "sslens")) / "text"
    for split, p in data_files.items():
        require(Path(p).is_file(), f"data_files.{split}", f"no such file {p}", "an existing text file")
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)  # a new cache dir is the user's alone
    key = _digest(data_files, max_vocab)
    vpath, tpath = cache / f"{key}.vocab.json", cache / f"{key}.ids.safetensors"
    if vpath.exists() and tpath.exists():
        return Vocab(json.loads(vpath.read_text())), load_tensors(tpath)[0]
    ds = load_text(data_files)
    per_split = {s: words(ds[s]["text"]) for s in ds}
    vocab = Vocab.build(per_split[vocab_split], max_vocab)
    ids = {s: vocab.encode(w) for s, w in per_split.items()}
    mode = cache_mode(data_files)
    atomic_save_tensors(tpath, ids, mode=mode)
    atomic_write_bytes(vpath, json.dumps(vocab.itos).encode(), mode=mode)
    return vocab, ids


def cache_mode(data_files: dict) -> int:
    """The caches' permission bits: what every source file allows (at most 0644), so a 0600 file's words stay 0600."""
    mode = 0o644
    for p in data_files.values():
        mode &= os.stat(p).st_mode & 0o666
    return mode | 0o600


def chunks(ids: Int[Tensor, " n"], seq_len: int) -> Int[Tensor, "n_chunks seq_len"]:
    """Non-overlapping chunks of ``seq_len`` tokens (the tail that does not fill a chunk is dropped)."""
    require(seq_len >= 2, "seq_len", f"got {seq_len!r}", "an int >= 2")
    n = ids.numel() // seq_len
    require(n >= 1, "seq_len", f"{seq_len} is longer than the split ({ids.numel()} tokens)", "a shorter chunk")
    return ids[: n * seq_len].view(n, seq_len)


class TextTask:
    """Random chunks of a tokenised split; loss ``all_ce`` (every position) or ``last_ce`` (last token)."""

    def __init__(self, files: dict, split: str = "train", vocab_split: str | None = None, seq_len: int = 35,
                 max_vocab: int | None = 2000, loss: str = "all_ce", cache_dir: str | None = None):
        require(loss in ("all_ce", "last_ce"), "loss", f"got {loss!r}", "all_ce, last_ce")
        require(split in files, "split", f"{split!r} not among the files", ", ".join(files))
        self.files, self.split, self.vocab_split = dict(files), split, vocab_split or split
        self.seq_len, self.max_vocab, self.loss, self.cache_dir = seq_len, max_vocab, loss, cache_dir
        self.vocab, ids = tokenize(self.files, self.vocab_split, max_vocab, cache_dir)
        self.data = chunks(ids[split], seq_len if loss == "all_ce" else seq_len + 1)
        self.all_ids = ids

    def batch(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Random chunks: ``(x, x)`` for ``all_ce``, ``(x[:, :-1], x[:, -1])`` for ``last_ce``."""
        i = torch.randint(0, self.data.shape[0], (batch,), generator=generator)
        x = self.data[i]
        return (x, x) if self.loss == "all_ce" else (x[:, :-1], x[:, -1])

    def to_dict(self) -> dict:
        """The task config dict."""
        return {"kind": "text", "files": {k: str(v) for k, v in self.files.items()}, "split": self.split,
                "vocab_split": self.vocab_split, "seq_len": self.seq_len, "max_vocab": self.max_vocab, "loss": self.loss,
                "cache_dir": self.cache_dir}
