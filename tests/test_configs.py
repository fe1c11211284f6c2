"""Typed configs (missing/unknown fields named), the registry, LambdaLR state in checkpoints, old run dirs."""

import math
import shutil

import pytest
import torch

from sslens.configs import config_class, model_config, task_config
from sslens.data import syn_small
from sslens.errors import SslensError
from sslens.models import scan_snap_config
from sslens.registry import MODELS, TASKS
from sslens.store import RunStore
from sslens.tasks import SequenceClassTask
from sslens.train import TrainConfig, lr_factor, train


def test_every_registered_kind_has_a_typed_config():
    for kind in MODELS:
        cls = config_class("model", kind)
        assert cls.kind == kind and "generator" not in {f for f in cls.__dataclass_fields__}
    for kind in TASKS:
        assert config_class("task", kind).kind == kind
    c = model_config(scan_snap_config(5, n_ctx=7))
    assert (c.M, c.n_ctx, c.init) == (5, 7, "zero") and c.to_dict() == scan_snap_config(5, n_ctx=7)


@pytest.mark.parametrize("d,msg", [
    ({"kind": "scan_snap"}, r"^model\.M: missing"),
    ({"kind": "scan_snap", "M": 4, "width": 3}, r"^model\.width: unknown field for kind 'scan_snap'; allowed: M, n_ctx"),
    ({"kind": "transformer9000"}, r"^model\.kind: unknown model kind 'transformer9000'; allowed: rank_collapse, scan_snap"),
    ({"M": 4}, r"^model\.kind: unknown model kind None"),
])
def test_model_config_names_the_field(d, msg):
    with pytest.raises(SslensError, match=msg):
        model_config(d)


def test_task_config_names_the_field():
    with pytest.raises(SslensError, match=r"^task\.bogus: unknown field for kind 'anchor'; allowed: variant, seq_len"):
        task_config({"kind": "anchor", "bogus": 1})
    with pytest.raises(SslensError, match=r"^task\.files: missing"):
        task_config({"kind": "text"})
    spec = syn_small()
    with pytest.raises(SslensError, match=r"^task\.spec: missing"):
        TrainConfig(model=scan_snap_config(spec.M), task={"kind": "sequence_classes"})
    cfg = TrainConfig(model=scan_snap_config(spec.M), task=SequenceClassTask(spec).to_dict())
    assert isinstance(cfg.model, dict) and cfg.model.get("M") == spec.M  # still a plain dict


def _cfg(steps=8):
    spec = syn_small(T=16)
    return TrainConfig(model=scan_snap_config(spec.M, n_ctx=spec.T, init="random"), task=SequenceClassTask(spec).to_dict(),
                       steps=steps, batch=8, optimizer="adamw", lr={"*": 0.05}, lr_schedule="warmup_cosine",
                       warmup_steps=3, seed=5, checkpoint_every=4, record_n=0)


def test_lambdalr_rates_state_saved_and_resumed(tmp_path):
    cfg = _cfg()
    full, _ = train(cfg, out=tmp_path / "full", progress=False)
    store = RunStore(tmp_path / "full")
    _, meta = store.load_checkpoint(4)
    assert meta["lr_scheduler"]["last_epoch"] == 4
    # the rate applied before step 4 (0-based) is base * lr_factor(4): cosine after a 3-step warmup
    want = 0.05 * 0.5 * (1 + math.cos(math.pi * (4 - 3) / (8 - 3)))
    assert meta["param_groups"][0]["lr"] == pytest.approx(want, rel=1e-12) and lr_factor(cfg, 4) == pytest.approx(want / 0.05)
    assert lr_factor(cfg, 0) == pytest.approx(1 / 3)

    # a killed run (checkpoint 4 kept) resumes to the same parameters, bitwise
    shutil.copytree(tmp_path / "full", tmp_path / "killed")
    (tmp_path / "killed" / "COMPLETE").unlink()
    RunStore(tmp_path / "killed").checkpoint_path(8).unlink()
    resumed, _ = train(cfg, out=tmp_path / "killed", resume=True, progress=False)
    for (n, p), (_, q) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), n


def test_old_checkpoint_without_scheduler_state_resumes(tmp_path):
    """Run directories written before the LambdaLR state was saved: the schedule is placed from the step."""
    cfg = _cfg()
    full, _ = train(cfg, out=tmp_path / "full", progress=False)
    shutil.copytree(tmp_path / "full", tmp_path / "old")
    store = RunStore(tmp_path / "old")
    (tmp_path / "old" / "COMPLETE").unlink()
    store.checkpoint_path(8).unlink()
    tensors, meta = store.load_checkpoint(4)
    meta = {k: v for k, v in meta.items() if k not in ("lr_scheduler", "step")}
    for g in meta["param_groups"]:  # as the old loop left them: the rate of step 3, no initial_lr
        g.pop("initial_lr", None)
        g["lr"] = 0.05 * lr_factor(cfg, 3)
    store.save_checkpoint(4, tensors, meta)
    resumed, _ = train(cfg, out=tmp_path / "old", resume=True, progress=False)
    for (n, p), (_, q) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), n
    assert RunStore(tmp_path / "old").load_model().cfg.d_model == cfg.model["M"]
