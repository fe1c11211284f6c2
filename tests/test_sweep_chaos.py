"""Chaos: SIGKILL `sslens sweep grid` (a subprocess, 2 local workers) mid-way twice, resume; the results
table equals an uninterrupted sweep's, no duplicate metric rows, no orphan workers, no temp files."""

import json
import random
import signal
import subprocess
import sys
import time

import pytest

from sslens.data import syn_small
from sslens.models import scan_snap_config
from sslens.models.standard import standard_config
from sslens.store import RunStore
from sslens.sweeps.grid import run_grid
from sslens.tasks import SequenceClassTask
from sslens.train import TrainConfig

psutil = pytest.importorskip("psutil")
STEPS = 40


def spec():
    s = syn_small(T=16)
    base = TrainConfig(model=standard_config(s.M, d_model=16, d_mlp=32, n_ctx=16), task=SequenceClassTask(s).to_dict(),
                       steps=STEPS, batch=8, optimizer="adam", lr={"*": 1e-2}, record_n=0, checkpoint_every=5)
    # Y/Z models go to the count engine (one group), standard HookedTransformers to sslens.train
    return {"base": base.to_dict(),
            "grid": {"model": [scan_snap_config(s.M, n_ctx=16, init="random"), base.model], "seed": [1, 2, 3, 4]}}


def n_checkpoints(out):
    return len(list((out / "runs").glob("*/checkpoints/step_*.safetensors")))


def orphans(out):
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(str(out) in a for a in (p.info["cmdline"] or [])):
                found.append(p.pid)
        except psutil.Error:
            pass
    return found


def test_sigkill_sweep_twice_then_resume(tmp_path):
    rng = random.Random(12)
    (tmp_path / "spec.json").write_text(json.dumps(spec()))
    out = tmp_path / "chaos"
    cmd = [sys.executable, "-m", "sslens.cli", "sweep", "grid", str(tmp_path / "spec.json"), "--out", str(out),
           "--workers", "2", "--quiet"]
    for kill in range(2):
        before = n_checkpoints(out) if out.exists() else 0
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while n_checkpoints(out) < before + 3 + rng.randrange(4) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert p.poll() is None, "the sweep finished before it could be killed"
        p.send_signal(signal.SIGKILL)
        p.wait()
        time.sleep(1.0)
        assert orphans(out) == [], f"workers outlived the killed sweep (kill {kill + 1})"
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    assert orphans(out) == []

    ref = tmp_path / "ref"  # the same sweep, uninterrupted (in this process)
    run_grid(spec(), ref, workers=2, progress=False)
    assert (out / "results.csv").read_text() == (ref / "results.csv").read_text()
    for d in (out / "runs").iterdir():
        store = RunStore(d)
        assert store.complete
        assert [r["step"] for r in store.read_metrics()] == list(range(1, STEPS + 1)), d.name
        assert store.read_metrics() == RunStore(ref / "runs" / d.name).read_metrics()
    assert not list(out.rglob("*.tmp"))
