"""Nothing lost, nothing cryptic (issue 11): one locked writer per run dir, idempotent engine writes,
one-line errors with exit 2 (divergence: 3), resume from the newest readable checkpoint, and a chaos
test -- random SIGKILLs of ``sslens train`` then ``--resume`` give the uninterrupted run bitwise.
"""

import json
import multiprocessing
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from in_process import cli

from sslens.cli import main
from sslens.data.sequence_classes import syn_small
from sslens.engine import train_many
from sslens.errors import SslensError
from sslens.models.scan_snap import scan_snap_config
from sslens.store import RunStore
from sslens.tasks import SequenceClassTask
from sslens.train import TrainConfig, train

TINY = ["--preset", "syn-small", "--batch", "8", "--seq-len", "8", "--eta-y", "3", "--eta-z", "1", "--init", "random",
        "--checkpoint-every", "1", "--quiet"]


def tiny_argv(out, steps=6, *extra):
    return ["train", "scan-snap", *TINY, "--steps", str(steps), "--out", str(out), *extra]


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def temp_files(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*.tmp")]


def steps_of(store: RunStore) -> list[int]:
    return [r["step"] for r in store.read_metrics()]


# ----- one writer per run directory ------------------------------------------------------------
def test_engine_rewrite_is_idempotent_and_cleans_temp_files(tmp_path):
    spec = syn_small(T=8)
    cfg = TrainConfig(model=scan_snap_config(spec.M, n_ctx=8, init="random"), task=SequenceClassTask(spec).to_dict(),
                      steps=5, batch=8, lr={"*": 1.0}, seed=3, record_n=0)
    out = tmp_path / "run"
    train_many([cfg], outs=[out], progress=False)
    first = (out / "metrics.jsonl").read_text()
    assert steps_of(RunStore(out)) == [1, 2, 3, 4, 5]
    # a killed writer's leftovers: temp files and a half-appended metrics file
    (out / ".config.json.x1.tmp").write_text("{")
    (out / "checkpoints" / ".step_00000005.safetensors.x2.tmp").write_bytes(b"\0" * 7)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 1, "loss": 9.0}\n{"step": 2, "lo')
    (out / "COMPLETE").unlink()
    train_many([cfg], outs=[out], progress=False)  # a resumed sweep re-writes the run
    assert (out / "metrics.jsonl").read_text() == first  # rewritten, not appended twice
    assert RunStore(out).complete and temp_files(out) == []


def test_engine_refuses_a_locked_run_dir(tmp_path):
    from sslens.lock import RunLock

    spec = syn_small(T=8)
    cfg = TrainConfig(model=scan_snap_config(spec.M, n_ctx=8), task=SequenceClassTask(spec).to_dict(), steps=2,
                      batch=4, record_n=0)
    # another writer, speaking the lock's protocol without importing sslens (flock RUN/.lock, "host=.. pid=..")
    code = ("import fcntl, os, socket, sys, time; os.makedirs(sys.argv[1]); "
            "fd = os.open(sys.argv[1] + '/.lock', os.O_RDWR | os.O_CREAT, 0o644); fcntl.flock(fd, fcntl.LOCK_EX); "
            "os.write(fd, f'host={socket.gethostname()} pid={os.getpid()}'.encode()); print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(SslensError, match=rf"^out: .*host={socket.gethostname()} pid={p.pid}\b"):
            train_many([cfg], outs=[tmp_path / "run"], progress=False)
        assert not (tmp_path / "run" / "metrics.jsonl").exists()
    finally:
        p.kill()
        p.wait()
    RunLock(tmp_path / "run").release()  # a killed holder never blocks


# ----- one-line errors, exit 2, nothing written ------------------------------------------------
def _bad_config(run: Path, text: str) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(text)
    return run


@pytest.mark.parametrize("text,needle", [
    ("{not json", "is not valid JSON"), ("", "is not valid JSON"), ("[1, 2]", "holds a JSON list"),
    ('{"model": {"kind": "scan_snap"}, "train": {}, "task": {}}', "resume.model: differs"),
    ('{"model": {"kind": "scan_snap"}, "train": [], "task": {}}', 'has no "train" object'),
])
def test_bad_config_json_one_line_in_resume_and_analyze(tmp_path, capsys, text, needle):
    run = _bad_config(tmp_path / "run", text)
    code, _, err = cli(tiny_argv(run, 3, "--resume"), capsys)
    assert code == 2 and needle in one_line(err)
    code, _, err = cli(["analyze", run], capsys)
    assert code == 2 and "error: " in one_line(err)
    code, _, err = cli(["analyze-checkpoints", run, "--out", tmp_path / "a"], capsys)
    assert code == 2 and "error: " in one_line(err)


def test_analyze_missing_key_names_it(tmp_path, capsys):
    run = tmp_path / "run"
    train(TrainConfig(model=scan_snap_config(34, n_ctx=8), task=SequenceClassTask(syn_small(T=8)).to_dict(), steps=2,
                      batch=4, record_n=0), out=run, progress=False)
    cfg = json.loads((run / "config.json").read_text())
    del cfg["train"]["steps"]
    (run / "config.json").write_text(json.dumps(cfg))
    code, _, err = cli(["analyze", run], capsys)
    assert code == 2 and "config.train.steps: missing" in one_line(err)


def test_bad_out_paths_one_line_and_nothing_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("x")
    good_run = tmp_path / "good"
    assert cli(tiny_argv(good_run, 2), capsys)[0] == 0
    cases = [("", "empty path"), (afile, "is a file"), (afile / "sub", "under the file"),
             ("/proc/sslens_no/run", "")]  # unwritable even for root
    for out, needle in cases:
        for argv in (tiny_argv(out, 2), ["analyze", good_run, "--out", out],
                     ["analyze-checkpoints", good_run, "--out", out, "--quiet"]):
            code, _, err = cli(argv, capsys)
            line = one_line(err)
            assert code == 2 and needle in line and "out" in line, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "good"]  # nothing written to the cwd


@pytest.mark.parametrize("flag,value,needle", [
    ("--seed", str(2**70), "argument --seed"), ("--seed", "-1", "argument --seed"),
    ("--batch", str(10**9), "--batch: needs about"), ("--num-last", str(10**7), "--num-last: needs about"),
])
def test_out_of_range_or_too_big_for_memory_refused_before_writing(tmp_path, capsys, flag, value, needle):
    argv = tiny_argv(tmp_path / "run", 2) + [flag, value]
    if flag == "--num-last":
        argv[argv.index("syn-small")] = "syn-medium"
    t0 = time.monotonic()
    code, _, err = cli(argv, capsys)
    assert code == 2 and needle in one_line(err), err
    assert time.monotonic() - t0 < 5 and not (tmp_path / "run").exists()  # no half-made run dir


def test_seed_range_in_the_library():
    spec = syn_small(T=8)
    with pytest.raises(SslensError, match=r"^seed: got 1180591620717411303424; allowed: an int in 0 \.\. 9223372036854775807"):
        TrainConfig(model=scan_snap_config(spec.M, n_ctx=8), task=SequenceClassTask(spec).to_dict(), seed=2**70)
    TrainConfig(model=scan_snap_config(spec.M, n_ctx=8), task=SequenceClassTask(spec).to_dict(), seed=2**63 - 1)


# ----- divergence, incomplete runs, corrupt checkpoints --------------------------------------
def test_divergence_exit_3_names_the_step_and_analyze_marks_it(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = cli(tiny_argv(run, 20, "--eta-y", "1e30", "--eta-z", "1e30", "--momentum", "0"), capsys)
    line = one_line(err)
    assert code == 3 and "loss: non-finite value" in line, err
    step = int(line.split("at step ")[1].split(";")[0])
    store = RunStore(run)
    assert store.diverged_at == step and not store.complete and max(store.checkpoint_steps()) == step - 1
    assert steps_of(store) == list(range(1, step))
    code, out, err = cli(["analyze", run], capsys)
    assert code == 0, err
    m = json.loads((run / "metrics.json").read_text())
    assert m["run_status"]["state"] == "diverged" and m["run_status"]["diverged_at"] == step
    assert f"became non-finite at step {step}" in (run / "report.html").read_text() and "DIVERGED" in out


def test_analyze_marks_an_incomplete_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(tiny_argv(run, 4), capsys)[0] == 0
    (run / "COMPLETE").unlink()
    code, out, _ = cli(["analyze", run], capsys)
    assert code == 0 and "INCOMPLETE" in out
    st = json.loads((run / "metrics.json").read_text())["run_status"]
    assert st["state"] == "incomplete" and st["steps"] == 4 and "INCOMPLETE" in (run / "report.html").read_text()
    assert cli(tiny_argv(run, 4, "--resume"), capsys)[0] == 0
    assert RunStore(run).status()["state"] == "complete"


def test_resume_falls_back_to_the_newest_readable_checkpoint(tmp_path, capsys):
    full, broken = tmp_path / "full", tmp_path / "broken"
    assert cli(tiny_argv(full, 6), capsys)[0] == 0
    assert cli(tiny_argv(broken, 6), capsys)[0] == 0
    (broken / "COMPLETE").unlink()
    for step, damage in ((6, b""), (5, b"garbage")):  # latest two unreadable: empty, and junk
        (broken / "checkpoints" / f"step_{step:08d}.safetensors").write_bytes(damage)
    code, _, err = cli(tiny_argv(broken, 6, "--resume"), capsys)
    assert code == 0 and "resuming from step 4, the newest readable checkpoint" in err, err
    a, b = RunStore(full).load_checkpoint(), RunStore(broken).load_checkpoint()
    assert a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    assert steps_of(RunStore(broken)) == [1, 2, 3, 4, 5, 6] and RunStore(broken).complete


def test_checkpoints_and_run_files_are_0644(tmp_path, capsys):
    old = os.umask(0o077)
    try:
        assert cli(tiny_argv(tmp_path / "run", 2), capsys)[0] == 0
    finally:
        os.umask(old)
    store = RunStore(tmp_path / "run")
    for p in [store.checkpoint_path(s) for s in store.checkpoint_steps()] + [store.config_path, store.metrics_path]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_pretrained_offline_fails_fast_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    t0 = time.monotonic()
    code, _, err = cli(["analyze-checkpoints", "pretrained:pythia-14m", "--checkpoint-indices", "3", "--out",
                        tmp_path / "out", "--quiet"], capsys)
    assert time.monotonic() - t0 < 2
    assert code == 2 and "pretrained: EleutherAI/pythia-14m is not in the local cache" in one_line(err)
    code, _, err = cli(["analyze-checkpoints", "pretrained:no-such-model-xyz", "--checkpoint-indices", "3", "--out",
                        tmp_path / "out"], capsys)
    assert code == 2 and "is not a TransformerLens model name" in one_line(err)


# ----- chaos: random SIGKILLs, then --resume ----------------------------------------------------
def _children() -> list[int]:
    """Live processes whose parent is this test process."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                status = (d / "status").read_text()
            except OSError:
                continue
            ppid = next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), None)
            if ppid == str(os.getpid()):
                pids.append(int(d.name))
    return pids


def _sslens_train(argv):
    """Child body: ``sslens train ...`` as the console script runs it (stdio silenced)."""
    torch.set_num_threads(1)
    with open(os.devnull, "w") as null:
        sys.stdout = sys.stderr = null
        os._exit(main(argv))


@pytest.mark.slow
def test_chaos_random_sigkills_then_resume_equal_the_uninterrupted_run(tmp_path, capsys):
    """3 SIGKILLs at random points; while each victim holds the lock a second writer is refused naming it."""
    rng = random.Random()
    steps = 40
    full, run = tmp_path / "full", tmp_path / "killed"
    torch.set_num_threads(1)
    assert cli(tiny_argv(full, steps), capsys)[0] == 0
    ctx = multiprocessing.get_context("fork")  # an `sslens train` process without re-importing torch (fast)
    store, kills, victims = RunStore(run), 0, []
    for _ in range(3):
        done = store.checkpoint_steps()[-1] if store.checkpoint_steps() else -1
        target = done + rng.randint(2, 6)
        p = ctx.Process(target=_sslens_train, args=(tiny_argv(run, steps, "--resume"),))
        p.start()
        deadline = time.time() + 120
        while time.time() < deadline and p.is_alive():
            if store.checkpoint_steps() and store.checkpoint_steps()[-1] >= target:
                break
            time.sleep(0.01)
        # a second writer meanwhile (resume, or a fresh run on the same dir): one line naming host and pid
        code, _, err = cli(tiny_argv(run, steps, "--resume"), capsys)
        assert code == 2 and f"host={socket.gethostname()} pid={p.pid}" in one_line(err), err
        time.sleep(rng.uniform(0, 0.05))  # somewhere inside a step or a checkpoint write
        os.kill(p.pid, signal.SIGKILL)
        victims.append(p.pid)
        p.join()
        assert p.exitcode == -signal.SIGKILL
        kills += 1
        assert not store.complete, "the run finished before it could be killed"
    assert cli(tiny_argv(run, steps, "--resume"), capsys)[0] == 0
    a, meta_a = RunStore(full).load_checkpoint()
    b, meta_b = store.load_checkpoint()
    assert kills == 3 and meta_a["step"] == meta_b["step"] == steps and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # model, optimizer and RNG state
    assert steps_of(store) == list(range(1, steps + 1))  # no duplicate (or missing) rows
    assert [r["loss"] for r in store.read_metrics()] == [r["loss"] for r in RunStore(full).read_metrics()]
    assert temp_files(tmp_path) == [] and multiprocessing.active_children() == []
    assert _children() == [] and not any(Path(f"/proc/{pid}").exists() for pid in victims)  # no orphans
