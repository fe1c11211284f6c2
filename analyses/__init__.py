"""Analyses of recordings and checkpoints: composition, rank, condensation, theory checks, reports."""
