"""`analyze-checkpoints pretrained:NAME --checkpoints SPEC` from a hub cache the test builds (tests/hub_cache.py):
tiny random GPT-NeoX (as EleutherAI/pythia-14m, revisions stepN) and GPT-2 (as stanford-crfm, checkpoint-N) series,
loaded through TransformerLens with no network; the analysed weights equal the saved tensors by an independent
reshaping of the HF layouts; a missing revision is one line naming the present ones; `--checkpoints` SPECs."""

import einops
import pytest
import torch
from hub_cache import add_revision, hf_model
from in_process import cli
from safetensors.torch import load_file

from sslens import compat
from sslens.checkpoints import open_series
from sslens.errors import SslensError
from sslens.pretrained import parse_checkpoints, snapshot

pytestmark = pytest.mark.tl4
PYTHIA = "EleutherAI/pythia-14m"
CRFM = "stanford-crfm/alias-gpt2-small-x21"  # TransformerLens alias stanford-gpt2-small-a
PYTHIA_STEPS = [0, 1, 2, 4]  # checkpoint indices 0..3; step4 serves step2's files (EleutherAI/pythia #205)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub")
    cache = tmp / "hf" / "hub"
    for seed, step in enumerate(PYTHIA_STEPS):
        add_revision(cache, PYTHIA, f"step{step}", hf_model("neox", 2 if step == 4 else seed), tmp, also_main=step == 4)
    for seed, step in enumerate([0, 10, 20]):
        add_revision(cache, CRFM, f"checkpoint-{step}", hf_model("gpt2", 10 + seed), tmp, also_main=step == 20)
    return cache


@pytest.fixture
def offline(hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub


def test_parse_checkpoints():
    labels = [0, 1, 2, 4, 8, 16, 32, 1000, 2000]
    assert parse_checkpoints("0,3, 5", labels) == [0, 3, 5]
    assert parse_checkpoints("2-4", labels) == [2, 3, 4]
    assert parse_checkpoints("every 4", labels) == [0, 4, 8]
    assert parse_checkpoints("every 3", labels) == [0, 3, 6, 8]  # the last checkpoint always included
    assert parse_checkpoints("step1000, 0-1", labels) == [0, 1, 7]
    assert parse_checkpoints("all", labels) == list(range(9))
    for bad, words in [("9", "index 9 >= 9"), ("3-1", "backwards"), ("step3", "no checkpoint at step 3"), ("x", "not a checkpoint item"),
                       ("every 0", "K must be >= 1"), ("", "empty"), ("0-100000000000", "index 100000000000 >= 9")]:
        with pytest.raises(SslensError, match=words) as e:
            parse_checkpoints(bad, labels)
        assert "\n" not in str(e.value) and str(e.value).startswith("--checkpoints:")
    for spec in ("every 3", "step5", "0"):  # an empty series: one line, no IndexError
        with pytest.raises(SslensError, match="no checkpoints"):
            parse_checkpoints(spec, [])


def test_pythia_series_loads_offline_with_the_saved_weights(offline):
    s = open_series("pretrained:pythia-14m", checkpoints="0-3")
    assert s.steps == PYTHIA_STEPS
    model = None
    for step in s.steps:
        model = s.load(step)
        saved = load_file(str(snapshot(PYTHIA, f"step{step}") / "model.safetensors"))
        p = compat.params(model)
        torch.testing.assert_close(p["embed.W_E"], saved["gpt_neox.embed_in.weight"], rtol=0, atol=0)
        torch.testing.assert_close(p["unembed.W_U"], saved["embed_out.weight"].T, rtol=0, atol=0)
        for l in range(2):
            # GPT-NeoX's fused query_key_value rows are [head, (q k v), d_head]
            qkv = einops.rearrange(saved[f"gpt_neox.layers.{l}.attention.query_key_value.weight"],
                                   "(n three h) m -> three n m h", n=4, three=3)
            for i, w in enumerate(("W_Q", "W_K", "W_V")):
                torch.testing.assert_close(p[f"blocks.{l}.attn.{w}"], qkv[i], rtol=0, atol=0)
            b = einops.rearrange(saved[f"gpt_neox.layers.{l}.attention.query_key_value.bias"], "(n three h) -> three n h",
                                 n=4, three=3)
            torch.testing.assert_close(p[f"blocks.{l}.attn.b_V"], b[2], rtol=0, atol=0)  # value biases not folded
            torch.testing.assert_close(p[f"blocks.{l}.attn.b_O"], saved[f"gpt_neox.layers.{l}.attention.dense.bias"],
                                       rtol=0, atol=0)
            torch.testing.assert_close(p[f"blocks.{l}.mlp.W_in"], saved[f"gpt_neox.layers.{l}.mlp.dense_h_to_4h.weight"].T,
                                       rtol=0, atol=0)
    assert s.tensors(2).keys() == saved.keys()


def test_crfm_gpt2_series_loads_offline_with_the_saved_weights(offline):
    s = open_series("pretrained:stanford-gpt2-small-a", checkpoints="step10, step20")
    assert s.steps == [10, 20]
    for step in s.steps:
        p = compat.params(s.load(step))
        saved = load_file(str(snapshot(CRFM, f"checkpoint-{step}") / "model.safetensors"))
        torch.testing.assert_close(p["embed.W_E"], saved["transformer.wte.weight"], rtol=0, atol=0)
        for l in range(2):
            q, k, v = einops.rearrange(saved[f"transformer.h.{l}.attn.c_attn.weight"], "m (three n h) -> three n m h",
                                       three=3, n=4)
            torch.testing.assert_close(p[f"blocks.{l}.attn.W_K"], k, rtol=0, atol=0)
            torch.testing.assert_close(p[f"blocks.{l}.attn.W_V"], v, rtol=0, atol=0)


def test_missing_revision_is_one_line_naming_the_present_ones(offline, tmp_path, capsys):
    code, _, err = cli(["analyze-checkpoints", "pretrained:pythia-14m", "--checkpoints", "0-5", "--out", tmp_path / "o",
                        "--quiet"], capsys)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "revision step8 is not in the local cache (+1 more missing)" in lines[0]
    assert "allowed: the cached revisions: step0, step1, step2, step4" in lines[0]


def test_pretrained_series_duplicates_and_dedupe(offline):
    from sslens.analyses.checkpoints import analyze_series
    from sslens.commands.analyze_checkpoints import _integrity

    s = open_series("pretrained:pythia-14m")  # every cached revision
    hashes, groups = _integrity(s, dedupe=False)
    assert s.steps == PYTHIA_STEPS and groups == [[2, 4]]  # step4's files are step2's (other commits, same blobs)
    assert len(set(hashes.values())) == 3
    ent = analyze_series(s, progress=False).head["entropy"]
    assert torch.equal(ent[2], ent[3])  # the same state gives the same metrics
    s = open_series("pretrained:pythia-14m", checkpoints="0, step2, step4")  # indices 0, 2, 3
    hashes, groups = _integrity(s, dedupe=True)
    assert groups == [[2, 4]] and s.steps == [0, 2] and set(hashes) == {0, 2, 4}
    torch.testing.assert_close(analyze_series(s, progress=False).head["entropy"], ent[[0, 2]], rtol=1e-12, atol=0)


def test_a_corrupt_weights_file_is_one_line(tmp_path):
    from sslens.pretrained import read_tensors

    for name, data in (("model.safetensors", b"\x01\x00"), ("pytorch_model.bin", b"PK\x03\x04 truncated")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SslensError, match="not a readable weights file") as e:
            read_tensors(tmp_path / name)
        assert "\n" not in str(e.value) and str(e.value).startswith("checkpoint:")
