"""The second reliability pass (issue 24 items 4, 5, 7): every attack is one line on stderr, exit 2, and writes nothing."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# ----- item 5: disk full (RLIMIT_FSIZE in a subprocess: writes past the limit fail with EFBIG, like ENOSPC) ---
FULL = """
import resource, signal, sys, warnings
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write() instead of the default kill
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from sslens.cli import main
from sslens.errors import SslensError
from sslens.hooks import CircuitRecorder
warnings.simplefilter("ignore")
limit = lambda n: resource.setrlimit(resource.RLIMIT_FSIZE, (n, resource.RLIM_INFINITY))
limit(20000)  # config.json fits, the first recording or checkpoint does not
print("train exit", main(["train", "scan-snap", "--steps", "3", "--batch", "4", "--quiet", "--out", sys.argv[1] + "/run"]))
limit(resource.RLIM_INFINITY)
model = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=16, d_head=8, n_heads=2, d_vocab=20, n_ctx=8,
                                                  attn_only=True, device="cpu"))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
rec = CircuitRecorder(model, store=sys.argv[1] + "/rec", schedule=range(100), verbose=False).attach(opt)
def step():
    loss = model(torch.randint(0, 20, (2, 8)), return_type="loss")
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3):
    step()
limit(1000)  # the disk is full from here, inside the user's opt.step()
try:
    step()
except SslensError as e:
    print(e)
"""


def test_disk_full_in_train_and_inside_opt_step_one_line_earlier_steps_kept(tmp_path):
    import subprocess
    import sys

    from sslens.hooks import Recording

    r = subprocess.run([sys.executable, "-c", FULL, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("train exit 2\n") and r.stdout.count("\n") == 2, r.stdout
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "sslens train: error: disk: cannot write" in r.stderr and "File too large" in r.stderr
    line = r.stdout.splitlines()[1]  # the user's loop: one line naming the step file
    assert line.startswith("disk: cannot write ") and "step_00000004.safetensors" in line and "File too large" in line
    assert "allowed: free space" in line
    rec = Recording(tmp_path / "rec")
    assert rec.steps == [0, 1, 2, 3] and rec.get("blocks.0.attn.W_Q").shape == (4, 2, 16, 8)
    assert not list(tmp_path.rglob(".*.tmp"))


# ----- item 5: the other tracebacks ---------------------------------------------------------------------
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("bad,needle", [(b"\xff\xfe{}", "UnicodeDecodeError"), (DEEP.encode(), "RecursionError"),
                                        (None, "n_layers = true")])
def test_analyze_checkpoints_bad_config_one_line(tmp_path, capsys, bad, needle):
    import shutil
    from pathlib import Path

    d = tmp_path / "ckpts"
    shutil.copytree(Path(__file__).parent / "data" / "tl3_ckpts", d)
    if bad is None:
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, "n_layers": True}))
    else:
        (d / "config.json").write_bytes(bad)
    assert main(["analyze-checkpoints", str(d), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    one_line(capsys, "config:", needle)
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_metrics_line_nested_past_the_recursion_limit_is_a_torn_tail(tmp_path):
    from sslens.store import RunStore

    store = RunStore(tmp_path)
    store.write_metrics([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}])
    with open(store.metrics_path, "a") as f:
        f.write('{"a": ' + DEEP + "}\n")
    assert store.read_metrics() == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]


def test_lying_safetensors_header_skipped_with_a_note(tmp_path, capsys):
    import struct

    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from sslens.hooks import CircuitRecorder, Recording

    model = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=8, d_head=4, n_heads=2, d_vocab=10, n_ctx=6,
                                                      attn_only=True, device="cpu"))
    rec = CircuitRecorder(model, store=tmp_path / "r", schedule=[], verbose=False)
    for s in range(3):
        rec.record(s)
    p = tmp_path / "r" / "recordings" / "step_00000000.safetensors"
    b = p.read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["data_offsets"][1] += 10**9  # the header claims bytes the file does not have
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    p.write_bytes(struct.pack("<Q", len(hb)) + hb + b[8 + n:])
    assert Recording(tmp_path / "r").steps == [1, 2]
    assert capsys.readouterr().err.count("recording at step 0 is unreadable") == 1
    assert main(["analyze", str(tmp_path / "r"), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["series"][0]["steps"] == [1, 2]  # the readable ones
    assert torch.equal(Recording(tmp_path / "r").get("meta.heads")[0], torch.arange(2))


@pytest.mark.parametrize("steps", ["99999999999999999999999", "9223372036854775808", "100000000"])
def test_train_steps_out_of_range_refused_before_writing(tmp_path, capsys, steps):
    with pytest.raises(SystemExit) as e:
        main(["train", "scan-snap", "--steps", steps, "--quiet", "--out", str(tmp_path / "run")])
    assert e.value.code == 2
    one_line(capsys, f"argument --steps: '{steps}'; allowed: an int in 1 .. 99999999")
    assert not (tmp_path / "run").exists()


def test_train_config_steps_beyond_the_file_names_refused():
    from sslens.train import TrainConfig

    with pytest.raises(SslensError, match=r"^steps: got 100000000; allowed: an int in 1 \.\. 99999999$"):
        TrainConfig(model={"kind": "scan_snap", "M": 4}, task={"kind": "anchor"}, steps=10**8)


@pytest.mark.parametrize("data,needle", [(b"1 2 3\n\xff\xfe 4\n", "not UTF-8 text (byte 0xff at offset 6)"),
                                         (b"1 2 99999999999999999999999\n", "token id beyond int64"),
                                         (b"1 2 -9999999999999999999999999\n", "token id beyond int64")])
def test_bad_probe_text_one_line(tmp_path, data, needle):
    from sslens.checkpoints import load_probe

    (tmp_path / "p.txt").write_bytes(data)
    with pytest.raises(SslensError, match=r"^probe: p\.txt ") as e:
        load_probe(tmp_path / "p.txt")
    assert needle in str(e.value) and "\n" not in str(e.value)


# ----- item 2: an analysed run's config never names files to read or places to write ------------------------
SECRET = "zebra-secret-word quagga-secret-word\n" * 50


def test_analyze_checkpoints_never_reads_the_files_an_untrusted_config_names(tmp_path, capsys):
    import shutil
    from pathlib import Path

    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "data" / "tl3_run", run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["task"] = {"kind": "text", "files": {"train": str(secret)}, "cache_dir": str(tmp_path / "planted_cache")}
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(["analyze-checkpoints", str(run), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert "text task is not rebuilt" in capsys.readouterr().out
    assert not (tmp_path / "planted_cache").exists()
    for f in (tmp_path / "o").rglob("*"):
        assert not f.is_file() or b"secret-word" not in f.read_bytes(), f


def test_analysis_task_refuses_file_reading_kinds_and_builds_the_rest():
    from sslens.data import syn_small
    from sslens.tasks import SequenceClassTask, analysis_task

    with pytest.raises(SslensError, match=r"^task: the run's task of kind 'text' reads data files"):
        analysis_task({"kind": "text", "files": {"train": "/etc/passwd"}})
    task = analysis_task(SequenceClassTask(syn_small(T=8)).to_dict())
    assert task.batch(2, __import__("torch").Generator().manual_seed(0))[0].shape == (2, 8)


def test_text_caches_keep_the_source_permissions(tmp_path, monkeypatch):
    from sslens.data.text import tokenize

    src = tmp_path / "words.txt"
    src.write_text("a b c\nd e f\n")
    src.chmod(0o600)
    monkeypatch.setenv("SSLENS_CACHE", str(tmp_path / "cache"))
    vocab, ids = tokenize({"train": src}, "train")
    files = sorted((tmp_path / "cache" / "text").iterdir())
    assert len(files) == 2 and all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    assert (tmp_path / "cache" / "text").stat().st_mode & 0o777 == 0o700
    assert vocab.decode(ids["train"]) == ["a", "b", "c", "<eos>", "d", "e", "f", "<eos>"]


# ----- item 7: view flags out of range, the attach message, no ../shared lookup -----------------------------
@pytest.mark.parametrize("flags,needle", [(["--layers", "99"], "--layers: got 99; allowed: recorded layers 0 .. 0"),
                                          (["--heads", "-1"], "--heads: got -1; allowed: recorded heads 0 .. 0"),
                                          (["--steps", "-5"], "--steps: got -5; allowed: steps 0 .. 4")])
def test_analyze_view_flags_out_of_range_one_line(tmp_path, capsys, flags, needle):
    import shutil
    from pathlib import Path

    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "data" / "tl3_run", run)
    assert main(["analyze", str(run), "--out", str(tmp_path / "o"), "--quiet", *flags]) == 2
    one_line(capsys, needle)
    assert not (tmp_path / "o" / "metrics.json").exists()  # refused before the model's analysis wrote anything


def test_views_check_names_the_recorded_values():
    from sslens.analyses.series import Views

    Views([0, 2], [1], [5]).check([0, 1, 2], [0, 1], [0, 10])
    with pytest.raises(SslensError, match=r"^--heads: got 3; allowed: recorded heads 0, 2$"):
        Views(heads=[3]).check([0], [0, 2], [0])
    with pytest.raises(SslensError, match=r"^--steps: got 11; allowed: steps 0 \.\. 10"):
        Views(steps=[11]).check([0], [0], [0, 10])


def test_attach_message_describes_the_schedule(tmp_path, capsys):
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from sslens.hooks import CircuitRecorder

    model = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=8, d_head=4, n_heads=2, d_vocab=10, n_ctx=6,
                                                      attn_only=True, device="cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    CircuitRecorder(model, schedule=lambda s: s % 3 == 0).attach(opt).detach()
    assert "a custom schedule" in capsys.readouterr().err
    CircuitRecorder(model).attach(opt).detach()
    assert "every power of two" in capsys.readouterr().err
    CircuitRecorder(model, schedule=[0, 5, 9]).attach(opt).detach()
    assert "3 recorded steps" in capsys.readouterr().err


def test_product_code_never_looks_for_shared_data(monkeypatch):
    from pathlib import Path

    from sslens.data.text import default_wikitext_dir

    monkeypatch.delenv("SSLENS_WIKITEXT_DIR", raising=False)
    assert default_wikitext_dir() is None
    root = Path(__file__).resolve().parents[1]
    for top in ("sslens", "hooks", "analyses"):
        for f in (root / top).rglob("*.py"):
            text = f.read_text()
            assert '"shared"' not in text and "shared/data" not in text, f


# ----- item 6: a dead Ray address gives up within its stated timeout -----------------------------------------
RAY_DEAD = """
import socket, sys, time
from sslens.errors import SslensError
from sslens.sweeps.grid import _connect_ray, run_grid
import ray
closed = socket.socket(); closed.bind(("127.0.0.1", 0)); port = closed.getsockname()[1]; closed.close()
t0 = time.monotonic()
try:
    run_grid({"base": {"x": 1}, "grid": {"x": [1]}, "fn": "math:fabs"}, sys.argv[1], backend="ray",
             address=f"127.0.0.1:{port}", progress=False)
except SslensError as e:
    print(f"{time.monotonic() - t0:.1f}", e)
silent = socket.socket(); silent.bind(("127.0.0.1", 0)); silent.listen(8)  # accepts, never speaks Ray
t0 = time.monotonic()
try:
    _connect_ray(ray, f"127.0.0.1:{silent.getsockname()[1]}", {"include_dashboard": False}, timeout=3.0)
except SslensError as e:
    print(f"{time.monotonic() - t0:.1f}", e)
"""


def test_ray_dead_address_gives_up_within_the_timeout(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("ray")
    r = subprocess.run([sys.executable, "-c", RAY_DEAD, str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 2, (r.stdout, r.stderr[-2000:])
    refused, silent = (line.split(" ", 1) for line in lines)
    assert float(refused[0]) < 10 and "address: cannot connect to Ray at '127.0.0.1:" in refused[1]
    assert "Connection refused" in refused[1]
    assert 3.0 <= float(silent[0]) < 10 and "no Ray cluster answered at '127.0.0.1:" in silent[1]
    assert "within 3 s; allowed: the address printed by `ray start --head`" in silent[1]


def test_python_m_cli_does_not_import_a_spec_fn_from_the_working_directory(tmp_path):
    import subprocess
    import sys

    (tmp_path / "planted.py").write_text("open('RAN', 'w').close()\ndef s(config, out_dir):\n    return {}\n")
    (tmp_path / "spec.json").write_text(json.dumps({"base": {"x": 1}, "grid": {"x": [1]}, "fn": "planted:s"}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-m", "sslens.cli", "sweep", "grid", "spec.json", "--out", "o", "--quiet"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot import 'planted:s'" in r.stderr, r.stderr
    assert "PYTHONPATH=DIR" in r.stderr and not (tmp_path / "RAN").exists()
    r = subprocess.run([sys.executable, "-m", "sslens.cli", "sweep", "grid", "spec.json", "--out", "o2", "--quiet"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**env, "PYTHONPATH": "."})
    assert r.returncode == 0 and (tmp_path / "RAN").exists(), r.stderr  # named explicitly: imported


# ----- fuzz: any bytes as a probe text, a config.json of .pt checkpoints, or metrics.jsonl lines ----------
_BYTES = st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                   st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
                   st.lists(st.integers(-2**70, 2**70), min_size=1, max_size=6).map(lambda v: " ".join(map(str, v)).encode()))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_BYTES)
def test_fuzz_probe_text_and_config_json_are_values_or_one_line(tmp_path, data):
    from sslens.checkpoints import _read_json, load_probe

    (tmp_path / "p.txt").write_bytes(data)
    (tmp_path / "config.json").write_bytes(data)
    for read in (lambda: load_probe(tmp_path / "p.txt"), lambda: _read_json(tmp_path / "config.json")):
        try:
            read()
        except SslensError as e:
            assert "\n" not in str(e) and str(e).split(":", 1)[0] in ("probe", "config")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_BYTES, max_size=5))
def test_fuzz_metrics_lines_never_raise(tmp_path, lines):
    from sslens.store import RunStore

    store = RunStore(tmp_path)
    store.metrics_path.write_bytes(b'{"step": 1, "loss": 1.0}\n' + b"\n".join(lines))
    rows = store.read_metrics()
    assert rows[:1] == [{"step": 1, "loss": 1.0}] and all(isinstance(r, dict) for r in rows)
