"""Generic grid sweeps (`sslens sweep grid`): SPEC checks, every kind of run, a user's fn, idempotent resume."""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from sslens.cli import main
from sslens.data import syn_small
from sslens.errors import SslensError
from sslens.models import scan_snap_config
from sslens.models.standard import standard_config
from sslens.store import RunStore
from sslens.sweeps.grid import load_spec, run_grid
from sslens.tasks import SequenceClassTask
from sslens.train import TrainConfig, train


def yz_cfg(**kw):
    s = syn_small(T=16)
    d = dict(model=scan_snap_config(s.M, n_ctx=16, init="random"), task=SequenceClassTask(s).to_dict(),
             steps=6, batch=8, lr={"blocks.0.attn.W_Q": 1.0, "unembed.W_U": 1.0}, momentum=0.9, record_n=0)
    d.update(kw)
    return TrainConfig(**d)


def std_cfg(**kw):
    s = syn_small(T=16)
    d = dict(model=standard_config(s.M, d_model=16, d_mlp=32, n_ctx=16), task=SequenceClassTask(s).to_dict(),
             steps=12, batch=8, optimizer="adam", lr={"*": 1e-2}, record_n=0, checkpoint_every=4)
    d.update(kw)
    return TrainConfig(**d)


def rows_of(path):
    return list(csv.DictReader(open(path)))


def test_toml_spec_engine_and_hooked_runs_equal_direct_training(tmp_path):
    # base as the path of a run's config.json (what sslens train writes), grid in TOML with dotted names
    (tmp_path / "base.json").write_text(json.dumps({"train": yz_cfg().to_dict(), "model": {}, "task": {}}))
    (tmp_path / "spec.toml").write_text(textwrap.dedent("""
        base = "base.json"
        [grid]
        seed = [1, 2]
        optimizer = ["sgd", "adam"]
        "lr.unembed.W_U" = [1.0, 4.0]
    """))
    rows = run_grid(tmp_path / "spec.toml", tmp_path / "yz", workers=2, progress=False)
    assert len(rows) == 8 and {r["status"] for r in rows} == {"complete"}
    table = rows_of(tmp_path / "yz" / "results.csv")
    assert [r["name"] for r in table] == [r["name"] for r in rows]
    assert {"seed", "optimizer", "lr.unembed.W_U", "status", "final_loss", "entropy_distinct"} <= set(table[0])
    assert (tmp_path / "yz" / "summary.png").stat().st_size > 0
    # the count-engine rows equal sslens.train (HookedTransformer) on the same config
    r = next(r for r in table if r["seed"] == "2" and r["optimizer"] == "adam" and r["lr.unembed.W_U"] == "4.0")
    _, store = train(yz_cfg(seed=2, optimizer="adam", lr={"blocks.0.attn.W_Q": 1.0, "unembed.W_U": 4.0}),
                     out=tmp_path / "ref", progress=False)
    ref = store.read_metrics()
    assert float(r["final_loss"]) == pytest.approx(ref[-1]["loss"], abs=1e-5)
    assert int(r["steps"]) == 6
    # entropy_distinct (written by the engine into COMPLETE) = the Fig. 6 formula on the HookedTransformer run's Z
    from sslens.theory.c_n import composition, distinct_entropy

    spec = syn_small(T=16)
    Z = store.load_checkpoint(keys=["model.blocks.0.attn.W_Q"])[0]["model.blocks.0.attn.W_Q"][0].double()
    ent = distinct_entropy(composition(Z, spec.P(), spec.queries), spec.distinct).mean().item()
    assert float(r["entropy_distinct"]) == pytest.approx(ent, abs=1e-5)
    assert "entropy_distinct" in json.loads((tmp_path / "yz" / "runs" / r["name"] / "COMPLETE").read_text())["result"]
    # a standard HookedTransformer (Adam) through sslens.train: rows are its own metrics
    (tmp_path / "std.json").write_text(json.dumps({"base": std_cfg().to_dict(), "grid": {"seed": [1, 2, 3]}}))
    assert main(["sweep", "grid", str(tmp_path / "std.json"), "--out", str(tmp_path / "std"), "--workers", "2",
                 "--quiet"]) == 0
    for r in rows_of(tmp_path / "std" / "results.csv"):
        m = RunStore(tmp_path / "std" / "runs" / r["name"]).read_metrics()
        assert [x["step"] for x in m] == list(range(1, 13))
        assert float(r["final_loss"]) == m[-1]["loss"] and float(r["min_loss"]) == min(x["loss"] for x in m)


BAD = [
    ({"grid": {"seed": [1]}}, "^base: missing"),
    ({"base": 3, "grid": {}}, "^base: got int"),
    ({"base": "nope.json", "grid": {}}, "^base: no such file"),
    ({"base": "BASE", "grid": {"seed": 1}}, r"^grid\.seed: got 1; allowed: a non-empty list"),
    ({"base": "BASE", "grid": {"seed": []}}, r"^grid\.seed: got \[\]"),
    ({"base": "BASE", "grid": {"seed": [1, 1]}}, r"^grid\.seed: duplicate values"),
    ({"base": "BASE", "grid": {"sed": [1]}}, r"^grid\.sed: unknown field; allowed: model, task, steps"),
    ({"base": "BASE", "grid": {"model.d_modle": [8]}}, r"^grid\.model\.d_modle: not a key of base\.model; allowed: model\.kind"),
    ({"base": "BASE", "grid": {"optimizer": ["rmsprop"]}}, r"^grid\.optimizer: got 'rmsprop'; allowed: sgd, adam, adamw"),
    ({"base": "BASE", "grid": {"steps": [0]}}, r"^grid\.steps: got 0"),
    ({"base": "BASE", "grid": {"model.kind": ["gpt9"]}}, r"^grid\.model\.kind: unknown model kind 'gpt9'; allowed: .*standard"),
    ({"base": "BASE", "grid": {}, "workers": 2}, "^workers: unknown SPEC field; allowed: base, grid, fn"),
    ({"base": "BASE", "grid": {}, "fn": "no_such_module_x:f"}, "^fn: cannot import"),
    ({"base": "BASE", "grid": {}, "fn": "os.path"}, "^fn: got 'os.path'; allowed: 'module:attr'"),
]


@pytest.mark.parametrize("spec,match", BAD, ids=[m for _, m in BAD])
def test_every_bad_spec_field_is_one_line_naming_it(tmp_path, capsys, spec, match):
    base = std_cfg().to_dict()
    spec = {k: (base if v == "BASE" else v) for k, v in spec.items()}
    with pytest.raises(SslensError, match=match):
        run_grid(spec, tmp_path / "o", progress=False)
    (tmp_path / "s.json").write_text(json.dumps(spec))
    assert main(["sweep", "grid", str(tmp_path / "s.json"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sslens sweep: error: ")


def test_unparsable_spec_files(tmp_path, capsys):
    (tmp_path / "a.toml").write_text("base = [")
    (tmp_path / "b.json").write_text("[1, 2]")
    with pytest.raises(SslensError, match=r"^SPEC: .*a\.toml is not valid TOML"):
        load_spec(tmp_path / "a.toml")
    with pytest.raises(SslensError, match=r"^SPEC: .*b\.json holds a list"):
        load_spec(tmp_path / "b.json")
    with pytest.raises(SslensError, match=r"^SPEC: no such file"):
        load_spec(tmp_path / "c.json")


def my_fn(config, out_dir):
    """A user's own loop: the 'loss' is a known function of the config, written as metrics."""
    store = RunStore(out_dir)
    if config["x"] < 0:
        raise ValueError(f"x must be >= 0, got {config['x']}")
    store.write_config(config)
    store.append_metrics({"step": i + 1, "loss": config["x"] / (i + 1)} for i in range(config["n"]))
    return {"score": config["x"] * 10 + config["n"]}


def test_user_fn_grid_results_failures_and_resume(tmp_path):
    spec = {"base": {"x": 1.0, "n": 3}, "grid": {"x": [-1.0, 2.0, 5.0], "n": [2, 4]}}
    out = tmp_path / "fn"
    rows = run_grid(spec, out, fn=my_fn, workers=2, progress=False)
    by = {(r["x"], r["n"]): r for r in rows}
    for x in (2.0, 5.0):
        for n in (2, 4):
            r = by[(x, n)]
            assert r["status"] == "complete" and r["score"] == x * 10 + n
            assert r["final_loss"] == x / n and r["min_loss"] == x / n and r["steps"] == n
    assert by[(-1.0, 2)]["status"] == "failed" and "x must be >= 0" in by[(-1.0, 2)]["error"]
    table = rows_of(out / "results.csv")
    assert {r["status"] for r in table} == {"complete", "failed"} and "error" in table[0]
    # resume: finished runs untouched, failed ones retried (now with a fixed base: same config required)
    stamp = (out / "runs" / "x=2.0_n=2" / "COMPLETE").stat().st_mtime_ns
    rows2 = run_grid(spec, out, fn=my_fn, workers=1, progress=False)
    assert (out / "runs" / "x=2.0_n=2" / "COMPLETE").stat().st_mtime_ns == stamp
    assert [r["status"] for r in rows2] == [r["status"] for r in rows]
    # a different config under an existing run name is refused, naming the run
    with pytest.raises(SslensError, match=r"^out: .*x=2.0_n=2 was run with a different config \(y\)"):
        run_grid({"base": {"x": 1.0, "n": 3, "y": 1}, "grid": {"x": [2.0], "n": [2]}}, out, fn=my_fn, progress=False)


def test_fn_from_spec_module_attr(tmp_path, monkeypatch):
    (tmp_path / "userloop_h12.py").write_text("def go(config, out_dir):\n    return {'twice': 2 * config['a']}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "spec.json").write_text(json.dumps({"base": {"a": 1}, "grid": {"a": [1, 3]}, "fn": "userloop_h12:go"}))
    rows = run_grid(tmp_path / "spec.json", tmp_path / "o", progress=False)
    assert [(r["a"], r["twice"], r["status"]) for r in rows] == [(1, 2.0, "complete"), (3, 6.0, "complete")]


def test_resume_after_kill_between_metrics_and_complete_rewrites_nothing_twice(tmp_path):
    spec = {"base": std_cfg().to_dict(), "grid": {"seed": [1, 2], "model.d_model": [8, 16]}}
    out = tmp_path / "o"
    run_grid(spec, out, workers=2, progress=False)
    yz = {"base": yz_cfg().to_dict(), "grid": {"seed": [1, 2]}}
    run_grid(yz, tmp_path / "e", workers=1, progress=False)
    before, before_e = (out / "results.csv").read_text(), (tmp_path / "e" / "results.csv").read_text()
    # what a SIGKILL after the last metrics append, before COMPLETE leaves: metrics written, no COMPLETE,
    # plus temp files of killed atomic writers
    for d in (out / "runs" / "seed=1_model.d_model=16", tmp_path / "e" / "runs" / "seed=2"):
        (d / "COMPLETE").unlink()
        (d / ".config.json.abc123.tmp").write_text("{")
        (d / "checkpoints" / ".step_00000012.safetensors.x.tmp").write_bytes(b"\0")
    (tmp_path / "e" / "runs" / "seed=2" / "metrics.jsonl").write_text(
        (tmp_path / "e" / "runs" / "seed=2" / "metrics.jsonl").read_text() * 2)  # a half-finished rewrite
    run_grid(spec, out, workers=2, progress=False)
    run_grid(yz, tmp_path / "e", workers=2, progress=False)
    assert (out / "results.csv").read_text() == before
    assert (tmp_path / "e" / "results.csv").read_text() == before_e
    for d, steps in ((out / "runs" / "seed=1_model.d_model=16", 12), (tmp_path / "e" / "runs" / "seed=2", 6)):
        assert [r["step"] for r in RunStore(d).read_metrics()] == list(range(1, steps + 1))
        assert RunStore(d).complete
    assert not list(tmp_path.rglob("*.tmp"))


PARENT = """
import sys, time
from pathlib import Path
from sslens.sweeps.grid import run_local
sys.path.insert(0, {tests!r})
jobs = [{{"kind": "fn", "dirs": [str(Path({out!r}) / f"r{{i}}")], "configs": [{{}}], "fn": "test_sweep_grid:sleepy"}}
        for i in range(2)]
print("ready", flush=True)
run_local(jobs, 2, lambda r: None)
"""


def sleepy(config, out_dir):
    time.sleep(120)


def test_local_workers_die_with_their_parent_on_sigterm_and_ctrl_c(tmp_path):
    """Two sweeps at once (their imports overlap): one gets SIGTERM, the other SIGINT (Ctrl-C); within a
    second no worker of either is left (SIGKILL: tests/test_sweep_chaos.py)."""
    psutil = pytest.importorskip("psutil")
    procs = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        out = tmp_path / sig.name
        code = PARENT.format(tests=os.path.dirname(__file__), out=str(out))
        procs[sig] = (subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True), out)
    try:
        workers = {}
        for sig, (p, out) in procs.items():
            assert p.stdout.readline().strip() == "ready"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # both workers inside their job (they hold the run locks)
                if all((out / f"r{i}" / ".lock").exists() for i in range(2)):
                    break
                time.sleep(0.05)
            workers[sig] = psutil.Process(p.pid).children()
            assert len(workers[sig]) == 2
        for sig, (p, _) in procs.items():
            p.send_signal(sig)
        time.sleep(1.0)
        for sig, ws in workers.items():
            alive = [w for w in ws if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
            assert not alive, f"workers {alive} alive 1 s after the parent got {sig!r}"
    finally:
        for p, _ in procs.values():
            p.kill()
            p.wait()
