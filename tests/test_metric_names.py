"""One name and one value per metric: the recorder's and the analysis' to_pandas agree (issue 22 item 1, 2)."""

import warnings

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sslens.analyses.series import analyze_recording
from sslens.hooks import CircuitRecorder, Recording
from sslens.metrics import HEAD_SCORES
from sslens.store import RunStore


def small_model(**kw) -> HookedTransformer:
    cfg = dict(n_layers=2, d_model=16, d_head=4, n_heads=4, d_vocab=24, n_ctx=16, attn_only=True,
               normalization_type=None, seed=0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(HookedTransformerConfig(**{**cfg, **kw}))


def test_recording_and_analysis_to_pandas_agree(tmp_path):
    model = small_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rec = CircuitRecorder(model, store=tmp_path / "run", schedule=[0, 2, 5], verbose=False).attach(opt)
    g = torch.Generator().manual_seed(0)
    for step in range(5):
        half = torch.randint(0, 24, (8, 8), generator=g)
        loss = model(torch.cat([half, half], 1), return_type="loss")
        loss.backward()
        opt.step()
        opt.zero_grad()
        rec.log(step + 1, train_loss=loss.item())
    rec.detach()
    keys = ["step", "layer", "head", "metric"]
    a = Recording(tmp_path / "run").to_pandas().set_index(keys).value
    b = analyze_recording(tmp_path / "run", progress=False).to_pandas().set_index(keys).value
    shared = set(a.index.get_level_values("metric")) & set(b.index.get_level_values("metric"))
    assert set(HEAD_SCORES) | {"loss", "loss_in_context"} <= shared, shared
    both = a.index.intersection(b.index)
    per_head = [i for i in both if i[3] in HEAD_SCORES]
    assert len(per_head) == 3 * 8 * len(HEAD_SCORES)  # 3 steps x 8 heads, every score in both
    assert {i[3] for i in both} >= {"rel_change.attn.W_Q", "train_loss", "loss", "loss_in_context"}
    diff = (a[both] - b[both]).abs()
    assert diff.max() < 1e-6, diff.idxmax()
    loss = a.xs("loss", level="metric")
    assert loss.index.get_level_values("layer").isna().all() and len(loss) == 3
    logged = a.xs("train_loss", level="metric")
    assert logged.index.get_level_values("step").tolist() == [1, 2, 3, 4, 5]  # every logged step, recorded or not
    assert b.xs("train_loss", level="metric").index.get_level_values("step").tolist() == [2, 5]  # at recorded steps


def test_recordings_with_old_names_load_under_the_new_ones(tmp_path):
    store = RunStore(tmp_path)
    old = {"scores.blocks.0.prev_token": torch.tensor([0.5, 0.25]), "scores.blocks.0.duplicate": torch.tensor([0.1, 0.2]),
           "scores.blocks.0.induction": torch.tensor([0.3, 0.4]), "meta.heads": torch.tensor([0, 1])}
    store.save_recording(0, old)
    R = Recording(tmp_path)
    assert "scores.blocks.0.previous_token" in R.keys() and "scores.blocks.0.prev_token" not in R.keys()
    assert torch.equal(R.get("scores.blocks.0.duplicate_token")[0], old["scores.blocks.0.duplicate"])
    assert set(R.at(0)) == {"scores.blocks.0.previous_token", "scores.blocks.0.duplicate_token",
                            "scores.blocks.0.induction", "meta.heads"}
    df = R.to_pandas()
    assert sorted(set(df.metric)) == ["duplicate_token", "induction", "previous_token"]
    assert df[(df.metric == "previous_token") & (df["head"] == 1)].value.item() == pytest.approx(0.25)


def test_no_probe_loss_where_the_probe_ids_are_not_the_outputs():
    assert CircuitRecorder(small_model(), verbose=False).loss
    r = CircuitRecorder(small_model(d_vocab_out=3), verbose=False).record(0)  # a classifier head: no next-token loss
    assert "scores.loss" not in r and "scores.blocks.0.induction" in r


def test_log_rejects_a_bad_name():
    from sslens.errors import SslensError

    rec = CircuitRecorder(small_model(), verbose=False)
    with pytest.raises(SslensError, match="^log: name 'a b'"):
        rec.log(0, **{"a b": 1.0})
