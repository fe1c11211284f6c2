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
    with open(d / "ckpts" / "config.json", "w") as f:  # the config a user naturally writes (dtype is not JSON)
        json.dump(model.cfg.to_dict(), f, default=str)
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
    with pytest.raises(SslensError, match=r"^config: no config.json .*; allowed: sslens.checkpoints.save_config\(model, "
                       r".*json.dump\(model.cfg.to_dict\(\), f, default=str\).*, or --config FILE.json$"):
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


# ---------------------------------------------------------------------------------------- probes and configs
def test_probe_formats_give_the_same_ids(tmp_path):
    import numpy as np
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from sslens.checkpoints import load_probe

    ids = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    (tmp_path / "p.txt").write_text("3 1 4 1 5\n\n9 2 6 5 3 5 8\n")  # cut to the shortest sequence
    np.save(tmp_path / "p.npy", ids.numpy().astype("int32"))
    save_file({"tokens": ids}, str(tmp_path / "p.safetensors"))
    for f in ("p.txt", "p.npy", "p.safetensors"):
        assert torch.equal(load_probe(tmp_path / f), ids), f
    vocab = {w: i for i, w in enumerate("[UNK] the cat sat on mat a dog".split())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    (tmp_path / "text.txt").write_text("the cat sat on the mat\na dog sat on a cat\n")
    assert load_probe(tmp_path / "text.txt", tmp_path / "tok").tolist() == [[1, 2, 3, 4, 1, 5], [6, 7, 3, 4, 6, 2]]
    for f, needle in (("p.npy", "has no key"), ("text.txt", "line 1 is not token ids")):
        p = tmp_path / f if f == "text.txt" else tmp_path / "q.safetensors"
        if f == "p.npy":
            save_file({"ids": ids}, str(p))
        with pytest.raises(SslensError, match=f"^probe: .*{needle}"):
            load_probe(p)
    with pytest.raises(SslensError, match="^tokenizer: cannot load"):
        load_probe(tmp_path / "text.txt", tmp_path / "nope")


def test_config_written_on_gpus_is_rebuilt_on_one_cpu(tl_dir, tmp_path):
    """A ``default=str`` config from a multi-GPU run (device "cuda:0", n_devices 2) loads here with the same weights."""
    cfg = json.loads((tl_dir / "config.json").read_text())
    assert cfg["dtype"] == "torch.float32" and cfg["d_model"] == 16
    (tmp_path / "model_6.pt").write_bytes((tl_dir / "model_6.pt").read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "device": "cuda:0", "n_devices": 2}))
    model = open_series(str(tmp_path)).load(7)
    assert str(model.cfg.device) == "cpu" and model.cfg.n_devices == 1
    sd = torch.load(tl_dir / "model_6.pt", weights_only=True)
    assert all(torch.equal(p, sd[k]) for k, p in model.state_dict().items() if k in sd)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_config_to_dict_with_dtype_strings_loads(tmp_path, dtype):
    model = HookedTransformer(HookedTransformerConfig(**FIELDS, seed=1, dtype=dtype, device="cpu"))
    (tmp_path / "config.json").write_text(json.dumps(model.cfg.to_dict(), default=str))  # dtype -> "torch.bfloat16"
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == str(dtype)
    torch.save(model.state_dict(), tmp_path / "step_5.pt")
    loaded = open_series(str(tmp_path)).load(5)
    assert loaded.cfg.dtype == dtype and loaded.cfg.d_vocab == 300
    x = torch.randint(0, 300, (2, 8))
    assert torch.equal(loaded(x), model(x))


def test_save_config_keeps_sslens_variants_and_refuses_a_plain_rebuild(tmp_path):
    from sslens.checkpoints import config_fields, save_config
    from sslens.models import build
    from sslens.models.rank_collapse import rank_collapse_config

    m = build(rank_collapse_config(d=16, d_vocab=21, n_ctx=6))
    save_config(m, tmp_path / "ck")
    torch.save(m.state_dict(), tmp_path / "ck" / "step_0.pt")
    x = torch.randint(0, 21, (3, 6), generator=torch.Generator().manual_seed(0))
    plain = HookedTransformer(m.cfg)
    plain.load_state_dict(m.state_dict(), strict=False)
    assert (plain(x) - m(x)).abs().max() > 0.1  # the variant hooks change the function ...
    assert torch.equal(open_series(str(tmp_path / "ck")).load(0)(x), m(x))  # ... and the rebuilt model has them
    (tmp_path / "plain.json").write_text(json.dumps(m.cfg.to_dict(), default=str))
    with pytest.raises(SslensError, match=r"^config: .*names an sslens model; --config .* refused"):
        open_series(str(tmp_path / "ck"), config=str(tmp_path / "plain.json"))
    with pytest.raises(SslensError, match=r"^config: x names sslens model settings \(kind\)"):
        config_fields({**json.loads((tmp_path / "plain.json").read_text()), "kind": "rank_collapse"}, "x")
    # plain HookedTransformers are saved as cfg.to_dict()
    save_config(plain, tmp_path / "pl")
    assert json.loads((tmp_path / "pl" / "config.json").read_text())["d_model"] == 16


def test_tl_train_later_epoch_overwrite_is_reported(tmp_path, capsys):
    model = HookedTransformer(HookedTransformerConfig(**{**FIELDS, "n_layers": 1}, seed=0, device="cpu"))
    cfg = HookedTransformerTrainConfig(num_epochs=2, batch_size=8, lr=1e-3, seed=0, device="cpu", save_every=1,
                                       save_dir=str(tmp_path / "ck"), optimizer_name="AdamW")
    (tmp_path / "ck").mkdir()
    toks = torch.randint(0, 300, (16, 16), generator=torch.Generator().manual_seed(0))
    tl_train(model, cfg, datasets.Dataset.from_dict({"tokens": toks.tolist()}).with_format("torch"))
    (tmp_path / "ck" / "config.json").write_text(json.dumps({**FIELDS, "n_layers": 1}))
    assert sorted(p.name for p in (tmp_path / "ck").glob("*.pt")) == ["model_0.pt", "model_1.pt"]  # 2 epochs, 2 files
    with pytest.warns(UserWarning, match="a later epoch overwrote these files"):
        s = open_series(str(tmp_path / "ck"))
    assert s.steps == [1, 2]
    assert main(["analyze-checkpoints", str(tmp_path / "ck"), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert "note: a later epoch overwrote" in capsys.readouterr().out
