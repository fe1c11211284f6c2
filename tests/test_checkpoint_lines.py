"""Checkpoint series written on either TransformerLens line load and are analysed on the installed one.

tests/data/tl3_ckpts (TransformerLens 3.9 ``HookedTransformer.state_dict()``) and tests/data/tl4_ckpts (4.3
``TransformerBridge.boot_native`` state dicts, ``blocks.0.attn.q.weight`` keys), each with its own
``cfg.to_dict()`` and the logits it gave (tests/data/make_tl_fixtures.py). Runs on both lines (`make test4`).
"""

import json

import einops
import pytest
import torch
from machine import wrote_here
from safetensors.torch import load_file

from sslens import compat
from sslens.checkpoints import open_series
from sslens.cli import main
from sslens.errors import SslensError

pytestmark = pytest.mark.tl4
DIRS = {3: "tests/data/tl3_ckpts", 4: "tests/data/tl4_ckpts"}


def _weights_3x(line: int, step: int) -> dict:
    """The fixture's own state dict in 3.x names and layouts, converted here by hand (not through sslens)."""
    sd = torch.load(f"{DIRS[line]}/step_{step}.pt", weights_only=True)
    if line == 3:
        return {k: v for k, v in sd.items() if not k.endswith((".mask", ".IGNORE"))}
    out = {"embed.W_E": sd["embed.weight"], "pos_embed.W_pos": sd["pos_embed.weight"], "unembed.W_U": sd["unembed.weight"].T,
           "unembed.b_U": sd["unembed.bias"], "ln_final.w": sd["ln_final.weight"], "ln_final.b": sd["ln_final.bias"]}
    for l in range(2):
        b = f"blocks.{l}"
        for x in "qkv":
            out[f"{b}.attn.W_{x.upper()}"] = einops.rearrange(sd[f"{b}.attn.{x}.weight"], "(n h) m -> n m h", n=2)
            out[f"{b}.attn.b_{x.upper()}"] = einops.rearrange(sd[f"{b}.attn.{x}.bias"], "(n h) -> n h", n=2)
        out[f"{b}.attn.W_O"] = einops.rearrange(sd[f"{b}.attn.o.weight"], "m (n h) -> n h m", n=2)
        out[f"{b}.attn.b_O"] = sd[f"{b}.attn.o.bias"]
        out[f"{b}.mlp.W_in"], out[f"{b}.mlp.b_in"] = sd[f"{b}.mlp.in.weight"].T, sd[f"{b}.mlp.in.bias"]
        out[f"{b}.mlp.W_out"], out[f"{b}.mlp.b_out"] = sd[f"{b}.mlp.out.weight"].T, sd[f"{b}.mlp.out.bias"]
        for n in ("ln1", "ln2"):
            out[f"{b}.{n}.w"], out[f"{b}.{n}.b"] = sd[f"{b}.{n}.weight"], sd[f"{b}.{n}.bias"]
    return out


@pytest.mark.parametrize("line", [3, 4])
def test_a_series_of_either_line_loads_with_its_weights_and_logits(line):
    s = open_series(DIRS[line])
    assert s.steps == [0, 3]
    ref = load_file(f"{DIRS[line]}/logits.safetensors")
    for step in s.steps:
        model = s.load(step)
        assert compat.is_hooked_model(model)
        got, want = compat.state_dict_3x(model), _weights_3x(line, step)
        assert set(got) == set(want)
        for k in want:
            assert torch.equal(got[k], want[k]), k
        # the same function: logits of the line that wrote it (float32 kernels of another line: 1e-5)
        assert torch.allclose(model(ref["probe"]), ref[f"step_{step}"], atol=1e-5, rtol=0)
        if compat.TL_MAJOR == line and wrote_here(DIRS[line]):  # same line and kernels: the very same numbers
            assert torch.equal(model(ref["probe"]), ref[f"step_{step}"])


def test_analyze_checkpoints_of_both_lines_in_one_report(tmp_path):
    """The QK effective rank and the relative change of both series equal independent formulas on the fixtures."""
    assert main(["analyze-checkpoints", DIRS[3], DIRS[4], "--out", str(tmp_path / "out"), "--quiet"]) == 0
    series = json.loads((tmp_path / "out" / "metrics.json").read_text())["series"]
    assert len(series) == 2
    for m, line in zip(series, (3, 4)):
        assert m["steps"] == [0, 3]
        w0, w = _weights_3x(line, 0), _weights_3x(line, 3)
        s = torch.linalg.svdvals((w["blocks.1.attn.W_Q"][0] @ w["blocks.1.attn.W_K"][0].T).double())
        s = s[s > s[0] * 1e-6]
        p = s / s.sum()
        assert m["head"]["QK.effective_rank"][-1][1][0] == pytest.approx(torch.exp(-(p * p.log()).sum()).item(), rel=1e-6)
        rc = ((w["blocks.0.attn.W_V"] - w0["blocks.0.attn.W_V"]).norm() / w0["blocks.0.attn.W_V"].norm()).item()
        assert m["rel_change"]["blocks.0.attn.W_V"][-1] == pytest.approx(rc, rel=1e-5)


def test_a_4x_key_without_a_3x_name_is_one_line(tmp_path):
    import shutil

    shutil.copytree(DIRS[4], tmp_path / "ck")
    sd = torch.load(tmp_path / "ck" / "step_3.pt", weights_only=True)
    torch.save({**sd, "blocks.0.attn.rotary.weight": torch.zeros(2)}, tmp_path / "ck" / "step_3.pt")
    with pytest.raises(SslensError, match=r"^checkpoint: step_3.pt: .*no 3.x name for TransformerBridge key"):
        open_series(str(tmp_path / "ck")).load(3)


@pytest.mark.parametrize("line", [3, 4])
def test_a_default_str_config_from_gpus_loads_on_cpu(line, tmp_path):
    """Each line's ``json.dump(cfg.to_dict(), f, default=str)`` (dtype "torch.float32"), here as a multi-GPU run wrote
    it (device "cuda:0", n_devices 2), rebuilds the model on this CPU with the same logits."""
    import shutil

    shutil.copytree(DIRS[line], tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["dtype"] == "torch.float32"
    (tmp_path / "ck" / "config.json").write_text(json.dumps({**cfg, "device": "cuda:0", "n_devices": 2}))
    model = open_series(str(tmp_path / "ck")).load(3)
    ref = load_file(f"{DIRS[line]}/logits.safetensors")
    assert model.cfg.n_devices == 1 and model.cfg.dtype == torch.float32
    assert torch.allclose(model(ref["probe"]), ref["step_3"], atol=1e-5, rtol=0)
