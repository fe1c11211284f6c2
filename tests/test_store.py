"""Run store: atomic writes, safetensors only (no unpickling), clear errors for bad files."""

import os
import pickle

import pytest
import torch

from sslens.errors import SslensError
from sslens.store import RunStore, atomic_save_tensors, atomic_write_json, load_tensors


def test_atomic_write_leaves_old_file_when_writer_dies(tmp_path, monkeypatch):
    p = tmp_path / "c.json"
    atomic_write_json(p, {"a": 1})

    def boom(*a, **k):
        raise KeyboardInterrupt  # the process dies between writing the temp file and renaming it

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(p, {"a": 2})
    monkeypatch.undo()
    assert p.read_text().strip() == '{\n  "a": 1\n}'
    assert [f.name for f in tmp_path.iterdir()] == ["c.json"]  # the temp file was removed


def test_tensors_roundtrip_with_metadata(tmp_path):
    t = {"x": torch.arange(6.0).reshape(2, 3), "rng": torch.Generator().manual_seed(1).get_state()}
    atomic_save_tensors(tmp_path / "a.safetensors", t, {"step": 3, "groups": [{"lr": 0.5}]})
    got, meta = load_tensors(tmp_path / "a.safetensors")
    assert torch.equal(got["x"], t["x"]) and torch.equal(got["rng"], t["rng"])
    assert meta == {"step": 3, "groups": [{"lr": 0.5}]}
    # one tensor only (the sweeps read W_Q alone); a key the file lacks is a one-line error naming it
    only, meta = load_tensors(tmp_path / "a.safetensors", keys=["x"])
    assert list(only) == ["x"] and torch.equal(only["x"], t["x"]) and meta["step"] == 3
    with pytest.raises(SslensError, match=r"^checkpoint: .*no tensor 'y'"):
        load_tensors(tmp_path / "a.safetensors", keys=["x", "y"])


def test_truncated_and_pickled_files_are_refused(tmp_path):
    atomic_save_tensors(tmp_path / "ok.safetensors", {"x": torch.ones(100)})
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SslensError, match="^checkpoint: .*cut.safetensors is not a readable safetensors file"):
        load_tensors(tmp_path / "cut.safetensors")

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(SslensError, match="^checkpoint: "):
        load_tensors(tmp_path / "evil.safetensors")
    assert not (tmp_path / "pwned").exists()  # nothing executed


def test_store_errors_name_the_field(tmp_path):
    s = RunStore(tmp_path / "nothing")
    with pytest.raises(SslensError, match="^run: .* has no config.json"):
        s.read_config()
    with pytest.raises(SslensError, match="^run: .* has no checkpoints"):
        s.load_checkpoint()


def test_metrics_torn_tail_ignored_and_truncate(tmp_path):
    s = RunStore(tmp_path)
    s.append_metrics([{"step": i, "loss": 1.0 / i} for i in range(1, 6)])
    with open(s.metrics_path, "a") as f:
        f.write('{"step": 6, "lo')  # killed mid-line
    assert [r["step"] for r in s.read_metrics()] == [1, 2, 3, 4, 5]
    s.truncate_metrics(3)
    assert [r["step"] for r in s.read_metrics()] == [1, 2, 3]
