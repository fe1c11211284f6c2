"""analyze-checkpoints on a directory written by transformer_lens.train.train and on an sslens run;
one-line errors for missing config, shape mismatch, truncated and pickle-only files."""

import json
import pickle
from pathlib import Path

import datasets
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.train import HookedTransformerTrainConfig
from transformer_lens.train import train as tl_train

from sslens.analyses.report import external_resources
from sslens.analyses.series import repeated_random_tokens
from sslens.checkpoints import open_series
from sslens.cli import main
from sslens.data.text import tokenize
from sslens.errors import SslensError

DATA = Path(__file__).parent / "data"
FIELDS = dict(n_layers=2, d_model=16, d_head=8, n_heads=2, d_mlp=32, d_vocab=300, n_ctx=16, act_fn="gelu",
              normalization_type="LN")


@pytest.fixture(scope="module")
def tl_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tl")
    _, ids = tokenize({"train": DATA / "wikitext-2-valid-slice.txt"}, "train", max_vocab=300, cache_dir=d / "cache")
    toks = ids["train"][: 16 * 64].view(64, 16)
    model = HookedTransformer(HookedTransformerConfig(**FIELDS, seed=0, device="cpu"))
    cfg = HookedTransformerTrainConfig(num_epochs=1, batch_size=8, lr=3e-3, seed=0, device="cpu", save_every=2,
                                       save_dir=str(d / "ckpts"), optimizer_name="AdamW")
    (d / "ckpts").mkdir()
    tl_train(model, cfg, datasets.Dataset.from_dict({"tokens": toks.tolist()}).with_format("torch"))
    (d / "ckpts" / "config.json").write_text(json.dumps(FIELDS))
    return d / "ckpts"


def test_analyze_tl_train_directory(tl_dir, tmp_path):
    assert main(["analyze-checkpoints", str(tl_dir), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())["series"][0]
    # transformer_lens.train saves model_{step}.pt after step+1 optimizer steps (batch index within the epoch)
    assert m["steps"] == [1, 3, 5, 7]
    # QK rank equals an independent computation from the weights_only state dict
    sd = torch.load(tl_dir / "model_6.pt", weights_only=True)
    QK = sd["blocks.1.attn.W_Q"][0] @ sd["blocks.1.attn.W_K"][0].T
    s = torch.linalg.svdvals(QK.double())
    s = s[s > s[0] * 1e-6]
    p = s / s.sum()
    assert m["head"]["QK.effective_rank"][-1][1][0] == pytest.approx(torch.exp(-(p * p.log()).sum()).item(), rel=1e-6)
    # attention entropy equals the Fig. 10 formula on the cached pattern of the same (default) probe
    series = open_series(str(tl_dir))
    model = series.load(7)
    probe = repeated_random_tokens(300, 16, seed=0)
    _, cache = model.run_with_cache(probe)
    a = cache["pattern", 0]
    ent = (-(a * torch.log(a + 1e-8)).sum(-1)).mean(dim=(0, 2))
    assert m["head"]["entropy"][-1][0] == pytest.approx(ent.tolist(), rel=1e-5)
    W0 = torch.load(tl_dir / "model_0.pt", weights_only=True)["blocks.0.attn.W_Q"]
    rc = ((sd["blocks.0.attn.W_Q"] - W0).norm() / W0.norm()).item()
    assert m["rel_change"]["blocks.0.attn.W_Q"][0] == 0 and m["rel_change"]["blocks.0.attn.W_Q"][-1] == pytest.approx(rc, rel=1e-5)
    assert external_resources((tmp_path / "out" / "report.html").read_text()) == []


def test_errors_are_one_line(tl_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model_0.pt").write_bytes((tl_dir / "model_0.pt").read_bytes())
    with pytest.raises(SslensError, match=r"^config: no HookedTransformerConfig"):
        open_series(str(bad))
    (bad / "config.json").write_text(json.dumps({**FIELDS, "d_model": 24, "d_head": 12}))
    with pytest.raises(SslensError, match=r"^checkpoint: model_0.pt: .* has shape"):
        open_series(str(bad)).load(1)
    (bad / "config.json").write_text(json.dumps(FIELDS))
    data = (tl_dir / "model_2.pt").read_bytes()
    (bad / "model_2.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(SslensError, match=r"^checkpoint: model_2.pt is truncated"):
        open_series(str(bad)).load(3)

    class Evil:
        def __reduce__(self):
            return (print, ("executed!",))

    torch.save({"w": Evil()}, bad / "model_4.pt")
    with pytest.raises(SslensError, match=r"^checkpoint: model_4.pt needs unpickling"):
        open_series(str(bad)).load(5)
    r = main(["analyze-checkpoints", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"])
    assert r == 2
