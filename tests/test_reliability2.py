"""The second reliability pass (issue 24 items 4, 5, 7): every attack is one line on stderr, exit 2, and writes nothing."""

from __future__ import annotations

import json
import os

import pytest

from sslens.cli import main
from sslens.errors import SslensError
from sslens.store import check_out_path


def one_line(capsys, *needles):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


# ----- item 4: --out a non-empty directory that is not a run ------------------------------------------------
@pytest.mark.parametrize("make", ["root", "home_like"])
def test_train_out_a_foreign_directory_refused(tmp_path, capsys, make):
    if make == "root":
        out, before = "/", sorted(os.listdir("/"))
    else:
        out = tmp_path / "home"
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        before = sorted(os.listdir(out))
    assert main(["train", "scan-snap", "--steps", "2", "--batch", "4", "--quiet", "--out", str(out)]) == 2
    one_line(capsys, "not an sslens run", "allowed: a new or empty directory")
    assert sorted(os.listdir(out)) == before


def test_sweep_out_a_foreign_directory_refused(tmp_path, capsys):
    (tmp_path / "spec.json").write_text(json.dumps({"base": {"x": 1}, "grid": {"x": [1]}, "fn": "math:fabs"}))
    assert main(["sweep", "grid", str(tmp_path / "spec.json"), "--out", str(tmp_path)]) == 2
    one_line(capsys, "not an sslens sweep")
    assert sorted(os.listdir(tmp_path)) == ["spec.json"]


def test_out_accepts_new_empty_and_run_directories(tmp_path):
    (tmp_path / "empty").mkdir()
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / ".config.json.x.tmp").write_text("")
    for p in (tmp_path / "new", tmp_path / "empty", run):
        assert check_out_path(p, kind="run") == p
    with pytest.raises(SslensError, match=r"not an sslens run \(it holds '(empty|run)'\)"):
        check_out_path(tmp_path, kind="run")
