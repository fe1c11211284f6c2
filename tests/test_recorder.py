"""CircuitRecorder on (a) the Y/Z model in sslens's trainer, (b) a standard 2-layer TransformerLens model
with MLPs and LayerNorm in a hand-written loop, (c) the same trained by transformer_lens.train.train.
Recorded QK/OV equal model.QK/model.OV at that step."""

import datasets
import torch
from transformer_lens import FactoredMatrix, HookedTransformer, HookedTransformerConfig
from transformer_lens.train import HookedTransformerTrainConfig
from transformer_lens.train import train as tl_train
from torch.optim.optimizer import register_optimizer_step_post_hook

from sslens.data import syn_small
from sslens.hooks import CircuitRecorder, Recording
from sslens.models import scan_snap_config
from sslens.store import RunStore
from sslens.tasks import SequenceClassTask
from sslens.train import TrainConfig, train


def small_tl_model(seed=0):
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, d_head=8, n_heads=2, d_mlp=32, d_vocab=23, n_ctx=12,
        act_fn="gelu", normalization_type="LN", seed=seed, device="cpu",
    )
    return HookedTransformer(cfg)


def snapshot(model):
    return {
        "QK": model.QK.AB.detach().clone(),  # [layer, head, d_model, d_model]
        "OV": model.OV.AB.detach().clone(),
        "W_E": model.W_E.detach().clone(),
    }


def test_a_trainer_records_match_checkpoints(tmp_path):
    s = syn_small(T=16)
    cfg = TrainConfig(
        model=scan_snap_config(s.M, n_ctx=16), task=SequenceClassTask(s).to_dict(), steps=12, batch=16,
        lr={"blocks.0.attn.W_Q": 1.0, "unembed.W_U": 3.0}, momentum=0.9, seed=0, checkpoint_every=1, record_n=6,
    )
    train(cfg, out=tmp_path, progress=False)
    store = RunStore(tmp_path)
    rec = Recording(tmp_path)
    assert rec.steps[0] == 0 and rec.steps[-1] == 12 and len(rec.steps) >= 5
    for i, step in enumerate(rec.steps):
        model = store.load_model(step)
        assert torch.allclose(rec.get("blocks.0.QK")[i], model.QK.AB[0], atol=1e-6)
        assert torch.allclose(rec.get("blocks.0.QK_tok")[i, 0], model.blocks[0].attn.W_Q[0], atol=1e-6)  # = Z
        assert torch.allclose(rec.get("blocks.0.OV_tok")[i, 0], model.unembed.W_U, atol=1e-6)  # = Y
        _, cache = model.run_with_cache(rec.at(step)["probe.tokens"])
        assert torch.allclose(rec.get("blocks.0.pattern")[i], cache["pattern", 0], atol=1e-6)
    # Z moved: the recording is not just the init
    assert not torch.allclose(rec.get("blocks.0.QK_tok")[0], rec.get("blocks.0.QK_tok")[-1])


def test_b_hand_written_loop_standard_model():
    torch.manual_seed(0)
    model = small_tl_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = torch.randint(0, 23, (3, 12))
    rec = CircuitRecorder(model, schedule=[0, 1, 3, 7], probe_tokens=probe).attach(opt)
    truth = {0: snapshot(model)}
    for step in range(1, 9):
        tokens = torch.randint(0, 23, (8, 12))
        loss = model(tokens, return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
        truth[step] = snapshot(model)
    assert sorted(rec.records) == [0, 1, 3, 7]
    recording = Recording(rec)
    for i, (step, r) in enumerate(sorted(rec.records.items())):
        for layer in range(2):
            assert torch.allclose(recording.get(f"blocks.{layer}.QK")[i], truth[step]["QK"][layer], atol=1e-6)
            assert torch.allclose(recording.get(f"blocks.{layer}.OV")[i], truth[step]["OV"][layer], atol=1e-6)
            fm = recording.factored(f"blocks.{layer}.QK", step)
            assert isinstance(fm, FactoredMatrix) and fm.A.shape == (2, 16, 8)  # [head, d_model, d_head]
            assert torch.allclose(fm.AB, truth[step]["QK"][layer], atol=1e-6)
        assert r["blocks.1.pattern"].shape == (3, 2, 12, 12)
        assert "blocks.0.QK_tok" not in r  # token space only on request
    assert not torch.allclose(recording.get("blocks.0.QK")[0], recording.get("blocks.0.QK")[-1])


def test_b_token_space_on_request_includes_attn_scale():
    torch.manual_seed(0)
    model = small_tl_model()
    rec = CircuitRecorder(model, token_space=True)
    r = rec.record(0)
    # token-space QK includes the model's attention scale sqrt(d_head)
    W_E = model.W_E.detach()
    expected = W_E @ model.QK.AB[0, 1].detach() @ W_E.T / 8**0.5
    assert torch.allclose(r["blocks.0.QK_tok"][1], expected, atol=1e-5)
    assert torch.allclose(r["blocks.1.OV_tok"][0], W_E @ model.OV.AB[1, 0].detach() @ model.W_U.detach(), atol=1e-5)
    sub = torch.tensor([3, 0, 7])
    r2 = CircuitRecorder(model, token_subset=sub).record(0)
    assert torch.allclose(r2["blocks.0.QK_tok"], r["blocks.0.QK_tok"][:, sub][:, :, sub], atol=1e-6)
    assert torch.allclose(r2["blocks.1.OV_tok"], r["blocks.1.OV_tok"][:, sub][:, :, sub], atol=1e-6)


def test_c_transformer_lens_train(tmp_path):
    torch.manual_seed(0)
    model = small_tl_model(seed=1)
    data = datasets.Dataset.from_dict({"tokens": torch.randint(0, 23, (40, 12)).tolist()}).with_format("torch")
    cfg = HookedTransformerTrainConfig(num_epochs=1, batch_size=8, lr=1e-2, seed=0, device="cpu", optimizer_name="AdamW")
    truth = {}
    with CircuitRecorder(model, store=tmp_path, schedule=[0, 2, 5]) as rec:
        # an independent witness of the weights after each step of TL's own optimizer
        truth[0] = snapshot(model)
        handle = register_optimizer_step_post_hook(lambda opt, a, k: truth.__setitem__(len(truth), snapshot(model)))
        tl_train(model, cfg, data)
        handle.remove()
    assert rec.step == 5 == max(truth)
    recording = Recording(tmp_path)
    assert recording.steps == [0, 2, 5]
    for i, step in enumerate(recording.steps):
        assert torch.allclose(recording.get("blocks.1.QK")[i], truth[step]["QK"][1], atol=1e-6)
    assert torch.allclose(recording.get("blocks.0.QK")[-1], model.QK.AB[0].detach(), atol=1e-6)
