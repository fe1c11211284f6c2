"""Condensation tasks (docs/theory.md §2.4): the anchor-function task and a binary task for the exponential loss.

Anchor task: anchors A = {1, 2, 3, 4}, keys {5..100}, sequence length 10. Positions 0..8 hold keys except
exactly one anchor a at a uniform position p in 0..8; position 9 is a key. Target:
``x[p+1] + a`` ("base") or ``x[p+1] + (a mod 2)`` ("synonym": docs/theory.md notes that the paper's prose and
formula disagree on which anchors pair up; we follow the formula, so anchors 1 and 3 both add 1 and
anchors 2 and 4 both add 0). Loss: CE on the last position.

Binary task: labels y = +-1 (uniform). Tokens are drawn i.i.d. from a label-dependent distribution over
``vocab`` tokens: with probability ``signal`` from the label's own half of the vocabulary, else uniform
over all tokens. Loss: exponential, mean exp(-y f(X)). The data direction v = sum_i y_i sum_j X_ij is
then the difference of the two halves' mean embeddings.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sslens.errors import choice, require

ANCHORS = (1, 2, 3, 4)
VARIANTS = ("base", "synonym")


class AnchorTask:
    loss = "last_ce"

    def __init__(self, variant: str = "base", seq_len: int = 10, key_lo: int = 5, key_hi: int = 100, d_vocab: int = 201):
        choice(variant, "variant", VARIANTS)
        require(isinstance(seq_len, int) and seq_len >= 3, "seq_len", f"got {seq_len!r}", "an int >= 3")
        require(isinstance(key_lo, int) and key_lo > max(ANCHORS), "key_lo", f"got {key_lo!r}", f"an int > {max(ANCHORS)}")
        require(isinstance(key_hi, int) and key_hi > key_lo, "key_hi", f"got {key_hi!r}", f"an int > key_lo = {key_lo}")
        require(isinstance(d_vocab, int) and d_vocab > key_hi + max(ANCHORS), "d_vocab", f"got {d_vocab!r}",
                f"an int > key_hi + {max(ANCHORS)} = {key_hi + max(ANCHORS)}")
        self.variant, self.seq_len, self.key_lo, self.key_hi, self.d_vocab = variant, seq_len, key_lo, key_hi, d_vocab

    def shift(self, a: Tensor) -> Tensor:
        return a if self.variant == "base" else a % 2

    def batch(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        x = torch.randint(self.key_lo, self.key_hi + 1, (batch, self.seq_len), generator=generator)
        p = torch.randint(0, self.seq_len - 1, (batch,), generator=generator)
        a = torch.tensor(ANCHORS)[torch.randint(0, len(ANCHORS), (batch,), generator=generator)]
        rows = torch.arange(batch)
        x[rows, p] = a
        return x, x[rows, p + 1] + self.shift(a)

    def to_dict(self) -> dict:
        return {"kind": "anchor", "variant": self.variant, "seq_len": self.seq_len, "key_lo": self.key_lo,
                "key_hi": self.key_hi, "d_vocab": self.d_vocab}


class BinaryTask:
    loss = "last_exp"

    def __init__(self, vocab: int = 32, seq_len: int = 8, signal: float = 0.5, n_train: int | None = None,
                 data_seed: int = 0):
        require(isinstance(vocab, int) and vocab >= 2 and vocab % 2 == 0, "vocab", f"got {vocab!r}", "an even int >= 2")
        require(isinstance(seq_len, int) and seq_len >= 1, "seq_len", f"got {seq_len!r}", "an int >= 1")
        require(0 < signal <= 1, "signal", f"got {signal!r}", "0 < signal <= 1")
        require(n_train is None or (isinstance(n_train, int) and n_train >= 1), "n_train", f"got {n_train!r}",
                "None (fresh samples every step) or an int >= 1 (a fixed training set)")
        require(isinstance(data_seed, int), "data_seed", f"got {data_seed!r}", "an int")
        self.vocab, self.seq_len, self.signal, self.n_train, self.data_seed = vocab, seq_len, signal, n_train, data_seed
        self._train = self.sample(n_train, torch.Generator().manual_seed(data_seed)) if n_train else None

    def batch(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Fresh samples, or (with ``n_train``) the fixed training set: all of it when ``batch >= n_train``
        (full-batch gradient descent, the theory's setting, docs/theory.md §2.1), else a random subset."""
        if self._train is None:
            return self.sample(batch, generator)
        X, y = self._train
        if batch >= self.n_train:
            return X.clone(), y.clone()
        i = torch.randperm(self.n_train, generator=generator)[:batch]
        return X[i], y[i]

    def training_set(self) -> tuple[Tensor, Tensor] | None:
        return None if self._train is None else (self._train[0].clone(), self._train[1].clone())

    def sample(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``batch`` fresh i.i.d. sequences and labels."""
        y = torch.randint(0, 2, (batch,), generator=generator) * 2 - 1
        half = self.vocab // 2
        own = torch.randint(0, half, (batch, self.seq_len), generator=generator) + torch.where(y > 0, 0, half)[:, None]
        anyt = torch.randint(0, self.vocab, (batch, self.seq_len), generator=generator)
        pick = torch.rand(batch, self.seq_len, generator=generator) < self.signal
        return torch.where(pick, own, anyt), y.float()

    def to_dict(self) -> dict:
        return {"kind": "binary", "vocab": self.vocab, "seq_len": self.seq_len, "signal": self.signal,
                "n_train": self.n_train, "data_seed": self.data_seed}
