"""Sweeps: grid expansion over config fields, resumable runs, the Fig. 6 table from the stores."""

import csv

import numpy as np
import pytest
import torch

from sslens.analyses.c_n import spec_of
from sslens.cli import main
from sslens.data import syn_small
from sslens.errors import SslensError
from sslens.models import scan_snap_config
from sslens.store import RunStore
from sslens.sweeps import expand, run_sweep
from sslens.tasks import SequenceClassTask
from sslens.theory.c_n import composition, distinct_entropy
from sslens.train import TrainConfig


def base():
    s = syn_small(T=16)
    return TrainConfig(model=scan_snap_config(s.M, n_ctx=16, init="random"), task=SequenceClassTask(s).to_dict(),
                       steps=5, batch=8, lr={"blocks.0.attn.W_Q": 1.0, "unembed.W_U": 1.0}, momentum=0.9, record_n=0)


def test_expand_sets_nested_fields():
    pts = expand(base(), {"seed": [1, 2], "lr.unembed.W_U": [1.0, 10.0], "model.init": ["zero"]})
    assert len(pts) == 4
    point, cfg = pts[-1]
    assert point == {"seed": 2, "lr.unembed.W_U": 10.0, "model.init": "zero"}
    assert cfg.seed == 2 and cfg.lr == {"blocks.0.attn.W_Q": 1.0, "unembed.W_U": 10.0} and cfg.model["init"] == "zero"
    with pytest.raises(SslensError, match="^optimizer"):
        expand(base(), {"optimizer": ["rmsprop"]})


def test_sweep_skips_completed_runs(tmp_path):
    pts = [(f"s{p['seed']}_e{p['lr.unembed.W_U']:g}", c) for p, c in expand(base(), {"seed": [1, 2], "lr.unembed.W_U": [1.0, 4.0]})]
    run_sweep(pts[:2], tmp_path, progress=False)
    stamps = {n: (tmp_path / n / "COMPLETE").stat().st_mtime_ns for n, _ in pts[:2]}
    dirs = run_sweep(pts, tmp_path, progress=False)
    assert all(RunStore(d).complete for d in dirs)
    assert {n: (tmp_path / n / "COMPLETE").stat().st_mtime_ns for n, _ in pts[:2]} == stamps  # not re-run


def test_fig6_cli_table_matches_the_stores(tmp_path):
    out = tmp_path / "f6"
    assert main(["sweep", "scan-snap-fig6", "--out", str(out), "--num-last", "1", "--seeds", "3", "--steps", "4",
                 "--workers", "1", "--quiet"]) == 0
    rows = list(csv.DictReader(open(out / "fig6.csv")))
    assert len(rows) == 16 and set(rows[0]) == {"num_last", "eta_Z", "ratio", "entropy_mean", "entropy_std", "n"}
    assert (out / "fig6.png").stat().st_size > 0 and (out / "recall.png").stat().st_size > 0
    # recompute one cell independently from the run stores
    ents = []
    for s in (1, 2, 3):
        store = RunStore(out / "runs" / f"nl1_ez2_r5_s{s}")
        spec = spec_of(store)
        Z = store.load_checkpoint()[0]["model.blocks.0.attn.W_Q"][0].double()
        ents.append(distinct_entropy(composition(Z, spec.P(), spec.queries), spec.distinct).mean().item())
    row = next(r for r in rows if r["eta_Z"] == "2.0" and r["ratio"] == "5.0")
    assert float(row["entropy_mean"]) == pytest.approx(np.mean(ents), abs=1e-9)
    assert float(row["entropy_std"]) == pytest.approx(np.std(ents, ddof=1), abs=1e-9)
    assert row["n"] == "3"


def test_fig6_outputs_from_the_forked_helper_equal_those_made_here(tmp_path, monkeypatch):
    """With two workers fig6.csv, recall.csv and both PNGs come from a forked helper (sslens.procs.Forked) while the
    parent reads results.csv's rows: the very bytes the single-process path writes."""
    import sslens.procs
    from sslens.sweeps.fig6 import run_fig6

    grid = dict(num_last=(1,), eta_Z=(1.0, 2.0), ratio=(1.0, 5.0), seeds=(1, 2), steps=4, batch=16, T=16)
    run_fig6(tmp_path / "one", progress=False, workers=1, **grid)
    used = []

    class Spy(sslens.procs.Forked):
        def result(self, timeout=None):
            value = super().result(timeout)
            used.append(value is not None)
            return value

    import sslens.sweeps.fig6 as fig6

    here = []  # calls in this process (the child's calls land in its own copy of the list)
    real = fig6.fig6_outputs
    monkeypatch.setattr(sslens.procs, "Forked", Spy)
    monkeypatch.setattr(fig6, "fig6_outputs", lambda *a: here.append(1) or real(*a))
    run_fig6(tmp_path / "two", progress=False, workers=2, **grid)
    forked = sslens.procs.helpers_pay()
    assert used == ([True] if forked else []) and here == ([] if forked else [1])  # the helper's bytes were written
    for name in ("fig6.csv", "recall.csv", "fig6.png", "recall.png", "results.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
