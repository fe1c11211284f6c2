"""Exact count-based engine for the Scan&Snap Y/Z model, batched over many runs (docs/engine.md)."""

from sslens.engine.counts import counts_of, loss_from_counts
from sslens.engine.runner import train_many

__all__ = ["counts_of", "loss_from_counts", "train_many"]
