"""`--backend ray` on a local Ray cluster: a worker process SIGKILLed mid-run is retried, the run resumes
from its checkpoint; every run completes, no metric row is duplicated, the losses equal a serial run's."""

import os
import re
import signal
import threading
import time

import pytest
import torch

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'sslens[ray]' (make test installs it)")

from sslens.data import syn_small  # noqa: E402
from sslens.models import scan_snap_config  # noqa: E402
from sslens.models.standard import standard_config  # noqa: E402
from sslens.store import RunStore  # noqa: E402
from sslens.sweeps.grid import grid_points, load_spec, run_grid  # noqa: E402
from sslens.tasks import SequenceClassTask  # noqa: E402
from sslens.train import TrainConfig, train  # noqa: E402

STEPS = 60


def test_ray_grid_survives_a_killed_worker(tmp_path):
    s = syn_small(T=16)
    base = TrainConfig(model=standard_config(s.M, d_model=16, d_mlp=32, n_ctx=16), task=SequenceClassTask(s).to_dict(),
                       steps=STEPS, batch=8, optimizer="adam", lr={"*": 1e-2}, record_n=0, checkpoint_every=5)
    spec = {"base": base.to_dict(), "grid": {"model": [scan_snap_config(s.M, n_ctx=16, init="random"), base.model],
                                             "seed": [1, 2]}}
    runs = grid_points(load_spec(spec))
    victim_name, _, victim_cfg = next(r for r in runs if r[1]["model"]["kind"] == "standard" and r[1]["seed"] == 1)
    out = tmp_path / "ray"
    victim = out / "runs" / victim_name
    killed = {}

    def kill_worker_mid_run():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            steps = RunStore(victim).checkpoint_steps()
            if steps and steps[-1] >= 5 and not RunStore(victim).complete:
                pid = int(re.search(r"pid=(\d+)", (victim / ".lock").read_text()).group(1))
                assert pid != os.getpid()
                os.kill(pid, signal.SIGKILL)  # the Ray worker process running this run's task
                killed.update(pid=pid, at=steps[-1])
                return
            time.sleep(0.005)

    t = threading.Thread(target=kill_worker_mid_run, daemon=True)
    t.start()
    rows = run_grid(spec, out, backend="ray", workers=2, max_retries=2, progress=False)
    t.join(timeout=5)
    assert killed, "the run finished before its worker could be killed"
    assert [r["status"] for r in rows] == ["complete"] * 4
    for name, _, _ in runs:
        assert [r["step"] for r in RunStore(out / "runs" / name).read_metrics()] == list(range(1, STEPS + 1))
    # the retried task (another worker: it waited for the dead one's lock) resumed from the checkpoint
    assert f"pid={killed['pid']}" not in (victim / ".lock").read_text()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray worker ran it (num_cpus=1)
    try:
        _, ref = train(TrainConfig.from_dict(victim_cfg), out=tmp_path / "serial", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert RunStore(victim).read_metrics() == ref.read_metrics()
