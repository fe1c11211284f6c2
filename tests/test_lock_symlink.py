"""The run lock never writes through a planted file (issue 24 item 1): a symlink (to a victim, or dangling), a hard
link or a FIFO as ``.lock`` is refused in one line by every writer, and the victim is untouched."""

from __future__ import annotations

import os

import pytest
import torch

from sslens.cli import main
from sslens.errors import SslensError
from sslens.lock import RunLock
from sslens.sweeps.grid import run_grid

VICTIM = "precious contents\n"


def plant(run: os.PathLike, how: str, tmp_path) -> os.PathLike:
    """``run/.lock`` made a ``how`` pointing at ``tmp_path/victim.txt``; returns the victim's path."""
    os.makedirs(run, exist_ok=True)
    victim = tmp_path / "victim.txt"
    if how == "dangling":
        os.symlink(os.path.relpath(victim, run), os.path.join(run, ".lock"))
        return victim
    victim.write_text(VICTIM)
    if how == "symlink":
        os.symlink(os.path.relpath(victim, run), os.path.join(run, ".lock"))
    elif how == "hardlink":
        os.link(victim, os.path.join(run, ".lock"))
    elif how == "fifo":
        os.mkfifo(os.path.join(run, ".lock"))
    return victim


def untouched(victim, how):
    if how == "dangling":
        assert not os.path.lexists(victim), "a dangling symlink created its target"
    elif how != "fifo":
        assert victim.read_text() == VICTIM


@pytest.mark.parametrize("how", ["symlink", "dangling", "hardlink", "fifo"])
def test_runlock_refuses_a_planted_lock(tmp_path, how):
    victim = plant(tmp_path / "R", how, tmp_path)
    with pytest.raises(SslensError, match=r"^out: .*\.lock is .*; allowed: remove it") as e:
        RunLock(tmp_path / "R")
    assert "\n" not in str(e.value)
    untouched(victim, how)


@pytest.mark.parametrize("how", ["symlink", "dangling"])
def test_train_cli_refuses_a_planted_lock(tmp_path, capsys, how):
    victim = plant(tmp_path / "R", how, tmp_path)
    assert main(["train", "scan-snap", "--steps", "2", "--batch", "4", "--quiet", "--out", str(tmp_path / "R")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "symbolic link" in err, err
    untouched(victim, how)


def test_recorder_attach_refuses_a_planted_lock(tmp_path):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from sslens.hooks import CircuitRecorder

    model = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=8, d_head=4, n_heads=2, d_vocab=10, n_ctx=4,
                                                      attn_only=True, device="cpu"))
    victim = plant(tmp_path / "R", "symlink", tmp_path)
    with pytest.raises(SslensError, match="symbolic link"):
        CircuitRecorder(model, store=tmp_path / "R", verbose=False).attach(torch.optim.SGD(model.parameters(), lr=0.1))
    untouched(victim, "symlink")
    assert not (tmp_path / "R" / "recordings").exists()


def echo_fn(config, out_dir):
    return {"x2": 2 * config["x"]}


@pytest.mark.parametrize("where", ["out", "run"])
def test_sweep_grid_refuses_a_planted_lock(tmp_path, where):
    out = tmp_path / "sweep"
    spec = {"base": {"x": 1}, "grid": {"x": [1]}}
    victim = plant(out if where == "out" else out / "runs" / "x=1", "symlink", tmp_path)
    try:
        rows = run_grid(spec, out, fn=echo_fn, workers=1, progress=False)
    except SslensError as e:
        assert "symbolic link" in str(e)
    else:
        assert where == "run" and rows[0]["status"] == "failed" and "symbolic link" in rows[0]["error"], rows
    untouched(victim, "symlink")
