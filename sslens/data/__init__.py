"""Data: Scan&Snap sequence classes, condensation tasks, text."""

from sslens.data.sequence_classes import (
    SequenceClass,
    SequenceClassSpec,
    preset,
    sample,
    syn_medium,
    syn_small,
)

__all__ = ["SequenceClass", "SequenceClassSpec", "preset", "sample", "syn_small", "syn_medium"]
