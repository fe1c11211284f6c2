"""Closed forms and predictions of both papers: pure, vectorised functions of data and parameters."""
