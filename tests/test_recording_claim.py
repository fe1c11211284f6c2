"""One model and one run per recording store (issue 24 item 3): a second recorder in this process, a
restarted loop and another model are refused in one line; mode="resume"/"overwrite"; stale temp files."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sslens.errors import SslensError
from sslens.hooks import CircuitRecorder, Recording
from sslens.recording_claim import IDENTITY_NAME


def tl_model(seed=0, d_head=8):
    cfg = HookedTransformerConfig(n_layers=1, d_model=16, d_head=d_head, n_heads=2, d_vocab=20, n_ctx=8,
                                  attn_only=True, seed=seed, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(cfg)


def steps(model, opt, n):
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        loss = model(torch.randint(0, 20, (2, 8), generator=g), return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()


def rec(model, store, **kw):
    return CircuitRecorder(model, store=store, schedule=range(100), verbose=False, **kw)


def test_two_recorders_of_two_models_on_one_store_refused(tmp_path):
    a, b = tl_model(0), tl_model(1)
    first = rec(a, tmp_path).attach(torch.optim.SGD(a.parameters(), lr=0.1))
    with pytest.raises(SslensError, match="another CircuitRecorder in this process"):
        rec(b, tmp_path, mode="overwrite").attach(torch.optim.SGD(b.parameters(), lr=0.1))
    assert Recording(tmp_path).steps == [0]  # the refused one wrote nothing
    first.detach()
    rec(b, tmp_path, mode="overwrite").attach().detach()  # free once the first is detached


def test_restarted_loop_refused_then_resume_and_overwrite(tmp_path):
    model = tl_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    r1 = rec(model, tmp_path).attach(opt)
    steps(model, opt, 4)
    r1.detach()
    run = json.loads((tmp_path / "recordings" / IDENTITY_NAME).read_text())["run"]
    assert run == r1.run_id and Recording(tmp_path).steps == [0, 1, 2, 3, 4]
    (tmp_path / "recordings" / ".step_00000005.safetensors.abc.tmp").write_bytes(b"torn")  # a SIGKILLed write

    fresh = tl_model()
    with pytest.raises(SslensError, match=r'already holds 5 recorded steps .*mode="resume".*mode="overwrite"') as e:
        rec(fresh, tmp_path).attach()
    assert "\n" not in str(e.value)
    assert Recording(tmp_path).steps == [0, 1, 2, 3, 4]  # nothing touched by the refused attach

    r2 = rec(fresh, tmp_path, mode="resume", start_step=2).attach()  # continues the run from step 2
    assert r2.run_id == run and Recording(tmp_path).steps == [0, 1, 2]
    assert not list((tmp_path / "recordings").glob(".*.tmp"))
    r2.detach()

    other = tl_model(d_head=4)
    with pytest.raises(SslensError, match="recordings of another model"):
        rec(other, tmp_path, mode="resume").attach()
    r3 = rec(other, tmp_path, mode="overwrite").attach(torch.optim.SGD(other.parameters(), lr=0.1))
    r3.detach()
    assert r3.run_id != run and Recording(tmp_path).steps == [0]
    assert Recording(tmp_path).get("blocks.0.attn.W_Q").shape == (1, 2, 16, 4)  # one model: stacks


def test_bad_mode_one_line(tmp_path):
    with pytest.raises(SslensError, match="mode: got 'append'; allowed: new, resume, overwrite"):
        rec(tl_model(), tmp_path, mode="append")


def test_rerunning_the_recorder_cell_on_the_same_model_keeps_the_recorded_steps(tmp_path):
    """A notebook re-run of `CircuitRecorder(model, store).attach(opt)` goes on from the model's step: nothing dropped."""
    model = tl_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = rec(model, tmp_path / "R").attach(opt)
    steps(model, opt, 5)
    first.log(3, train_loss=1.5)
    assert Recording(tmp_path / "R").steps == [0, 1, 2, 3, 4, 5]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "this model already had an attached recorder"
        again = rec(model, tmp_path / "R").attach(opt)
    steps(model, opt, 2)
    again.detach()
    R = Recording(tmp_path / "R")
    assert R.steps == list(range(8)) and R.logged()[3] == {"train_loss": 1.5}
