"""sslens.compat on whichever TransformerLens line is installed (3.9 in .venv, 4.3 in .venv4; `make test4`).

The 3.x <-> 4.x translation is checked against TransformerLens's own pieces: the models' ``W_Q``...
properties, 4.x's ``convert_tl_checkpoint``, and weights/logits saved on 3.9 (tests/data/tl3_models.safetensors).
"""

import math
from importlib.metadata import version

import einops
import pytest
import torch
from machine import wrote_here
from safetensors import safe_open

from sslens import compat
from sslens.hooks import CircuitRecorder
from sslens.models import build
from sslens.models.rank_collapse import rank_collapse_config, small_init_lm_config
from sslens.models.scan_snap import scan_snap_config
from sslens.models.standard import standard_config

pytestmark = pytest.mark.tl4

FIXTURE = "tests/data/tl3_models.safetensors"
CASES = [rank_collapse_config(d=8, d_vocab=20, head="scalar", n_ctx=6), rank_collapse_config(d=8, d_vocab=20, n_ctx=6),
         small_init_lm_config(d_model=8, d_ff=16, d_vocab=20, n_ctx=6), standard_config(20, d_model=8, d_mlp=16, n_ctx=6, pos=False),
         standard_config(20, n_heads=2, d_model=8, d_mlp=16, n_ctx=6), scan_snap_config(7, n_ctx=6, init="random")]
FIELDS = dict(n_layers=2, n_heads=2, d_model=6, d_head=3, d_mlp=8, d_vocab=5, d_vocab_out=3, n_ctx=6,
              normalization_type="LN", act_fn="gelu", dtype=torch.float64, device="cpu", seed=0)


def probe_tokens(cfg):
    V = cfg.get("d_vocab") or cfg.get("M")
    return torch.randint(0, V, (3, 6), generator=torch.Generator().manual_seed(11))


def test_line_is_the_installed_distribution():
    assert compat.TL_MAJOR == int(version("transformer-lens").split(".")[0])
    model = compat.build_from_config(FIELDS)
    assert compat.is_hooked_model(model) and not compat.is_hooked_model(torch.nn.Linear(2, 2))
    assert type(model).__name__ == ("HookedTransformer" if compat.TL_MAJOR < 4 else "TransformerBridge")


def test_params_are_the_models_own_3x_properties():
    """params() in 3.x names/layouts equals TransformerLens's W_Q/W_O/W_in/W_U/... properties, and writes go through."""
    model = compat.build_from_config(FIELDS)
    P = compat.params(model)
    for l in range(2):
        a = model.blocks[l].attn
        for n in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
            assert torch.equal(P[f"blocks.{l}.attn.{n}"], getattr(a, n)), n
        assert torch.equal(P[f"blocks.{l}.mlp.W_in"], model.blocks[l].mlp.W_in)
        assert torch.equal(P[f"blocks.{l}.mlp.W_out"], model.blocks[l].mlp.W_out)
    for n, t in (("embed.W_E", model.W_E), ("pos_embed.W_pos", model.W_pos), ("unembed.W_U", model.W_U)):
        assert torch.equal(P[n], t), n
    assert list(P)[:4] == ["embed.W_E", "pos_embed.W_pos", "blocks.0.ln1.w", "blocks.0.ln1.b"]  # HookedTransformer's order
    with torch.no_grad():
        P["blocks.1.attn.W_Q"][1, 2, 0] = 7.0
    assert model.blocks[1].attn.W_Q[1, 2, 0].item() == 7.0
    assert torch.allclose(model.QK.AB[1, 1], model.blocks[1].attn.W_Q[1] @ model.blocks[1].attn.W_K[1].T)
    # every 3.x name is a real parameter or (4.x) the unembedding bias buffer
    assert set(compat.leaves(model)) <= set(P) and set(P) - set(compat.leaves(model)) <= {"unembed.b_U"}
    assert set(compat.name_map(model)) == set(compat.leaves(model))


@pytest.mark.parametrize("kv", [None, 1])
def test_state_dict_3x_inverts_convert_tl_checkpoint(kv):
    if compat.TL_MAJOR < 4:
        pytest.skip("convert_tl_checkpoint and bridge layouts exist on TransformerLens 4.x only")
    model = compat.build_from_config({**FIELDS, "n_key_value_heads": kv})
    sd3 = compat.state_dict_3x(model)
    assert ("blocks.0.attn._W_K" in sd3) == (kv is not None)  # 3.x names grouped-query K/V with a leading "_"
    back = compat.to_bridge_state_dict(sd3, model.cfg)
    own = model.state_dict()
    assert set(back) == set(own) and all(torch.equal(back[k], own[k]) for k in own)
    # and loading it into a fresh model reproduces the logits
    other = compat.build_from_config({**FIELDS, "n_key_value_heads": kv, "seed": 1})
    x = torch.randint(0, 5, (2, 6), generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(other(x), model(x))
    compat.load_state_dict_3x(other, sd3)
    assert torch.equal(other(x), model(x))


@pytest.mark.parametrize("i", range(len(CASES)))
def test_sslens_models_equal_the_ones_saved_on_3x(i):
    """The same seed gives bitwise the same initial weights as TransformerLens 3.9, and the same logits."""
    cfg = CASES[i]
    model = build(cfg, generator=torch.Generator().manual_seed(3))
    got = compat.state_dict_3x(model)
    with safe_open(FIXTURE, "pt") as f:
        ref = {k[len(f"{i}.model."):]: f.get_tensor(k) for k in f.keys() if k.startswith(f"{i}.model.")}
        logits = f.get_tensor(f"{i}.logits")
    assert set(got) == set(ref)
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    assert torch.allclose(model(probe_tokens(cfg)), logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("use", [True, False])
def test_attention_scale_is_what_the_scores_are_divided_by(use):
    fields = {**FIELDS, "normalization_type": None, "use_attn_scale": use}
    model = compat.build_from_config(fields)
    scale = compat.attn_scale(model, 1)
    assert scale == (math.sqrt(3) if use else 1.0)
    x = torch.randint(0, 5, (2, 6), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(x)
    r = cache["blocks.1.hook_resid_pre"]  # no LayerNorm: the attention input
    P = compat.params(model)
    q = einops.einsum(r, P["blocks.1.attn.W_Q"], "b p m, h m d -> b h p d") + P["blocks.1.attn.b_Q"][:, None]
    k = einops.einsum(r, P["blocks.1.attn.W_K"], "b p m, h m d -> b h p d") + P["blocks.1.attn.b_K"][:, None]
    s = (q @ k.transpose(-1, -2) / scale).masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    assert torch.allclose(cache["pattern", 1], torch.softmax(s, -1), atol=1e-10)


def _user_model():
    """A model built the installed line's own way, without sslens: boot_native on 4.x, HookedTransformer on 3.x."""
    if compat.TL_MAJOR >= 4:
        from transformer_lens import TransformerBridgeConfig
        from transformer_lens.model_bridge import TransformerBridge
        from transformer_lens.model_bridge.sources import native  # noqa: F401

        cfg = {k: v for k, v in FIELDS.items() if k not in ("dtype", "device", "d_vocab_out")}
        return TransformerBridge.boot_native(TransformerBridgeConfig(**cfg), dtype=torch.float64)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    return HookedTransformer(HookedTransformerConfig(**{k: v for k, v in FIELDS.items() if k != "d_vocab_out"}))


def test_recorder_reads_a_users_model_in_3x_names():
    model = _user_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rec = CircuitRecorder(model, schedule=[0, 2, 5], probe_tokens=torch.randint(0, 5, (2, 6)), token_space=True,
                          verbose=False).attach(opt)
    truth = {0: {k: v.detach().clone() for k, v in compat.params(model).items()}}
    g = torch.Generator().manual_seed(0)
    for step in range(1, 6):
        loss = model(torch.randint(0, 5, (4, 6), generator=g), return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
        truth[step] = {k: v.detach().clone() for k, v in compat.params(model).items()}
    assert sorted(rec.records) == [0, 2, 5]
    for step in (2, 5):
        P, r = truth[step], rec.records[step]
        for l in range(2):
            for n in ("W_Q", "W_K", "W_V", "W_O", "b_Q"):  # recorded in 3.x names and layouts
                assert torch.allclose(r[f"blocks.{l}.attn.{n}"].double(), P[f"blocks.{l}.attn.{n}"], atol=1e-6), n
            WQ, WK = P[f"blocks.{l}.attn.W_Q"], P[f"blocks.{l}.attn.W_K"]
            sv = torch.linalg.svdvals(einops.einsum(WQ, WK, "h m d, h n d -> h m n"))[:, :3]
            assert torch.allclose(r[f"blocks.{l}.QK.sv"].double(), sv, atol=1e-5)
        E, WQ, WK = P["embed.W_E"], P["blocks.0.attn.W_Q"][1], P["blocks.0.attn.W_K"][1]
        assert torch.allclose(r["blocks.0.QK_tok"][1].double(), E @ WQ @ WK.T @ E.T / math.sqrt(3), atol=1e-5)  # / sqrt(d_head)
        # weight drift under 3.x names, |W_t - W_0| (layout-free norms)
        assert {k[len("scores.delta."):] for k in r if k.startswith("scores.delta.")} == set(compat.leaves(model))
        d = (P["blocks.1.attn.W_O"] - truth[0]["blocks.1.attn.W_O"]).norm()
        assert torch.allclose(r["scores.delta.blocks.1.attn.W_O"].double(), d, rtol=1e-5)
    assert not torch.allclose(rec.records[0]["blocks.1.attn.W_Q"], rec.records[5]["blocks.1.attn.W_Q"])


# run dirs written by tests/data/make_tl_run.py: run_config(3) on TransformerLens 3.9 (4 SGD-momentum steps, recordings),
# run_config(4) on 4.3 (4 SGD steps, momentum and weight decay); checkpoints 0, 2 and 4 with optimizer and RNG state
RUNS = {3: "tests/data/tl3_run", 4: "tests/data/tl4_run"}


def run_config(line: int = 3):
    from sslens.data import syn_small
    from sslens.tasks import SequenceClassTask
    from sslens.train import TrainConfig

    s = syn_small(T=8)
    if line == 4:  # SGD momentum + weight decay on 12 tokens (the fixture stays < 200 KB); not Adam: its m/sqrt(v)
        # turns the rounding-level gradients of never-seen (query, token) pairs into O(lr) steps that differ by line
        from sslens.data.sequence_classes import SequenceClass, SequenceClassSpec

        common = {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}
        s = SequenceClassSpec(M=12, classes=(SequenceClass(8, 10, {**common, 4: 1.0, 5: 0.5}),
                                             SequenceClass(9, 11, {**common, 6: 1.0, 7: 0.5})), T=6, name="tiny")
        return TrainConfig(model=scan_snap_config(s.M, n_ctx=6, init="random"), task=SequenceClassTask(s).to_dict(),
                           steps=4, batch=8, lr={"blocks.0.attn.W_Q": 0.5, "unembed.W_U": 2.0}, optimizer="sgd",
                           momentum=0.9, weight_decay=0.01, seed=0, checkpoint_every=2, record_n=2)
    return TrainConfig(model=scan_snap_config(s.M, n_ctx=8, init="random"), task=SequenceClassTask(s).to_dict(), steps=4,
                       batch=8, lr={"blocks.0.attn.W_Q": 1.0, "unembed.W_U": 3.0}, optimizer="sgd", momentum=0.9, seed=0,
                       checkpoint_every=2, record_n=2)


@pytest.mark.parametrize("line", [3, 4])
def test_a_run_of_either_line_is_loaded_and_resumed_on_this_line(tmp_path, line):
    """Checkpoints keep 3.x names and layouts (optimizer state included): a run written on TransformerLens ``line``
    (3.9 / 4.3) killed after step 2 resumes here to the step-4 checkpoint of the run that
    never switched (model, optimizer state, RNG), and its losses."""
    import shutil

    from sslens.hooks import Recording
    from sslens.models.scan_snap import Y_of, Z_of
    from sslens.store import RunStore
    from sslens.train import train

    full = RunStore(RUNS[line])
    model = full.load_model(2)
    ref, meta = full.load_checkpoint(2)
    assert torch.equal(Z_of(model), ref["model.blocks.0.attn.W_Q"][0]) and torch.equal(Y_of(model), ref["model.unembed.W_U"])
    assert torch.allclose(Recording(RUNS[line]).get("blocks.0.QK_tok")[-1, 0], Z_of(full.load_model(4)), atol=1e-6)  # = Z

    run = tmp_path / "run"
    shutil.copytree(RUNS[line], run)
    (run / "COMPLETE").unlink()
    for p in (run / "checkpoints").glob("step_00000004*"):
        p.unlink()
    train(run_config(line), out=run, resume=True, progress=False)
    a, meta_a = full.load_checkpoint(4)
    b, meta_b = RunStore(run).load_checkpoint(4)
    assert a.keys() == b.keys() and meta_b["step"] == 4
    assert any(k.startswith("optim.") for k in a)  # the optimizer state is part of the comparison
    for k in a:  # float32 rounding of another line's (or CPU's) kernels; bitwise below where nothing differs
        assert a[k].shape == b[k].shape and torch.allclose(a[k].double(), b[k].double(), atol=1e-6, rtol=1e-5), k
    la = [r["loss"] for r in full.read_metrics()]
    lb = [r["loss"] for r in RunStore(run).read_metrics()]
    assert len(lb) == 4 and max(abs(x - y) for x, y in zip(la, lb)) < 1e-6
    if compat.TL_MAJOR == line and wrote_here(RUNS[line]):  # same line and kernels (tests/machine.py): bitwise
        assert all(torch.equal(a[k], b[k]) for k in a)


def _numbers_close(x, y, path=""):
    if isinstance(x, dict):
        assert isinstance(y, dict) and set(x) == set(y), path
        for k in x:
            _numbers_close(x[k], y[k], f"{path}.{k}")
    elif isinstance(x, list):
        assert isinstance(y, list) and len(x) == len(y), path
        for i, (u, v) in enumerate(zip(x, y)):
            _numbers_close(u, v, f"{path}[{i}]")
    elif isinstance(x, float) and isinstance(y, (int, float)):
        assert abs(x - y) <= 1e-6 * max(1.0, abs(x)) or (x != x and y != y), (path, x, y)
    else:
        assert x == y, (path, x, y)


@pytest.mark.slow
@pytest.mark.parametrize("line", [3, 4])
def test_sslens_analyze_of_a_run_of_either_line_gives_its_numbers(tmp_path, line):
    """`sslens analyze` of the 3.9 / 4.3 run on the installed line equals the metrics.json written on that line
    (1e-6 relative)."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    run = tmp_path / "run"
    shutil.copytree(RUNS[line], run)
    subprocess.run([sys.executable, "-m", "sslens.cli", "analyze", str(run)], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    _numbers_close(json.loads((run / "metrics.json").read_text()), json.loads(open(f"{RUNS[line]}_analysis.json").read()))


def test_series_analysis_of_a_users_model_equals_its_own_QK(tmp_path):
    """A model built from a config on this line (boot_native on 4.x), trained by a plain loop with the
    recorder attached: the generic analysis (recording -> series) gives its QK effective rank and its
    K-composition at the last step, computed independently from the model's own W_Q/W_K/W_V/W_O."""
    from sslens.analyses.rank import effective_rank
    from sslens.analyses.series import analyze_recording

    torch.manual_seed(0)
    model = compat.build_from_config(dict(n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=16, d_vocab=20,
                                          attn_only=True, act_fn=None))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rec = CircuitRecorder(model, store=tmp_path / "rec", schedule=[0, 2, 4], verbose=False)
    rec.attach(opt)
    for _ in range(4):
        loss = model(torch.randint(0, 20, (4, 16)), return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
    rec.detach()
    r = analyze_recording(tmp_path / "rec", progress=False)
    with torch.no_grad():
        W_Q, W_K, W_V, W_O = (getattr(model, n).detach().double() for n in ("W_Q", "W_K", "W_V", "W_O"))
    QK = W_Q @ W_K.transpose(-1, -2)  # [layer, head, d_model, d_model]
    got = torch.as_tensor(r.head["QK.effective_rank"][-1], dtype=torch.float64)
    assert torch.allclose(got, effective_rank(QK), rtol=1e-4)
    # K-composition of layer-0 head 0 into layer-1 head 0 (Elhage et al.): ||W_OV W_QK^T||_F / (||W_OV||_F ||W_QK||_F)
    OV0 = W_V[0, 0] @ W_O[0, 0]
    want = torch.linalg.norm(OV0 @ QK[1, 0].T) / (torch.linalg.norm(QK[1, 0]) * torch.linalg.norm(OV0))
    assert float(r.composition["K"][-1][0, 0, 1, 0]) == pytest.approx(float(want), rel=1e-4)


def test_rank_collapse_gradient_ratio_on_this_line(tmp_path):
    """The stage-2 outer/attention gradient ratio of analyses.rank_collapse (autograd on compat.leaves) equals the
    ratio of gradient norms read independently in 3.x names (compat.grads after backward) on a short [CR] run."""
    from sslens.analyses.rank_collapse import _outer_grad_ratio, _tokens, data
    from sslens.losses import last_token_exp
    from sslens.reproduce.rank_collapse import theory_config
    from sslens.store import RunStore
    from sslens.train import train

    train(theory_config(4, "tanh", 1e-3, 0.03, n_train=32, every=2), out=tmp_path / "cr", progress=False)
    store = RunStore(tmp_path / "cr")
    _, y, _ = data(store, 32)
    tokens = _tokens(store, 32)
    got = _outer_grad_ratio(store, 4, [(tokens, y)])
    model = store.load_model(4)
    last_token_exp(model(tokens), y.to(model.cfg.dtype)).backward()
    g = {k: v.double() for k, v in compat.grads(model).items() if v is not None}
    attn = ("blocks.0.attn.W_Q", "blocks.0.attn.W_K")
    assert set(attn) < set(g) and len(g) > 2
    na = torch.sqrt(sum(g[k].square().sum() for k in attn))
    no = torch.sqrt(sum(v.square().sum() for k, v in g.items() if k not in attn))
    assert got == pytest.approx((no / na).item(), rel=1e-9)
