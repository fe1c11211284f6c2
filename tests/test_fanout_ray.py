"""`analyze-checkpoints --backend ray` on a local Ray cluster: the metrics equal the local per-checkpoint path's
(one thread, as each Ray task runs) exactly, also when a worker process is SIGKILLed mid-way (its chunk is run
again; every step analysed once, none lost or duplicated)."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'sslens[ray]' (make test installs it)")

from sslens.cli import main  # noqa: E402


def _workers_running(name: str) -> list[int]:
    """Pids of Ray worker processes executing task ``name`` (their title is ``ray::name``)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "cmdline").read_bytes().startswith(f"ray::{name}".encode()):
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def test_ray_backend_equals_local_with_a_killed_worker(tmp_path):
    from sslens.data import syn_small
    from sslens.models.standard import standard_config
    from sslens.tasks import SequenceClassTask
    from sslens.train import TrainConfig, train

    s = syn_small(T=8)
    cfg = TrainConfig(model=standard_config(s.M, d_model=16, d_mlp=32, n_ctx=8), task=SequenceClassTask(s).to_dict(),
                      steps=12, batch=8, optimizer="adam", lr={"*": 1e-2}, record_n=0, checkpoint_every=2)
    train(cfg, out=tmp_path / "run", progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray task runs
    try:
        assert main(["analyze-checkpoints", str(tmp_path / "run"), "--out", str(tmp_path / "local"), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    killed = []

    def kill_one_mid_way():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for pid in _workers_running("chunk_states"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.01)

    t = threading.Thread(target=kill_one_mid_way, daemon=True)
    t.start()
    assert main(["analyze-checkpoints", str(tmp_path / "run"), "--backend", "ray", "--workers", "2", "--max-retries", "2",
                 "--out", str(tmp_path / "ray"), "--quiet"]) == 0
    t.join(timeout=5)
    assert killed, "no Ray worker was seen running a chunk"
    local = json.loads((tmp_path / "local" / "metrics.json").read_text())
    far = json.loads((tmp_path / "ray" / "metrics.json").read_text())
    assert far["series"][0]["steps"] == list(range(0, 13, 2))
    assert far == local
