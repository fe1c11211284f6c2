"""Live telemetry (sslens.hooks.telemetry): a plain training loop with CircuitRecorder(..., tensorboard=DIR,
wandb=RUN); TensorBoard's own EventAccumulator and the W&B offline run file read back from disk hold, at every
recorded step, exactly the rows Recording(...).to_pandas() gives (to 1e-5) under sslens/{metric}/L{layer}H{head};
without the package, one line names the extra."""

import json
import math
import struct
import sys

import pytest
import torch

from sslens import compat
from sslens.errors import SslensError
from sslens.hooks import CircuitRecorder
from sslens.hooks.recorder import Recording
from sslens.hooks.telemetry import tag

FIELDS = dict(n_layers=2, d_model=16, d_head=8, n_heads=2, d_mlp=32, d_vocab=24, n_ctx=8, act_fn="gelu",
              normalization_type="LN", device="cpu", seed=0)
STEPS = [0, 1, 2, 4, 8]


def train_with(tmp_path, **telemetry) -> Recording:
    """8 AdamW steps of next-token prediction on random sequences, recorded at STEPS."""
    model = compat.build_from_config(FIELDS)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    rec = CircuitRecorder(model, store=tmp_path / "rec", schedule=STEPS, verbose=False, **telemetry).attach(opt)
    for _ in range(8):
        tokens = torch.randint(0, 24, (8, 8), generator=g)
        loss = model(tokens, return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.log(train_loss=loss.item())  # the user's own scalar, at every step
    rec.detach()
    return Recording(tmp_path / "rec")


def expected(recording: Recording) -> dict[str, dict[int, float]]:
    """tag -> {step: value} from Recording.to_pandas()."""
    out: dict[str, dict[int, float]] = {}
    for r in recording.to_pandas().itertuples():
        out.setdefault(tag(r.metric, r.layer, r.head), {})[int(r.step)] = r.value
    return out


def assert_same(got: dict[str, dict[int, float]], want: dict[str, dict[int, float]]) -> None:
    assert set(got) == set(want)
    for k, by_step in want.items():
        assert set(got[k]) == set(by_step) == (set(range(1, 9)) if k == "sslens/train_loss" else set(STEPS)), k
        for s, v in by_step.items():
            assert (math.isnan(v) and math.isnan(got[k][s])) or got[k][s] == pytest.approx(v, rel=1e-5, abs=1e-5), (k, s)


def test_tensorboard_event_files_equal_the_recording(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed: pip install 'sslens[tensorboard]' (make test installs it)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recording = train_with(tmp_path, tensorboard=tmp_path / "tb")
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    got = {k: {e.step: e.value for e in acc.Scalars(k)} for k in acc.Tags()["scalars"]}
    want = expected(recording)
    assert {"sslens/loss", "sslens/entropy/L0H0", "sslens/entropy/L1H1", "sslens/QK.sv1/L0H0", "sslens/induction/L1H0",
            "sslens/train_loss"} <= set(got)
    assert_same(got, want)
    df = recording.to_pandas()
    for key, rows in [("sslens/loss", df[df["metric"] == "loss"]),
                      ("sslens/entropy/L0H0", df[(df["metric"] == "entropy") & (df["layer"] == 0) & (df["head"] == 0)])]:
        assert [e.step for e in acc.Scalars(key)] == rows["step"].tolist() == STEPS
        assert [e.value for e in acc.Scalars(key)] == pytest.approx(rows["value"].tolist(), rel=1e-5, abs=1e-5)


def wandb_history(run_dir) -> list[dict]:
    """The history rows of an offline W&B run, read from its ``run-*.wandb`` file (LevelDB-style log of
    ``wandb_internal_pb2.Record``: 32 KiB blocks, 7-byte record headers, after a 7-byte file header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data, pos, buf, rows = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        buf = data[pos + 7:pos + 7 + n] if kind in (1, 2) else buf + data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(buf)
            if r.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    return rows


def test_wandb_offline_history_equals_the_recording(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="wandb is not installed: pip install 'sslens[wandb]' (make test installs it)")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(mode="offline", dir=str(tmp_path), project="sslens-test", settings=wandb.Settings(silent=True))
    try:
        recording = train_with(tmp_path, wandb=run)
    finally:
        run.finish()
        wandb.teardown()  # the service process writes the run file; it has flushed when it is gone
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    rows = wandb_history(run_dir)
    got: dict[str, dict[int, float]] = {}
    for row in rows:
        for k, v in row.items():
            if k == "sslens/events":  # text: the events found so far (tested below)
                assert isinstance(v, str) and " between steps " in v
            elif k.startswith("sslens/") and k != "sslens/step":
                got.setdefault(k, {})[row["sslens/step"]] = float("nan") if v in ("NaN", None) else float(v)
    assert sorted({r["sslens/step"] for r in rows if "sslens/loss" in r}) == STEPS
    assert_same(got, expected(recording))


def test_missing_package_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    model = compat.build_from_config(FIELDS)
    with pytest.raises(SslensError) as e:
        CircuitRecorder(model, store=None, tensorboard=tmp_path / "tb")
    assert str(e.value) == "tensorboard: tensorboard is not installed; allowed: pip install 'sslens[tensorboard]'"
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(SslensError, match=r"^wandb: wandb is not installed; allowed: pip install 'sslens\[wandb\]'$"):
        CircuitRecorder(model, store=None, wandb="project")


def test_events_found_so_far_are_logged_once_as_text(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed: pip install 'sslens[tensorboard]' (make test installs it)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sslens.hooks.telemetry import Telemetry

    t = Telemetry(tensorboard=tmp_path / "tb")
    wiggle = [0.001 * (-1) ** s for s in range(10)]
    drop = [(2.0 if s < 6 else 0.5) + w for s, w in enumerate(wiggle)]  # an abrupt drop between steps 5 and 6
    found = {}
    for s in range(10):
        new = t.write(s, {"sslens/entropy/L0H0": drop[s], "sslens/loss": 1.0 + wiggle[s]})
        if new:
            found[s] = new
    assert found == {6: ["sslens/entropy/L0H0: 1.999 -> 0.501 between steps 5 and 6"]}  # when seen, once; none for the flat one
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    (ev,) = acc.Tensors("sslens/events/text_summary")
    assert ev.step == 6 and ev.tensor_proto.string_val[0].decode() == found[6][0]
