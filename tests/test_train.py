"""Two-timescale training: per-group rates, determinism, divergence, the authors' Fig. 4 loss, resume after SIGKILL."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from sslens.data import sample, syn_small
from sslens.errors import SslensError
from sslens.models import scan_snap_config
from sslens.store import RunStore
from sslens.tasks import SequenceClassTask
from sslens.train import TrainConfig, TrainingDiverged, train

LR = {"blocks.0.attn.W_Q": 1.0, "unembed.W_U": 1.0}


def cfg_for(spec, **kw):
    base = dict(model=scan_snap_config(spec.M, n_ctx=spec.T), task=SequenceClassTask(spec).to_dict(), steps=20, batch=32,
                lr=LR, momentum=0.9, seed=2, record_n=0)
    base.update(kw)
    return TrainConfig(**base)


def formula_loss(Z, Y, tokens, nxt):
    """theory.md 1.1, written independently of the model."""
    ctx, m = tokens[:, :-1], tokens[:, -1]
    b = torch.softmax(Z[m[:, None], ctx], dim=-1)
    f = torch.zeros(tokens.shape[0], Z.shape[0], dtype=Z.dtype).scatter_add(1, ctx, b)
    return F.cross_entropy((f / f.norm(dim=-1, keepdim=True)) @ Y, nxt)


def test_fig4_left_reaches_authors_loss_and_checkpoint_loss_matches_formula(tmp_path):
    """Syn-Small, eta_Y = eta_Z = 1, zero init, SGD momentum 0.9, batch 128, T 128: the authors' log reads ~2e-5 at iteration 98."""
    spec = syn_small()
    cfg = cfg_for(spec, steps=100, batch=128, record_n=0)
    train(cfg, out=tmp_path, progress=False)
    store = RunStore(tmp_path)
    rows = store.read_metrics()
    assert [r["step"] for r in rows] == list(range(1, 101))
    at98 = rows[97]["loss"]
    assert 5e-6 < at98 < 8e-5, at98
    model = store.load_model()
    Z, Y = model.blocks[0].attn.W_Q[0].detach().double(), model.unembed.W_U.detach().double()
    tokens, nxt, _ = sample(spec, 64, torch.Generator().manual_seed(99))
    with torch.no_grad():
        got = F.cross_entropy(model(tokens)[:, -1].double(), nxt).item()
    ref = formula_loss(Z, Y, tokens, nxt).item()
    assert abs(got - ref) <= 1e-6 + 1e-4 * abs(ref)
    assert store.complete


def test_two_runs_bitwise_equal_and_groups_have_their_rates():
    spec = syn_small(T=16)
    cfg = cfg_for(spec, lr={"blocks.0.attn.W_Q": 0.5, "unembed.W_U": 5.0})
    a, _ = train(cfg, progress=False)
    b, _ = train(cfg, progress=False)
    c, _ = train(cfg_for(spec, lr={"blocks.0.attn.W_Q": 0.5, "unembed.W_U": 5.0}, seed=3), progress=False)
    for (n, p), (_, q), (_, r) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(p, q), n
    assert not torch.equal(a.blocks[0].attn.W_Q, c.blocks[0].attn.W_Q)


def test_one_sgd_step_uses_eta_Z_for_Z_and_eta_Y_for_Y():
    spec = syn_small(T=16)
    eta_Z, eta_Y = 0.3, 7.0
    cfg = cfg_for(spec, steps=1, momentum=0.0, lr={"blocks.0.attn.W_Q": eta_Z, "unembed.W_U": eta_Y})
    model, _ = train(cfg, progress=False)
    # replay the same batch by hand: the generator draws nothing for zero init, then the batch
    g = torch.Generator().manual_seed(cfg.seed)
    tokens, nxt, _ = sample(spec, cfg.batch, g)
    Z = torch.zeros(spec.M, spec.M, requires_grad=True)
    Y = torch.zeros(spec.M, spec.M, requires_grad=True)
    formula_loss(Z, Y, tokens, nxt).backward()
    assert torch.allclose(model.unembed.W_U, -eta_Y * Y.grad, atol=1e-6)
    assert torch.allclose(model.blocks[0].attn.W_Q[0], -eta_Z * Z.grad, atol=1e-6)


def test_adam_runs_and_non_finite_loss_names_the_step(tmp_path):
    spec = syn_small(T=16)
    model, _ = train(cfg_for(spec, optimizer="adam", momentum=0.0, lr={"*": 0.1}, steps=5), progress=False)
    assert model.blocks[0].attn.W_Q.abs().max() > 0
    with pytest.raises(TrainingDiverged, match=r"loss: non-finite value .* at step (\d+)") as e:
        train(cfg_for(spec, lr={"*": 1e30}, checkpoint_every=1), out=tmp_path, progress=False)
    step = int(e.value.args[0].split("at step ")[1].split(";")[0])
    assert 1 <= step <= 20
    assert max(RunStore(tmp_path).checkpoint_steps()) == step - 1  # nothing after the bad step


@pytest.mark.parametrize(
    "kw,field",
    [(dict(optimizer="lbfgs"), "optimizer"), (dict(steps=0), "steps"), (dict(momentum=1.5), "momentum"),
     (dict(lr={"unembed.W_U": 1.0}), "lr"), (dict(lr={"*": -1.0}), "lr[*]")],
)
def test_bad_training_config_names_the_field(kw, field):
    spec = syn_small(T=8)
    with pytest.raises(SslensError) as e:
        train(cfg_for(spec, **kw), progress=False)
    assert e.value.field == field


def test_existing_run_needs_resume(tmp_path):
    spec = syn_small(T=8)
    train(cfg_for(spec, steps=2), out=tmp_path, progress=False)
    with pytest.raises(SslensError, match="^out: "):
        train(cfg_for(spec, steps=2), out=tmp_path, progress=False)
    with pytest.raises(SslensError, match="^resume.seed: "):
        train(cfg_for(spec, steps=2, seed=9), out=tmp_path, resume=True, progress=False)


def _cli(out, *extra):
    return [sys.executable, "-m", "sslens.cli", "train", "scan-snap", "--preset", "syn-small", "--steps", "30",
            "--batch", "16", "--seq-len", "16", "--eta-y", "3", "--eta-z", "1", "--checkpoint-every", "1",
            "--init", "random", "--quiet", "--out", str(out), *extra]


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_cli(full), check=True, env=env, capture_output=True)

    kill_at = random.Random().randint(3, 24)
    proc = subprocess.Popen(_cli(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = RunStore(killed)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if store.checkpoint_steps() and store.checkpoint_steps()[-1] >= kill_at:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not store.complete, "the run finished before it could be killed"
    subprocess.run(_cli(killed, "--resume"), check=True, env=env, capture_output=True)

    a, meta_a = RunStore(full).load_checkpoint()
    b, meta_b = RunStore(killed).load_checkpoint()
    assert meta_a["step"] == meta_b["step"] == 30
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # model, optimizer (momentum) and RNG state
    la = [r["loss"] for r in RunStore(full).read_metrics()]
    lb = [r["loss"] for r in RunStore(killed).read_metrics()]
    assert la == lb and len(la) == 30
    assert RunStore(killed).complete
    assert json.loads((killed / "config.json").read_text()) == json.loads((full / "config.json").read_text())
